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
use std::sync::atomic::{AtomicBool, Ordering};

/// The most iovecs one `process_vm_readv` takes (`IOV_MAX` on Linux).
const IOV_MAX: usize = 1024;

/// From this many bytes in one call, a read is split in two halves read on
/// two threads (when the rayon pool has two). One thread copying every
/// page was the longest part of a capture with a parent: `perf record -a`
/// of one from a fork snapshot (read through `/proc/PID/mem`, which copies
/// each page twice: into a kernel page, then out to the caller) put 26% of
/// the samples in the copies and 39% on an idle core; one without the fork
/// (`process_vm_readv`), 27% and 41%. 1 MiB.
const SPLIT_MIN: usize = 1 << 20;

/// Through `/proc/PID/mem`, with digests, runs are read and hashed in
/// pieces of this many bytes, so that each piece is hashed while it is
/// still in the core's cache. Before, a capture with a parent hashed each
/// 4 MiB window in a pass of its own after it was read: 87 to 89 ms of a
/// 300 ms capture of 1 GiB went to that pass and to the comparing and
/// writing after it, and 44 to 48 ms once the hashing moved here. 256 KiB.
pub const HASH_PIECE: usize = 256 << 10;

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
    /// unspecified), in address order.
    ///
    /// From [`SPLIT_MIN`] bytes on, the runs are read in two halves of
    /// about equal bytes, split at a page, on two threads (`rayon::join`).
    ///
    /// With `digests` (one per page of `buf`), each page read is also
    /// hashed (`xxh3_64`, [`memimg::page_digests_of`]) into its entry, by
    /// the thread that read it, right after: through `/proc/PID/mem`, in
    /// pieces of [`HASH_PIECE`], while the piece is in the cache.
    ///
    /// # Errors
    /// [`ReadError::Gone`] when the process disappeared.
    pub fn read(
        &mut self,
        runs: &[Run],
        buf: &mut [u8],
        via: Via,
        digests: Option<&mut [u64]>,
        failed: &mut dyn FnMut(u64),
    ) -> Result<(), ReadError> {
        let total: usize = runs.iter().map(|r| r.len).sum();
        let split = total >= SPLIT_MIN && rayon::current_num_threads() > 1;
        // Opened before the threads start, for the pages process_vm_readv
        // cannot read (and for every page, with Via::ProcMem).
        if self.mem.is_none() {
            self.mem = File::open(format!("/proc/{}/mem", self.pid)).ok();
        }
        let st = Reading {
            pid: self.pid,
            ps: self.page_size,
            mem: self.mem.as_ref(),
            vm: AtomicBool::new(!self.pread_only),
        };
        let bad = if split {
            let (first, second) = halves(runs, total, self.page_size);
            // Runs are disjoint and in buffer order: the second half lies
            // past the first one's bytes.
            let cut = second.first().map_or(buf.len(), |r| r.local);
            let (a, b) = buf.split_at_mut(cut);
            let (da, db) = match digests {
                Some(d) => {
                    let (x, y) = d.split_at_mut((cut / self.page_size).min(d.len()));
                    (Some(x), Some(y))
                }
                None => (None, None),
            };
            let (ra, rb) = rayon::join(
                || st.read(&first, a, 0, via, da),
                || st.read(&second, b, cut, via, db),
            );
            ra.and_then(|mut x| {
                x.extend(rb?);
                Ok(x)
            })
        } else {
            st.read(runs, buf, 0, via, digests)
        };
        self.pread_only = !st.vm.load(Ordering::Relaxed);
        for x in bad? {
            failed(x);
        }
        Ok(())
    }
}

/// `runs` (of `total` bytes) cut in two halves of about equal bytes, at a
/// page.
fn halves(runs: &[Run], total: usize, ps: usize) -> (Vec<Run>, Vec<Run>) {
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
    (first, second)
}

/// What the threads of one [`MemReader::read`] share.
struct Reading<'m> {
    pid: i32,
    ps: usize,
    /// `/proc/PID/mem`, when it could be opened.
    mem: Option<&'m File>,
    /// `process_vm_readv` may still be used: cleared when it refuses the
    /// whole process.
    vm: AtomicBool,
}

