//! The state of a frozen process that is not memory: each thread's registers
//! and the auxiliary vector, as image notes a debugger can use.
//!
//! The notes follow the naming of kept ELF notes (`OWNER/TYPE`, type in
//! decimal, see `imgtool::elfcore::notes`) and hold each descriptor exactly as
//! the Linux kernel writes it in a core dump, so `imgtool export-core` turns a
//! capture into a core that gdb can backtrace:
//!
//! | note | descriptor |
//! |---|---|
//! | `CORE/1` (`NT_PRSTATUS`) | `struct elf_prstatus`: signal info, pending and blocked signals, tid, parent, process group, session, CPU times, `user_regs_struct`, `pr_fpvalid` (336 bytes on x86_64) |
//! | `CORE/2` (`NT_PRFPREG`) | `user_fpregs_struct`, the `fxsave` area (512 bytes) |
//! | `LINUX/514` (`NT_X86_XSTATE`) | the `xsave` area (AVX and later registers) |
//! | `CORE/6` (`NT_AUXV`) | `/proc/PID/auxv` |
//!
//! They come in the kernel's order: the main thread's `NT_PRSTATUS`, the
//! process-wide `NT_AUXV`, the main thread's other register notes, then each
//! other thread's `NT_PRSTATUS` followed by its other register notes (the
//! kernel puts `NT_PRPSINFO`, `NT_SIGINFO` and `NT_FILE` between them too;
//! an export generates `NT_PRPSINFO` and `NT_FILE` itself). A debugger ties
//! each register note to the `NT_PRSTATUS` before it.
//!
//! What differs from a kernel core: no signal caused the capture, so
//! `pr_info` and `pr_cursig` are 0; CPU times come from `/proc` in clock
//! ticks (10 ms on most systems) rather than nanoseconds.
//!
//! **Architectures.** Registers are read on x86_64 only; elsewhere the image
//! holds the auxiliary vector but no register notes (the layout of
//! `elf_prstatus` and the register sets differs per architecture and is not
//! written here).

use memimg::Note;

/// `NT_PRSTATUS`.
const NT_PRSTATUS: u32 = 1;
/// `NT_PRFPREG`.
#[cfg(target_arch = "x86_64")]
const NT_PRFPREG: u32 = 2;
/// `NT_AUXV`.
const NT_AUXV: u32 = 6;
/// `NT_X86_XSTATE`.
#[cfg(target_arch = "x86_64")]
const NT_X86_XSTATE: u32 = 0x202;

/// The notes of a frozen process and how many threads' registers they hold.
#[derive(Debug, Default)]
pub(crate) struct ThreadNotes {
    /// The notes, in the kernel's order.
    pub notes: Vec<Note>,
    /// Threads whose `NT_PRSTATUS` is in `notes`.
    pub threads: usize,
}

/// Reads the registers of every thread in `tids` (all in a ptrace-stop of
/// ours) and the auxiliary vector of `pid`. The main thread comes first
/// whatever its place in `tids`. A thread whose registers cannot be read (it
/// was killed meanwhile) is left out; so is the auxiliary vector when
/// `/proc/PID/auxv` cannot be read.
pub(crate) fn read(pid: i32, tids: &[i32]) -> ThreadNotes {
    let mut order: Vec<i32> = tids.to_vec();
    order.sort_unstable_by_key(|&t| (t != pid, t));
    let auxv = std::fs::read(format!("/proc/{pid}/auxv"))
        .ok()
        .filter(|a| !a.is_empty());
    let mut out = ThreadNotes::default();
    let mut auxv = auxv.map(|data| Note {
        name: note_name("CORE", NT_AUXV),
        data,
    });
    for &tid in &order {
        let Some(regs) = arch::read_thread(pid, tid) else {
            continue;
        };
        let mut regs = regs.into_iter();
        if let Some(first) = regs.next() {
            out.notes.push(first);
            out.threads += 1;
        }
        // The process-wide notes follow the first thread's NT_PRSTATUS.
        if let Some(a) = auxv.take() {
            out.notes.push(a);
        }
        out.notes.extend(regs);
    }
    out.notes.extend(auxv);
    out
}

