//! Would a process's seccomp filters let one system call through?
//!
//! A fork snapshot makes the process call `clone`. A seccomp filter may
//! answer that with an error (harmless: the capture falls back), with a trap
//! or a notification (which would run code of the process, or wait for a
//! supervisor), or by killing the process. So before the call, every filter
//! of the thread is read with `PTRACE_SECCOMP_GET_FILTER` (root only) and run
//! here on the exact `seccomp_data` the kernel would build: the call is made
//! only when each filter answers `SECCOMP_RET_ALLOW` or `SECCOMP_RET_LOG`.
//!
//! The filters are classic BPF restricted as the kernel's seccomp checker
//! restricts them; a program outside that subset, or that would read out of
//! bounds, answers "no".

use std::io;

use crate::freeze;

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_LOG: u32 = 0x7ffc_0000;
/// `BPF_MAXINSNS`.
const MAX_INSNS: usize = 4096;
/// `AUDIT_ARCH_X86_64`.
pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// `struct seccomp_data`: what a filter sees of a system call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub nr: i32,
    pub arch: u32,
    /// The address after the `syscall` instruction.
    pub ip: u64,
    pub args: [u64; 6],
}

impl Call {
    /// The 32-bit word at byte `off` of `struct seccomp_data` (as the
    /// machine lays it out: little-endian here).
    fn word(&self, off: u32) -> Option<u32> {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.nr.to_ne_bytes());
        b[4..8].copy_from_slice(&self.arch.to_ne_bytes());
        b[8..16].copy_from_slice(&self.ip.to_ne_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let off = usize::try_from(off).ok()?;
        if !off.is_multiple_of(4) {
            return None;
        }
        let w = b.get(off..off + 4)?;
        Some(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
    }
}

/// Runs one filter program on `call`: its return value, or `None` when the
/// program is not one the kernel would run (unknown instruction, jump out
/// of bounds, no return).
pub(crate) fn run(prog: &[Insn], call: &Call) -> Option<u32> {
    if prog.is_empty() || prog.len() > MAX_INSNS {
        return None;
    }
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    loop {
        let i = *prog.get(pc)?;
        let k = i.k;
        let src = |x: u32| if i.code & 0x08 != 0 { x } else { k };
        pc += 1;
        match i.code {
            // BPF_LD | BPF_W | BPF_ABS
            0x20 => a = call.word(k)?,
            // BPF_LD | BPF_W | BPF_LEN, BPF_LDX | BPF_W | BPF_LEN
            0x80 => a = 64,
            0x81 => x = 64,
            // BPF_LD | BPF_IMM, BPF_LDX | BPF_IMM
            0x00 => a = k,
            0x01 => x = k,
            // BPF_LD | BPF_MEM, BPF_LDX | BPF_MEM
            0x60 => a = *mem.get(usize::try_from(k).ok()?)?,
            0x61 => x = *mem.get(usize::try_from(k).ok()?)?,
            // BPF_ST, BPF_STX
            0x02 => *mem.get_mut(usize::try_from(k).ok()?)? = a,
            0x03 => *mem.get_mut(usize::try_from(k).ok()?)? = x,
            // BPF_MISC | BPF_TAX, BPF_MISC | BPF_TXA
            0x07 => x = a,
            0x87 => a = x,
            // BPF_RET | BPF_K, BPF_RET | BPF_A
            0x06 => return Some(k),
            0x16 => return Some(a),
            c if c & 0x07 == 0x04 => {
                let v = src(x);
                a = match c & 0xf0 {
                    0x00 => a.wrapping_add(v),
                    0x10 => a.wrapping_sub(v),
                    0x20 => a.wrapping_mul(v),
                    0x30 => a.checked_div(v)?,
                    0x40 => a | v,
                    0x50 => a & v,
                    0x60 => a.checked_shl(v).unwrap_or(0),
                    0x70 => a.checked_shr(v).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0x90 => a.checked_rem(v)?,
                    0xa0 => a ^ v,
                    _ => return None,
                };
            }
            c if c & 0x07 == 0x05 => {
                let v = src(x);
                let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
                pc += match c & 0xf0 {
                    // BPF_JA: the only unconditional jump, by k.
                    0x00 if c == 0x05 => usize::try_from(k).ok()?,
                    0x10 => jump(a == v),
                    0x20 => jump(a > v),
                    0x30 => jump(a >= v),
                    0x40 => jump(a & v != 0),
                    _ => return None,
                };
            }
            _ => return None,
        }
    }
}

/// True for the answers that let the call run unchanged.
pub(crate) fn allows(ret: u32) -> bool {
    matches!(
        ret & SECCOMP_RET_ACTION_FULL,
        SECCOMP_RET_ALLOW | SECCOMP_RET_LOG
    )
}

/// Reads every seccomp filter attached to stopped thread `tid`.
///
/// # Errors
/// When the kernel refuses (no `CAP_SYS_ADMIN`, or a kernel without
/// `PTRACE_SECCOMP_GET_FILTER`).
pub(crate) fn filters(tid: i32) -> io::Result<Vec<Vec<Insn>>> {
    let mut out = Vec::new();
    for index in 0usize.. {
        // With a null buffer the kernel says how many instructions it holds.
        // SAFETY: a null data pointer asks only for the count.
        let n = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid,
                index,
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if n < 0 {
            match freeze::errno() {
                // Past the last filter.
                libc::ENOENT => return Ok(out),
                e => return Err(io::Error::from_raw_os_error(e)),
            }
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n > MAX_INSNS {
            return Err(io::Error::other(format!(
                "seccomp filter {index} has {n} instructions"
            )));
        }
        let mut prog = vec![Insn::default(); n];
        // SAFETY: the buffer holds n sock_filter structs (8 bytes each,
        // the layout of Insn), as many as the kernel said it would write.
        let m = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, prog.as_mut_ptr()) };
        if m < 0 {
            return Err(io::Error::last_os_error());
        }
        prog.truncate(usize::try_from(m).unwrap_or(0));
        out.push(prog);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn stmt(code: u16, k: u32) -> Insn {
        Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }
    const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
        Insn { code, jt, jf, k }
    }

