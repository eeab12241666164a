//! Incremental images through imgtool: `capture --parent` of a live
//! process, then inspect, diff, flatten, cat and verify of the child; chains
//! written with the library read by every command; a parent removed,
//! replaced, truncated or re-keyed gives a clear error naming the link, exit
//! 2; flatten and rebase.
//!
//! The live child is this test binary re-executed with
//! `IMGTOOL_INCR_ROLE` set: it maps 256 MiB at a fixed address, gives each
//! page content of its own, prints `READY` and sleeps; the test changes 1%
//! of its pages through `/proc/PID/mem` between captures.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use memimg::{Chain, ChainOptions, Codec, ExtentKind, Image, RegionInfo, Writer};

use crate::common::*;
use crate::skip::skip;

const ROLE: &str = "IMGTOOL_INCR_ROLE";
/// Where the live child maps its region.
pub const ADDR: u64 = 0x5b5b_0000_0000;
/// The region's length, unless the role's value gives another (in MiB).
const LEN: usize = 256 << 20;

/// The bytes of page `p` of generation `g` of the live region: a different
/// sequence on each page, never zero.
pub fn page(p: u64, g: u64, out: &mut [u8]) {
    let mut x = (p + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ g.wrapping_mul(0xD1B5_4A32_D192_ED03);
    for c in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&(x | 1).to_le_bytes()[..c.len()]);
    }
}

