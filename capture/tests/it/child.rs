//! The roles this binary plays when re-executed as a child process.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::common::{self, ROLE};

pub const RAND_LEN: usize = 8 << 20;
pub const ZERO_LEN: usize = 8 << 20;
pub const TEXT_LEN: usize = 2 << 20;
pub const FREED_LEN: usize = 4 << 20;
pub const CHURN_LEN: usize = 4 << 20;
pub const COUNTER_PAGES: usize = 64;
pub const RAND_SEED: u64 = 0x5eed_1234;
/// Offset of counter `a` and of counter `b` in the counters region: on
/// different pages, so a capture that is not frozen would see them torn.
pub const A_OFF: usize = 4096;
pub const B_OFF: usize = 40 * 4096;
pub const WORKERS: usize = 8;

/// Not a test: the entry point of a re-executed child. Without the role
/// variable it does nothing.
#[test]
fn role_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "patterns" => patterns(),
        "capture-as-nobody" => capture_as_nobody(),
        "threads" => threads(),
        "prot" => prot(),
        "blocked" => blocked(),
        "quiet" => quiet(),
        "capturer" => capturer(),
        other => {
            if crate::incremental::child_role(other) {
                return;
            }
            if crate::protect::child_role(other) {
                return;
            }
            if crate::mmap_pieces::child_role(other) {
                return;
            }
            #[cfg(feature = "remote")]
            if crate::remote::child_role(other) {
                return;
            }
            if !crate::restore::child_role(other) {
                panic!("unknown role {other}");
            }
        }
    }
}

