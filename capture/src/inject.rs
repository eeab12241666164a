//! Running one system call in a stopped thread of another process, and
//! putting the thread back exactly as it was (x86-64 only).
//!
//! The thread must be in a ptrace-stop of ours. [`syscall`]:
//!
//! 1. saves its registers and signal mask, and blocks every signal, so that
//!    no handler runs (and writes a signal frame) while it works for us;
//! 2. points it at a `syscall` instruction the process already has (in its
//!    vDSO or libc: no byte of the process is written) with the call's number
//!    and arguments, and `orig_rax` = -1 so the kernel does not restart
//!    whatever it was interrupted in on the way;
//! 3. resumes it with `PTRACE_SYSCALL` until the call's exit stop, answering
//!    the ptrace events on the way (a clone's child);
//! 4. sets its registers back, and its signal mask.
//!
//! **Interrupted system calls.** A thread stopped inside a blocking call
//! (sleeping, reading a pipe, waiting on a futex) is stopped on its way out of
//! the kernel with `rax` = `-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND`
//! or `-ERESTART_RESTARTBLOCK` and `orig_rax` = the call's number. Resumed
//! from that stop with no signal to deliver, the kernel would restart the call
//! (`rax` = `orig_rax`, `rip` -= 2; or `restart_syscall` for the restart-block
//! case). The registers are set back at the exit stop of *our* call, where
//! the kernel no longer does that, so [`resumable`] does it: the thread then
//! executes its `syscall` instruction again, which is what the kernel would
//! have done. `restart_syscall` resumes a sleep at its original deadline: the
//! restart block lives in the kernel's task, which our call does not touch.
//!
//! `PTRACE_GETSIGMASK` gives the mask a call such as `ppoll` or
//! `epoll_pwait` replaced temporarily (the saved one), and `PTRACE_SETSIGMASK`
//! drops that replacement: the restarted call installs it again.

use std::io;

use crate::freeze;

/// `clone`.
pub(crate) const SYS_CLONE: u64 = 56;
/// `wait4`.
pub(crate) const SYS_WAIT4: u64 = 61;
/// `restart_syscall`.
const SYS_RESTART_SYSCALL: u64 = 219;
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
/// Syscall stops report `SIGTRAP | 0x80`.
pub(crate) const PTRACE_O_TRACESYSGOOD: usize = 1;
/// Auto-attach the child of a `clone` whose exit signal is not `SIGCHLD`.
pub(crate) const PTRACE_O_TRACECLONE: usize = 8;
/// Kill the tracee when the tracer exits. Only ever set on a snapshot child.
pub(crate) const PTRACE_O_EXITKILL: usize = 0x10_0000;
/// The event of a `PTRACE_O_TRACECLONE` stop.
pub(crate) const PTRACE_EVENT_CLONE: i32 = 3;
/// `__USER_CS`: the code segment of 64-bit user code (`0x23` is 32-bit).
const USER64_CS: u64 = 0x33;

/// A thread's general registers.
pub(crate) type Regs = libc::user_regs_struct;

/// Why a system call could not be run in a thread.
#[derive(Debug)]
pub(crate) enum InjectError {
    /// The thread (or its whole process) exited.
    Gone,
    /// A ptrace request failed.
    Ptrace(&'static str, io::Error),
    /// The thread stopped for something other than our call, for example a
    /// signal it could not block (the call was then not run, or its result is
    /// unknown).
    Unexpected(String),
}

impl std::fmt::Display for InjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InjectError::Gone => f.write_str("the thread exited"),
            InjectError::Ptrace(what, e) => write!(f, "{what}: {e}"),
            InjectError::Unexpected(s) => f.write_str(s),
        }
    }
}

fn ptrace_err(what: &'static str, e: i32) -> InjectError {
    if e == libc::ESRCH {
        InjectError::Gone
    } else {
        InjectError::Ptrace(what, io::Error::from_raw_os_error(e))
    }
}

/// The registers of stopped thread `tid`.
pub(crate) fn get_regs(tid: i32) -> Result<Regs, InjectError> {
    // SAFETY: user_regs_struct is plain integers; all zeros is valid.
    let mut r: Regs = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETREGS writes one user_regs_struct at data, which is
    // r, borrowed mutably for the call.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGS,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::addr_of_mut!(r),
        )
    };
    if rc == -1 {
        return Err(ptrace_err("PTRACE_GETREGS", freeze::errno()));
    }
    Ok(r)
}

