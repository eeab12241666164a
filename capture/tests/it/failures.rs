//! Capture failures: each gives a clear error and leaves no file behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use memimg_capture::{capture_to_path, CaptureError, CaptureOptions};

use crate::common::{self, spawn_role};
use crate::live::need_ptrace;

fn no_files_left(dir: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn nonexistent_pid() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.img");
    let e = capture_to_path(0x3fff_fff0, &out, &CaptureOptions::default()).unwrap_err();
    assert!(
        matches!(e, CaptureError::NoSuchProcess { pid: 0x3fff_fff0 }),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!("no process with pid {}", 0x3fff_fff0)
    );
    no_files_left(dir.path());
}

/// Without a fork snapshot the process is read while stopped: killing it
/// then fails the capture. (With one, see `fork::target_killed_*`.)
#[test]
fn process_exits_during_capture() {
    need_ptrace!("process_exits_during_capture");
    let child = spawn_role("patterns", &[]);
    let pid = child.pid();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.img");
    let killed = Arc::new(AtomicBool::new(false));
    let k = Arc::clone(&killed);
    let opts = CaptureOptions {
        progress: Some(Arc::new(move |_, _| {
            if !k.swap(true, Ordering::Relaxed) {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // SIGKILL takes effect asynchronously: wait until the
                // process is dead, so that the capture's next read fails
                // however fast the rest of the capture would have been.
                wait_dead(pid);
            }
        })),
        fork: false,
        ..CaptureOptions::default()
    };
    let e = capture_to_path(pid, &out, &opts).unwrap_err();
    assert!(matches!(e, CaptureError::ProcessExited { .. }), "{e}");
    assert!(e.to_string().contains("exited during the capture"), "{e}");
    no_files_left(dir.path());
}

/// Waits (up to 5 s) until `pid` is a zombie or gone.
fn wait_dead(pid: i32) {
    for _ in 0..500 {
        if crate::common::dead(pid) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn interrupted_capture_resumes_the_process() {
    need_ptrace!("interrupted_capture_resumes_the_process");
    let child = spawn_role("patterns", &[]);
    let pid = child.pid();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.img");
    let sent = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&sent);
    let opts = CaptureOptions {
        progress: Some(Arc::new(move |_, _| {
            if !s.swap(true, Ordering::Relaxed) {
                // SAFETY: raising a signal has no memory preconditions; the
                // capture's handler is installed while it runs.
                unsafe { libc::raise(libc::SIGINT) };
            }
        })),
        ..CaptureOptions::default()
    };
    let e = capture_to_path(pid, &out, &opts).unwrap_err();
    assert!(matches!(e, CaptureError::Interrupted), "{e}");
    no_files_left(dir.path());
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_ne!(common::state(pid), b't', "the child was left stopped");
    assert!(memimg_capture::procfs::alive(pid));
}

#[test]
fn permission_denied_says_what_to_do() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip(
            common::test_name!("permission_denied_says_what_to_do"),
            "needs root to drop to an unprivileged user",
        );
        return;
    }
    let target = spawn_role("patterns", &[]);
    let (_, out) = common::run_role(
        "capture-as-nobody",
        &[("TARGET_PID", target.pid().to_string())],
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no result: {out}"));
    assert!(
        line.starts_with(&format!("permission denied to trace pid {}", target.pid())),
        "{line}"
    );
    assert!(
        line.contains("CAP_SYS_PTRACE") && line.contains("ptrace_scope"),
        "{line}"
    );
    assert_ne!(common::state(target.pid()), b't');
}

#[test]
fn already_traced_names_the_tracer() {
    need_ptrace!("already_traced_names_the_tracer");
    let child = spawn_role("patterns", &[]);
    let pid = child.pid();
    // Seize it from this process (without stopping it), as a debugger would.
    // SAFETY: PTRACE_SEIZE takes no pointers.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            0usize,
        )
    };
    assert_eq!(r, 0);
    let dir = tempfile::tempdir().unwrap();
    let e =
        capture_to_path(pid, &dir.path().join("x.img"), &CaptureOptions::default()).unwrap_err();
    assert!(matches!(e, CaptureError::PermissionDenied { .. }), "{e}");
    // SAFETY: gettid has no preconditions; TracerPid names the tracing thread.
    let me = unsafe { libc::gettid() };
    assert!(
        e.to_string()
            .contains(&format!("already being traced by pid {me}")),
        "{e}"
    );
    no_files_left(dir.path());
}
