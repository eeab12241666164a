//! The userfaultfd system interface: the descriptor, its ioctls and the
//! messages it reads, with nothing of the restore's own state.
//!
//! Numbers and layouts are those of `<linux/userfaultfd.h>`; each ioctl
//! number encodes the size of the struct it takes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_AA01;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;
const UFFDIO_POISON: libc::c_ulong = 0xC020_AA08;
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xAA00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// `UFFD_FEATURE_*` bits this crate asks for.
pub(super) mod feature {
    /// Report `fork` (and `clone` without `CLONE_VM`) with a new
    /// userfaultfd for the child. Needs `CAP_SYS_PTRACE`.
    pub const EVENT_FORK: u64 = 1 << 1;
    /// Report `mremap` moves.
    pub const EVENT_REMAP: u64 = 1 << 2;
    /// Report `MADV_DONTNEED`, `MADV_FREE` and `MADV_REMOVE`.
    pub const EVENT_REMOVE: u64 = 1 << 3;
    /// Report `munmap`, and mappings made over registered ranges.
    pub const EVENT_UNMAP: u64 = 1 << 6;
    /// Page-fault messages carry the faulting thread's id (Linux 4.14).
    pub const THREAD_ID: u64 = 1 << 8;
    /// `UFFDIO_POISON` (Linux 6.6).
    pub const POISON: u64 = 1 << 14;
}

/// Bits of `uffdio_register.ioctls`.
const IOCTL_COPY: u64 = 1 << 3;
const IOCTL_ZEROPAGE: u64 = 1 << 4;
const IOCTL_POISON: u64 = 1 << 8;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffdio_zeropage` and `struct uffdio_poison` share this layout.
#[repr(C)]
#[derive(Default)]
struct UffdioFill {
    range: UffdioRange,
    mode: u64,
    done: i64,
}

/// `struct uffd_msg`: 32 bytes, an event byte and a union of three words.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(super) struct RawMsg {
    event: u8,
    reserved: [u8; 7],
    arg: [u64; 3],
}

/// A message read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Msg {
    /// A thread touched a missing page at `addr`; `tid` is its thread id
    /// (0 when the kernel does not report it).
    Fault { addr: u64, tid: i32 },
    /// The process forked; `fd` is a new userfaultfd for the child, now
    /// owned by the reader.
    Fork { fd: RawFd },
    /// `mremap` moved `len` bytes from `from` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// `madvise` discarded `start..end`.
    Remove { start: u64, end: u64 },
    /// `start..end` was unmapped (or mapped over).
    Unmap { start: u64, end: u64 },
    /// An event this crate does not ask for.
    Other(u8),
}

impl RawMsg {
    fn decode(&self) -> Msg {
        let [a, b, c] = self.arg;
        match self.event {
            EVENT_PAGEFAULT => Msg::Fault {
                addr: b,
                // feat.ptid: the low 32 bits of the third word.
                tid: i32::from_ne_bytes(c.to_ne_bytes()[..4].try_into().unwrap_or([0; 4])),
            },
            EVENT_FORK => Msg::Fork {
                fd: i32::from_ne_bytes(a.to_ne_bytes()[..4].try_into().unwrap_or([0xff; 4])),
            },
            EVENT_REMAP => Msg::Remap {
                from: a,
                to: b,
                len: c,
            },
            EVENT_REMOVE => Msg::Remove { start: a, end: b },
            EVENT_UNMAP => Msg::Unmap { start: a, end: b },
            other => Msg::Other(other),
        }
    }
}

/// What a filling ioctl (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`, `UFFDIO_POISON`)
/// did: the kernel fills page by page and may stop part way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Filled {
    /// Bytes filled from the start of the range (the threads waiting on
    /// them were woken).
    pub bytes: u64,
    /// Why it stopped before the end, if it did: `EAGAIN` (an event is
    /// waiting to be read, or it stopped part way), `EEXIST` (the first page
    /// is already present), `ENOENT` (not a range of this userfaultfd, or it
    /// spans two mappings), `ESRCH` (the process is gone) …
    pub errno: Option<i32>,
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A userfaultfd: non-blocking and close-on-exec.
#[derive(Debug)]
pub(super) struct Uffd(OwnedFd);