/// Sets the registers of stopped thread `tid`.
pub(crate) fn set_regs(tid: i32, r: &Regs) -> Result<(), InjectError> {
    // SAFETY: PTRACE_SETREGS reads one user_regs_struct at data, which is r.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGS,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::from_ref(r),
        )
    };
    if rc == -1 {
        return Err(ptrace_err("PTRACE_SETREGS", freeze::errno()));
    }
    Ok(())
}

fn get_sigmask(tid: i32) -> Result<u64, InjectError> {
    let mut mask = 0u64;
    // SAFETY: PTRACE_GETSIGMASK writes addr = 8 bytes (the kernel's sigset
    // on x86-64) at data, which is mask.
    let rc = unsafe {
        libc::ptrace(
            PTRACE_GETSIGMASK,
            tid,
            std::mem::size_of::<u64>(),
            std::ptr::addr_of_mut!(mask),
        )
    };
    if rc == -1 {
        return Err(ptrace_err("PTRACE_GETSIGMASK", freeze::errno()));
    }
    Ok(mask)
}

fn set_sigmask(tid: i32, mask: u64) -> Result<(), InjectError> {
    // SAFETY: PTRACE_SETSIGMASK reads addr = 8 bytes at data, which is mask.
    let rc = unsafe {
        libc::ptrace(
            PTRACE_SETSIGMASK,
            tid,
            std::mem::size_of::<u64>(),
            std::ptr::from_ref(&mask),
        )
    };
    if rc == -1 {
        return Err(ptrace_err("PTRACE_SETSIGMASK", freeze::errno()));
    }
    Ok(())
}

/// Sets the ptrace options of stopped tracee `tid`.
pub(crate) fn set_options(tid: i32, options: usize) -> Result<(), InjectError> {
    freeze::ptrace(libc::PTRACE_SETOPTIONS, tid, options)
        .map_err(|e| ptrace_err("PTRACE_SETOPTIONS", e))
}

/// True when the thread runs 64-bit code (a 32-bit process on x86-64 has
/// another code segment, and its system calls other numbers).
pub(crate) fn is_64bit(r: &Regs) -> bool {
    r.cs == USER64_CS
}

/// The registers a thread stopped with `saved` resumes with when it is let
/// go from a stop where the kernel no longer restarts system calls: an
/// interrupted call set to run again, as the kernel itself would have done.
/// See the module docs.
pub(crate) fn resumable(saved: &Regs) -> Regs {
    let mut r = *saved;
    // orig_rax is -1 outside a system call.
    if r.orig_rax.cast_signed() >= 0 {
        match r.rax.cast_signed() {
            x if x == -ERESTARTSYS || x == -ERESTARTNOINTR || x == -ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip = r.rip.wrapping_sub(2);
            }
            x if x == -ERESTART_RESTARTBLOCK => {
                r.rax = SYS_RESTART_SYSCALL;
                r.rip = r.rip.wrapping_sub(2);
            }
            _ => {}
        }
    }
    r
}

/// What [`syscall`] did.
#[derive(Debug)]
pub(crate) struct Done {
    /// The call's return value (a negative errno on failure).
    pub ret: i64,
}

