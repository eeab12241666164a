//! `/proc/PID/pagemap`: which pages of a range are resident, swapped, or
//! were never touched.

use std::fs::File;
use std::os::unix::fs::FileExt;

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
}

impl Pagemap {
    /// Opens `/proc/PID/pagemap`.
    pub fn open(pid: i32, page_size: u64) -> Pagemap {
        Pagemap {
            file: File::open(format!("/proc/{pid}/pagemap")).ok(),
            page_size,
        }
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

    #[test]
    fn own_pages() {
        let ps = u64::from(memimg::page_size());
        let pm = Pagemap::open(i32::try_from(std::process::id()).unwrap(), ps);
        assert!(pm.file.is_some());
        let v = vec![1u8; 4 * ps as usize];
        let addr = v.as_ptr() as u64 / ps * ps;
        let mut out = Vec::new();
        pm.read(addr + ps, &mut out, 2);
        assert!(out.iter().all(|e| e & PRESENT != 0));
    }
}
