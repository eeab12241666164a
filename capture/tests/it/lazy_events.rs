//! Lazy restore while the program forks, discards, moves and unmaps its
//! memory, and many threads fault at once.
//!
//! Each test restores a zstd + encrypted image twice, in two fresh
//! processes: eagerly and lazily. Both twins then run the same steps and
//! report a digest of every page they can see (and the results of their
//! system calls); every page must match. Each child run has a time limit,
//! so a thread that waits for ever fails the test with the role's name.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use memimg_capture::{restore, LazyHandle, RestoreOptions, Strategy};

use crate::lazy_support::{
    self as ls, assert_same_view, format_view, key_from_env, lazy_skip, run_limited, signame, stat,
    view_into, view_line, Outcome, A_PAGES, B_OFF, B_PAGES, PS,
};

/// The roles of this module; false for any other.
pub fn child_role(role: &str) -> bool {
    match role {
        "lazy-twin" => twin(),
        "lazy-damaged" => damaged(),
        "skip-probe" => ls::skip("skip_probe", "nothing here"),
        "lazy-costs" => crate::lazy_costs::role(),
        _ => return crate::lazy_alloc::child_role(role) || crate::loadorder::child_role(role),
    }
    true
}

/// One twin's restored regions and what it reports.
struct Twin {
    base: u64,
    lazy: Option<LazyHandle>,
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"))
}

fn hex_env(k: &str) -> u64 {
    u64::from_str_radix(&env(k), 16).unwrap()
}

fn say(line: &str) {
    println!("{line}");
}

/// Writes to stdout without Rust's stdout lock or buffer: for forked
/// children.
fn raw_write(fd: i32, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: writes from a valid buffer of b.len() bytes.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            return;
        }
        b = &b[n as usize..];
    }
}

fn read_all(fd: i32) -> Vec<u8> {
    let mut v = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        // SAFETY: reads into a valid buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return v;
        }
        v.extend_from_slice(&buf[..n as usize]);
    }
}

fn pipe() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

fn wait_ok(pid: i32) {
    let mut st = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "child {pid} failed: status {st:#x}"
    );
}

fn exit_now(code: i32) -> ! {
    // SAFETY: ends this (forked) process at once, running nothing of the
    // parent's that it copied.
    unsafe { libc::_exit(code) }
}

impl Twin {
    fn a(&self, p: usize) -> u64 {
        self.base + (p * PS) as u64
    }

    fn b(&self, p: usize) -> u64 {
        self.base + B_OFF + (p * PS) as u64
    }

    fn touch(&self, addr: u64) -> u8 {
        // SAFETY: the tests only touch pages they keep mapped and readable.
        unsafe { std::ptr::read_volatile(addr as usize as *const u8) }
    }

    fn write(&self, addr: u64, v: u64) {
        // SAFETY: the tests only write 8-byte-aligned words of pages they
        // keep mapped and writable.
        unsafe { std::ptr::write_volatile(addr as usize as *mut u64, v) }
    }

    fn madv(&self, addr: u64, pages: usize, advice: i32) -> i32 {
        // SAFETY: madvise on our own address range; the advice given never
        // unmaps anything.
        let rc = unsafe { libc::madvise(addr as usize as *mut libc::c_void, pages * PS, advice) };
        if rc == 0 {
            0
        } else {
            -std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        }
    }

    fn mremap(&self, from: u64, old: usize, new: usize, flags: i32, to: u64) -> u64 {
        // SAFETY: moves or resizes our own mappings to addresses the tests
        // keep free for them.
        let p = unsafe {
            libc::mremap(
                from as usize as *mut libc::c_void,
                old * PS,
                new * PS,
                flags,
                to as usize as *mut libc::c_void,
            )
        };
        p as u64
    }

    fn unmap(&self, addr: u64, pages: usize) {
        // SAFETY: unmaps part of our own restored regions, which nothing
        // holds references into.
        let rc = unsafe { libc::munmap(addr as usize as *mut libc::c_void, pages * PS) };
        assert_eq!(rc, 0);
    }

    fn view(&self, label: &str, addr: u64, pages: usize) {
        say(&view_line(label, addr, pages));
    }