/// The image note name of an ELF note: `OWNER/TYPE`, type in decimal.
fn note_name(owner: &str, n_type: u32) -> String {
    format!("{owner}/{n_type}")
}

/// The fields of `elf_prstatus` that come from `/proc`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TaskFacts {
    sigpend: u64,
    sighold: u64,
    ppid: i32,
    pgrp: i32,
    sid: i32,
    /// user, system, children's user, children's system, in clock ticks.
    times: [u64; 4],
}

/// Reads the facts of thread `tid` of `pid`. For the main thread the CPU
/// times are those of the whole process, as the kernel does.
fn task_facts(pid: i32, tid: i32) -> TaskFacts {
    let dir = format!("/proc/{pid}/task/{tid}");
    let stat_path = if tid == pid {
        format!("/proc/{pid}/stat")
    } else {
        format!("{dir}/stat")
    };
    let mut f = TaskFacts::default();
    if let Ok(stat) = std::fs::read(stat_path) {
        parse_stat(&stat, &mut f);
    }
    if let Ok(status) = std::fs::read_to_string(format!("{dir}/status")) {
        parse_status(&status, &mut f);
    }
    f
}

/// `/proc/…/stat`: ppid, pgrp, session and the four times.
fn parse_stat(stat: &[u8], f: &mut TaskFacts) {
    // The comm field is in parentheses and may hold anything: fields are
    // counted from the last ')'. After it, field 3 (state) is at index 0.
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return;
    };
    let rest = String::from_utf8_lossy(&stat[close + 1..]);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let int = |i: usize| fields.get(i).and_then(|s| s.parse::<i64>().ok());
    f.ppid = int(1).and_then(|v| i32::try_from(v).ok()).unwrap_or(0);
    f.pgrp = int(2).and_then(|v| i32::try_from(v).ok()).unwrap_or(0);
    f.sid = int(3).and_then(|v| i32::try_from(v).ok()).unwrap_or(0);
    for (k, i) in (11..15).enumerate() {
        f.times[k] = int(i).and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
    }
}

/// `/proc/…/status`: the thread's pending (`SigPnd`) and blocked (`SigBlk`)
/// signals; the kernel stores the first word of each.
fn parse_status(status: &str, f: &mut TaskFacts) {
    for line in status.lines() {
        let hex = |v: &str| u64::from_str_radix(v.trim(), 16).unwrap_or(0);
        if let Some(v) = line.strip_prefix("SigPnd:") {
            f.sigpend = hex(v);
        } else if let Some(v) = line.strip_prefix("SigBlk:") {
            f.sighold = hex(v);
        }
    }
}

/// Clock ticks per second, for the CPU times.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes an integer name and reads no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

#[cfg(target_arch = "x86_64")]
mod arch {
    use memimg::Note;

    use super::{note_name, TaskFacts, NT_PRFPREG, NT_PRSTATUS, NT_X86_XSTATE};

    /// `sizeof(struct user_regs_struct)`: 27 registers of 8 bytes.
    pub(super) const GREGS_SIZE: usize = 27 * 8;
    /// `sizeof(struct user_fpregs_struct)`: the `fxsave` area.
    const FPREGS_SIZE: usize = 512;
    /// Room for the `xsave` area; the kernel says how much it filled (a few
    /// KiB at most on current CPUs, 11 KiB with AMX).
    const XSTATE_ROOM: usize = 16 << 10;
    /// `sizeof(struct elf_prstatus)` on x86_64.
    pub(super) const PRSTATUS_SIZE: usize = 336;
    /// Offset of `pr_pid` in `elf_prstatus`.
    pub(super) const PR_PID: usize = 32;
    /// Offset of `pr_reg` in `elf_prstatus`.
    pub(super) const PR_REG: usize = 112;
    /// Offset of `pr_fpvalid` in `elf_prstatus`.
    pub(super) const PR_FPVALID: usize = PR_REG + GREGS_SIZE;

