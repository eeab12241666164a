//! The `Checksums` method: an XXH3-128 checksum of every piece of the
//! tracked ranges, compared with the checksums of the last take.
//!
//! Pieces are `piece` bytes from the start of each range (the last one may
//! be shorter). Memory is read with `process_vm_readv` on this process into
//! a piece-sized buffer, not through a pointer: a range the program unmapped
//! then fails with `EFAULT`, an error, instead of a crash. The copy costs:
//! reading 256 MiB this way and hashing it took 1.6 times as long as hashing
//! it in place (one thread, on a loaded machine). Pieces are hashed in
//! parallel on rayon's pool.

use std::ops::Range;

use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_128;

use super::{check_mapped, TrackError};

pub(super) struct Sums {
    piece: u64,
    /// The checksums of each range's pieces at the last take.
    sums: Vec<Vec<u128>>,
}

/// Reads `buf.len()` bytes at `addr` of this process's memory.
fn read_own(addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        let remote = libc::iovec {
            iov_base: crate::ptr_of(addr + done as u64),
            iov_len: buf.len() - done,
        };
        // SAFETY: local describes writable memory we own; the kernel checks
        // the remote range and fails with EFAULT where it is not mapped.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        match n {
            n if n > 0 => done += usize::try_from(n).unwrap_or(0),
            0 => return Err(std::io::Error::from_raw_os_error(libc::EFAULT)),
            _ => return Err(std::io::Error::last_os_error()),
        }
    }
    Ok(())
}

/// The checksums of the pieces of `r`.
fn hash_range(r: &Range<u64>, piece: u64) -> Result<Vec<u128>, TrackError> {
    let len = r.end - r.start;
    let count = len.div_ceil(piece);
    let piece_len =
        usize::try_from(piece).map_err(|_| TrackError::BadOption("piece_size too large"))?;
    (0..count)
        .into_par_iter()
        .map_init(
            || vec![0u8; piece_len],
            |buf, i| {
                let at = r.start + i * piece;
                let n = usize::try_from(piece.min(r.end - at)).unwrap_or(piece_len);
                read_own(at, &mut buf[..n]).map_err(|source| match check_mapped(r) {
                    Err(e @ TrackError::Unmapped { .. }) => e,
                    _ => TrackError::Io {
                        context: format!("reading tracked memory at {at:#x}"),
                        source,
                    },
                })?;
                Ok(xxh3_128(&buf[..n]))
            },
        )
        .collect()
}

impl Sums {
    /// Takes the first checksums of `ranges` (sorted, checked, mapped).
    pub(super) fn start(ranges: &[Range<u64>], piece: u64) -> Result<Sums, TrackError> {
        let sums = ranges
            .iter()
            .map(|r| hash_range(r, piece))
            .collect::<Result<_, _>>()?;
        Ok(Sums { piece, sums })
    }

    /// The pieces whose checksum changed since the last take; with `rearm`,
    /// the new checksums become the reference.
    pub(super) fn scan(
        &mut self,
        ranges: &[Range<u64>],
        rearm: bool,
    ) -> Result<Vec<Range<u64>>, TrackError> {
        let mut out = Vec::new();
        let mut fresh = Vec::with_capacity(ranges.len());
        for (r, old) in ranges.iter().zip(&self.sums) {
            let now = hash_range(r, self.piece)?;
            for (i, (a, b)) in (0u64..).zip(old.iter().zip(&now)) {
                if a != b {
                    let at = r.start + i * self.piece;
                    out.push(at..(at + self.piece).min(r.end));
                }
            }
            fresh.push(now);
        }
        if rearm {
            self.sums = fresh;
        }
        Ok(out)
    }
}