/// Not a test: the entry point of the re-executed live child.
#[test]
fn incr_child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let len = role.parse::<usize>().map_or(LEN, |mib| mib << 20);
    // SAFETY: a fresh anonymous mapping at a fixed address, never unmapped;
    // MAP_FIXED_NOREPLACE never replaces an existing one.
    let region = unsafe {
        let p = libc::mmap(
            ADDR as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        assert_eq!(p as u64, ADDR, "mmap at {ADDR:#x}");
        std::slice::from_raw_parts_mut(p.cast::<u8>(), len)
    };
    for (i, pg) in region.chunks_mut(PS as usize).enumerate() {
        page(i as u64, 0, pg);
    }
    println!("READY");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A live process holding [`ADDR`]: 256 MiB, or `mib` MiB with
/// [`Live::spawn_mib`].
pub struct Live(Child);

impl Live {
    fn spawn() -> Live {
        Live::spawn_mib(LEN >> 20)
    }

    /// A live process whose region is `mib` MiB.
    pub fn spawn_mib(mib: usize) -> Live {
        Live::spawn_role(&mib.to_string())
    }

    fn spawn_role(role: &str) -> Live {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "incremental::incr_child_role",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(ROLE, role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines.by_ref().map(Result::unwrap).any(|l| l == "READY"),
            "the live child did not start"
        );
        std::thread::spawn(move || for _ in lines {});
        Live(child)
    }

    pub fn stop(&self) {
        let pid = libc::pid_t::try_from(self.0.id()).unwrap();
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        std::thread::sleep(Duration::from_millis(100));
    }

    pub fn pid(&self) -> String {
        self.0.id().to_string()
    }

    /// Writes generation `g`'s content into pages `pages` of the region.
    pub fn change(&self, pages: &BTreeSet<u64>, g: u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{}/mem", self.0.id()))
            .unwrap();
        let mut buf = vec![0u8; PS as usize];
        for &p in pages {
            page(p, g, &mut buf);
            f.write_all_at(&buf, ADDR + p * PS).unwrap();
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Page runs `[start, end)` of a set of page numbers of the live region.
fn runs(pages: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        let a = ADDR + p * PS;
        match v.last_mut() {
            Some(l) if l.1 == a => l.1 = a + PS,
            _ => v.push((a, a + PS)),
        }
    }
    v
}

fn hexnum(v: &serde_json::Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// The live test: capture a 256 MiB process, change 1% of its
/// pages, capture a child with --parent: the child stores exactly those
/// pages of the region; diff of parent and child lists exactly them;
/// flatten of the child and a fresh full capture are identical.
#[test]
fn live_child_holds_exactly_the_changed_pages() {
    live_child(
        concat!(
            module_path!(),
            "::live_child_holds_exactly_the_changed_pages"
        ),
        false,
    );
}

/// The same with a parent captured with `--page-digests`: the child
/// compares every page with the parent's digests and decodes nothing of
/// the parent, holds the same pages, and has digests of its own.
#[test]
fn live_child_of_a_parent_with_page_digests_decodes_nothing() {
    live_child(
        concat!(
            module_path!(),
            "::live_child_of_a_parent_with_page_digests_decodes_nothing"
        ),
        true,
    );
}

fn live_child(test: &str, digests: bool) {
    let live = Live::spawn();
    let d = tempfile::tempdir().unwrap();
    let (base, child, flat, full) = (
        d.path().join("base.mimg"),
        d.path().join("child.mimg"),
        d.path().join("flat.mimg"),
        d.path().join("full.mimg"),
    );
    let pid = live.pid();
    let mut args = vec!["capture", "--pid", &pid, "-o", s(&base)];
    if digests {
        args.push("--page-digests");
    }
    let (code, o, e) = run(&args);
    if code == 2 && e.contains("ermission") {
        skip(test, &format!("ptrace is not permitted here: {e}"));
        return;
    }
    assert_eq!(code, 0, "{o}{e}");
    // 1% of the pages, scattered, some in runs.
    let n = (LEN as u64 / PS) as usize;
    let mut changed = BTreeSet::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    while changed.len() < n / 100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = x % n as u64;
        changed.insert(p);
        if x.is_multiple_of(5) && p + 1 < n as u64 {
            changed.insert(p + 1);
        }
    }
    live.change(&changed, 1);
    // Stopped from here on (job control), so that the child, the full
    // capture after it and the flattened chain see one state of the
    // process: a running process changes its stack between captures.
    live.stop();
    let (code, o, e) = run(&[
        "capture",
        "--pid",
        &live.pid(),
        "--parent",
        s(&base),
        "-o",
        s(&child),
    ]);
    assert_eq!(code, 0, "{o}{e}");
    assert!(o.contains("child of"), "{o}");
    assert_eq!(Image::open(&base).unwrap().has_page_digests(), digests);
    if digests {
        assert!(
            o.contains(", 0 B compared page by page; 0 B of the parent decoded)"),
            "{o}"
        );
        assert!(!o.contains(" 0 B by page digest"), "{o}");
        assert!(!o.contains("no page digests"), "{o}");
    } else {
        assert!(!o.contains("0 B of the parent decoded"), "{o}");
        assert!(o.contains(" 0 B by page digest"), "{o}");
        assert!(
            o.contains("captured with --page-digests is compared"),
            "{o}"
        );
    }

    // The child: in the region, exactly the changed pages stored, the rest
    // the parent's.
    let img = Image::open(&child).unwrap();
    assert_eq!(img.depth(), 1);
    assert_eq!(img.has_page_digests(), digests);
    let r = img
        .regions()
        .unwrap()
        .iter()
        .find(|r| r.info.start == ADDR)
        .unwrap()
        .clone();
    let mut stored = BTreeSet::new();
    for e in img.region_extents(&r).unwrap() {
        match e.kind {
            ExtentKind::Data => {
                stored.extend((0..u64::from(e.page_count)).map(|i| (e.addr - ADDR) / PS + i));
            }
            ExtentKind::InParent => {}
            k => panic!("extent of kind {k:?} at {:#x} in the region", e.addr),
        }
    }
    assert_eq!(
        stored, changed,
        "the child must store exactly the changed pages"
    );
    let child_len = std::fs::metadata(&child).unwrap().len();
    let base_len = std::fs::metadata(&base).unwrap().len();
    assert!(
        child_len * 20 < base_len,
        "child {child_len} bytes against a parent of {base_len}"
    );

    // inspect shows the chain.
    let (code, o, e) = run(&["inspect", s(&child)]);
    assert_eq!(code, 0, "{e}");
    assert!(o.contains("chain           depth 1, 2 links open"), "{o}");

    // diff parent child: exactly those pages in the region.
    let (code, o, e) = run(&["diff", "--json", s(&base), s(&child)]);
    assert_eq!(code, 1, "{e}");
    let doc = json(&o);
    let region = doc["changed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| hexnum(&c["start"]) == ADDR)
        .expect("the region differs");
    let got: Vec<(u64, u64)> = region["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (hexnum(&r["start"]), hexnum(&r["end"])))
        .collect();
    assert_eq!(got, runs(&changed));
    // Shared pages were neither decoded nor read.
    assert!(
        doc["bytes_shared"].as_u64().unwrap() >= (LEN as u64) * 98 / 100,
        "{o}"
    );

    // flatten = a fresh full capture.
    let (code, o, e) = run(&["flatten", s(&child), "-o", s(&flat)]);
    assert_eq!(code, 0, "{o}{e}");
    assert_eq!(Image::open(&flat).unwrap().has_page_digests(), digests);
    let (code, o, e) = run(&["capture", "--pid", &live.pid(), "-o", s(&full)]);
    assert_eq!(code, 0, "{o}{e}");
    let (code, o, e) = run(&["diff", s(&flat), s(&full)]);
    assert_eq!(code, 0, "flatten and a full capture differ:\n{o}{e}");
    let (code, o, e) = run(&["diff", s(&child), s(&full)]);
    assert_eq!(code, 0, "the chain and a full capture differ:\n{o}{e}");

    // cat through the chain: a changed page and an unchanged one.
    let p = *changed.iter().next().unwrap();
    let mut want = vec![0u8; PS as usize];
    page(p, 1, &mut want);
    let o = bin()
        .args([
            "cat",
            "--addr",
            &format!("{:#x}", ADDR + p * PS),
            "--len",
            "4096",
            s(&child),
        ])
        .output()
        .unwrap();
    assert_success(&o);
    assert_eq!(o.stdout, want);
    let q = (0..n as u64).find(|q| !changed.contains(q)).unwrap();
    page(q, 0, &mut want);
    let o = bin()
        .args([
            "cat",
            "--addr",
            &format!("{:#x}", ADDR + q * PS),
            "--len",
            "4096",
            s(&child),
        ])
        .output()
        .unwrap();
    assert_success(&o);
    assert_eq!(o.stdout, want);

    // verify checks both links.
    let (code, o, e) = run(&["verify", s(&child)]);
    assert_eq!(code, 0, "{o}{e}");
    assert!(o.contains("1 parent checked"), "{o}");
}

/// Regions of the small chains: 24 pages at 0x100000 and 8 at 0x200000.
const R1: u64 = 0x10_0000;
const R2: u64 = 0x20_0000;

fn gen_content(g: u64) -> (Vec<u8>, Vec<u8>) {
    let mut a = bytes(1, 24 * PS as usize, 30);
    let mut b = bytes(2, 8 * PS as usize, 30);
    for k in 1..=g {
        // Generation k changes pages k, k + 7 and k + 13 of the first region
        // and zeroes page k of the second.
        for p in [k, k + 7, k + 13] {
            let p = (p % 24) as usize * PS as usize;
            a[p..p + PS as usize].copy_from_slice(&bytes(100 + k, PS as usize, 50));
        }
        let z = (k % 8) as usize * PS as usize;
        b[z..z + PS as usize].fill(0);
    }
    (a, b)
}

/// Writes generation `g` at `path`: a full image for 0, else a child of
/// the chain at `parent`.
fn write_gen(path: &Path, g: u64, parent: Option<&Path>, codec: Codec, key: Option<memimg::Key>) {
    let (a, b) = gen_content(g);
    let mut o = opts(codec, key.clone()).chunk_size(16 * 1024);
    let chain = parent.map(|p| Chain::open(p, key.as_ref(), &ChainOptions::default()).unwrap());
    if let (Some(c), Some(p)) = (&chain, parent) {
        o = o
            .parent_of(c.image())
            .unwrap()
            .parent_hint(p.file_name().unwrap().to_str().unwrap());
    }
    let mut w = Writer::new(std::fs::File::create(path).unwrap(), o).unwrap();
    for (addr, data) in [(R1, &a), (R2, &b)] {
        let info = RegionInfo::new(addr, data.len() as u64);
        match &chain {
            Some(c) => w.add_region_against(info, data, c).unwrap(),
            None => w.add_region(info, data).unwrap(),
        }
    }
    w.finish().unwrap();
}

/// A chain of three: gen0 <- gen1 <- gen2, in `dir`.
fn chain3(dir: &Path, codec: Codec, key: Option<memimg::Key>) -> [std::path::PathBuf; 3] {
    let p = [
        dir.join("g0.mimg"),
        dir.join("g1.mimg"),
        dir.join("g2.mimg"),
    ];
    write_gen(&p[0], 0, None, codec, key.clone());
    write_gen(&p[1], 1, Some(&p[0]), codec, key.clone());
    write_gen(&p[2], 2, Some(&p[1]), codec, key);
    p
}

fn cat_bytes(img: &Path, addr: u64, len: usize, extra: &[&str]) -> (i32, Vec<u8>, String) {
    let mut a = vec![
        "cat".to_string(),
        "--addr".into(),
        format!("{addr:#x}"),
        "--len".into(),
        len.to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a.push(s(img).to_string());
    let o = bin().args(&a).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        o.stdout,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn chain_reads_through_cat_diff_flatten_and_export_core() {
    let d = tempfile::tempdir().unwrap();
    let p = chain3(d.path(), Codec::Zstd(1), None);
    let (a, b) = gen_content(2);
    let (code, got, e) = cat_bytes(&p[2], R1, a.len(), &[]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(got, a);
    let (code, got, e) = cat_bytes(&p[2], R2, b.len(), &[]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(got, b);
    // diff of a child against its parent: exactly generation 2's pages.
    let (code, o, e) = run(&["diff", "--json", s(&p[1]), s(&p[2])]);
    assert_eq!(code, 1, "{e}");
    let doc = json(&o);
    assert_eq!(doc["pages_differ"], 4, "{o}");
    // Flatten: identical to the chain and to generation 2 written full.
    let flat = d.path().join("flat.mimg");
    let (code, o, e) = run(&["flatten", s(&p[2]), "-o", s(&flat)]);
    assert_eq!(code, 0, "{o}{e}");
    assert!(Image::open(&flat).unwrap().parent().is_none());
    let (code, o, e) = run(&["diff", s(&flat), s(&p[2])]);
    assert_eq!(code, 0, "{o}{e}");
    let full = d.path().join("full2.mimg");
    write_gen(&full, 2, None, Codec::None, None);
    let (code, o, e) = run(&["diff", s(&flat), s(&full)]);
    assert_eq!(code, 0, "{o}{e}");
    // inspect: three links, pages per link.
    let (code, o, e) = run(&["inspect", "--json", s(&p[2])]);
    assert_eq!(code, 0, "{e}");
    let doc = json(&o);
    let links = doc["chain"]["links"].as_array().unwrap();
    assert_eq!(links.len(), 3);
    let stored: u64 = Image::open(&p[2])
        .unwrap()
        .extents()
        .unwrap()
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| u64::from(e.page_count))
        .sum();
    assert!(stored > 0);
    assert_eq!(links[0]["stored_pages"], stored, "{o}");
    assert_eq!(links[1]["depth"], 1, "{o}");
    // export-core of the child: gdb-free check that the core holds the
    // content (the core's PT_LOAD of R1 holds generation 2's bytes).
    let core = d.path().join("g2.core");
    let (code, o, e) = run(&["export-core", s(&p[2]), "-o", s(&core)]);
    assert_eq!(code, 0, "{o}{e}");
    let bytes = std::fs::read(&core).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &a[..64])
        .expect("the core holds the first region");
    assert_eq!(&bytes[at..at + a.len()], &a[..]);
    assert!(
        !d.path().join("g2.flat").exists(),
        "the temporary flat image is left"
    );
    // verify of the chain.
    let (code, o, e) = run(&["verify", s(&p[2])]);
    assert_eq!(code, 0, "{o}{e}");
    assert!(o.contains("2 parents checked"), "{o}");
}

#[test]
fn explicit_parents_and_no_hints() {
    let d = tempfile::tempdir().unwrap();
    let p = chain3(d.path(), Codec::None, None);
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join("moved-g1.mimg");
    std::fs::rename(&p[1], &moved).unwrap();
    let (a, _) = gen_content(2);
    // Without the parent: an error naming link 1 and what to do, exit 2.
    let (code, _, e) = cat_bytes(&p[2], R1, a.len(), &[]);
    assert_eq!(code, 2);
    assert!(e.contains("its parent") && e.contains("is needed"), "{e}");
    // Given: it reads (g0 is found through g1's hint? no: g1 moved, so its
    // hint "g0.mimg" resolves beside it; give both).
    let (code, got, e) = cat_bytes(
        &p[2],
        R1,
        a.len(),
        &["--parent", s(&moved), "--parent", s(&p[0])],
    );
    assert_eq!(code, 0, "{e}");
    assert_eq!(got, a);
    // --no-hints: only what is given.
    std::fs::rename(&moved, &p[1]).unwrap();
    let (code, _, e) = cat_bytes(&p[2], R1, a.len(), &["--no-hints"]);
    assert_eq!(code, 2, "{e}");
}

/// A removed, replaced, truncated or re-keyed parent: a clear error naming
/// link 1, exit 2, from cat, verify, diff and flatten; never wrong bytes.
#[test]
fn damaged_parent_is_a_clear_error_naming_the_link() {
    let cases = ["removed", "replaced", "truncated", "rekeyed"];
    for case in cases {
        let d = tempfile::tempdir().unwrap();
        let (kp, key) = key_file(d.path(), "k", 7);
        let p = chain3(d.path(), Codec::Zstd(1), Some(key.clone()));
        match case {
            "removed" => std::fs::remove_file(&p[1]).unwrap(),
            "replaced" => write_gen(&p[1], 1, Some(&p[0]), Codec::Zstd(1), Some(key.clone())),
            "truncated" => {
                let f = std::fs::OpenOptions::new().write(true).open(&p[1]).unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len - 100).unwrap();
            }
            _ => {
                let (nk, _) = key_file(d.path(), "k2", 9);
                let out = d.path().join("re.mimg");
                let (code, o, e) = run(&[
                    "reencrypt",
                    "--full",
                    "--key-file",
                    s(&kp),
                    "--new-key-file",
                    s(&nk),
                    "-o",
                    s(&out),
                    s(&p[1]),
                ]);
                assert_eq!(code, 0, "{o}{e}");
                std::fs::rename(&out, &p[1]).unwrap();
            }
        }
        let k = ["--key-file", s(&kp)];
        let (a, _) = gen_content(2);
        let (code, out, e) = cat_bytes(&p[2], R1, a.len(), &k);
        assert_eq!(code, 2, "{case}: cat exit");
        assert!(out.is_empty(), "{case}: cat wrote bytes");
        // A removed parent is named as the parent the image needs; any
        // other case as link 1, which is not the image its child names.
        if case == "removed" {
            assert!(
                e.contains("its parent, image") && e.contains("is needed"),
                "{case}: {e}"
            );
        } else {
            assert!(e.contains("link 1 (its parent)"), "{case}: {e}");
        }
        let (code, o, e) = run(&["verify", "--key-file", s(&kp), s(&p[2])]);
        // Damage in a link is damage of the chain (1); a parent missing or
        // not the one named leaves it unchecked (2).
        let want = if case == "truncated" { 1 } else { 2 };
        assert_eq!(code, want, "{case}: verify exit\n{o}{e}");
        assert!(
            o.contains("link 1") || e.contains("link 1"),
            "{case}: {o}{e}"
        );
        let (code, _, e) = run(&["diff", "--key-file", s(&kp), s(&p[0]), s(&p[2])]);
        assert_eq!(code, 2, "{case}: diff exit");
        assert!(
            e.contains("link 1 (its parent)") || e.contains("its parent, image"),
            "{case}: {e}"
        );
        let flat = d.path().join("flat.mimg");
        let (code, _, e) = run(&["flatten", "--key-file", s(&kp), s(&p[2]), "-o", s(&flat)]);
        assert_eq!(code, 2, "{case}: flatten exit");
        assert!(e.contains("link 1") || e.contains("parent"), "{case}: {e}");
        assert!(!flat.exists());
    }
}

#[test]
fn rebase_onto_a_flattened_parent() {
    let d = tempfile::tempdir().unwrap();
    let p = chain3(d.path(), Codec::Zstd(1), None);
    let flat1 = d.path().join("flat1.mimg");
    let (code, o, e) = run(&["flatten", s(&p[1]), "-o", s(&flat1)]);
    assert_eq!(code, 0, "{o}{e}");
    let (code, o, e) = run(&["rebase", s(&p[2]), "--onto", s(&flat1), "--in-place"]);
    assert_eq!(code, 0, "{o}{e}");
    // g0 and g1 can go: the child reads through flat1 alone.
    std::fs::remove_file(&p[0]).unwrap();
    std::fs::remove_file(&p[1]).unwrap();
    let (a, _) = gen_content(2);
    let (code, got, e) = cat_bytes(&p[2], R1, a.len(), &[]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(got, a);
    // Onto other content: refused, the child left as it was.
    let other = d.path().join("other.mimg");
    write_gen(&other, 5, None, Codec::None, None);
    let before = std::fs::read(&p[2]).unwrap();
    let (code, _, e) = run(&["rebase", s(&p[2]), "--onto", s(&other), "--in-place"]);
    assert_eq!(code, 2);
    assert!(e.contains("does not hold the same content"), "{e}");
    assert_eq!(std::fs::read(&p[2]).unwrap(), before);
}
