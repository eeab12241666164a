//! Reading another process's memory: `process_vm_readv` with large batches
//! of iovecs, falling back to `pread` on `/proc/PID/mem` for pages that it
//! refuses. Pages neither can read are reported, not fatal.
//!
//! `process_vm_readv` honours the target's protections: a page the process
//! made `PROT_NONE`, or mapped write-only, cannot be read that way although
//! it holds data. `/proc/PID/mem` reads such pages (the kernel reads them on
//! behalf of a tracer, as a debugger does), so [`MemReader::read`] takes
//! [`Via::ProcMem`] for regions the process cannot read itself.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The most iovecs one `process_vm_readv` takes (`IOV_MAX` on Linux).
const IOV_MAX: usize = 1024;

/// From this many bytes in one call, [`Via::ProcMem`] reads in two halves
/// on two threads (when the rayon pool has two): `/proc/PID/mem` copies
/// each page twice (into a kernel page, then out to the caller), and one
/// thread reading a fork snapshot that way was the longest part of a
/// capture with a parent (`perf record -a`: 26% of the samples in the
/// copies, 39% an idle core). 1 MiB.
const SPLIT_MIN: usize = 1 << 20;

/// A run of the target's memory to read into `buf[local..local + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Address in the target.
    pub addr: u64,
    /// Length in bytes, whole pages.
    pub len: usize,
    /// Offset in the local buffer.
    pub local: usize,
}

/// Reads another process's memory.
#[derive(Debug)]
pub struct MemReader {
    pid: i32,
    page_size: usize,
    mem: Option<File>,
    /// `process_vm_readv` refused the whole process: use `/proc/PID/mem` only.
    pread_only: bool,
}

/// Which interface reads a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Batched `process_vm_readv`, falling back to `/proc/PID/mem` page by
    /// page where it fails: the fast way, for readable regions.
    VmReadv,
    /// `pread` on `/proc/PID/mem` only: for regions without read permission,
    /// where `process_vm_readv` would fail on every page.
    ProcMem,
}

/// What went wrong when reading could not go on at all.
#[derive(Debug)]
pub enum ReadError {
    /// The process no longer exists.
    Gone,
}

impl MemReader {
    /// A reader for `pid`.
    pub fn new(pid: i32, page_size: usize) -> MemReader {
        MemReader {
            pid,
            page_size,
            mem: None,
            pread_only: false,
        }
    }

    /// Reads every run into `buf`. Calls `failed(addr)` for each page that
    /// could not be read by either means (its bytes in `buf` are then
    /// unspecified).
    ///
    /// # Errors
    /// [`ReadError::Gone`] when the process disappeared.
    pub fn read(
        &mut self,
        runs: &[Run],
        buf: &mut [u8],
        via: Via,
        failed: &mut dyn FnMut(u64),
    ) -> Result<(), ReadError> {
        if via == Via::ProcMem {
            let total: usize = runs.iter().map(|r| r.len).sum();
            if total >= SPLIT_MIN && rayon::current_num_threads() > 1 {
                let ps = self.page_size;
                if let Some(mem) = self.mem() {
                    return read_split(mem, ps, runs, total, buf, failed);
                }
            }
            for r in runs {
                self.pread_run(r.addr, &mut buf[r.local..r.local + r.len], failed)?;
            }
            return Ok(());
        }
        let mut i = 0;
        // Progress inside runs[i]: bytes already read.
        let mut skip = 0usize;
        while i < runs.len() {
            if self.pread_only {
                let r = runs[i];
                self.pread_run(
                    r.addr + skip as u64,
                    &mut buf[r.local + skip..r.local + r.len],
                    failed,
                )?;
                i += 1;
                skip = 0;
                continue;
            }
            let end = (i + IOV_MAX).min(runs.len());
            let mut local = Vec::with_capacity(end - i);
            let mut remote = Vec::with_capacity(end - i);
            let base = buf.as_mut_ptr();
            let mut want = 0usize;
            for (k, r) in runs[i..end].iter().enumerate() {
                let s = if k == 0 { skip } else { 0 };
                assert!(r.local + r.len <= buf.len(), "run outside the buffer");
                // SAFETY: r.local + r.len ≤ buf.len() (asserted above), so the
                // pointer stays inside buf.
                let p = unsafe { base.add(r.local + s) };
                local.push(libc::iovec {
                    iov_base: p.cast(),
                    iov_len: r.len - s,
                });
                remote.push(libc::iovec {
                    iov_base: crate::ptr_of(r.addr + s as u64),
                    iov_len: r.len - s,
                });
                want += r.len - s;
            }
            // SAFETY: the local iovecs point into buf, which we borrow
            // mutably, within its bounds; the remote ones are only addresses
            // in the other process, which the kernel checks. Both counts are
            // ≤ IOV_MAX.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            if n < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::ESRCH) => return Err(ReadError::Gone),
                    Some(libc::EPERM | libc::ENOSYS) => {
                        self.pread_only = true;
                        continue;
                    }
                    // EFAULT and friends: the first page is not readable
                    // this way. Try /proc/PID/mem for it, then go on.
                    _ => {
                        let r = runs[i];
                        let ps = self.page_size;
                        let at = r.local + skip;
                        self.pread_run(r.addr + skip as u64, &mut buf[at..at + ps], failed)?;
                        skip += ps;
                        if skip >= r.len {
                            i += 1;
                            skip = 0;
                        }
                        continue;
                    }
                }
            }
            let n = usize::try_from(n).unwrap_or(0);
            if n == want {
                i = end;
                skip = 0;
                continue;
            }
            // Partial: advance past what was read; the next call starts at
            // the failing page and takes the error path above.
            let mut left = n;
            loop {
                let r = runs[i];
                let room = r.len - skip;
                if left < room {
                    // Reads stop at page boundaries.
                    skip += left / self.page_size * self.page_size;
                    break;
                }
                left -= room;
                i += 1;
                skip = 0;
            }
        }
        Ok(())
    }

    fn mem(&mut self) -> Option<&File> {
        if self.mem.is_none() {
            self.mem = File::open(format!("/proc/{}/mem", self.pid)).ok();
        }
        self.mem.as_ref()
    }

    /// Reads `buf.len()` bytes at `addr` with pread, page by page past any
    /// failure.
    fn pread_run(
        &mut self,
        addr: u64,
        buf: &mut [u8],
        failed: &mut dyn FnMut(u64),
    ) -> Result<(), ReadError> {
        let ps = self.page_size;
        let pid = self.pid;
        let Some(mem) = self.mem() else {
            if !crate::procfs::alive(pid) {
                return Err(ReadError::Gone);
            }
            for p in (0..buf.len()).step_by(ps) {
                failed(addr + p as u64);
            }
            return Ok(());
        };
        pread_pages(mem, ps, addr, buf, failed)
    }
}