    fn note(&self, k: &str, v: impl std::fmt::Display) {
        say(&format!("NOTE {k} {v}"));
    }

    fn views(&self, prefix: &str) {
        self.view(&format!("{prefix}a"), self.a(0), A_PAGES);
        self.view(&format!("{prefix}b"), self.b(0), B_PAGES);
    }

    fn stats_line(h: &LazyHandle) -> String {
        let s = h.stats();
        format!(
            "STATS faults={} refaults={} units_done={} units_total={} forks={} remaps={} removes={} unmaps={} released={} errors={}",
            s.faults,
            s.refaults,
            s.units_done,
            s.units_total,
            s.forks,
            s.remaps,
            s.removes,
            s.unmaps,
            u8::from(s.released),
            u8::from(s.error.is_some())
        )
    }

    /// Lazy twin: waits until every page has arrived (after `prefetch`).
    fn wait_released(&self) {
        if let Some(h) = &self.lazy {
            let t0 = Instant::now();
            while !h.stats().released {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "prefetch never ended"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Drops CAP_SYS_PTRACE from this process's effective set: the kernel then
/// refuses fork events, and the userfaultfd system call itself.
fn drop_cap_sys_ptrace() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget fills two Data structs for version 3 headers.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    assert_eq!(rc, 0);
    d[0].effective &= !(1 << 19);
    // SAFETY: capset reads the header and two Data structs; it only lowers
    // this process's own effective capabilities.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
    assert_eq!(rc, 0);
}

/// Restores the image named by `IMG`: a path, or (with the `remote`
/// feature) an `s3://` URL, for `remote.rs`.
fn restore_env(opts: &RestoreOptions) -> memimg_capture::Restored {
    let img = env("IMG");
    #[cfg(feature = "remote")]
    if img.starts_with("s3://") {
        return crate::remote::restore_url(opts);
    }
    restore(Path::new(&img), opts).unwrap()
}

fn twin() {
    if std::env::var("DROP_PTRACE").is_ok() {
        drop_cap_sys_ptrace();
    }
    let strategy: Strategy = env("STRATEGY").parse().unwrap();
    let opts = RestoreOptions {
        strategy,
        key: Some(key_from_env()),
        ..RestoreOptions::default()
    };
    let mut restored = restore_env(&opts);
    assert_eq!(restored.strategy, strategy);
    let mut t = Twin {
        base: hex_env("BASE"),
        lazy: restored.lazy.take(),
    };
    match env("SCENARIO").as_str() {
        "fork" => fork(&t),
        "outlive" => outlive(&t),
        "raw-fork" => raw_fork(&t),
        "dontneed" => dontneed(&t),
        "race" => race(&t),
        "mremap" => mremap(&t),
        "munmap" => munmap(&t),
        "threads" => threads(&t),
        "drop" => drop_while_faulting(&mut t),
        other => panic!("unknown scenario {other}"),
    }
    if let Some(h) = t.lazy.take() {
        let line = Twin::stats_line(&h);
        let s = h.finish();
        assert!(s.error.is_none(), "{:?}", s.error);
        say(&line);
    }
    say("END");
}

/// fork() through the C library: the child reads the image's bytes on every
/// page, received by the parent or not.
fn fork(t: &Twin) {
    for p in (0..A_PAGES).step_by(3) {
        t.touch(t.a(p));
    }
    let (r, w) = pipe();
    std::io::stdout().flush().unwrap();
    // SAFETY: fork; the child only computes, writes to the pipe and exits.
    match unsafe { libc::fork() } {
        0 => {
            let s = format!(
                "{}\n{}\n",
                view_line("child-a", t.a(0), A_PAGES),
                view_line("child-b", t.b(0), B_PAGES)
            );
            raw_write(w, s.as_bytes());
            exit_now(0);
        }
        pid => {
            // SAFETY: closes our copy of the pipe's write end.
            unsafe { libc::close(w) };
            let text = read_all(r);
            wait_ok(pid);
            print!("{}", String::from_utf8_lossy(&text));
        }
    }
    if let Some(h) = &t.lazy {
        let s = h.stats();
        assert!(
            s.released,
            "the fork did not wait for the rest of the image"
        );
        assert_eq!(
            s.forks, 0,
            "a fork through the C library reached the handler"
        );
    }
    t.views("");
}

/// The parent exits right after fork(); the child reads every page after
/// its parent is gone.
fn outlive(t: &Twin) {
    for p in (0..A_PAGES).step_by(5) {
        t.touch(t.a(p));
    }
    std::io::stdout().flush().unwrap();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork; the child only computes, writes and exits.
    if unsafe { libc::fork() } == 0 {
        let t0 = Instant::now();
        // SAFETY: getppid has no preconditions.
        while unsafe { libc::getppid() } == parent {
            if t0.elapsed() > Duration::from_secs(60) {
                raw_write(1, b"the parent never exited\n");
                exit_now(3);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        let s = format!(
            "NOTE parent gone\n{}\n{}\nEND\n",
            view_line("child-a", t.a(0), A_PAGES),
            view_line("child-b", t.b(0), B_PAGES)
        );
        raw_write(1, s.as_bytes());
        exit_now(0);
    }
    // The parent leaves at once, handler thread and all.
    exit_now(0);
}

/// A fork system call that bypasses the C library (no fork hook): the
/// handler serves the child through the userfaultfd the kernel hands over,
/// while the parent discards and writes its own pages.
fn raw_fork(t: &Twin) {
    for p in (0..A_PAGES).step_by(4) {
        t.touch(t.a(p));
    }
    let total = A_PAGES + B_PAGES;
    let mut seen: Vec<u64> = Vec::with_capacity(total);
    let (r, w) = pipe();
    std::io::stdout().flush().unwrap();
    // SAFETY: a raw clone that behaves as fork; the child allocates nothing
    // (seen has room for every digest), writes to the pipe and exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        view_into(t.a(0), A_PAGES, &mut seen);
        view_into(t.b(0), B_PAGES, &mut seen);
        // SAFETY: seen holds `total` initialised u64s.
        let bytes =
            unsafe { std::slice::from_raw_parts(seen.as_ptr().cast::<u8>(), seen.len() * 8) };
        raw_write(w, bytes);
        exit_now(0);
    }
    assert!(pid > 0, "clone failed");
    // SAFETY: closes our copy of the pipe's write end.
    unsafe { libc::close(w) };
    // Meanwhile the parent changes its own copy.
    assert_eq!(t.madv(t.a(100), 50, libc::MADV_DONTNEED), 0);
    t.write(t.a(120), 7);
    t.write(t.a(2001), 8);
    let bytes = read_all(r);
    wait_ok(pid as i32);
    assert_eq!(
        bytes.len(),
        total * 8,
        "the child reported {} bytes",
        bytes.len()
    );
    let d: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    say(&format_view("child-a", t.a(0), &d[..A_PAGES]));
    say(&format_view("child-b", t.b(0), &d[A_PAGES..]));
    if let Some(h) = &t.lazy {
        assert_eq!(h.stats().forks, 1, "the raw fork was not reported");
    }
    t.views("");
}

/// MADV_DONTNEED on pages received and not, then reads and writes there;
/// MADV_FREE; MADV_REMOVE (refused on private memory).
fn dontneed(t: &Twin) {
    for p in 0..512 {
        t.touch(t.a(p));
    }
    t.note("served", t.madv(t.a(100), 100, libc::MADV_DONTNEED));
    t.note("unserved", t.madv(t.a(1000), 100, libc::MADV_DONTNEED));
    t.note("straddling", t.madv(t.a(500), 30, libc::MADV_DONTNEED));
    // A page received, discarded, then read at once: faults again.
    t.note("refault", t.touch(t.a(105)));
    t.write(t.a(150), 0x1111);
    t.write(t.a(1050), 0x2222);
    t.write(t.a(520), 0x3333);
    t.note("all-of-b", t.madv(t.b(0), B_PAGES, libc::MADV_DONTNEED));
    t.write(t.b(3), 0x4444);
    t.note("free-served", t.madv(t.a(50), 10, libc::MADV_FREE));
    t.note("free-unserved", t.madv(t.a(2000), 100, libc::MADV_FREE));
    t.note("remove", t.madv(t.a(3000), 10, libc::MADV_REMOVE));
    t.view("a0", t.a(0), 50);
    t.view("free:a50", t.a(50), 10);
    t.view("a60", t.a(60), 1940);
    t.view("free:a2000", t.a(2000), 100);
    t.view("a2100", t.a(2100), A_PAGES - 2100);
    t.view("b", t.b(0), B_PAGES);
}

/// Two threads discard, read and write while the prefetcher fills.
fn race(t: &Twin) {
    if let Some(h) = &t.lazy {
        h.prefetch();
        assert!(
            !h.stats().released,
            "the prefetch ended before the race began"
        );
    }
    // Blocks of 32 pages; thread i owns the blocks with index % 2 == i, so
    // the end state does not depend on how the threads interleave.
    let blocks = (A_PAGES + B_PAGES) / 32;
    let block = |n: usize| -> u64 {
        if n * 32 < A_PAGES {
            t.a(n * 32)
        } else {
            t.b(n * 32 - A_PAGES)
        }
    };
    std::thread::scope(|s| {
        for i in 0..2usize {
            s.spawn(move || {
                let mut x = 0x2545_f491_4f6c_dd1du64 ^ (i as u64 + 1);
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for _ in 0..150 {
                    let n = (next() as usize % (blocks / 2)) * 2 + i;
                    let off = next() as usize % 32;
                    let len = 1 + next() as usize % (32 - off);
                    let at = block(n);
                    assert_eq!(t.madv(at + (off * PS) as u64, len, libc::MADV_DONTNEED), 0);
                    t.touch(at + (next() as usize % 32 * PS) as u64);
                    let v = next();
                    t.write(at + (next() as usize % 32 * PS) as u64 + (v % 512) * 8, v);
                }
            });
        }
    });
    t.wait_released();
    t.views("");
}

/// mremap: a move, a move that grows, growth in place, MREMAP_DONTUNMAP, a
/// shrink, and a move onto pages still waiting.
fn mremap(t: &Twin) {
    let n1 = t.base + (128 << 20);
    let n2 = t.base + (160 << 20);
    let n3 = t.base + (192 << 20);
    let fixed = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    for p in (0..1024).step_by(2) {
        t.touch(t.a(p));
    }
    t.note("move", t.mremap(t.a(700), 270, 270, fixed, n1) == n1);
    t.note(
        "grow-move",
        t.mremap(t.b(0), B_PAGES, B_PAGES + 512, fixed, n2) == n2,
    );
    t.write(n2 + PS as u64, 0x99);
    t.write(n2 + ((B_PAGES + 10) * PS) as u64, 0x1234);
    t.note(
        "grow-in-place",
        t.mremap(t.a(3584), 512, 1024, 0, 0) == t.a(3584),
    );
    t.note("grown-page", t.touch(t.a(4096 + 7)));
    t.write(t.a(4096 + 3), 0x77);
    t.note(
        "dontunmap",
        t.mremap(t.a(2000), 64, 64, fixed | libc::MREMAP_DONTUNMAP, n3) == n3,
    );
    t.note("shrink", t.mremap(n1, 270, 200, 0, 0) == n1);
    t.note(
        "onto-waiting",
        t.mremap(n3, 64, 64, fixed, t.a(3000)) == t.a(3000),
    );
    t.view("a", t.a(0), A_PAGES + 512);
    t.view("n1", n1, 270);
    t.view("n2", n2, B_PAGES + 512);
    t.view("n3", n3, 64);
    t.view("b", t.b(0), B_PAGES);
    if let Some(h) = &t.lazy {
        let s = h.stats();
        assert!(s.remaps >= 4 && s.unmaps >= 1, "{s:?}");
    }
}

/// Maps `pages` fresh pages over `addr` and writes `fill` to every other
/// one (0: writes nothing); the others stay untouched.
fn map_over(addr: u64, pages: usize, fill: u8) {
    // SAFETY: replaces our own restored range with a fresh mapping (the
    // test's point); nothing holds references into it.
    let p = unsafe {
        libc::mmap(
            addr as usize as *mut libc::c_void,
            pages * PS,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, addr);
    if fill != 0 {
        for i in (0..pages).step_by(2) {
            // SAFETY: page i of the mapping just made.
            unsafe { std::ptr::write_bytes(p.cast::<u8>().add(i * PS), fill, PS) };
        }
    }
}

/// munmap, then a new mapping at the same place; a mapping made straight
/// over restored pages; then the prefetch runs to the end.
fn munmap(t: &Twin) {
    for p in 0..100 {
        t.touch(t.a(p));
    }
    t.unmap(t.a(1000), 200);
    map_over(t.a(1000), 200, 0x5a);
    map_over(t.a(2000), 100, 0xa5);
    // A fresh mapping whose pages stay untouched: they must read zeros.
    map_over(t.a(3000), 100, 0);
    t.unmap(t.b(0), 100);
    if let Some(h) = &t.lazy {
        h.prefetch();
    }
    t.wait_released();
    t.views("");
    if let Some(h) = &t.lazy {
        assert!(h.stats().unmaps >= 4, "{:?}", h.stats());
    }
}

/// Sixteen threads fault at once: first each on its own stretch of pages
/// (a fault left unanswered stops every thread at the barrier), then all on
/// every page in different orders; then each writes its own pages.
fn threads(t: &Twin) {
    let total = A_PAGES + B_PAGES;
    let at = |p: usize| {
        if p < A_PAGES {
            t.a(p)
        } else {
            t.b(p - A_PAGES)
        }
    };
    let go = std::sync::Barrier::new(16);
    let own = std::sync::Barrier::new(16);
    std::thread::scope(|s| {
        for i in 0..16usize {
            let (go, own) = (&go, &own);
            s.spawn(move || {
                let mut sum = 0u64;
                go.wait();
                for p in i * total / 16..(i + 1) * total / 16 {
                    sum = sum.wrapping_add(u64::from(t.touch(at(p))));
                }
                own.wait();
                let stride = [1, 3, 7, 11, 13, 17, 19, 23][i % 8];
                for k in 0..total {
                    let p = (k * stride + i * 97) % total;
                    sum = sum.wrapping_add(u64::from(t.touch(at(p))));
                }
                std::hint::black_box(sum);
                for p in (i..total).step_by(16) {
                    t.write(at(p) + 8, (p as u64) << 8 | i as u64);
                }
            });
        }
    });
    t.views("");
}

/// The handle is dropped while threads fault; afterwards the memory is
/// ordinary memory.
fn drop_while_faulting(t: &mut Twin) {
    let stop = AtomicBool::new(false);
    let lazy = t.lazy.take();
    let tw: &Twin = t;
    std::thread::scope(|s| {
        for i in 0..4u64 {
            let stop = &stop;
            s.spawn(move || {
                let mut x = 0x9e37_79b9u64 + i;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    tw.touch(tw.a(x as usize % A_PAGES));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        if let Some(h) = lazy {
            let line = Twin::stats_line(&h);
            let st = h.finish();
            assert!(st.released && st.error.is_none(), "{st:?}");
            say(&line);
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(tw.madv(tw.a(10), 10, libc::MADV_DONTNEED), 0);
    tw.note("after", tw.touch(tw.a(12)));
    tw.write(tw.a(15), 5);
    tw.views("");
}

/// Restores an image with a damaged chunk: a good page reads, the damaged
/// one kills the process with SIGSEGV (after the handle is dropped too).
fn damaged() {
    let opts = RestoreOptions {
        strategy: Strategy::Lazy,
        key: Some(key_from_env()),
        ..RestoreOptions::default()
    };
    let mut restored = restore_env(&opts);
    let base = hex_env("BASE");
    let bad = hex_env("DAMAGED");
    // SAFETY: a restored, readable page.
    let good = unsafe { std::ptr::read_volatile((base + PS as u64) as usize as *const u64) };
    say(&format!("GOOD {good:x}"));
    if std::env::var("DROP").is_ok() {
        let s = restored.lazy.take().unwrap().finish();
        say(&format!(
            "FINISHED released={} error={}",
            s.released,
            s.error.unwrap_or_default()
        ));
    }
    std::io::stdout().flush().unwrap();
    // SAFETY: a restored page whose chunk is damaged: the handler makes it
    // inaccessible, so this read ends the process with SIGSEGV.
    let v = unsafe { std::ptr::read_volatile(bad as usize as *const u64) };
    say(&format!("SURVIVED {v:x}"));
}

/// Runs `scenario` in an eager and a lazy twin and compares their views;
/// returns the lazy twin's run, or `None` when lazy restore cannot run here.
fn twins(test: &str, slot: u64, scenario: &str) -> Option<Outcome> {
    twins_with(test, slot, scenario, &[])
}

fn twins_with(test: &str, slot: u64, scenario: &str, extra: &[(&str, String)]) -> Option<Outcome> {
    if lazy_skip(test) {
        return None;
    }
    let base = ls::base(slot);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("twin.img");
    let key = ls::make_image(base, &img);
    let env = |strategy: &str| {
        vec![
            ("IMG", img.display().to_string()),
            ("KEY", ls::key_hex(&key)),
            ("BASE", format!("{base:x}")),
            ("SCENARIO", scenario.to_string()),
            ("STRATEGY", strategy.to_string()),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect::<Vec<_>>()
    };
    let mut runs = Vec::new();
    for strategy in ["eager", "lazy"] {
        let o = run_limited("lazy-twin", &env(strategy), ls::limit());
        assert!(
            o.ok() && o.out.lines().any(|l| l == "END"),
            "the {strategy} twin of {scenario} failed ({}):\n{}",
            signame(&o),
            o.out
        );
        runs.push(o);
    }
    let lazy = runs.pop().unwrap();
    let eager = runs.pop().unwrap();
    assert_same_view(&eager, &lazy);
    Some(lazy)
}

#[test]
fn lazy_fork_child_reads_every_page() {
    let Some(o) = twins("lazy_fork_child_reads_every_page", 1, "fork") else {
        return;
    };
    assert!(o.out.contains("VIEW child-a"), "{}", o.out);
}

/// Without CAP_SYS_PTRACE the kernel refuses fork events (and the
/// userfaultfd system call: /dev/userfaultfd serves instead); forks through
/// the C library are still right, since they finish the restore first.
#[test]
fn lazy_fork_without_cap_sys_ptrace() {
    let extra = [("DROP_PTRACE", "1".to_string())];
    let Some(o) = twins_with("lazy_fork_without_cap_sys_ptrace", 11, "fork", &extra) else {
        return;
    };
    assert!(o.out.contains("VIEW child-a"), "{}", o.out);
}

#[test]
fn lazy_child_outlives_its_parent() {
    let Some(o) = twins("lazy_child_outlives_its_parent", 2, "outlive") else {
        return;
    };
    assert!(o.out.contains("NOTE parent gone"), "{}", o.out);
}

#[test]
fn lazy_raw_fork_child_is_served() {
    let Some(o) = twins("lazy_raw_fork_child_is_served", 3, "raw-fork") else {
        return;
    };
    assert_eq!(stat(&o.out, "forks"), 1);
}

#[test]
fn lazy_madvise_dontneed_reads_zeros() {
    let Some(o) = twins("lazy_madvise_dontneed_reads_zeros", 4, "dontneed") else {
        return;
    };
    assert!(stat(&o.out, "removes") >= 5, "{}", o.out);
    assert!(stat(&o.out, "refaults") >= 1, "{}", o.out);
    // MADV_REMOVE is refused on private memory, restored or not.
    assert!(
        o.out.contains(&format!("NOTE remove -{}", libc::EINVAL)),
        "{}",
        o.out
    );
}

#[test]
fn lazy_dontneed_races_the_prefetcher() {
    let Some(o) = twins("lazy_dontneed_races_the_prefetcher", 5, "race") else {
        return;
    };
    // The first discards came before the prefetch ended (the role checks
    // that it had not ended when they began); the last ones may come after
    // the userfaultfd is gone, and are not reported then.
    assert!(stat(&o.out, "removes") > 0, "{}", o.out);
}

#[test]
fn lazy_mremap_moves_grows_and_shrinks() {
    let Some(o) = twins("lazy_mremap_moves_grows_and_shrinks", 6, "mremap") else {
        return;
    };
    for what in [
        "move",
        "grow-move",
        "grow-in-place",
        "dontunmap",
        "shrink",
        "onto-waiting",
    ] {
        assert!(
            o.out.contains(&format!("NOTE {what} true")),
            "{what}:\n{}",
            o.out
        );
    }
}

#[test]
fn lazy_munmap_then_new_mapping_is_left_alone() {
    let Some(o) = twins("lazy_munmap_then_new_mapping_is_left_alone", 7, "munmap") else {
        return;
    };
    assert_eq!(stat(&o.out, "released"), 1);
}

#[test]
fn lazy_many_threads_fault_at_once() {
    let Some(o) = twins("lazy_many_threads_fault_at_once", 8, "threads") else {
        return;
    };
    assert!(stat(&o.out, "faults") > 0, "{}", o.out);
}

#[test]
fn lazy_handle_dropped_while_threads_fault() {
    let Some(o) = twins("lazy_handle_dropped_while_threads_fault", 9, "drop") else {
        return;
    };
    assert_eq!(stat(&o.out, "errors"), 0);
}

#[test]
fn lazy_damaged_chunk_is_sigsegv_never_wrong_bytes() {
    let test = "lazy_damaged_chunk_is_sigsegv_never_wrong_bytes";
    if lazy_skip(test) {
        return;
    }
    let base = ls::base(10);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.img");
    let key = ls::make_image(base, &path);
    // Damage the chunk holding page 1000 of region A (a text page).
    let bad = base + 1000 * PS as u64 + 24;
    let img = memimg::Image::open_with_key(&path, Some(&key)).unwrap();
    let ext = *img.extent_at(bad).unwrap().unwrap();
    assert_eq!(ext.kind, memimg::ExtentKind::Data);
    let loc = img.chunk_locs()[ext.chunk as usize];
    drop(img);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(loc.offset + u64::from(loc.stored_len) / 2) as usize] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    for drop_first in [false, true] {
        let mut env = vec![
            ("IMG", path.display().to_string()),
            ("KEY", ls::key_hex(&key)),
            ("BASE", format!("{base:x}")),
            ("DAMAGED", format!("{bad:x}")),
        ];
        if drop_first {
            env.push(("DROP", "1".into()));
        }
        let o = run_limited("lazy-damaged", &env, ls::limit());
        assert_eq!(
            ls::signal(&o),
            Some(libc::SIGSEGV),
            "expected SIGSEGV ({}):\n{}",
            signame(&o),
            o.out
        );
        assert!(o.out.contains("GOOD "), "{}", o.out);
        assert!(!o.out.contains("SURVIVED"), "{}", o.out);
        if drop_first {
            assert!(
                o.out.contains("FINISHED released=true error=")
                    && o.out.contains(&format!("{:#x}", ext.addr)),
                "{}",
                o.out
            );
        }
    }
}

#[test]
fn skips_are_logged_and_fail_where_everything_must_run() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips");
    let o = run_limited(
        "skip-probe",
        &[
            ("MEMIMG_SKIP_LOG", log.display().to_string()),
            // Empty counts as unset (the suite itself may run with it set).
            ("MEMIMG_REQUIRE_ALL", String::new()),
        ],
        ls::limit(),
    );
    assert!(o.ok(), "{}", o.out);
    assert!(o.out.contains("skipped: nothing here"), "{}", o.out);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "skip_probe\tnothing here\n"
    );
    let o = run_limited(
        "skip-probe",
        &[("MEMIMG_REQUIRE_ALL", "1".into())],
        ls::limit(),
    );
    assert!(
        !o.ok(),
        "a skip passed where everything must run:\n{}",
        o.out
    );
    assert!(o.out.contains("would skip: nothing here"), "{}", o.out);
}
