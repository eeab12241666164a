//! Fork snapshots: the image holds what the process held at the instant of
//! the fork, the process goes on as if nothing happened (its blocked calls
//! complete normally), no copy of it is left behind, and every reason not to
//! fork falls back to stopping the process for the whole read.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memimg::{ExtentKind, Image};
use memimg_capture::{capture_to_path, CaptureOptions, CaptureReport, Method};

use crate::child::*;
use crate::common::{self, spawn_role, spawn_role_piped, ChildProc};
use crate::live::{compare_with_snapshot, need_ptrace, snapshot, Seen};

/// `SigBlk` of thread `tid` of `pid`.
fn sig_blocked(pid: i32, tid: u64) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .unwrap()
        .trim()
        .to_string()
}

fn u64_at(img: &Image, addr: u64) -> u64 {
    let mut b = [0u8; 8];
    img.read_at(addr, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Asserts that no process is a child of `pid`, not even a zombie, and that
/// no copy of it waits in a ptrace-stop anywhere.
fn no_copy_left(pid: i32, report: Option<&CaptureReport>) {
    let kids = common::children_of(pid);
    assert!(kids.is_empty(), "children of {pid} left: {kids:?}");
    if let Some(Method::Fork { copy, .. }) = report.map(|r| &r.method) {
        assert!(
            memimg_capture::procfs::state(*copy).is_none(),
            "the copy {copy} is still there"
        );
        assert!(
            report.unwrap().warnings.is_empty(),
            "{:?}",
            report.unwrap().warnings
        );
    }
}

/// Pins thread `tid` of `pid` to a CPU other than the one it last ran on,
/// when there is another.
fn move_to_another_cpu(pid: i32, tid: i32) {
    let stat = std::fs::read(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let close = stat.iter().rposition(|&b| b == b')').unwrap();
    let rest = String::from_utf8_lossy(&stat[close + 2..]).into_owned();
    // Field 39, "processor", is the 37th after the comm.
    let cpu: usize = rest.split(' ').nth(36).unwrap().parse().unwrap();
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n < 2 {
        return;
    }
    // SAFETY: a cpu_set_t is plain data; CPU_SET writes a bit of it and
    // sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET((cpu + 1) % n, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set);
    }
}

/// Captures the `blocked` role whose main thread (the one the clone is
/// injected into) is blocked in `main`, and checks everything the module
/// docs promise.
fn blocked_calls_survive(main: &str) {
    let mut c = spawn_role_piped("blocked", &[("MAIN", main.to_string())]);
    let pid = c.proc.pid();
    let base = c.proc.var("shared");
    // The role runs on a thread of libtest's: the clone goes there.
    let main_tid = c.proc.var(&format!("tid_{main}"));
    // The sleeper is about half way into its first sleep.
    std::thread::sleep(Duration::from_millis(SLEEP_MS / 2));
    let mask = sig_blocked(pid, main_tid);
    let seen: Arc<Mutex<BTreeMap<u64, Seen>>> = Arc::default();
    let seen2 = Arc::clone(&seen);
    let opts = CaptureOptions {
        on_frozen: Some(Arc::new(move |pid| {
            assert_eq!(common::state(pid), b't', "not stopped while frozen");
            *seen2.lock().unwrap() = snapshot(pid);
            // The thread that runs the clone moves to another CPU: the
            // kernel then writes the new CPU number into its rseq area on
            // its way to the clone, and the image must not show it.
            move_to_another_cpu(pid, main_tid as i32);
        })),
        fork_thread: Some(main_tid as i32),
        ..CaptureOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("blocked.img");
    let report = capture_to_path(pid, &out, &opts).unwrap();
    assert!(
        matches!(report.method, Method::Fork { .. }),
        "{:?}",
        report.method
    );
    eprintln!(
        "{main}: stopped {:?}, {:?}, total {:?}",
        report.frozen, report.method, report.elapsed
    );

    // The blocked calls complete normally: the read returns what was sent,
    // the sleep ends at its first deadline with 0 (a sleep started again
    // from the start would last half as long again), the futex wait returns
    // 0 once woken.
    c.send("ping hello");
    assert_eq!(c.expect("PONG", 10), "PONG hello");
    let slept = c.expect("SLEPT", 10);
    let v: Vec<u64> = slept
        .split(' ')
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(v[0], 0, "{slept}");
    let slack = 700 + report.frozen.as_millis() as u64;
    assert!(
        v[1] >= SLEEP_MS && v[1] < SLEEP_MS + slack,
        "the sleep that was under way lasted {} ms: {slept}",
        v[1]
    );
    c.send("wake");
    assert_eq!(c.expect("FUTEX", 10), "FUTEX 0 0");
    c.expect("WOKE", 10);
    // The injected thread's signal mask is as it was.
    assert_eq!(sig_blocked(pid, main_tid), mask);
    // It keeps running.
    let a0 = u64::from_le_bytes(
        common::read_mem(pid, base + BLK_A as u64, 8)
            .unwrap()
            .try_into()
            .unwrap(),
    );
    // On a loaded machine the counting thread may wait for a core a while:
    // give it up to 5 s to move.
    let mut a1 = a0;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        a1 = u64::from_le_bytes(
            common::read_mem(pid, base + BLK_A as u64, 8)
                .unwrap()
                .try_into()
                .unwrap(),
        );
        if a1 > a0 {
            break;
        }
    }
    assert!(a1 > a0, "the counters stopped at {a0}");
    assert_ne!(common::state(pid), b't');
    no_copy_left(pid, Some(&report));

    // The image holds what /proc/PID/mem held at the instant of the fork,
    // every byte (the rseq areas the injection touched included).
    let img = Image::open(&out).unwrap();
    let compared = compare_with_snapshot(&img, &seen.lock().unwrap());
    assert!(compared > 1000, "only {compared} pages compared");
    // The counters are never torn.
    let lock = u64_at(&img, base + BLK_LOCK as u64) & 0xffff_ffff;
    let (a, b) = (
        u64_at(&img, base + BLK_A as u64),
        u64_at(&img, base + BLK_B as u64),
    );
    assert!(a > 0);
    if lock == 0 {
        assert_eq!(a, b, "counters torn with the lock free");
    } else {
        assert!(a == b || a == b + 1, "counters torn: a={a} b={b}");
    }
}

#[test]
fn fork_snapshot_of_a_thread_blocked_in_read() {
    need_ptrace!("fork_snapshot_of_a_thread_blocked_in_read");
    blocked_calls_survive("read");
}

#[test]
fn fork_snapshot_of_a_thread_blocked_in_sleep() {
    need_ptrace!("fork_snapshot_of_a_thread_blocked_in_sleep");
    blocked_calls_survive("sleep");
}

#[test]
fn fork_snapshot_of_a_thread_blocked_in_futex() {
    need_ptrace!("fork_snapshot_of_a_thread_blocked_in_futex");
    blocked_calls_survive("futex");
}

/// Captures a `quiet` child with `env`; the report and the child.
fn capture_quiet(
    env: &[(&str, String)],
    opts: &CaptureOptions,
    dir: &Path,
) -> (ChildProc, CaptureReport, Image) {
    let child = spawn_role("quiet", env);
    let out = dir.join("quiet.img");
    let report = capture_to_path(child.pid(), &out, opts).unwrap();
    let img = Image::open(&out).unwrap();
    (child, report, img)
}

fn why(report: &CaptureReport) -> &str {
    match &report.method {
        Method::Freeze { why } => why,
        m => panic!("the fork was used: {m:?}"),
    }
}

/// The process is alive and not stopped.
fn running(child: &ChildProc) {
    std::thread::sleep(Duration::from_millis(50));
    assert!(memimg_capture::procfs::alive(child.pid()), "it died");
    assert_ne!(common::state(child.pid()), b't', "left stopped");
}

#[test]
fn seccomp_refusing_clone_falls_back() {
    need_ptrace!("seccomp_refusing_clone_falls_back");
    let dir = tempfile::tempdir().unwrap();
    for (filter, fork) in [("kill", false), ("errno", false), ("other", true)] {
        let (child, report, _) = capture_quiet(
            &[("SECCOMP", filter.into())],
            &CaptureOptions::default(),
            dir.path(),
        );
        if fork {
            // A filter that denies something else lets the fork through.
            assert!(
                matches!(report.method, Method::Fork { .. }),
                "{filter}: {:?}",
                report.method
            );
        } else {
            let w = why(&report);
            assert!(
                w.contains("seccomp filter 0 answers clone"),
                "{filter}: {w}"
            );
        }
        // With the killing filter, a clone would have killed it.
        running(&child);
        no_copy_left(child.pid(), Some(&report));
    }
}

#[test]
fn process_limit_falls_back() {
    need_ptrace!("process_limit_falls_back");
    let dir = tempfile::tempdir().unwrap();
    let (child, report, _) = capture_quiet(
        &[("NPROC_UID", "65533".into())],
        &CaptureOptions::default(),
        dir.path(),
    );
    let w = why(&report);
    assert!(w.contains("clone failed in the process"), "{w}");
    assert!(w.contains("Resource temporarily unavailable"), "{w}");
    running(&child);
    no_copy_left(child.pid(), Some(&report));
}

#[test]
fn userfaultfd_with_fork_events_falls_back() {
    need_ptrace!("userfaultfd_with_fork_events_falls_back");
    if let Some(why) = memimg_capture::lazy_unavailable() {
        common::skip(
            common::test_name!("userfaultfd_with_fork_events_falls_back"),
            &why,
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, report, _) = capture_quiet(
        &[("UFFD_FORK", "1".into())],
        &CaptureOptions::default(),
        dir.path(),
    );
    assert!(why(&report).contains("userfaultfd"), "{}", why(&report));
    running(&child);
}

#[test]
fn no_fork_when_asked_or_stopped_by_job_control() {
    need_ptrace!("no_fork_when_asked_or_stopped_by_job_control");
    let dir = tempfile::tempdir().unwrap();
    let opts = CaptureOptions {
        fork: false,
        ..CaptureOptions::default()
    };
    let (child, report, _) = capture_quiet(&[], &opts, dir.path());
    assert!(why(&report).contains("turned off"), "{}", why(&report));
    running(&child);
    // SIGSTOP: every thread is in a group-stop, none can run the clone.
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(child.pid(), libc::SIGSTOP) };
    while common::state(child.pid()) != b'T' {
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = dir.path().join("stopped.img");
    let report = capture_to_path(child.pid(), &out, &CaptureOptions::default()).unwrap();
    assert!(why(&report).contains("job control"), "{}", why(&report));
    // Still stopped by job control, as before.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(common::state(child.pid()), b'T');
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(child.pid(), libc::SIGCONT) };
    running(&child);
}

#[test]
fn a_32_bit_process_falls_back() {
    need_ptrace!("a_32_bit_process_falls_back");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("s32.S");
    let exe = dir.path().join("s32");
    std::fs::write(
        &src,
        ".globl _start\n_start:\n1: mov $162, %eax\n lea ts, %ebx\n xor %ecx, %ecx\n int $0x80\n jmp 1b\n.data\nts: .long 1, 0\n",
    )
    .unwrap();
    let built = std::process::Command::new("cc")
        .args(["-m32", "-nostdlib", "-static", "-o"])
        .arg(&exe)
        .arg(&src)
        .output();
    if !built.as_ref().is_ok_and(|o| o.status.success()) {
        common::skip(
            common::test_name!("a_32_bit_process_falls_back"),
            "cannot build a 32-bit x86 program here (cc -m32)",
        );
        return;
    }
    let mut p = std::process::Command::new(&exe).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let pid = p.id() as i32;
    let out = dir.path().join("s32.img");
    let report = capture_to_path(pid, &out, &CaptureOptions::default());
    let alive = memimg_capture::procfs::alive(pid);
    let state = common::state(pid);
    let _ = p.kill();
    let _ = p.wait();
    let report = report.unwrap();
    assert!(why(&report).contains("32-bit"), "{}", why(&report));
    assert!(alive && state != b't', "state {}", state as char);
    // Its one writable page holds the timespec {1, 0}.
    let img = Image::open(&out).unwrap();
    assert!(img.regions().unwrap().iter().any(|r| r.info.prot.write()));
}

/// What a copy does not inherit as it is, and shared memory, are read from
/// the stopped process: the image holds their bytes.
#[test]
fn regions_a_child_does_not_inherit_are_read_while_stopped() {
    need_ptrace!("regions_a_child_does_not_inherit_are_read_while_stopped");
    let dir = tempfile::tempdir().unwrap();
    for limit in [256 << 20, 4096] {
        let opts = CaptureOptions {
            fork_hold_limit: limit,
            ..CaptureOptions::default()
        };
        let (child, report, img) = capture_quiet(&[("FORKFLAGS", "1".into())], &opts, dir.path());
        match &report.method {
            Method::Fork { held, .. } => {
                assert!(limit > 4096);
                // 12 pages of the three regions, and whatever the process
                // shares besides.
                assert!(*held >= 12 * 4096, "held {held}");
            }
            Method::Freeze { why } => {
                assert_eq!(limit, 4096, "{why}");
                assert!(why.contains("held in memory"), "{why}");
            }
        }
        for (k, name) in ["dontfork", "wipe", "shared"].into_iter().enumerate() {
            let at = child.var(name);
            for i in 0..4u64 {
                let e = img.extent_at(at + i * 4096).unwrap().unwrap();
                assert_eq!(e.kind, ExtentKind::Data, "{name} page {i}");
                let mut got = vec![0u8; 4096];
                img.read_at(at + i * 4096, &mut got).unwrap();
                assert!(
                    got == pattern_page(FORKFLAGS_SEED + k as u64, i as usize),
                    "{name} page {i} (limit {limit})"
                );
            }
        }
        running(&child);
        no_copy_left(child.pid(), Some(&report));
    }
}

/// The processes in a ptrace-stop whose parent is `pid`: a copy left
/// traced and stopped would be one.
fn traced_copies(pid: i32) -> Vec<(i32, u8)> {
    let mut v = common::children_of(pid);
    v.retain(|&(_, st)| st == b't');
    v
}

/// The wait status of zombie `pid` (`exit_code` in /proc/PID/stat).
fn exit_code(pid: i32) -> Option<i32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = String::from_utf8_lossy(&stat[close + 2..]).into_owned();
    // Field 52 is the 50th after the comm.
    rest.split_whitespace().nth(49)?.parse().ok()
}

/// The process is killed at several moments of a fork capture: while
/// stopped (the capture fails, no file) or while the copy is read (the copy
/// holds the snapshot: the image is complete). Either way no copy is left
/// traced, and no file is left half-written.
#[test]
fn target_killed_at_several_moments_of_a_fork_capture() {
    need_ptrace!("target_killed_at_several_moments_of_a_fork_capture");
    for moment in [0usize, 1, 3, 10, 40] {
        let child = spawn_role("patterns", &[]);
        let pid = child.pid();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.img");
        let calls = Arc::new(Mutex::new(0usize));
        let kill = move |_: i32| {
            // SAFETY: kill takes integers only.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        };
        let c = Arc::clone(&calls);
        let opts = CaptureOptions {
            on_frozen: (moment == 0).then(|| Arc::new(kill) as memimg_capture::FrozenHook),
            progress: Some(Arc::new(move |_, _| {
                let mut n = c.lock().unwrap();
                *n += 1;
                if *n == moment {
                    kill(0);
                }
            })),
            ..CaptureOptions::default()
        };
        let r = capture_to_path(pid, &out, &opts);
        match (&r, moment) {
            (Err(e), 0) => {
                assert!(
                    matches!(e, memimg_capture::CaptureError::ProcessExited { .. }),
                    "{e}"
                );
                assert!(!out.exists(), "a file was left");
            }
            (Ok(rep), m) if m > 0 => {
                let Method::Fork { copy, .. } = rep.method else {
                    panic!("{:?}", rep.method);
                };
                // Its parent died with it: the copy went to PID 1 (or a
                // subreaper), which reaps it, or not (this sandbox's).
                assert!(common::dead(copy), "moment {m}: the copy {copy} is alive");
                let report = memimg::verify_path(&out, None, &Default::default());
                assert!(report.is_intact(), "{report:?}");
                // The copy held the whole snapshot.
                let img = Image::open(&out).unwrap();
                let mut want = vec![0u8; RAND_LEN];
                common::fill_random(&mut want, RAND_SEED);
                let mut got = vec![0u8; RAND_LEN];
                img.read_at(child.var("rand"), &mut got).unwrap();
                assert!(got == want, "moment {m}: the random pattern differs");
            }
            (r, m) => panic!("moment {m}: {r:?}"),
        }
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(r.is_ok() || left.is_empty(), "files left: {left:?}");
        assert!(
            common::dead(pid),
            "moment {moment}: the target survived SIGKILL"
        );
    }
}

/// The capturing process is SIGKILLed at several moments of a fork capture:
/// while the target is stopped (before the fork), and at several points
/// after the fork (while the copy is read). The target is never left stopped
/// nor killed, no copy is left alive, and no image is left under the output
/// name.
///
/// Not covered: a SIGKILL during the injected `clone` itself (the fork's
/// length, a millisecond or so here): the kernel then lets the injected
/// thread go on with the call's registers, and the target may crash. In
/// three runs of an earlier version of this test that also killed 0, 5, 20,
/// 60 and 150 ms after the capturer started, one kill (at 5 ms) landed there
/// and the target died.
#[test]
fn capturer_killed_at_several_moments_of_a_fork_capture() {
    need_ptrace!("capturer_killed_at_several_moments_of_a_fork_capture");
    let mut zombies = 0;
    let moments: Vec<(&str, u64)> = vec![
        ("frozen", 0),
        ("read:1", 0),
        ("read:4", 0),
        ("read:16", 0),
        ("after", 0),
        ("after", 5),
        ("after", 20),
        ("after", 60),
    ];
    for (pause, delay) in moments {
        let target = spawn_role("patterns", &[]);
        let pid = target.pid();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.img");
        let mut cap = spawn_role_piped(
            "capturer",
            &[
                ("TARGET_PID", pid.to_string()),
                ("OUT", out.display().to_string()),
                ("PAUSE", pause.to_string()),
            ],
        );
        if pause == "after" {
            cap.expect("RESUMED", 30);
            std::thread::sleep(Duration::from_millis(delay));
        } else {
            cap.expect("PAUSED", 30);
        }
        let _ = cap.proc.child.kill();
        let _ = cap.proc.child.wait();
        // The kernel lets the target go when its tracer dies.
        let t = std::time::Instant::now();
        while common::state(pid) == b't' && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let what = format!("{pause:?} after {delay} ms");
        assert!(
            memimg_capture::procfs::alive(pid),
            "{what}: the target died"
        );
        assert_ne!(
            common::state(pid),
            b't',
            "{what}: the target was left stopped"
        );
        assert!(
            !out.exists(),
            "{what}: an image was left under the output name"
        );
        // A copy killed with the capturer (PTRACE_O_EXITKILL) may stay a
        // zombie child of the target (see fork.rs): dead, never running.
        // SIGKILL is delivered at once but a loaded machine may take a while
        // to run the dying copy to its end: wait up to 5 s for it.
        let t = std::time::Instant::now();
        while common::children_of(pid).iter().any(|&(_, st)| st != b'Z')
            && t.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (c, st) in common::children_of(pid) {
            assert_eq!(
                st, b'Z',
                "{what}: child {c} of the target is alive ({})",
                st as char
            );
            // Killed by the kernel with its tracer, before running anything
            // (a copy let go would run from the middle of the clone and
            // crash, or worse).
            assert_eq!(
                exit_code(c),
                Some(libc::SIGKILL),
                "{what}: how copy {c} died"
            );
            zombies += 1;
        }
        assert!(
            traced_copies(pid).is_empty(),
            "{what}: a traced copy is left"
        );
    }
    eprintln!("zombie copies left by killed capturers: {zombies}");
}

/// Pages of `pid` in `addr..addr + len` that it maps alone
/// (`PM_MMAP_EXCLUSIVE` in its pagemap).
fn exclusive_pages(pid: i32, addr: u64, len: usize) -> usize {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut e = vec![0u8; len / 4096 * 8];
    f.read_exact_at(&mut e, addr / 4096 * 8).unwrap();
    e.chunks_exact(8)
        .filter(|c| u64::from_le_bytes((*c).try_into().unwrap()) & (1 << 56) != 0)
        .count()
}

/// Reading the copy copies nothing: the pages stay shared between the
/// process and its copy until the copy is killed. (process_vm_readv pins the
/// pages it reads, and the kernel copies a page a fork shares before it
/// pins it: reading a copy that way would copy the whole process.)
#[test]
fn reading_the_copy_copies_nothing() {
    need_ptrace!("reading_the_copy_copies_nothing");
    let child = spawn_role("patterns", &[]);
    let pid = child.pid();
    let rand = child.var("rand");
    assert_eq!(exclusive_pages(pid, rand, RAND_LEN), RAND_LEN / 4096);
    let most = Arc::new(Mutex::new(0usize));
    let m = Arc::clone(&most);
    let dir = tempfile::tempdir().unwrap();
    let opts = CaptureOptions {
        // Called as the copy is read: the random pages are never written by
        // the process, so they stay shared unless the reading copies them.
        progress: Some(Arc::new(move |_, _| {
            let n = exclusive_pages(pid, rand, RAND_LEN);
            let mut m = m.lock().unwrap();
            *m = (*m).max(n);
        })),
        ..CaptureOptions::default()
    };
    let report = capture_to_path(pid, &dir.path().join("x.img"), &opts).unwrap();
    assert!(
        matches!(report.method, Method::Fork { .. }),
        "{:?}",
        report.method
    );
    let most = *most.lock().unwrap();
    assert_eq!(
        most, 0,
        "{most} pages of the process were copied while its copy was read"
    );
}