/// Reads `buf.len()` bytes at `addr` through `/proc/PID/mem` (`mem`),
/// reporting each page it cannot read to `failed`.
fn pread_pages(
    mem: &File,
    ps: usize,
    addr: u64,
    buf: &mut [u8],
    failed: &mut dyn FnMut(u64),
) -> Result<(), ReadError> {
    let mut done = 0usize;
    while done < buf.len() {
        match mem.read_at(&mut buf[done..], addr + done as u64) {
            Ok(n) if n > 0 => {
                done += n;
                if !done.is_multiple_of(ps) {
                    // Never happens in practice; keep page granularity.
                    continue;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(ReadError::Gone),
            _ => {
                // Ok(0) (the mm is gone) or an error for this page.
                failed(addr + (done / ps * ps) as u64);
                done = (done / ps + 1) * ps;
            }
        }
    }
    Ok(())
}

/// Reads `runs` (of `total` bytes) through `/proc/PID/mem` in two halves of
/// about equal bytes, split at a page, on two threads; then reports the
/// pages that could not be read, in address order.
fn read_split(
    mem: &File,
    ps: usize,
    runs: &[Run],
    total: usize,
    buf: &mut [u8],
    failed: &mut dyn FnMut(u64),
) -> Result<(), ReadError> {
    let half = total / 2 / ps * ps;
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut acc = 0usize;
    for r in runs {
        if acc >= half {
            second.push(*r);
        } else if acc + r.len <= half {
            first.push(*r);
        } else {
            let k = half - acc;
            first.push(Run { len: k, ..*r });
            second.push(Run {
                addr: r.addr + k as u64,
                len: r.len - k,
                local: r.local + k,
            });
        }
        acc += r.len;
    }
    // Runs are disjoint and in buffer order: the second half lies past the
    // first one's start.
    let cut = second.first().map_or(buf.len(), |r| r.local);
    let (a, b) = buf.split_at_mut(cut);
    let read = |pieces: &[Run], buf: &mut [u8], base: usize| {
        let mut bad = Vec::new();
        for r in pieces {
            let at = r.local - base;
            pread_pages(mem, ps, r.addr, &mut buf[at..at + r.len], &mut |x| {
                bad.push(x);
            })?;
        }
        Ok::<_, ReadError>(bad)
    };
    let (ra, rb) = rayon::join(|| read(&first, a, 0), || read(&second, b, cut));
    for x in ra?.into_iter().chain(rb?) {
        failed(x);
    }
    Ok(())
}
