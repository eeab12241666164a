//! Freezing every thread of a process with ptrace, and always resuming it.
//!
//! Each task in `/proc/PID/task` is seized (`PTRACE_SEIZE`, which does not
//! stop it by itself) and then stopped with `PTRACE_INTERRUPT`. The task list
//! is read again until no new task appears, so threads born while the freeze
//! was under way are frozen too: a stopped thread cannot create new ones, so
//! the loop ends once every known thread is stopped.
//!
//! [`Frozen`] detaches from every task when dropped, on success, on error
//! and on unwinding. [`SignalGuard`] turns SIGINT and SIGTERM into a flag for
//! the duration, so Ctrl-C ends the capture through the same path.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::CaptureError;
use crate::procfs;

/// One seized task.
#[derive(Debug)]
struct Task {
    tid: i32,
    /// Waited for: it is in a ptrace-stop.
    stopped: bool,
    /// What kind of stop, once stopped.
    stop: Stop,
    /// A signal whose delivery the stop intercepted; re-injected on detach.
    signal: i32,
}

/// The ptrace-stop a task is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The stop `PTRACE_INTERRUPT` asked for: the thread can be resumed
    /// (and made to run a system call) with nothing pending.
    Interrupt,
    /// A group-stop (SIGSTOP, SIGTSTP …): the process was stopped by job
    /// control before or during the freeze.
    Group,
    /// A signal-delivery-stop: this signal is re-injected on detach.
    Signal(i32),
    /// Another ptrace event.
    Other,
}

/// A process whose threads are all stopped. Dropping it resumes them.
#[derive(Debug)]
pub struct Frozen {
    pid: i32,
    tasks: Vec<Task>,
    since: Instant,
}

pub(crate) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A ptrace request that takes no pointer: `Err(errno)` on failure.
pub(crate) fn ptrace(req: libc::c_uint, tid: i32, data: usize) -> Result<(), i32> {
    // SAFETY: the requests used with this function (SEIZE, INTERRUPT,
    // DETACH, CONT, SYSCALL, SETOPTIONS) take no pointers from us: addr is
    // null and data is an integer (options or a signal number).
    let r = unsafe { libc::ptrace(req, tid, std::ptr::null_mut::<libc::c_void>(), data) };
    if r == -1 {
        Err(errno())
    } else {
        Ok(())
    }
}

impl Frozen {
    /// Stops every thread of `pid`.
    ///
    /// # Errors
    /// `NoSuchProcess`, `PermissionDenied`, `ProcessExited` when the process
    /// dies during the freeze, `Interrupted` on SIGINT/SIGTERM (with a
    /// [`SignalGuard`] alive). Threads already stopped are resumed.
    pub fn freeze(pid: i32) -> Result<Frozen, CaptureError> {
        let mut f = Frozen {
            pid,
            tasks: Vec::new(),
            since: Instant::now(),
        };
        loop {
            let tids = match procfs::tasks(pid) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(if f.tasks.is_empty() {
                        CaptureError::NoSuchProcess { pid }
                    } else {
                        CaptureError::ProcessExited { pid }
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(CaptureError::permission(pid))
                }
                Err(e) => return Err(CaptureError::io(format!("listing /proc/{pid}/task"), e)),
            };
            let new: Vec<i32> = tids
                .into_iter()
                .filter(|t| !f.tasks.iter().any(|k| k.tid == *t))
                .collect();
            if new.is_empty() {
                break;
            }
            let first = f.tasks.len();
            for tid in new {
                match ptrace(libc::PTRACE_SEIZE, tid, 0) {
                    Ok(()) => {}
                    // The thread exited between the listing and now.
                    Err(libc::ESRCH) => continue,
                    Err(libc::EPERM) => {
                        return Err(match procfs::tracer(pid) {
                            Some(t) => CaptureError::PermissionDenied {
                                pid,
                                hint: format!(
                                    "it is already being traced by pid {t} (a debugger?); detach that first"
                                ),
                            },
                            None => CaptureError::permission(pid),
                        })
                    }
                    Err(e) => {
                        return Err(CaptureError::io(
                            format!("PTRACE_SEIZE of thread {tid}"),
                            io::Error::from_raw_os_error(e),
                        ))
                    }
                }
                f.tasks.push(Task {
                    tid,
                    stopped: false,
                    stop: Stop::Other,
                    signal: 0,
                });
                // ESRCH here means it died; waitpid below will say so.
                let _ = ptrace(libc::PTRACE_INTERRUPT, tid, 0);
            }
            let mut i = first;
            while i < f.tasks.len() {
                match wait_stop(f.tasks[i].tid)? {
                    Some(stop) => {
                        f.tasks[i].stopped = true;
                        f.tasks[i].stop = stop;
                        if let Stop::Signal(sig) = stop {
                            f.tasks[i].signal = sig;
                        }
                        i += 1;
                    }
                    None => {
                        f.tasks.remove(i);
                    }
                }
            }
            if f.tasks.is_empty() || !procfs::alive(pid) {
                return Err(CaptureError::ProcessExited { pid });
            }
        }
        f.since = Instant::now();
        Ok(f)
    }

    /// The number of threads stopped.
    pub fn threads(&self) -> usize {
        self.tasks.len()
    }

    /// The ids of the threads stopped (each in a ptrace-stop of ours).
    pub fn tids(&self) -> Vec<i32> {
        self.tasks
            .iter()
            .filter(|t| t.stopped)
            .map(|t| t.tid)
            .collect()
    }