    /// Fills `buf` with register set `nt` of stopped thread `tid`; the number
    /// of bytes the kernel wrote, or `None` when it refused.
    fn getregset(tid: i32, nt: u32, buf: &mut [u8]) -> Option<usize> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: PTRACE_GETREGSET writes at most iov.iov_len bytes at
        // iov.iov_base, which is buf, borrowed mutably here, and updates
        // iov.iov_len; iov lives across the call. addr is the note type, an
        // integer the kernel does not dereference.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGSET,
                tid,
                nt as usize as *mut libc::c_void,
                std::ptr::addr_of_mut!(iov),
            )
        };
        (r != -1 && iov.iov_len <= buf.len()).then_some(iov.iov_len)
    }

    /// The register notes of one thread: `NT_PRSTATUS` first, then the FP
    /// and xsave state when the kernel gives them.
    pub(super) fn read_thread(pid: i32, tid: i32) -> Option<Vec<Note>> {
        let mut gregs = [0u8; GREGS_SIZE];
        if getregset(tid, NT_PRSTATUS, &mut gregs)? != GREGS_SIZE {
            return None;
        }
        let mut fp = vec![0u8; FPREGS_SIZE];
        let fp_ok = getregset(tid, NT_PRFPREG, &mut fp) == Some(FPREGS_SIZE);
        let mut xs = vec![0u8; XSTATE_ROOM];
        let xs_len = getregset(tid, NT_X86_XSTATE, &mut xs).filter(|&n| n > FPREGS_SIZE);
        let facts = super::task_facts(pid, tid);
        let mut notes = vec![Note {
            name: note_name("CORE", NT_PRSTATUS),
            data: prstatus(tid, &facts, &gregs, fp_ok, super::clock_ticks()),
        }];
        if fp_ok {
            notes.push(Note {
                name: note_name("CORE", NT_PRFPREG),
                data: fp,
            });
        }
        if let Some(n) = xs_len {
            xs.truncate(n);
            notes.push(Note {
                name: note_name("LINUX", NT_X86_XSTATE),
                data: xs,
            });
        }
        Some(notes)
    }

    /// Builds the x86_64 `struct elf_prstatus`:
    ///
    /// ```text
    ///   0 pr_info {si_signo, si_code, si_errno: i32}
    ///  12 pr_cursig: i16 (+2 padding)
    ///  16 pr_sigpend, 24 pr_sighold: u64
    ///  32 pr_pid, 36 pr_ppid, 40 pr_pgrp, 44 pr_sid: i32
    ///  48 pr_utime, 64 pr_stime, 80 pr_cutime, 96 pr_cstime: timeval {i64 sec, i64 usec}
    /// 112 pr_reg: user_regs_struct (27 × u64)
    /// 328 pr_fpvalid: i32 (+4 padding)   = 336 bytes
    /// ```
    pub(super) fn prstatus(
        tid: i32,
        f: &TaskFacts,
        gregs: &[u8; GREGS_SIZE],
        fpvalid: bool,
        ticks: u64,
    ) -> Vec<u8> {
        let mut d = vec![0u8; PRSTATUS_SIZE];
        let mut put = |off: usize, b: &[u8]| d[off..off + b.len()].copy_from_slice(b);
        put(16, &f.sigpend.to_ne_bytes());
        put(24, &f.sighold.to_ne_bytes());
        put(PR_PID, &tid.to_ne_bytes());
        put(36, &f.ppid.to_ne_bytes());
        put(40, &f.pgrp.to_ne_bytes());
        put(44, &f.sid.to_ne_bytes());
        let ticks = ticks.max(1);
        for (k, &t) in f.times.iter().enumerate() {
            let sec = t / ticks;
            let usec = (t % ticks) * 1_000_000 / ticks;
            put(48 + 16 * k, &sec.to_ne_bytes());
            put(56 + 16 * k, &usec.to_ne_bytes());
        }
        put(PR_REG, gregs);
        put(PR_FPVALID, &i32::from(fpvalid).to_ne_bytes());
        d
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod arch {
    use memimg::Note;

    /// Registers are not read on this architecture.
    pub(super) fn read_thread(_pid: i32, _tid: i32) -> Option<Vec<Note>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_last_paren() {
        let stat = b"123 (a) b) (c) S 7 8 9 0 -1 4194560 1 2 3 4 250 31 5 6 20 0 1 0";
        let mut f = TaskFacts::default();
        parse_stat(stat, &mut f);
        assert_eq!((f.ppid, f.pgrp, f.sid), (7, 8, 9));
        assert_eq!(f.times, [250, 31, 5, 6]);
    }

    #[test]
    fn status_signal_masks() {
        let mut f = TaskFacts::default();
        parse_status(
            "Name:\tx\nSigQ:\t0/1\nSigPnd:\t0000000000000100\nShdPnd:\t0000000000000001\nSigBlk:\tfffffffe7ffbfeff\n",
            &mut f,
        );
        assert_eq!(f.sigpend, 0x100);
        assert_eq!(f.sighold, 0xffff_fffe_7ffb_feff);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn prstatus_layout() {
        use arch::*;
        let mut gregs = [0u8; GREGS_SIZE];
        for (i, c) in gregs.chunks_mut(8).enumerate() {
            c.copy_from_slice(&(i as u64 + 1).to_ne_bytes());
        }
        let f = TaskFacts {
            sigpend: 1,
            sighold: 2,
            ppid: 3,
            pgrp: 4,
            sid: 5,
            times: [250, 7, 0, 100],
        };
        let d = prstatus(42, &f, &gregs, true, 100);
        assert_eq!(d.len(), 336);
        let u64_at = |o: usize| u64::from_ne_bytes(d[o..o + 8].try_into().unwrap());
        let i32_at = |o: usize| i32::from_ne_bytes(d[o..o + 4].try_into().unwrap());
        assert_eq!(&d[..16], &[0u8; 16]);
        assert_eq!((u64_at(16), u64_at(24)), (1, 2));
        assert_eq!(
            (i32_at(32), i32_at(36), i32_at(40), i32_at(44)),
            (42, 3, 4, 5)
        );
        // 250 ticks at 100 Hz: 2.5 s; 7 ticks: 70 ms; 100 ticks: 1 s.
        assert_eq!((u64_at(48), u64_at(56)), (2, 500_000));
        assert_eq!((u64_at(64), u64_at(72)), (0, 70_000));
        assert_eq!((u64_at(96), u64_at(104)), (1, 0));
        // rip is register 16, rsp register 19 of user_regs_struct.
        assert_eq!(u64_at(PR_REG + 16 * 8), 17);
        assert_eq!(u64_at(PR_REG + 19 * 8), 20);
        assert_eq!(i32_at(PR_FPVALID), 1);
        assert_eq!(&d[332..], &[0u8; 4]);
    }

    #[test]
    fn own_process_notes_in_kernel_order() {
        // Without a ptrace-stop the registers cannot be read, so only the
        // auxiliary vector comes back; it must equal /proc/self/auxv.
        let pid = i32::try_from(std::process::id()).unwrap();
        let n = read(pid, &[pid]);
        assert_eq!(n.threads, 0);
        assert_eq!(n.notes.len(), 1);
        assert_eq!(n.notes[0].name, "CORE/6");
        assert_eq!(n.notes[0].data, std::fs::read("/proc/self/auxv").unwrap());
    }
}