/// A process with known memory and many threads writing all the time.
fn patterns() -> ! {
    let rand = common::map_anon(RAND_LEN);
    // SAFETY: rand is a fresh mapping of RAND_LEN bytes.
    common::fill_random(
        unsafe { std::slice::from_raw_parts_mut(rand, RAND_LEN) },
        RAND_SEED,
    );
    let zero = common::map_anon(ZERO_LEN);
    // Touch the first half with zeros; leave the second half untouched.
    // SAFETY: inside the mapping.
    unsafe { std::ptr::write_bytes(zero, 0, ZERO_LEN / 2) };
    let text = common::map_anon(TEXT_LEN);
    // SAFETY: inside the mapping.
    common::fill_text(unsafe { std::slice::from_raw_parts_mut(text, TEXT_LEN) });
    let freed = common::map_anon(FREED_LEN);
    // SAFETY: inside the mapping; then its pages are given back.
    unsafe {
        std::ptr::write_bytes(freed, 0xaa, FREED_LEN);
        assert_eq!(
            libc::madvise(freed.cast(), FREED_LEN, libc::MADV_DONTNEED),
            0
        );
    }
    let gone = common::map_anon(1 << 20);
    // SAFETY: inside the mapping, which is then unmapped and never used again.
    unsafe {
        std::ptr::write_bytes(gone, 0xbb, 1 << 20);
        assert_eq!(libc::munmap(gone.cast(), 1 << 20), 0);
    }
    let counters = common::map_anon(COUNTER_PAGES * 4096);
    let churn = common::map_anon(CHURN_LEN);
    let base = counters as usize;
    for t in 0..WORKERS {
        std::thread::spawn(move || {
            // A counter word at `off` in the counters mapping.
            let word = |off: usize| -> &'static AtomicU64 {
                assert!(off.is_multiple_of(8) && off + 8 <= COUNTER_PAGES * 4096);
                // SAFETY: the counters mapping is COUNTER_PAGES pages and is
                // never unmapped, so it lives for the whole process; the
                // assert keeps the word inside it and 8-byte aligned (the
                // mapping starts on a page); its words are only ever used
                // through atomics.
                unsafe { &*((base + off) as *const AtomicU64) }
            };
            // SAFETY: offset 0 of the counters mapping, as above; an
            // AtomicU32 needs 4-byte alignment, which a page start has.
            let lock = unsafe { &*(base as *const AtomicU32) };
            let a = word(A_OFF);
            let b = word(B_OFF);
            let mine = word((2 + t) * 4096);
            loop {
                while lock
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    std::thread::yield_now();
                }
                a.store(a.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                for _ in 0..50 {
                    mine.fetch_add(1, Ordering::Relaxed);
                }
                b.store(b.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                lock.store(0, Ordering::Release);
            }
        });
    }
    let churn_addr = churn as usize;
    for t in 0..2u64 {
        std::thread::spawn(move || {
            let words = CHURN_LEN / 8;
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
            loop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % words;
                // SAFETY: i < words, inside the churn mapping; the word is
                // written through an atomic because other threads write too.
                let w = unsafe { &*((churn_addr + i * 8) as *const AtomicU64) };
                w.store(x, Ordering::Relaxed);
            }
        });
    }
    // Threads are born and die all the time: the freeze must catch the
    // ones born while it runs, and cope with the ones that exit.
    std::thread::spawn(|| loop {
        let t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_micros(200)));
        let _ = t.join();
    });
    println!(
        "READY rand={:#x} zero={:#x} text={:#x} freed={:#x} gone={:#x} counters={:#x} churn={:#x}",
        rand as usize,
        zero as usize,
        text as usize,
        freed as usize,
        gone as usize,
        base,
        churn_addr
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Drops root and tries to capture `TARGET_PID`: the kernel must refuse.
fn capture_as_nobody() {
    let pid: i32 = std::env::var("TARGET_PID").unwrap().parse().unwrap();
    // SAFETY: plain system calls that change this process's credentials.
    unsafe {
        assert_eq!(libc::setgid(65534), 0);
        assert_eq!(libc::setuid(65534), 0);
    }
    let out = std::env::temp_dir().join(format!("memimg-nobody-{}.img", std::process::id()));
    match memimg_capture::capture_to_path(pid, &out, &memimg_capture::CaptureOptions::default()) {
        Ok(_) => println!("RESULT captured"),
        Err(e) => println!("RESULT {e}"),
    }
    assert!(!out.exists());
}

/// Threads the `threads` role starts besides the one running the role.
pub const SLEEPERS: usize = 3;

/// A quiet process: `SLEEPERS` threads asleep in [`sleeper`], the role's own
/// thread asleep in [`threads`]. Its READY line gives each of these threads'
/// id and the address of a local variable on its stack (`tidN`, `spN`; N =
/// SLEEPERS is the role's own thread).
fn threads() -> ! {
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..SLEEPERS {
        let tx = tx.clone();
        std::thread::spawn(move || sleeper(&tx));
    }
    let mut line = String::from("READY");
    for i in 0..SLEEPERS {
        let (tid, sp): (i32, usize) = rx.recv().unwrap();
        line += &format!(" tid{i}={tid} sp{i}={sp:#x}");
    }
    let local = 0u64;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let sp = std::hint::black_box(&local) as *const u64 as usize;
    println!("{line} tid{SLEEPERS}={tid} sp{SLEEPERS}={sp:#x}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Reports its thread id and a stack address, then sleeps for ever.
#[inline(never)]
fn sleeper(tx: &std::sync::mpsc::Sender<(i32, usize)>) -> ! {
    let local = 0u64;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    tx.send((tid, std::hint::black_box(&local) as *const u64 as usize))
        .unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Seed of the pages the `prot` role protects against reading.
pub const PROT_SEED: u64 = 0x0bad_cafe;
/// Seed of the pages of the file the `prot` role maps privately.
pub const FILE_SEED: u64 = 0xf11e;
/// What the `prot` role writes at the start of its private file mapping.
pub const FILE_WRITTEN: &[u8] = b"written through a private mapping";
/// Pages of the `prot` role's untouched PROT_NONE reservation.
pub const RESERVE_LEN: usize = 64 << 20;

/// Fills page `i` of a test pattern: random bytes from `seed ^ i`.
pub fn pattern_page(seed: u64, i: usize) -> Vec<u8> {
    let mut p = vec![0u8; 4096];
    common::fill_random(&mut p, seed ^ (i as u64 + 1));
    p
}

/// A quiet process with data its own code cannot read (the pages a capture
/// used to lose), and a private file mapping. Its READY line gives:
/// - `noaccess`: 4 pages of random data, the middle two then made PROT_NONE
///   (pages 0..4 hold `pattern_page(PROT_SEED, i)`);
/// - `wonly`: 2 pages mapped write-only and written
///   (`pattern_page(PROT_SEED, 10 + i)`);
/// - `file`: a private read-write mapping of a 3-page file holding
///   `pattern_page(FILE_SEED, i)`: page 0 then starts with `FILE_WRITTEN`
///   (a private copy), page 1 was read (the file's own page), page 2 never
///   touched;
/// - `reserve`: `RESERVE_LEN` bytes of PROT_NONE address space never touched.
fn prot() -> ! {
    const PS: usize = 4096;
    let noaccess = common::map_anon(4 * PS);
    for i in 0..4 {
        // SAFETY: page i of the fresh 4-page mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                pattern_page(PROT_SEED, i).as_ptr(),
                noaccess.add(i * PS),
                PS,
            )
        };
    }
    // SAFETY: pages 1 and 2 of our own mapping.
    let r = unsafe { libc::mprotect(noaccess.add(PS).cast(), 2 * PS, libc::PROT_NONE) };
    assert_eq!(r, 0);
    // SAFETY: a fresh anonymous mapping; no existing memory is touched.
    let wonly = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * PS,
            libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(wonly, libc::MAP_FAILED);
    let wonly: *mut u8 = wonly.cast();
    for i in 0..2 {
        // SAFETY: page i of the write-only mapping, written (never read).
        unsafe {
            std::ptr::copy_nonoverlapping(
                pattern_page(PROT_SEED, 10 + i).as_ptr(),
                wonly.add(i * PS),
                PS,
            )
        };
    }
    let path = std::env::temp_dir().join(format!("memimg-prot-{}", std::process::id()));
    let content: Vec<u8> = (0..3).flat_map(|i| pattern_page(FILE_SEED, i)).collect();
    std::fs::write(&path, &content).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    // SAFETY: a private mapping of our own 3-page file; writes stay private.
    let file = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            3 * PS,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            std::os::unix::io::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(file, libc::MAP_FAILED);
    drop(f);
    let file: *mut u8 = file.cast();
    // SAFETY: inside the 3-page mapping: write to page 0, read page 1.
    unsafe {
        std::ptr::copy_nonoverlapping(FILE_WRITTEN.as_ptr(), file, FILE_WRITTEN.len());
        std::hint::black_box(std::ptr::read_volatile(file.add(PS)));
    }
    // SAFETY: a fresh reservation; no existing memory is touched.
    let reserve = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RESERVE_LEN,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(reserve, libc::MAP_FAILED);
    // The mapping keeps the file; its name is no longer needed.
    std::fs::remove_file(&path).unwrap();
    println!(
        "READY noaccess={:#x} wonly={:#x} file={:#x} reserve={:#x}",
        noaccess as usize, wonly as usize, file as usize, reserve as usize
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Offsets in the `blocked` role's two-page `shared` mapping: the spin lock,
/// counter `a` (first page), counter `b` (second page), the futex word.
pub const BLK_LOCK: usize = 0;
pub const BLK_A: usize = 8;
pub const BLK_B: usize = 4096 + 8;
pub const BLK_FUTEX: usize = 128;
/// How long each sleep of the `blocked` role's sleeper lasts.
pub const SLEEP_MS: u64 = 2000;

/// A word of the `blocked` role's shared mapping at `base + off`.
fn word32(base: usize, off: usize) -> &'static AtomicU32 {
    assert!(off.is_multiple_of(4) && off + 4 <= 2 * 4096);
    // SAFETY: the mapping is two pages, never unmapped; the assert keeps the
    // word inside it and aligned; its words are only used through atomics.
    unsafe { &*((base + off) as *const AtomicU32) }
}

fn word64(base: usize, off: usize) -> &'static AtomicU64 {
    assert!(off.is_multiple_of(8) && off + 8 <= 2 * 4096);
    // SAFETY: as in word32.
    unsafe { &*((base + off) as *const AtomicU64) }
}

/// A process with threads blocked in system calls, one of them its main
/// thread (`MAIN` = `read`, `sleep` or `futex`, the others run in threads
/// of their own), and two threads spinning on counters `a` and `b` that a
/// lock keeps equal outside the critical section. The main thread blocks
/// SIGUSR2 (a mask the tests check is kept). Its lines:
/// - `read`: reads stdin; `ping X` answers `PONG X`, `wake` sets the futex
///   word and wakes its waiter;
/// - `sleep`: sleeps SLEEP_MS with clock_nanosleep, then prints
///   `SLEPT <return value> <milliseconds>`, again and again;
/// - `futex`: waits on the futex word; prints `FUTEX <ret> <errno>` for each
///   return, then `WOKE` once the word is set.
fn blocked() -> ! {
    let main = std::env::var("MAIN").unwrap();
    let base = common::map_anon(2 * 4096) as usize;
    for _ in 0..2 {
        std::thread::spawn(move || loop {
            let lock = word32(base, BLK_LOCK);
            while lock
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                std::hint::spin_loop();
            }
            let (a, b) = (word64(base, BLK_A), word64(base, BLK_B));
            a.store(a.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            b.store(b.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            lock.store(0, Ordering::Release);
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for a in ["read", "sleep", "futex"] {
        if a == main {
            continue;
        }
        let tx = tx.clone();
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send((a, unsafe { libc::gettid() })).unwrap();
            activity(a, base)
        });
    }
    let mut line = format!("READY shared={base:#x}");
    for _ in 0..2 {
        let (a, tid) = rx.recv().unwrap();
        line += &format!(" tid_{a}={tid}");
    }
    // SAFETY: gettid has no preconditions.
    line += &format!(" tid_{main}={}", unsafe { libc::gettid() });
    // SAFETY: a sigset_t is plain data; sigemptyset/sigaddset fill it, and
    // pthread_sigmask changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    println!("{line}");
    activity(&main, base)
}

fn activity(what: &str, base: usize) -> ! {
    let futex = word32(base, BLK_FUTEX);
    match what {
        "read" => loop {
            let mut buf = [0u8; 256];
            // SAFETY: buf is a writable buffer of 256 bytes.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else {
                let e = std::io::Error::last_os_error();
                println!("READ-ERROR {e}");
                continue;
            };
            if n == 0 {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
            for l in String::from_utf8_lossy(&buf[..n]).lines() {
                if let Some(x) = l.strip_prefix("ping ") {
                    println!("PONG {x}");
                } else if l == "wake" {
                    futex.store(1, Ordering::SeqCst);
                    // SAFETY: FUTEX_WAKE on a word of our own mapping.
                    unsafe {
                        libc::syscall(
                            libc::SYS_futex,
                            futex.as_ptr(),
                            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                            i32::MAX,
                        )
                    };
                }
            }
        },
        "sleep" => loop {
            let t = std::time::Instant::now();
            let ts = libc::timespec {
                tv_sec: (SLEEP_MS / 1000) as libc::time_t,
                tv_nsec: ((SLEEP_MS % 1000) * 1_000_000) as libc::c_long,
            };
            // SAFETY: ts is a valid timespec; no remainder is asked for.
            let r = unsafe {
                libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut())
            };
            println!("SLEPT {r} {}", t.elapsed().as_millis());
        },
        "futex" => {
            while futex.load(Ordering::SeqCst) == 0 {
                // SAFETY: FUTEX_WAIT on a word of our own mapping, no timeout.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        futex.as_ptr(),
                        libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                        0,
                        std::ptr::null::<libc::timespec>(),
                    )
                };
                let e = if r == 0 {
                    0
                } else {
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
                };
                println!("FUTEX {r} {e}");
            }
            println!("WOKE");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        other => panic!("unknown activity {other}"),
    }
}

/// A quiet process with a single thread, made harder to fork on request:
/// - `SECCOMP=errno|kill|other`: a seccomp filter answers clone with EPERM,
///   kills on clone, or denies only uname (so clone goes through);
/// - `NPROC_UID=U`: drops to user U with RLIMIT_NPROC at 1 (its one task),
///   so clone fails with EAGAIN;
/// - `UFFD_FORK=1`: opens a userfaultfd asking for fork events;
/// - `FORKFLAGS=1`: maps `dontfork` (MADV_DONTFORK), `wipe`
///   (MADV_WIPEONFORK) and `shared` (MAP_SHARED), 4 pages each, holding
///   `pattern_page(FORKFLAGS_SEED + k, i)` for region k = 0, 1, 2.
///
/// Its READY line gives the addresses of the FORKFLAGS regions.
fn quiet() -> ! {
    let mut line = String::from("READY ok=1");
    if std::env::var_os("FORKFLAGS").is_some() {
        for (k, name) in ["dontfork", "wipe", "shared"].into_iter().enumerate() {
            let flags = if name == "shared" {
                libc::MAP_SHARED | libc::MAP_ANONYMOUS
            } else {
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
            };
            // SAFETY: a fresh anonymous mapping; no existing memory is touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4 * 4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            let advice = match name {
                "dontfork" => Some(libc::MADV_DONTFORK),
                "wipe" => Some(libc::MADV_WIPEONFORK),
                _ => None,
            };
            if let Some(a) = advice {
                // SAFETY: advice on our own fresh mapping.
                assert_eq!(unsafe { libc::madvise(p, 4 * 4096, a) }, 0, "{name}");
            }
            for i in 0..4 {
                let page = pattern_page(FORKFLAGS_SEED + k as u64, i);
                // SAFETY: page i of the 4-page mapping.
                unsafe {
                    std::ptr::copy_nonoverlapping(page.as_ptr(), p.cast::<u8>().add(i * 4096), 4096)
                };
            }
            line += &format!(" {name}={:#x}", p as usize);
        }
    }
    if std::env::var_os("UFFD_FORK").is_some() {
        // SAFETY: the userfaultfd system call takes only flags.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
        // struct uffdio_api { api, features, ioctls }: UFFD_API, EVENT_FORK.
        let mut api = [0xaau64, 1 << 1, 0];
        // SAFETY: UFFDIO_API reads and writes the 24-byte struct in api.
        let r = unsafe { libc::ioctl(fd as i32, 0xC018_AA3F, api.as_mut_ptr()) };
        assert_eq!(r, 0, "UFFDIO_API: {}", std::io::Error::last_os_error());
    }
    if let Ok(which) = std::env::var("SECCOMP") {
        install_seccomp(&which);
    }
    if let Ok(uid) = std::env::var("NPROC_UID") {
        let uid: u32 = uid.parse().unwrap();
        let lim = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        // SAFETY: plain system calls on this process's limits and ids.
        unsafe {
            assert_eq!(libc::setrlimit(libc::RLIMIT_NPROC, &lim), 0);
            assert_eq!(libc::setresgid(uid, uid, uid), 0);
            assert_eq!(libc::setresuid(uid, uid, uid), 0);
        }
    }
    println!("{line}");
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Seeds of the `quiet` role's FORKFLAGS regions.
pub const FORKFLAGS_SEED: u64 = 0xf0f0;

/// Installs a seccomp filter on every thread (see `quiet`).
fn install_seccomp(which: &str) {
    const ALLOW: u32 = 0x7fff_0000;
    let (nr, action) = match which {
        "errno" => (56, 0x0005_0000 | libc::EPERM as u32),
        "kill" => (56, 0x8000_0000),
        "other" => (63, 0x0005_0000 | libc::EPERM as u32),
        w => panic!("SECCOMP={w}"),
    };
    let insn = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut prog = [
        insn(0x20, 0, 0, 0),  // ld [nr]
        insn(0x15, 0, 1, nr), // jeq nr, +0, +1
        insn(0x06, 0, 0, action),
        insn(0x06, 0, 0, ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl and seccomp take integers and a pointer to fprog, which
    // points to prog; both live across the calls.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let r = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog,
        );
        assert_eq!(r, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}

/// Captures `TARGET_PID` into `OUT`, with pause points for kill tests:
/// - `PAUSE=frozen`: prints `PAUSED` and sleeps while every thread of the
///   target is stopped, before the fork;
/// - `PAUSE=read:N`: does so at the N-th progress report, after the fork,
///   while the copy is read;
/// - `PAUSE=after`: prints `RESUMED` at the first progress report (the
///   target runs again) and goes on.
///
/// Prints `DONE` when the capture returned.
fn capturer() {
    let pid: i32 = std::env::var("TARGET_PID").unwrap().parse().unwrap();
    let out = std::path::PathBuf::from(std::env::var("OUT").unwrap());
    let pause = std::env::var("PAUSE").unwrap_or_default();
    let stall = || {
        println!("PAUSED");
        std::thread::sleep(std::time::Duration::from_secs(30));
    };
    let mut opts = memimg_capture::CaptureOptions::default();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    if pause == "frozen" {
        opts.on_frozen = Some(std::sync::Arc::new(move |_| stall()));
    } else if let Some(n) = pause.strip_prefix("read:") {
        let n: usize = n.parse().unwrap();
        opts.progress = Some(std::sync::Arc::new(move |_, _| {
            if calls.fetch_add(1, Ordering::Relaxed) + 1 == n {
                stall();
            }
        }));
    } else if pause == "after" {
        opts.progress = Some(std::sync::Arc::new(move |_, _| {
            if calls.fetch_add(1, Ordering::Relaxed) == 0 {
                println!("RESUMED");
            }
        }));
    }
    println!("READY started=1");
    let r = memimg_capture::capture_to_path(pid, &out, &opts);
    println!(
        "DONE {}",
        r.map_or_else(|e| e.to_string(), |r| r.method.name().to_string())
    );
}
