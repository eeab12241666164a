//! What the lazy-restore tests share: the skip protocol, child processes run
//! under a time limit, and page-by-page views compared between an eagerly
//! and a lazily restored twin.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use memimg::{Codec, Key, RegionKind};
use memimg_capture::{PersistOptions, Persister};

use crate::common::{self, ROLE};

/// A test that cannot run here: with `MEMIMG_REQUIRE_ALL` set (CI) it
/// fails; otherwise it is logged to `MEMIMG_SKIP_LOG` and said on stderr,
/// and the test returns.
pub fn skip(test: &str, why: &str) {
    if std::env::var("MEMIMG_REQUIRE_ALL").is_ok_and(|v| !v.is_empty()) {
        panic!("would skip: {why}");
    }
    if let Ok(log) = std::env::var("MEMIMG_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}\t{why}");
        }
    }
    eprintln!("skipped: {why}");
}

/// Whether `test` must be skipped because lazy restore cannot run here
/// (and says so, by the skip protocol).
pub fn lazy_skip(test: &str) -> bool {
    match memimg_capture::lazy_unavailable() {
        Some(why) => {
            skip(test, &why);
            true
        }
        None => false,
    }
}

/// How a child run ended.
pub struct Outcome {
    pub status: ExitStatus,
    /// Its stdout and stderr, and those of any process it forked that
    /// kept them.
    pub out: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

/// Runs this binary in `role`, and waits until it has exited and every
/// process holding its output (children it forked) has closed it, for at
/// most `limit`. Past the limit the whole process group is killed and the
/// test fails, saying which role hung: a hang is a failure, not a suite
/// timeout.
pub fn run_limited(role: &str, env: &[(&str, String)], limit: Duration) -> Outcome {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new(exe);
    c.args([
        "--exact",
        "child::role_entry",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(ROLE, role)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group, so that a hung grandchild is killed too.
    .process_group(0);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let pgid = child.id() as i32;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let t0 = Instant::now();
    let mut status = None;
    while t0.elapsed() < limit {
        if status.is_none() {
            status = child.try_wait().unwrap();
        }
        if status.is_some() && out.is_finished() && err.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = status.is_some() && out.is_finished() && err.is_finished();
    if !done {
        // SAFETY: kill with a negative pid signals the process group made
        // for this child alone.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().unwrap(),
    };
    let text = |h: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap()).into_owned()
    };
    let out = format!("{}{}", text(out), text(err));
    assert!(
        done,
        "role {role} did not finish within {limit:?}: some thread is waiting for ever (a page that never comes?)\n{out}"
    );
    Outcome { status, out }
}

/// The exit signal of a child, if a signal ended it.
pub fn signal(o: &Outcome) -> Option<i32> {
    o.status.signal()
}

pub const PS: usize = 4096;
/// Region A's pages and region B's; B lies 64 MiB after A, so A can grow.
pub const A_PAGES: usize = 4096;
pub const B_PAGES: usize = 1024;
pub const B_OFF: u64 = 64 << 20;
pub const CHUNK: u32 = 64 << 10;

/// Where test `slot` restores its regions: away from every other test's.
pub fn base(slot: u64) -> u64 {
    0x3800_0000_0000 + slot * 0x1_0000_0000
}

/// The image's bytes for page `p` of the region at `start`: a mix of zero
/// pages (not stored), random pages and text pages naming their address.
pub fn fill_page(start: u64, p: usize, page: &mut [u8]) {
    match p % 7 {
        0 => page.fill(0),
        1 | 4 => common::fill_random(page, start ^ ((p as u64) << 12)),
        _ => {
            common::fill_text(page);
            page[..8].copy_from_slice(&(start + (p * PS) as u64).to_le_bytes());
        }
    }
}

fn map_fixed(addr: u64, len: usize) -> *mut u8 {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let p = unsafe {
        libc::mmap(
            addr as usize as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, addr, "could not map the test region at {addr:#x}");
    p.cast()
}

/// A zstd, encrypted image of regions A and B at `base`, in 64 KiB chunks;
/// returns its key.
pub fn make_image(base: u64, path: &Path) -> Key {
    let a = map_fixed(base, A_PAGES * PS);
    let b = map_fixed(base + B_OFF, B_PAGES * PS);
    for (start, ptr, pages) in [(base, a, A_PAGES), (base + B_OFF, b, B_PAGES)] {
        for p in 0..pages {
            // SAFETY: p < pages, inside the mapping just made.
            let page = unsafe { std::slice::from_raw_parts_mut(ptr.add(p * PS), PS) };
            fill_page(start, p, page);
        }
    }
    let key = Key::generate().unwrap();
    let opts = PersistOptions {
        codec: Codec::Zstd(1),
        key: Some(key.clone()),
        chunk_size: Some(CHUNK),
        ..PersistOptions::default()
    };
    // SAFETY: both mappings were just made and are only read here.
    let (da, db) = unsafe {
        (
            std::slice::from_raw_parts(a, A_PAGES * PS),
            std::slice::from_raw_parts(b, B_PAGES * PS),
        )
    };
    Persister::new()
        .region(da, RegionKind::Heap, "a")
        .region(db, RegionKind::Anonymous, "b")
        .write_to_path(path, &opts)
        .unwrap();
    // SAFETY: our own mappings, no longer used.
    unsafe {
        libc::munmap(a.cast(), A_PAGES * PS);
        libc::munmap(b.cast(), B_PAGES * PS);
    }
    key
}

pub fn key_hex(key: &Key) -> String {
    memimg::hex(key.raw_bytes().unwrap())
}

pub fn key_from_env() -> Key {
    let h = std::env::var("KEY").unwrap();
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).unwrap();
    }
    Key::raw(k)
}

/// Digest of an unmapped page.
pub const UNMAPPED: u64 = 0x756e_6d61_7070_6564;

/// A 64-bit digest of one page's bytes.
pub fn digest(page: &[u8]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for w in page.chunks_exact(8) {
        let v = u64::from_le_bytes(w.try_into().unwrap());
        h = (h ^ v).wrapping_mul(0x100_0000_01b3).rotate_left(29);
    }
    h
}

pub fn zero_digest() -> u64 {
    digest(&[0u8; PS])
}

/// Whether the page at `addr` is mapped (msync fails with ENOMEM where
/// nothing is).
pub fn mapped(addr: u64) -> bool {
    // SAFETY: msync only checks the range and schedules nothing for a
    // private anonymous mapping; it touches no memory.
    unsafe { libc::msync(addr as usize as *mut libc::c_void, PS, libc::MS_ASYNC) == 0 }
}

/// The digests of `pages` pages at `addr`, [`UNMAPPED`] where nothing is
/// mapped. Allocates nothing when `out` has room (for a raw fork's child).
pub fn view_into(addr: u64, pages: usize, out: &mut Vec<u64>) {
    for p in 0..pages {
        let a = addr + (p * PS) as u64;
        out.push(if mapped(a) {
            // SAFETY: the page is mapped, and readable in these tests (no
            // test makes a viewed page inaccessible).
            digest(unsafe { std::slice::from_raw_parts(a as usize as *const u8, PS) })
        } else {
            UNMAPPED
        });
    }
}

/// One `VIEW` line: `VIEW label addr d0 d1 …`.
pub fn view_line(label: &str, addr: u64, pages: usize) -> String {
    let mut d = Vec::with_capacity(pages);
    view_into(addr, pages, &mut d);
    format_view(label, addr, &d)
}

pub fn format_view(label: &str, addr: u64, d: &[u64]) -> String {
    let mut s = format!("VIEW {label} {addr:x}");
    for v in d {
        s += &format!(" {v:x}");
    }
    s
}

/// The `VIEW` and `NOTE` lines of a role's output, in order.
fn facts(out: &str) -> Vec<(String, String, Vec<u64>)> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match w.next()? {
                "VIEW" => {
                    let label = w.next()?.to_string();
                    let addr = w.next()?.to_string();
                    let d = w.map(|x| u64::from_str_radix(x, 16).unwrap()).collect();
                    Some((label, addr, d))
                }
                "NOTE" => Some((
                    w.next()?.to_string(),
                    w.collect::<Vec<_>>().join(" "),
                    Vec::new(),
                )),
                _ => None,
            }
        })
        .collect()
}