    /// A thread in a plain interrupt stop, which can be made to run a
    /// system call: `want` if it can, else none; without `want`, the main
    /// thread when it can, else the first one.
    pub(crate) fn injectable(&self, want: Option<i32>) -> Option<i32> {
        let ok = |t: &&Task| t.stopped && t.stop == Stop::Interrupt;
        if let Some(w) = want {
            return self
                .tasks
                .iter()
                .filter(ok)
                .find(|t| t.tid == w)
                .map(|t| t.tid);
        }
        let main = self.tasks.iter().filter(ok).find(|t| t.tid == self.pid);
        main.or_else(|| self.tasks.iter().find(ok)).map(|t| t.tid)
    }

    /// Resumes every thread and returns how long they were all stopped.
    pub fn resume(mut self) -> Duration {
        self.detach_all();
        self.since.elapsed()
    }

    fn detach_all(&mut self) {
        let mut dying = Vec::new();
        for t in self.tasks.drain(..) {
            if !t.stopped {
                // Seized and interrupted but not yet seen stopped: PTRACE_DETACH
                // needs a ptrace-stop, so wait for it first (it comes promptly).
                if wait_stop_uninterruptible(t.tid).is_none() {
                    continue;
                }
            }
            let sig = usize::try_from(t.signal).unwrap_or(0);
            if ptrace(libc::PTRACE_DETACH, t.tid, sig).is_err() {
                // Only SIGKILL takes a tracee out of its stop: it is dying.
                dying.push(t.tid);
            }
        }
        reap(&mut dying);
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Reaps traced threads that were killed: until the tracer waits for them
/// they stay zombies, and the process's parent can never reap the process.
/// The group leader is reported only after the other threads, so poll them
/// all, for at most about a second.
fn reap(tids: &mut Vec<i32>) {
    for _ in 0..1000 {
        tids.retain(|&tid| {
            let mut status = 0;
            // SAFETY: status is a valid, writable c_int.
            let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
            // Keep waiting while it is still exiting (0), or stopped again.
            r == 0 || (r == tid && libc::WIFSTOPPED(status))
        });
        if tids.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits for `tid` to enter a ptrace-stop. `Some(stop)` when it stopped,
/// `None` when the thread exited.
pub(crate) fn wait_stop(tid: i32) -> Result<Option<Stop>, CaptureError> {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid, writable c_int.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == -1 {
            match errno() {
                libc::EINTR => {
                    if interrupted() {
                        return Err(CaptureError::Interrupted);
                    }
                    continue;
                }
                libc::ECHILD => return Ok(None),
                e => {
                    return Err(CaptureError::io(
                        format!("waiting for thread {tid} to stop"),
                        io::Error::from_raw_os_error(e),
                    ))
                }
            }
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Ok(None);
        }
        if libc::WIFSTOPPED(status) {
            return Ok(Some(stop_kind(status)));
        }
    }
}

/// What a stopped `waitpid` status says.
pub(crate) fn stop_kind(status: i32) -> Stop {
    let event = status >> 16;
    let sig = libc::WSTOPSIG(status);
    match event {
        // PTRACE_EVENT_STOP: our interrupt (SIGTRAP) or a group-stop (the
        // stopping signal); nothing to re-inject either way.
        libc::PTRACE_EVENT_STOP if sig == libc::SIGTRAP => Stop::Interrupt,
        libc::PTRACE_EVENT_STOP => Stop::Group,
        0 if sig & 0x80 == 0 => Stop::Signal(sig),
        _ => Stop::Other,
    }
}

fn wait_stop_uninterruptible(tid: i32) -> Option<Stop> {
    loop {
        match wait_stop(tid) {
            Ok(s) => return s,
            Err(CaptureError::Interrupted) => continue,
            Err(_) => return None,
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once SIGINT or SIGTERM arrived while a [`SignalGuard`] was alive.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

struct Saved {
    users: usize,
    old: Vec<(libc::c_int, libc::sigaction)>,
}

static SAVED: Mutex<Saved> = Mutex::new(Saved {
    users: 0,
    old: Vec::new(),
});

/// While alive, SIGINT and SIGTERM set a flag instead of killing the
/// process, so a capture can resume its target and clean up before it
/// returns [`CaptureError::Interrupted`]. The previous handlers come back when
/// the last guard drops.
#[derive(Debug)]
pub struct SignalGuard(());

impl SignalGuard {
    /// Installs the handlers (once, however many guards are alive).
    pub fn install() -> SignalGuard {
        let mut s = SAVED.lock().unwrap_or_else(|p| p.into_inner());
        if s.users == 0 {
            INTERRUPTED.store(false, Ordering::Relaxed);
            for sig in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: sigaction is plain data (integers, a mask and a
                // handler address); all zeros is a valid value (SIG_DFL).
                let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
                new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                // No SA_RESTART: a blocking waitpid returns EINTR and sees the flag.
                new.sa_flags = 0;
                // SAFETY: sigaction is plain data (integers, a mask and a
                // handler address); all zeros is a valid value.
                let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
                // SAFETY: both pointers are valid sigaction structs; the
                // handler only stores to an atomic, which is signal-safe.
                if unsafe { libc::sigaction(sig, &new, &mut old) } == 0 {
                    s.old.push((sig, old));
                }
            }
        }
        s.users += 1;
        SignalGuard(())
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        let mut s = SAVED.lock().unwrap_or_else(|p| p.into_inner());
        s.users -= 1;
        if s.users == 0 {
            for (sig, old) in s.old.drain(..) {
                // SAFETY: old is the sigaction the kernel gave back earlier.
                unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
            }
        }
    }
}