impl Reading<'_> {
    /// Reads `runs` into `buf`, which starts at offset `base` of the
    /// caller's buffer, and hashes each page into `digests` (one per page of
    /// `buf`) when given; returns the pages that could not be read.
    fn read(
        &self,
        runs: &[Run],
        buf: &mut [u8],
        base: usize,
        via: Via,
        mut digests: Option<&mut [u64]>,
    ) -> Result<Vec<u64>, ReadError> {
        let mut bad = Vec::new();
        let failed = &mut |a| bad.push(a);
        let ps = self.ps;
        // Without digests, each run is one read.
        let step = if digests.is_some() {
            HASH_PIECE
        } else {
            usize::MAX
        };
        // The format's own page digests (what a link's index holds).
        let ps32 = u32::try_from(ps).unwrap_or(u32::MAX);
        let mut hash = |buf: &[u8], at: usize, len: usize| {
            if let Some(d) = digests.as_deref_mut() {
                let found = memimg::page_digests_of(&buf[at..at + len], ps32);
                for (slot, g) in d[at / ps..].iter_mut().zip(found) {
                    *slot = g;
                }
            }
        };
        if via == Via::ProcMem {
            for r in runs {
                let at = r.local - base;
                let mut done = 0;
                while done < r.len {
                    let n = (r.len - done).min(step);
                    let piece = at + done..at + done + n;
                    self.pread_run(r.addr + done as u64, &mut buf[piece], failed)?;
                    hash(buf, at + done, n);
                    done += n;
                }
            }
            return Ok(bad);
        }
        let mut i = 0;
        // Bytes of runs[i] already read (a partial transfer).
        let mut skip = 0usize;
        while i < runs.len() {
            if !self.vm.load(Ordering::Relaxed) {
                let r = runs[i];
                let at = r.local - base;
                self.pread_run(
                    r.addr + skip as u64,
                    &mut buf[at + skip..at + r.len],
                    failed,
                )?;
                i += 1;
                skip = 0;
                continue;
            }
            let end = (i + IOV_MAX).min(runs.len());
            let mut local = Vec::with_capacity(end - i);
            let mut remote = Vec::with_capacity(end - i);
            let ptr = buf.as_mut_ptr();
            let mut want = 0usize;
            for (k, r) in runs[i..end].iter().enumerate() {
                let s = if k == 0 { skip } else { 0 };
                let at = r.local - base;
                assert!(at + r.len <= buf.len(), "run outside the buffer");
                // SAFETY: at + r.len ≤ buf.len() (asserted above), so the
                // pointer stays inside buf.
                let p = unsafe { ptr.add(at + s) };
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
                        // Refused for the whole process: /proc/PID/mem from
                        // here on.
                        self.vm.store(false, Ordering::Relaxed);
                        continue;
                    }
                    _ => {
                        // The first page of the batch failed (EFAULT): read
                        // it through /proc/PID/mem and go on after it.
                        let r = runs[i];
                        let at = r.local - base + skip;
                        self.pread_run(r.addr + skip as u64, &mut buf[at..at + self.ps], failed)?;
                        skip += self.ps;
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
            // A partial transfer: it stopped at a page it could not read.
            // Advance past what was read; the next call starts at that page.
            let mut left = n;
            loop {
                let r = runs[i];
                let room = r.len - skip;
                if left < room {
                    // Reads stop at page boundaries.
                    skip += left / self.ps * self.ps;
                    break;
                }
                left -= room;
                i += 1;
                skip = 0;
            }
        }
        for r in runs {
            hash(buf, r.local - base, r.len);
        }
        Ok(bad)
    }

    /// Reads `buf.len()` bytes at `addr` through `/proc/PID/mem`, reporting
    /// each page it cannot read to `failed`.
    fn pread_run(
        &self,
        addr: u64,
        buf: &mut [u8],
        failed: &mut dyn FnMut(u64),
    ) -> Result<(), ReadError> {
        let ps = self.ps;
        let Some(mem) = self.mem else {
            if !crate::procfs::alive(self.pid) {
                return Err(ReadError::Gone);
            }
            for p in (0..buf.len()).step_by(ps) {
                failed(addr + p as u64);
            }
            return Ok(());
        };
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
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
mod tests {
    use super::*;

    #[test]
    fn halves_cut_at_a_page_and_cover_every_run() {
        let ps = 4096;
        let runs = [
            Run {
                addr: 0x10_0000,
                len: 3 * ps,
                local: 0,
            },
            Run {
                addr: 0x20_0000,
                len: 7 * ps,
                local: 3 * ps,
            },
            Run {
                addr: 0x30_0000,
                len: ps,
                local: 10 * ps,
            },
        ];
        let (a, b) = halves(&runs, 11 * ps, ps);
        // Half of 11 pages, at a page: 5 pages in the first half.
        assert_eq!(a.iter().map(|r| r.len).sum::<usize>(), 5 * ps);
        assert_eq!(
            a,
            [
                Run {
                    addr: 0x10_0000,
                    len: 3 * ps,
                    local: 0
                },
                Run {
                    addr: 0x20_0000,
                    len: 2 * ps,
                    local: 3 * ps
                },
            ]
        );
        assert_eq!(
            b,
            [
                Run {
                    addr: 0x20_2000,
                    len: 5 * ps,
                    local: 5 * ps
                },
                Run {
                    addr: 0x30_0000,
                    len: ps,
                    local: 10 * ps
                },
            ]
        );
    }

    /// A read of this process's own memory large enough to be split, with
    /// an unmapped page in the middle of the second half: every other byte
    /// read, that page reported, both ways; with digests, every page read
    /// hashed into its own entry.
    #[test]
    fn a_split_read_reads_every_byte_and_reports_a_hole() {
        let ps = memimg::page_size() as usize;
        let len = 4 << 20;
        let p = crate::test_map_anon(len, libc::PROT_READ | libc::PROT_WRITE);
        let base = p as u64;
        // SAFETY: the mapping just made, len bytes, ours alone.
        let mem = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
        for (i, b) in mem.iter_mut().enumerate() {
            *b = (i / 7) as u8;
        }
        let want = mem.to_vec();
        let hole = base + (3 * len / 4) as u64 / ps as u64 * ps as u64;
        // SAFETY: one page inside our mapping, no longer used through mem.
        let unmapped = unsafe { libc::munmap(hole as usize as *mut libc::c_void, ps) };
        assert_eq!(unmapped, 0);
        // Two runs: the first MiB, then the rest (the split falls in the
        // second run).
        let runs = [
            Run {
                addr: base,
                len: 1 << 20,
                local: 0,
            },
            Run {
                addr: base + (1 << 20),
                len: len - (1 << 20),
                local: 1 << 20,
            },
        ];
        let want_digests: Vec<u64> = memimg::page_digests_of(&want, ps as u32).collect();
        for (via, digested) in [
            (Via::VmReadv, false),
            (Via::ProcMem, false),
            (Via::VmReadv, true),
            (Via::ProcMem, true),
        ] {
            let mut r = MemReader::new(std::process::id() as i32, ps);
            let mut buf = vec![0u8; len];
            let mut digests = vec![0u64; len / ps];
            let mut failed = Vec::new();
            let d = if digested {
                Some(&mut digests[..])
            } else {
                None
            };
            r.read(&runs, &mut buf, via, d, &mut |a| failed.push(a))
                .unwrap_or_else(|_| panic!("{via:?}: the process is gone"));
            assert_eq!(failed, [hole], "{via:?}");
            let h = (hole - base) as usize;
            assert!(buf[..h] == want[..h], "{via:?}: before the hole");
            assert!(buf[h + ps..] == want[h + ps..], "{via:?}: after the hole");
            for (i, (got, want)) in digests.iter().zip(&want_digests).enumerate() {
                if i == h / ps {
                    continue;
                }
                if digested {
                    assert_eq!(got, want, "{via:?}: the digest of page {i}");
                } else {
                    assert_eq!(*got, 0, "{via:?}: no digests asked for");
                }
            }
        }
        // SAFETY: the rest of our mapping.
        unsafe {
            libc::munmap(p, len);
        }
    }
}