/// Compares the lazy twin's views and notes with the eager twin's, page by
/// page. A label starting with `free:` (after `MADV_FREE`) lets the lazy
/// twin read zeros where the eager one kept the old bytes: the kernel
/// allows either.
pub fn assert_same_view(eager: &Outcome, lazy: &Outcome) {
    let (e, l) = (facts(&eager.out), facts(&lazy.out));
    assert!(
        !e.is_empty(),
        "the eager twin reported nothing:\n{}",
        eager.out
    );
    assert_eq!(
        e.iter().map(|f| &f.0).collect::<Vec<_>>(),
        l.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "the twins reported different things\neager:\n{}\nlazy:\n{}",
        eager.out,
        lazy.out
    );
    let zero = zero_digest();
    for ((label, ea, ed), (_, la, ld)) in e.iter().zip(&l) {
        assert_eq!(ea, la, "{label}: the twins differ: {ea} vs {la}");
        assert_eq!(ed.len(), ld.len(), "{label}: page counts differ");
        for (p, (x, y)) in ed.iter().zip(ld).enumerate() {
            let free_ok = label.starts_with("free:") && *y == zero;
            assert!(
                x == y || free_ok,
                "{label}: page {p} (at {:#x}) differs between the eagerly and the lazily restored twin: {}",
                u64::from_str_radix(ea, 16).unwrap_or(0) + (p * PS) as u64,
                describe(*x, *y, zero)
            );
        }
    }
}

fn describe(eager: u64, lazy: u64, zero: u64) -> String {
    let name = |d: u64| match d {
        UNMAPPED => "unmapped".to_string(),
        d if d == zero => "zeros".to_string(),
        d => format!("digest {d:x}"),
    };
    format!("eager {} / lazy {}", name(eager), name(lazy))
}

/// The value of `key=` in the role's `STATS` line.
pub fn stat(out: &str, key: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("STATS "))
        .unwrap_or_else(|| panic!("no STATS line in:\n{out}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap()
}

/// The time limit for one child run: generous, since test machines are
/// shared, but far below a suite timeout. By default 120 s;
/// `MEMIMG_TEST_LIMIT_SECS` sets another.
pub fn limit() -> Duration {
    let secs = std::env::var("MEMIMG_TEST_LIMIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// Signal number as text, for messages.
pub fn signame(o: &Outcome) -> String {
    match signal(o) {
        Some(s) => format!("signal {s}"),
        None => format!("exit {:?}", o.status.code()),
    }
}
