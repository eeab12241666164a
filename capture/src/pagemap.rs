//! `/proc/PID/pagemap`: which pages of a range are resident, swapped, or
//! were never touched.

use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// Page is present in RAM.
pub const PRESENT: u64 = 1 << 63;
/// Page is swapped out.
pub const SWAPPED: u64 = 1 << 62;
/// Page is a file page or shared anonymous memory (not a private copy).
pub const FILE_OR_SHARED: u64 = 1 << 61;

/// An open pagemap. When the kernel refuses it, every page is reported as
/// present, so the capture reads everything instead of skipping anything.
#[derive(Debug)]
pub struct Pagemap {
    file: Option<File>,
    page_size: u64,
    /// `PAGEMAP_SCAN` works here (Linux 6.7 and later); unknown until tried.
    scan: Cell<Option<bool>>,
}

/// `struct pm_scan_arg` of `<linux/fs.h>`.
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

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

impl Pagemap {
    /// Opens `/proc/PID/pagemap`.
    pub fn open(pid: i32, page_size: u64) -> Pagemap {
        Pagemap {
            file: File::open(format!("/proc/{pid}/pagemap")).ok(),
            page_size,
            scan: Cell::new(None),
        }
    }

    /// The first page in `start..end` that is present or swapped: `Some(None)`
    /// when there is none, `None` when the kernel cannot say cheaply (no
    /// `PAGEMAP_SCAN`). It walks page tables, not pages, so a large untouched
    /// range costs next to nothing.
    pub fn next_resident(&self, start: u64, end: u64) -> Option<Option<u64>> {
        self.scan_first(start, end, 0)
    }

    /// As [`Pagemap::next_resident`], leaving out pages mapped to the shared
    /// zero page (a read of memory never written maps it): the first page
    /// that may hold data.
    pub fn next_data(&self, start: u64, end: u64) -> Option<Option<u64>> {
        self.scan_first(start, end, PAGE_IS_PFNZERO)
    }

    /// The first present or swapped page in `start..end` that has none of
    /// the categories in `without`.
    fn scan_first(&self, start: u64, end: u64, without: u64) -> Option<Option<u64>> {
        if self.scan.get() == Some(false) {
            return None;
        }
        let f = self.file.as_ref()?;
        let mut out = [PageRegion::default(); 1];
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start,
            end,
            vec: out.as_mut_ptr() as usize as u64,
            vec_len: 1,
            // Stop at the first page found. Without a limit the kernel
            // goes on walking to extend the one region it reports, to the
            // end of the run of matching pages: for a resident range that
            // is the rest of it, and a capture that asks once per window
            // walked its regions' page tables over and over.
            max_pages: 1,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            // A page matches when (categories ^ inverted) & mask == mask:
            // here, when it has none of `without`.
            category_inverted: without,
            category_mask: without,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ..PmScanArg::default()
        };
        // SAFETY: arg is a valid pm_scan_arg whose vec points to one
        // writable page_region, as vec_len says.
        let n = unsafe { libc::ioctl(f.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
        if n < 0 {
            self.scan.set(Some(false));
            return None;
        }
        self.scan.set(Some(true));
        Some((n > 0).then_some(out[0].start))
    }

    /// Fills `out` with the entries of the pages from `addr` on, one per page.
    pub fn read(&self, addr: u64, out: &mut Vec<u64>, pages: usize) {
        out.clear();
        out.resize(pages, PRESENT);
        let Some(f) = &self.file else { return };
        let mut bytes = vec![0u8; pages * 8];
        let off = addr / self.page_size * 8;
        let mut done = 0usize;
        while done < bytes.len() {
            match f.read_at(&mut bytes[done..], off + done as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
        for (e, b) in out.iter_mut().zip(bytes[..done].chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            *e = u64::from_ne_bytes(a);
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
mod tests {
    use super::*;

    /// `uname -r` as (major, minor).
    fn kernel_version() -> (u32, u32) {
        let r = String::from_utf8(crate::procfs::kernel_release()).unwrap();
        let mut it = r.split(|c: char| !c.is_ascii_digit());
        let major = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let minor = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        (major, minor)
    }

    #[test]
    fn own_pages() {
        let ps = u64::from(memimg::page_size());
        let pm = Pagemap::open(i32::try_from(std::process::id()).unwrap(), ps);
        assert!(pm.file.is_some(), "/proc/self/pagemap cannot be opened");
        let v = vec![1u8; 4 * ps as usize];
        let addr = v.as_ptr() as u64 / ps * ps;
        let mut out = Vec::new();
        pm.read(addr + ps, &mut out, 2);
        assert!(out.iter().all(|e| e & PRESENT != 0), "{out:x?}");
        // An untouched mapping has no resident page. (When pagemap cannot be
        // read, `read` reports every page present: this catches it.)
        let len = 64 << 20;
        // Never touched, then unmapped.
        let p = crate::test_map_anon(len, libc::PROT_READ);
        let a = p as u64;
        pm.read(a, &mut out, 16);
        assert!(out.iter().all(|e| e & PRESENT == 0), "{out:x?}");
        // PAGEMAP_SCAN came with Linux 6.7.
        if kernel_version() >= (6, 7) {
            assert_eq!(
                pm.next_resident(addr + ps, addr + 3 * ps),
                Some(Some(addr + ps))
            );
            assert_eq!(pm.next_resident(a, a + len as u64), Some(None));
        } else {
            crate::test_skip(
                "pagemap::tests::own_pages",
                "PAGEMAP_SCAN needs Linux 6.7; only the per-page entries were checked",
            );
        }
        // SAFETY: our own mapping.
        unsafe { libc::munmap(p, len) };
    }
}