    const ERRNO_EPERM: u32 = 0x0005_0001;
    const KILL_PROCESS: u32 = 0x8000_0000;

    fn clone_call(flags: u64) -> Call {
        Call {
            nr: 56,
            arch: AUDIT_ARCH_X86_64,
            ip: 0x7fff_0000_1000,
            args: [flags, 0, 0, 0, 0, 0],
        }
    }

    /// The usual shape: check the architecture, then deny one call.
    #[rustfmt::skip]
    fn deny(nr: u32, action: u32) -> Vec<Insn> {
        vec![
            stmt(0x20, 4),                       // ld [arch]
            jump(0x15, AUDIT_ARCH_X86_64, 1, 0), // jeq x86_64, +1
            stmt(0x06, KILL_PROCESS),            // ret kill
            stmt(0x20, 0),                       // ld [nr]
            jump(0x15, nr, 0, 1),                // jeq nr, +0, +1
            stmt(0x06, action),                  // ret action
            stmt(0x06, SECCOMP_RET_ALLOW),       // ret allow
        ]
    }

    #[test]
    fn a_filter_that_denies_clone() {
        let f = deny(56, ERRNO_EPERM);
        assert_eq!(run(&f, &clone_call(0)), Some(ERRNO_EPERM));
        assert!(!allows(ERRNO_EPERM));
        // Another call goes through.
        let mut c = clone_call(0);
        c.nr = 57;
        assert_eq!(run(&f, &c), Some(SECCOMP_RET_ALLOW));
        // So does clone under a filter denying something else.
        assert!(allows(
            run(&deny(101, KILL_PROCESS), &clone_call(0)).unwrap()
        ));
        // The wrong architecture is killed.
        let mut c = clone_call(0);
        c.arch = 0x4000_0003;
        assert_eq!(run(&f, &c), Some(KILL_PROCESS));
    }

    #[test]
    #[rustfmt::skip]
    fn arguments_alu_and_memory() {
        // Deny clone when (flags & CLONE_NEWUSER) != 0, computed through the
        // scratch memory and X.
        let f = vec![
            stmt(0x20, 16),                    // ld [args[0] low word]
            stmt(0x02, 3),                     // st M[3]
            stmt(0x01, 0x1000_0000),           // ldx #CLONE_NEWUSER
            stmt(0x60, 3),                     // ld M[3]
            stmt(0x5c, 0),                     // and x
            jump(0x15, 0, 0, 1),               // jeq 0, +0, +1
            stmt(0x06, SECCOMP_RET_ALLOW),
            stmt(0x06, ERRNO_EPERM),
        ];
        assert_eq!(run(&f, &clone_call(0x500)), Some(SECCOMP_RET_ALLOW));
        assert_eq!(run(&f, &clone_call(0x1000_0500)), Some(ERRNO_EPERM));
        // The log action lets the call through too.
        assert!(allows(0x7ffc_0000));
    }

    #[test]
    fn malformed_programs_answer_no() {
        // No return: runs off the end.
        assert_eq!(run(&[stmt(0x20, 0)], &clone_call(0)), None);
        // Jump past the end.
        assert_eq!(
            run(&[jump(0x15, 56, 9, 9), stmt(0x06, 0)], &clone_call(0)),
            None
        );
        // Read past struct seccomp_data, or unaligned.
        assert_eq!(run(&[stmt(0x20, 64), stmt(0x06, 0)], &clone_call(0)), None);
        assert_eq!(run(&[stmt(0x20, 2), stmt(0x06, 0)], &clone_call(0)), None);
        // Division by zero, an unknown opcode, an empty program.
        assert_eq!(run(&[stmt(0x34, 0), stmt(0x06, 0)], &clone_call(0)), None);
        assert_eq!(run(&[stmt(0x28, 0), stmt(0x06, 0)], &clone_call(0)), None);
        assert_eq!(run(&[], &clone_call(0)), None);
    }
}