impl Uffd {
    /// Opens one, through the system call or `/dev/userfaultfd`.
    ///
    /// # Errors
    /// Why neither works here, with what to do about it.
    pub fn open() -> Result<Uffd, String> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: the userfaultfd system call takes only flags.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if let Ok(fd) = i32::try_from(fd) {
            if fd >= 0 {
                // SAFETY: fd is a new descriptor that nothing else owns.
                return Ok(Uffd(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let first = io::Error::last_os_error();
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")
            .map_err(|e| {
                format!(
                    "userfaultfd is not available ({first}; /dev/userfaultfd: {e}): run as root, or set vm.unprivileged_userfaultfd=1"
                )
            })?;
        // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its integer argument.
        let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
        if fd < 0 {
            return Err(format!(
                "userfaultfd is not available: {}",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        Ok(Uffd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Takes ownership of the descriptor a fork message carries.
    pub fn from_fork(fd: RawFd) -> Option<Uffd> {
        // SAFETY: the kernel installed fd in our table while we read the
        // fork message; it belongs to that message's reader alone.
        (fd >= 0).then(|| Uffd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// `UFFDIO_API`: enables `features` and returns every feature the
    /// kernel offers. It can succeed once per descriptor.
    ///
    /// # Errors
    /// `EINVAL` for a feature the kernel lacks, `EPERM` for fork events
    /// without `CAP_SYS_PTRACE`.
    pub fn api(&self, features: u64) -> io::Result<u64> {
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: api is a valid uffdio_api the kernel reads and writes.
        if unsafe { libc::ioctl(self.raw(), UFFDIO_API, &mut api) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(api.features)
    }

    /// Registers `start..start+len` in missing mode; returns whether the
    /// kernel offers `UFFDIO_COPY` and `UFFDIO_ZEROPAGE` there, and whether
    /// `UFFDIO_POISON`.
    ///
    /// # Errors
    /// As the ioctl.
    pub fn register_missing(&self, start: u64, len: u64) -> io::Result<(bool, bool)> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: reg is a valid uffdio_register the kernel reads and writes;
        // registering only changes how faults in the range are handled.
        if unsafe { libc::ioctl(self.raw(), UFFDIO_REGISTER, &mut reg) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let basic = IOCTL_COPY | IOCTL_ZEROPAGE;
        Ok((reg.ioctls & basic == basic, reg.ioctls & IOCTL_POISON != 0))
    }

    /// `UFFDIO_UNREGISTER`, which also wakes the threads waiting there.
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        self.range_ioctl(UFFDIO_UNREGISTER, start, len)
    }

    /// `UFFDIO_WAKE`: wakes the threads waiting on pages of the range, which
    /// then touch them again.
    pub fn wake(&self, start: u64, len: u64) {
        let _ = self.range_ioctl(UFFDIO_WAKE, start, len);
    }

    fn range_ioctl(&self, req: libc::c_ulong, start: u64, len: u64) -> io::Result<()> {
        let mut r = UffdioRange { start, len };
        // SAFETY: r is a valid uffdio_range the kernel only reads.
        if unsafe { libc::ioctl(self.raw(), req, &mut r) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `UFFDIO_COPY` of `src` to `dst`: atomically installs new pages
    /// holding those bytes where pages are missing, and wakes the threads
    /// waiting on them.
    pub fn copy(&self, dst: u64, src: &[u8]) -> Filled {
        let len = src.len() as u64;
        let mut c = UffdioCopy {
            dst,
            src: src.as_ptr() as usize as u64,
            len,
            mode: 0,
            copy: 0,
        };
        // SAFETY: c is a valid uffdio_copy; the kernel reads at most len
        // bytes from src, a live slice of that length, and writes only the
        // other process's (or our own registered) missing pages and c.copy.
        let rc = unsafe { libc::ioctl(self.raw(), UFFDIO_COPY, &mut c) };
        outcome(rc, c.copy, len)
    }

    /// A `UFFDIO_COPY` that cannot install anything: its source lies in the
    /// kernel's half of the address space, which the kernel refuses to read
    /// from userland. What it fails with still tells `EAGAIN` (an event is
    /// on its way, checked first) and `ESRCH` (the process is gone) apart
    /// from the rest. `dst` is any page-aligned user address.
    pub fn probe_copy(&self, dst: u64, len: u64) -> Option<i32> {
        let mut c = UffdioCopy {
            dst,
            src: !0xffff_u64,
            len,
            mode: 0,
            copy: 0,
        };
        // SAFETY: c is a valid uffdio_copy; the kernel checks the source
        // with access_ok and copy_from_user, which fail on a kernel address,
        // so nothing is read from or written to any process but c.copy.
        let rc = unsafe { libc::ioctl(self.raw(), UFFDIO_COPY, &mut c) };
        (rc != 0).then(last_errno)
    }

    /// `UFFDIO_ZEROPAGE`: maps the zero page where pages are missing.
    pub fn zeropage(&self, dst: u64, len: u64) -> Filled {
        self.fill(UFFDIO_ZEROPAGE, dst, len)
    }

    /// `UFFDIO_POISON`: marks missing pages so that a touch raises SIGBUS.
    pub fn poison(&self, dst: u64, len: u64) -> Filled {
        self.fill(UFFDIO_POISON, dst, len)
    }

    fn fill(&self, req: libc::c_ulong, dst: u64, len: u64) -> Filled {
        let mut z = UffdioFill {
            range: UffdioRange { start: dst, len },
            mode: 0,
            done: 0,
        };
        // SAFETY: z is a valid uffdio_zeropage / uffdio_poison (same layout)
        // that the kernel reads and whose last field it writes.
        let rc = unsafe { libc::ioctl(self.raw(), req, &mut z) };
        outcome(rc, z.done, len)
    }

    /// Reads the messages waiting, up to `buf.len()`; 0 when there are none.
    pub fn read(&self, buf: &mut [RawMsg], out: &mut Vec<Msg>) -> usize {
        // SAFETY: reads whole uffd_msg structs (plain data) into a valid
        // buffer of buf.len() of them.
        let n = unsafe {
            libc::read(
                self.raw(),
                buf.as_mut_ptr().cast(),
                std::mem::size_of_val(buf),
            )
        };
        let n = usize::try_from(n).unwrap_or(0) / std::mem::size_of::<RawMsg>();
        out.extend(buf[..n].iter().map(RawMsg::decode));
        n
    }
}

/// The kernel writes the bytes filled, or a negative errno, in the struct;
/// when it returns early (an event pending) it writes nothing, hence the
/// field starts at 0.
fn outcome(rc: libc::c_int, done: i64, len: u64) -> Filled {
    if rc == 0 {
        return Filled {
            bytes: len,
            errno: None,
        };
    }
    let errno = last_errno();
    Filled {
        bytes: u64::try_from(done).unwrap_or(0).min(len),
        errno: Some(errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_ioctl_numbers() {
        // _IOC_SIZE is bits 16..30 of each request number.
        let size = |req: libc::c_ulong| ((req >> 16) & 0x3fff) as usize;
        assert_eq!(size(UFFDIO_API), std::mem::size_of::<UffdioApi>());
        assert_eq!(size(UFFDIO_REGISTER), std::mem::size_of::<UffdioRegister>());
        assert_eq!(size(UFFDIO_WAKE), std::mem::size_of::<UffdioRange>());
        assert_eq!(size(UFFDIO_COPY), std::mem::size_of::<UffdioCopy>());
        assert_eq!(size(UFFDIO_ZEROPAGE), std::mem::size_of::<UffdioFill>());
        assert_eq!(size(UFFDIO_POISON), std::mem::size_of::<UffdioFill>());
        assert_eq!(std::mem::size_of::<RawMsg>(), 32);
    }

    #[test]
    fn messages_decode() {
        let m = |event, arg| RawMsg {
            event,
            reserved: [0; 7],
            arg,
        };
        let tid = 77u64 | (0xdead << 32);
        assert_eq!(
            m(0x12, [1, 0x7000, tid]).decode(),
            Msg::Fault {
                addr: 0x7000,
                tid: 77
            }
        );
        assert_eq!(m(0x13, [9, 0, 0]).decode(), Msg::Fork { fd: 9 });
        assert_eq!(
            m(0x14, [1, 2, 3]).decode(),
            Msg::Remap {
                from: 1,
                to: 2,
                len: 3
            }
        );
        assert_eq!(
            m(0x15, [4, 5, 0]).decode(),
            Msg::Remove { start: 4, end: 5 }
        );
        assert_eq!(m(0x16, [6, 7, 0]).decode(), Msg::Unmap { start: 6, end: 7 });
        assert_eq!(m(0x17, [0; 3]).decode(), Msg::Other(0x17));
    }
}
