//! The `WpAsync` method: userfaultfd asynchronous write-protection and
//! `PAGEMAP_SCAN`.
//!
//! At start the ranges are registered in write-protect mode on a userfaultfd
//! opened with `UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED`, then
//! protected with `UFFDIO_WRITEPROTECT` (which also puts protection markers
//! on page-table entries never populated). A scan is one `PAGEMAP_SCAN` per
//! range, repeated from `walk_end` when its output fills up, asking for
//! pages in category `PAGE_IS_WRITTEN`, with `PM_SCAN_CHECK_WPASYNC` (a range
//! that is no longer registered fails with `EPERM` instead of reading as
//! clean) and, to re-arm, `PM_SCAN_WP_MATCHING`.
//!
//! A page whose entry was emptied after it was armed (`MADV_DONTNEED`,
//! reclaim of a page table, a huge page dropped whole) holds zeros now, so
//! it counts as written. Kernels report an empty entry inside a page table
//! as written, but some (before the fix "fs/proc/task_mmu: fix PAGEMAP_SCAN
//! written state for PMD holes") skip a range with no page table at all. So
//! each scan also asks for pages that are neither present nor swapped (a
//! protection marker reads as swapped), reports them, and when re-arming
//! protects them again with `UFFDIO_WRITEPROTECT`. On kernels that already
//! report holes, that second scan finds nothing after the first re-armed
//! them. It walks the page tables a second time: on 256 MiB with 1% of the
//! pages written it took a take from 0.13-0.19 ms to 0.29-0.47 ms (a loaded
//! 2-core machine), still a thousandth of reading the memory.
//!
//! With the range armed, a page never touched holds a protection marker,
//! which `/proc/self/pagemap` shows as a swapped entry; [`marker_entry`]
//! learns its exact value so that the persister does not read such pages.

use std::fs::File;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::TrackError;

// From <linux/userfaultfd.h> and <linux/fs.h> (checked against the kernel's
// uapi headers; this machine's /usr/include predates WP_ASYNC and
// PAGEMAP_SCAN). The ioctl numbers encode the struct sizes below; a unit
// test recomputes them. restore/lazy.rs keeps its own copies of the shared
// ones for now.
const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xC018_AA06;
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xAA00;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// What a scan asks for.
#[derive(Clone, Copy)]
enum Query {
    /// Pages written since they were armed.
    Written,
    /// Pages with no entry at all: neither present nor swapped (a protection
    /// marker reads as swapped).
    Empty,
}

pub(super) struct Wp {
    uffd: OwnedFd,
    pagemap: File,
    buf: Vec<PageRegion>,
}