/// Runs system call `nr(args)` in thread `tid`, which is in a ptrace-stop of
/// ours, at the `syscall` instruction at address `insn`, then puts the
/// thread back as it was (see the module docs). `options` are ptrace options
/// for the duration of the call, besides `PTRACE_O_TRACESYSGOOD` (the
/// thread's options are 0 afterwards, as `PTRACE_SEIZE` left them); each
/// ptrace event stop on the way calls `on_event(event, message)` while the
/// thread waits in it. An error of `on_event` is returned once the call has
/// ended and the thread is put back.
///
/// On success and on every error but [`InjectError::Gone`], the thread is
/// left in a ptrace-stop with its registers and signal mask restored.
///
/// # Errors
/// [`InjectError`].
pub(crate) fn syscall(
    tid: i32,
    insn: u64,
    nr: u64,
    args: [u64; 6],
    options: usize,
    on_event: &mut dyn FnMut(i32, u64) -> Result<(), InjectError>,
) -> Result<Done, InjectError> {
    let saved = get_regs(tid)?;
    let mask = get_sigmask(tid)?;
    set_sigmask(tid, !0)?;
    let put_back = || -> Result<(), InjectError> {
        set_regs(tid, &resumable(&saved))?;
        set_sigmask(tid, mask)?;
        set_options(tid, 0)
    };
    let mut run = || -> Result<Done, InjectError> {
        set_options(tid, PTRACE_O_TRACESYSGOOD | options)?;
        let mut r = saved;
        r.rip = insn;
        r.rax = nr;
        r.orig_rax = u64::MAX;
        [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9] = args;
        set_regs(tid, &r)?;
        let mut entered = false;
        let mut event_err = None;
        loop {
            freeze::ptrace(libc::PTRACE_SYSCALL, tid, 0)
                .map_err(|e| ptrace_err("PTRACE_SYSCALL", e))?;
            let status = wait_any(tid)?;
            let sig = libc::WSTOPSIG(status);
            let event = status >> 16;
            if sig == libc::SIGTRAP | 0x80 {
                if !entered {
                    entered = true;
                    continue;
                }
                let ret = get_regs(tid)?.rax.cast_signed();
                return match event_err {
                    Some(e) => Err(e),
                    None => Ok(Done { ret }),
                };
            }
            if event == libc::PTRACE_EVENT_STOP {
                // A group-stop (SIGSTOP to the process meanwhile) or a
                // stray interrupt: go on; detaching restores the group-stop.
                continue;
            }
            if event != 0 {
                let msg = event_msg(tid)?;
                if let Err(e) = on_event(event, msg) {
                    event_err.get_or_insert(e);
                }
                continue;
            }
            // A signal-delivery-stop although every signal is blocked: a
            // signal the kernel forces (the call faulted, or a seccomp or
            // syscall-user-dispatch trap). It is ours: drop it.
            if entered {
                // Let the call end before putting the thread back.
                event_err.get_or_insert(InjectError::Unexpected(format!(
                    "signal {sig} during the injected system call"
                )));
                continue;
            }
            return Err(InjectError::Unexpected(format!(
                "signal {sig} instead of the injected system call"
            )));
        }
    };
    let res = run();
    if matches!(res, Err(InjectError::Gone)) {
        return res;
    }
    match put_back() {
        Ok(()) => res,
        Err(e) => Err(res.err().unwrap_or(e)),
    }
}

/// Waits for the next stop of `tid`; `Gone` when it exited.
fn wait_any(tid: i32) -> Result<i32, InjectError> {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid, writable c_int.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == -1 {
            match freeze::errno() {
                libc::EINTR => continue,
                libc::ECHILD => return Err(InjectError::Gone),
                e => {
                    return Err(InjectError::Ptrace(
                        "waitpid",
                        io::Error::from_raw_os_error(e),
                    ))
                }
            }
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Err(InjectError::Gone);
        }
        if libc::WIFSTOPPED(status) {
            return Ok(status);
        }
    }
}

/// `PTRACE_GETEVENTMSG`: the new child's pid at a clone event.
fn event_msg(tid: i32) -> Result<u64, InjectError> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: PTRACE_GETEVENTMSG writes one unsigned long at data, which is
    // msg.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETEVENTMSG,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::addr_of_mut!(msg),
        )
    };
    if rc == -1 {
        return Err(ptrace_err("PTRACE_GETEVENTMSG", freeze::errno()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(rax: i64, orig_rax: i64, rip: u64) -> Regs {
        // SAFETY: plain integers; all zeros is valid.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.rax = rax.cast_unsigned();
        r.orig_rax = orig_rax.cast_unsigned();
        r.rip = rip;
        r
    }

    #[test]
    fn interrupted_calls_run_again() {
        // read (0) interrupted: the syscall instruction runs again.
        for code in [ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND] {
            let r = resumable(&regs(-code, 0, 0x1002));
            assert_eq!((r.rax, r.rip), (0, 0x1000), "-{code}");
            let r = resumable(&regs(-code, 202, 0x1002));
            assert_eq!((r.rax, r.rip), (202, 0x1000), "-{code}");
        }
        // clock_nanosleep (230) interrupted: restart_syscall resumes it.
        let r = resumable(&regs(-ERESTART_RESTARTBLOCK, 230, 0x1002));
        assert_eq!(
            (r.rax, r.rip, r.orig_rax),
            (SYS_RESTART_SYSCALL, 0x1000, 230)
        );
    }

    #[test]
    fn finished_calls_and_user_code_are_left_alone() {
        // A call that returned (5 bytes read, or -EINTR) and user code.
        for (rax, orig) in [(5, 0), (-4, 7), (-ERESTARTSYS, -1), (123, -1)] {
            let r = regs(rax, orig, 0x1002);
            let back = resumable(&r);
            assert_eq!((back.rax, back.rip), (r.rax, r.rip), "{rax} {orig}");
        }
    }
}
