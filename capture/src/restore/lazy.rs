//! Lazy restore through userfaultfd.
//!
//! The regions are registered in "missing" mode: the first touch of a page
//! that was never filled stops the touching thread and sends an event to
//! the handler thread, which decodes the whole extent holding it (one chunk,
//! decrypted and decompressed as needed) and installs it with `UFFDIO_COPY`,
//! which also wakes the thread; zero extents are installed with
//! `UFFDIO_ZEROPAGE`, a chunk-sized piece at a time. The same thread can
//! prefetch the rest in the background between faults.
//!
//! A chunk that fails to decode (damage) is never served as wrong bytes: its
//! range is made inaccessible and unregistered, so the touching thread gets
//! SIGSEGV at that address, and [`LazyStats::error`] says why.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use memimg::{ExtentKind, Image, Region};

use super::usize_of;
use crate::error::RestoreError;

// From <linux/userfaultfd.h>; the ioctl numbers encode the struct sizes below.
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_AA01;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xAA00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// Bits of `uffdio_register.ioctls`: `_UFFDIO_COPY` and `_UFFDIO_ZEROPAGE`.
const NEED_IOCTLS: u64 = (1 << 3) | (1 << 4);

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

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg`: 32 bytes; for a page fault, `arg` holds flags,
/// address and thread id.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    arg: [u64; 3],
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Opens a userfaultfd, through the system call or `/dev/userfaultfd`.
fn open_uffd() -> Result<OwnedFd, String> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: the userfaultfd system call takes only flags.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if let Ok(fd) = i32::try_from(fd) {
        if fd >= 0 {
            // SAFETY: fd is a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    let first = std::io::Error::last_os_error();
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
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Why a lazy restore cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    open_uffd().err()
}

/// A piece of a region the handler fills in one go.
#[derive(Debug, Clone, Copy)]
struct Unit {
    addr: u64,
    len: u64,
    /// The data extent to decode; `None` for zeros.
    extent: Option<memimg::Extent>,
}

/// What a lazy restore's handler has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LazyStats {
    /// Page faults served.
    pub faults: u64,
    /// Pieces (chunks or zero runs) filled, by fault or prefetch.
    pub units_done: u64,
    /// Pieces in all.
    pub units_total: u64,
    /// Bytes decoded and copied in.
    pub bytes_copied: u64,
    /// The first chunk that failed to decode, if any.
    pub error: Option<String>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    prefetch: AtomicBool,
    faults: AtomicU64,
    units_done: AtomicU64,
    bytes_copied: AtomicU64,
    error: Mutex<Option<String>>,
}

/// The fault handler of a lazy restore. It owns the handler thread; dropping
/// it fills every page not yet filled, then stops the thread.
pub struct LazyHandle {
    shared: Arc<Shared>,
    wake: OwnedFd,
    units_total: u64,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LazyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl LazyHandle {
    pub(super) fn start(img: Image, regions: &[Region]) -> Result<LazyHandle, RestoreError> {
        let unavailable = |why: String| RestoreError::StrategyUnavailable {
            strategy: "lazy",
            why,
        };
        let uffd = open_uffd().map_err(unavailable)?;
        let mut api = UffdioApi {
            api: UFFD_API,
            ..UffdioApi::default()
        };
        // SAFETY: api is a valid uffdio_api the kernel reads and writes.
        if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
            return Err(RestoreError::last_os("UFFDIO_API"));
        }
        let ps = img.header().page_size;
        let piece = u64::from(img.header().chunk_size);
        let mut units = Vec::new();
        for r in regions {
            let mut reg = UffdioRegister {
                range: UffdioRange {
                    start: r.info.start,
                    len: r.info.len,
                },
                mode: UFFDIO_REGISTER_MODE_MISSING,
                ioctls: 0,
            };
            // SAFETY: reg is a valid uffdio_register; the range is a mapping
            // this restore made.
            if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) } != 0 {
                return Err(RestoreError::last_os(format!(
                    "registering {:#x}-{:#x} with userfaultfd",
                    r.info.start,
                    r.info.end()
                )));
            }
            if reg.ioctls & NEED_IOCTLS != NEED_IOCTLS {
                return Err(unavailable(
                    "the kernel does not offer UFFDIO_COPY and UFFDIO_ZEROPAGE here".into(),
                ));
            }
            for e in img.region_extents(r)? {
                match e.kind {
                    ExtentKind::Data => units.push(Unit {
                        addr: e.addr,
                        len: e.len(ps),
                        extent: Some(*e),
                    }),
                    _ => {
                        let mut a = e.addr;
                        while a < e.end(ps) {
                            let len = piece.min(e.end(ps) - a);
                            units.push(Unit {
                                addr: a,
                                len,
                                extent: None,
                            });
                            a += len;
                        }
                    }
                }
            }
        }
        // SAFETY: eventfd takes an initial value and flags.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(RestoreError::last_os("eventfd"));
        }
        // SAFETY: wake is a new descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let wake_fd = wake.as_raw_fd();
        let shared = Arc::new(Shared::default());
        let units_total = units.len() as u64;
        let mut handler = Handler {
            uffd,
            wake: wake_fd,
            img,
            done: vec![false; units.len()],
            units,
            next: 0,
            buf: Vec::new(),
            shared: Arc::clone(&shared),
            ps: u64::from(ps),
        };
        let thread = std::thread::Builder::new()
            .name("memimg-uffd".into())
            .spawn(move || handler.run())
            .map_err(|e| RestoreError::io("starting the fault handler thread", e))?;
        Ok(LazyHandle {
            shared,
            wake,
            units_total,
            thread: Some(thread),
        })
    }

    fn poke(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Starts filling every page not yet touched, in the background, between
    /// faults (which are still served first).
    pub fn prefetch(&self) {
        self.shared.prefetch.store(true, Ordering::Relaxed);
        self.poke();
    }

    /// What the handler has done so far.
    pub fn stats(&self) -> LazyStats {
        LazyStats {
            faults: self.shared.faults.load(Ordering::Relaxed),
            units_done: self.shared.units_done.load(Ordering::Relaxed),
            units_total: self.units_total,
            bytes_copied: self.shared.bytes_copied.load(Ordering::Relaxed),
            error: self.shared.error.lock().ok().and_then(|e| e.clone()),
        }
    }

    /// Fills every page not yet filled, stops the thread and returns the
    /// final statistics.
    pub fn finish(mut self) -> LazyStats {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shared.stop.store(true, Ordering::Relaxed);
            self.poke();
            let _ = t.join();
        }
    }
}

impl Drop for LazyHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Handler {
    uffd: OwnedFd,
    wake: i32,
    img: Image,
    units: Vec<Unit>,
    done: Vec<bool>,
    /// Next unit the prefetch looks at.
    next: usize,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    ps: u64,
}

impl Handler {
    fn run(&mut self) {
        loop {
            let stop = self.shared.stop.load(Ordering::Relaxed);
            let prefetch = self.shared.prefetch.load(Ordering::Relaxed) || stop;
            while self.next < self.units.len() && self.done[self.next] {
                self.next += 1;
            }
            let more = self.next < self.units.len();
            if stop && !more {
                // Every page is in place: closing the uffd is now harmless.
                return;
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let timeout = if prefetch && more { 0 } else { -1 };
            // SAFETY: fds is a valid array of two pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            if n < 0 && last_errno() != libc::EINTR {
                return;
            }
            if fds[1].revents & libc::POLLIN != 0 {
                let mut v = [0u8; 8];
                // SAFETY: reads 8 bytes into a valid buffer from our eventfd.
                unsafe { libc::read(self.wake, v.as_mut_ptr().cast(), 8) };
            }
            if fds[0].revents & libc::POLLIN != 0 {
                self.serve_faults();
            } else if prefetch && more {
                self.fill(self.next);
            }
        }
    }

    fn serve_faults(&mut self) {
        let mut msgs = [UffdMsg::default(); 16];
        loop {
            // SAFETY: reads whole uffd_msg structs into a valid array.
            let n = unsafe {
                libc::read(
                    self.uffd.as_raw_fd(),
                    msgs.as_mut_ptr().cast(),
                    std::mem::size_of_val(&msgs),
                )
            };
            let Ok(n) = usize::try_from(n) else { return };
            let count = n / std::mem::size_of::<UffdMsg>();
            if count == 0 {
                return;
            }
            for m in &msgs[..count] {
                if m.event != UFFD_EVENT_PAGEFAULT {
                    continue;
                }
                self.shared.faults.fetch_add(1, Ordering::Relaxed);
                let addr = m.arg[1] / self.ps * self.ps;
                let i = self.units.partition_point(|u| u.addr + u.len <= addr);
                if i < self.units.len() && self.units[i].addr <= addr {
                    if self.done[i] {
                        // Filled between the fault and now: just wake it.
                        self.ioctl_range(UFFDIO_WAKE, addr, self.ps);
                    } else {
                        self.fill(i);
                    }
                }
            }
        }
    }

    fn ioctl_range(&self, req: libc::c_ulong, start: u64, len: u64) -> i32 {
        let mut r = UffdioRange { start, len };
        // SAFETY: r is a valid uffdio_range inside a registered region.
        unsafe { libc::ioctl(self.uffd.as_raw_fd(), req, &mut r) }
    }

    fn fill(&mut self, i: usize) {
        let u = self.units[i];
        self.done[i] = true;
        self.shared.units_done.fetch_add(1, Ordering::Relaxed);
        match u.extent {
            None => {
                let mut z = UffdioZeropage {
                    range: UffdioRange {
                        start: u.addr,
                        len: u.len,
                    },
                    ..UffdioZeropage::default()
                };
                // SAFETY: z is a valid uffdio_zeropage for a registered range.
                let rc = unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z) };
                if rc != 0 && last_errno() == libc::EEXIST {
                    self.per_page(u, None);
                }
            }
            Some(e) => {
                let len = usize_of(u.len);
                if self.buf.len() < len {
                    self.buf.resize(len, 0);
                }
                if let Err(err) = self.img.decode_extent(&e, &mut self.buf[..len]) {
                    self.poison(u, err.to_string());
                    return;
                }
                let mut c = UffdioCopy {
                    dst: u.addr,
                    src: self.buf.as_ptr() as usize as u64,
                    len: u.len,
                    ..UffdioCopy::default()
                };
                // SAFETY: c is a valid uffdio_copy whose source is our buffer
                // of at least len bytes and whose destination is registered.
                let rc = unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_COPY, &mut c) };
                if rc != 0 && last_errno() == libc::EEXIST {
                    self.per_page(u, Some(len));
                }
                self.shared.bytes_copied.fetch_add(u.len, Ordering::Relaxed);
            }
        }
    }

    /// Fills a unit page by page, skipping pages already present.
    fn per_page(&mut self, u: Unit, data: Option<usize>) {
        let ps = self.ps;
        for off in (0..u.len).step_by(usize_of(ps)) {
            if data.is_some() {
                let mut c = UffdioCopy {
                    dst: u.addr + off,
                    src: self.buf.as_ptr() as usize as u64 + off,
                    len: ps,
                    ..UffdioCopy::default()
                };
                // SAFETY: c is a valid uffdio_copy: its source is one page
                // inside our buffer (off + ps ≤ u.len ≤ buf.len(), filled by
                // fill), its destination one page of the registered unit.
                unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_COPY, &mut c) };
            } else {
                let mut z = UffdioZeropage {
                    range: UffdioRange {
                        start: u.addr + off,
                        len: ps,
                    },
                    ..UffdioZeropage::default()
                };
                // SAFETY: z is a valid uffdio_zeropage for one page of the
                // registered unit; the kernel reads it and writes its result.
                unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z) };
            }
        }
        self.ioctl_range(UFFDIO_WAKE, u.addr, u.len);
    }

    /// A chunk failed to decode: never serve wrong bytes. Make the range
    /// inaccessible and unregister it, which wakes the waiting thread into
    /// a SIGSEGV at the damaged address.
    fn poison(&mut self, u: Unit, why: String) {
        if let Ok(mut e) = self.shared.error.lock() {
            e.get_or_insert(format!("{:#x}-{:#x}: {why}", u.addr, u.addr + u.len));
        }
        // SAFETY: the range is part of a region this restore mapped.
        unsafe {
            libc::mprotect(
                usize_of(u.addr) as *mut libc::c_void,
                usize_of(u.len),
                libc::PROT_NONE,
            )
        };
        self.ioctl_range(UFFDIO_UNREGISTER, u.addr, u.len);
    }
}