/// Opens a userfaultfd: user-mode-only first (allowed to unprivileged
/// programs when `vm.unprivileged_userfaultfd` is 0; asynchronous
/// write-protection never delivers a fault, so it loses nothing), then a
/// full one, then through `/dev/userfaultfd`.
fn open_uffd() -> Result<OwnedFd, String> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let mut first = None;
    for f in [flags | UFFD_USER_MODE_ONLY, flags] {
        // SAFETY: the userfaultfd system call takes only flags.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, f) };
        if let Ok(fd) = i32::try_from(fd) {
            if fd >= 0 {
                // SAFETY: fd is a new descriptor that nothing else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        first.get_or_insert_with(std::io::Error::last_os_error);
    }
    let first = first.map_or_else(String::new, |e| e.to_string());
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
        .map_err(|e| format!("no userfaultfd ({first}; /dev/userfaultfd: {e})"))?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its integer argument.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
    if fd < 0 {
        return Err(format!(
            "no userfaultfd ({first}; /dev/userfaultfd: {})",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `/proc/self/pagemap` entry of a page never touched in an armed
/// range: a protection marker, which pagemap shows as a swapped entry with
/// the uffd-wp bit and a fixed swap type and offset. A reader that skips
/// untouched pages by their pagemap entry must not take it for a swapped
/// page (it would read, fault in and store zeros). Learnt once per process
/// from a probe page, since the encoding depends on the kernel's build;
/// `None` when write-protection is not available.
pub(crate) fn marker_entry() -> Option<u64> {
    static MARKER: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *MARKER.get_or_init(probe_marker)
}

fn probe_marker() -> Option<u64> {
    let ps = usize::try_from(super::page_size()).ok()?;
    // SAFETY: a fresh anonymous page, never touched, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let a = p as usize as u64;
    let entry = (|| {
        let probe = a..a + ps as u64;
        let w = Wp::start(std::slice::from_ref(&probe), 1).ok()?.ok()?;
        let mut e = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&w.pagemap, &mut e, a / ps as u64 * 8).ok()?;
        Some(u64::from_ne_bytes(e))
    })();
    // SAFETY: the probe page mapped above; nothing refers to it.
    unsafe { libc::munmap(p, ps) };
    // Swapped, not present: anything else is not a marker.
    entry.filter(|e| e >> 62 & 3 == 1)
}

impl Wp {
    /// Registers and arms `ranges` (sorted, checked, mapped). `Ok(Err(why))`
    /// when the kernel cannot track this way, so the caller falls back.
    pub(super) fn start(
        ranges: &[Range<u64>],
        scan_buffer: usize,
    ) -> Result<Result<Wp, String>, TrackError> {
        let uffd = match open_uffd() {
            Ok(fd) => fd,
            Err(why) => return Ok(Err(why)),
        };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
            ioctls: 0,
        };
        // SAFETY: api is a valid uffdio_api the kernel reads and writes.
        if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
            return Ok(Err(format!(
                "the kernel refused userfaultfd features WP_ASYNC and WP_UNPOPULATED \
                 ({}): asynchronous write-protection needs Linux 6.7 or later",
                std::io::Error::last_os_error()
            )));
        }
        let want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        if api.features & want != want {
            return Ok(Err(format!(
                "the kernel's userfaultfd lacks WP_ASYNC or WP_UNPOPULATED (features {:#x})",
                api.features
            )));
        }
        let pagemap = match File::open("/proc/self/pagemap") {
            Ok(f) => f,
            Err(e) => return Ok(Err(format!("/proc/self/pagemap: {e}"))),
        };
        for r in ranges {
            let mut reg = UffdioRegister {
                range: UffdioRange {
                    start: r.start,
                    len: r.end - r.start,
                },
                mode: UFFDIO_REGISTER_MODE_WP,
                ioctls: 0,
            };
            // SAFETY: reg is a valid uffdio_register for a mapped range of
            // this process; write-protect mode never blocks a thread here
            // because the context is asynchronous.
            if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) } != 0 {
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::ENOMEM) => Err(TrackError::Unmapped { range: r.clone() }),
                    _ => Ok(Err(format!(
                        "userfaultfd refused to write-protect {:#x}-{:#x} ({e}): \
                         a memory type it does not support, or registered elsewhere",
                        r.start, r.end
                    ))),
                };
            }
        }
        let mut w = Wp {
            uffd,
            pagemap,
            buf: vec![PageRegion::default(); scan_buffer],
        };
        for r in ranges {
            if let Err(e) = w.protect(r.clone()) {
                return Ok(Err(format!("arming write-protection: {e}")));
            }
        }
        // Probe PAGEMAP_SCAN without re-arming (a write made since arming
        // stays to be reported): ENOTTY before Linux 6.7, EINVAL where it
        // lacks the flags or categories.
        if let Some(r) = ranges.first() {
            let mut out = Vec::new();
            if let Err(e) = w.query(r.start..r.end, Query::Written, 0, &mut out) {
                return match e.raw_os_error() {
                    Some(libc::ENOTTY | libc::EINVAL | libc::EPERM) => Ok(Err(format!(
                        "PAGEMAP_SCAN cannot report written pages here ({e}): it needs Linux 6.7 or later"
                    ))),
                    _ => Err(TrackError::Io {
                        context: "PAGEMAP_SCAN".into(),
                        source: e,
                    }),
                };
            }
        }
        Ok(Ok(w))
    }

    /// Write-protects `r` (markers on empty entries included).
    fn protect(&self, r: Range<u64>) -> std::io::Result<()> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange {
                start: r.start,
                len: r.end - r.start,
            },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        // SAFETY: wp is a valid uffdio_writeprotect for a registered range.
        if unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_WRITEPROTECT, &mut wp) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Appends the pages of `r` matching `q` to `out`, calling again from
    /// `walk_end` while the output buffer fills up. `flags` adds
    /// `PM_SCAN_WP_MATCHING` to re-arm what it reports.
    fn query(
        &mut self,
        r: Range<u64>,
        q: Query,
        flags: u64,
        out: &mut Vec<Range<u64>>,
    ) -> std::io::Result<()> {
        let (inverted, mask, ret) = match q {
            Query::Written => (0, PAGE_IS_WRITTEN, PAGE_IS_WRITTEN),
            Query::Empty => (
                PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ),
        };
        let mut at = r.start;
        while at < r.end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: flags | PM_SCAN_CHECK_WPASYNC,
                start: at,
                end: r.end,
                vec: self.buf.as_mut_ptr() as usize as u64,
                vec_len: self.buf.len() as u64,
                category_inverted: inverted,
                category_mask: mask,
                return_mask: ret,
                ..PmScanArg::default()
            };
            // SAFETY: arg is a valid pm_scan_arg whose vec points to
            // vec_len writable page_region structs owned by self.buf.
            let n = unsafe { libc::ioctl(self.pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = usize::try_from(n).unwrap_or(0).min(self.buf.len());
            out.extend(self.buf[..n].iter().map(|p| p.start..p.end));
            if arg.walk_end <= at || arg.walk_end > r.end {
                // The kernel always moves forward when it has room for one
                // region; anything else would loop for ever.
                return Err(std::io::Error::other(format!(
                    "PAGEMAP_SCAN stopped at {:#x}, starting from {at:#x}",
                    arg.walk_end
                )));
            }
            at = arg.walk_end;
        }
        Ok(())
    }

    /// The written pages of every range; with `rearm`, protected again.
    pub(super) fn scan(
        &mut self,
        ranges: &[Range<u64>],
        rearm: bool,
    ) -> Result<Vec<Range<u64>>, TrackError> {
        let mut out = Vec::new();
        let flags = if rearm { PM_SCAN_WP_MATCHING } else { 0 };
        for r in ranges {
            let fail = |e: std::io::Error, what: &str| match e.raw_os_error() {
                Some(libc::EPERM) => TrackError::Replaced { range: r.clone() },
                _ => TrackError::Io {
                    context: format!("PAGEMAP_SCAN of {:#x}-{:#x} for {what}", r.start, r.end),
                    source: e,
                },
            };
            self.query(r.clone(), Query::Written, flags, &mut out)
                .map_err(|e| fail(e, "written pages"))?;
            let mut empty = Vec::new();
            self.query(r.clone(), Query::Empty, 0, &mut empty)
                .map_err(|e| fail(e, "dropped pages"))?;
            if rearm {
                for e in &empty {
                    self.protect(e.clone()).map_err(|source| TrackError::Io {
                        context: format!(
                            "write-protecting dropped pages {:#x}-{:#x}",
                            e.start, e.end
                        ),
                        source,
                    })?;
                }
            }
            out.extend(empty);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The skip protocol: a test that cannot run here says so, and fails
    /// where everything is required (`MEMIMG_REQUIRE_ALL`).
    fn skip(test: &str, why: &str) {
        if std::env::var_os("MEMIMG_REQUIRE_ALL").is_some_and(|v| !v.is_empty()) {
            panic!("would skip: {why}");
        }
        if let Some(log) = std::env::var_os("MEMIMG_SKIP_LOG").filter(|v| !v.is_empty()) {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap();
            writeln!(f, "{test}\t{}", why.replace(['\n', '\t'], " ")).unwrap();
        }
        eprintln!("skipped: {why}");
    }

    /// The scan for empty entries finds what `MADV_DONTNEED` dropped (a few
    /// entries of a page table, and a whole 2 MiB block whose page table
    /// the kernel may free) and nothing else: not the pages never touched,
    /// whose protection markers read as swapped. Kernels that report holes
    /// as written never need it after the written scan, so it is tested
    /// alone here.
    #[test]
    fn the_empty_scan_finds_dropped_pages_only() {
        const MB2: usize = 2 << 20;
        let len = 4 * MB2;
        // Unmapped at the end.
        let raw = crate::test_map_anon(len + MB2, libc::PROT_READ | libc::PROT_WRITE);
        let base = (raw as usize).next_multiple_of(MB2);
        let ps = 4096;
        // The first half populated, the second never touched.
        for p in 0..len / 2 / ps {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_volatile((base + p * ps) as *mut u8, 1) };
        }
        let r = base as u64..(base + len) as u64;
        let mut w = match Wp::start(std::slice::from_ref(&r), 2).unwrap() {
            Ok(w) => w,
            Err(why) => return skip("track::wp::the_empty_scan_finds_dropped_pages_only", &why),
        };
        let mut out = Vec::new();
        w.query(r.clone(), Query::Empty, 0, &mut out).unwrap();
        assert_eq!(out, vec![], "nothing dropped yet");
        let drop_pages = |first: usize, n: usize| {
            // SAFETY: a range of our own mapping.
            let rc = unsafe {
                libc::madvise(
                    (base + first * ps) as *mut libc::c_void,
                    n * ps,
                    libc::MADV_DONTNEED,
                )
            };
            assert_eq!(rc, 0);
        };
        drop_pages(10, 3);
        drop_pages(512, 512);
        w.query(r.clone(), Query::Empty, 0, &mut out).unwrap();
        let a = base as u64;
        let p = |n: u64| a + n * 4096;
        assert_eq!(out, vec![p(10)..p(13), p(512)..p(1024)]);
        // Re-armed by the full scan, they are not empty any more.
        let found = w.scan(std::slice::from_ref(&r), true).unwrap();
        assert!(found.contains(&(p(10)..p(13))), "{found:x?}");
        out.clear();
        w.query(r, Query::Empty, 0, &mut out).unwrap();
        assert_eq!(out, vec![]);
        drop(w);
        // SAFETY: our own mapping.
        unsafe { libc::munmap(raw, len + MB2) };
    }

    /// `_IOC(dir, type, nr, size)` of `<asm-generic/ioctl.h>`.
    const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> libc::c_ulong {
        (dir << 30 | (size as u64) << 16 | ty << 8 | nr) as libc::c_ulong
    }
    const RW: u64 = 3;

    #[test]
    fn the_marker_entry_is_swapped_and_write_protected() {
        let Some(e) = marker_entry() else {
            return skip(
                "track::wp::the_marker_entry_is_swapped_and_write_protected",
                "no userfaultfd write-protection here",
            );
        };
        assert_eq!(e >> 62, 1, "swapped, not present: {e:#x}");
        assert_eq!(e >> 57 & 1, 1, "uffd-wp bit: {e:#x}");
    }

    #[test]
    fn ioctl_numbers_match_the_struct_sizes() {
        use std::mem::size_of;
        assert_eq!(size_of::<UffdioApi>(), 24);
        assert_eq!(size_of::<UffdioRegister>(), 32);
        assert_eq!(size_of::<UffdioWriteprotect>(), 24);
        assert_eq!(size_of::<PmScanArg>(), 96);
        assert_eq!(size_of::<PageRegion>(), 24);
        assert_eq!(UFFDIO_API, ioc(RW, 0xAA, 0x3F, size_of::<UffdioApi>()));
        assert_eq!(
            UFFDIO_REGISTER,
            ioc(RW, 0xAA, 0x00, size_of::<UffdioRegister>())
        );
        assert_eq!(
            UFFDIO_WRITEPROTECT,
            ioc(RW, 0xAA, 0x06, size_of::<UffdioWriteprotect>())
        );
        assert_eq!(
            PAGEMAP_SCAN,
            ioc(RW, b'f' as u64, 16, size_of::<PmScanArg>())
        );
        assert_eq!(USERFAULTFD_IOC_NEW, ioc(0, 0xAA, 0x00, 0));
    }
}
