//! Load order in a lazy restore: recording which chunks a restored program
//! touches first, and fetching an optimized image's working set first.
//!
//! **Recording.** With [`super::RestoreOptions::record_profile`], the handler
//! notes the chunk of each fault on a page that still waited for the image,
//! the first time that chunk is touched, until the program says it is ready
//! ([`super::LazyHandle::profile_ready`]) or the time given passes. Only
//! faults count: while it records, the handler prefetches nothing (unless
//! the program forks or the handle is dropped, which place every page), so
//! each chunk the program needs is seen as a fault. The result is a
//! [`memimg::Profile`] (chunk numbers in first-touch order, with the image
//! id), which `imgtool optimize` lays the image out by.
//!
//! **Using it.** When the image has a load order (spec.md, *Load order*),
//! the handler reads the whole working set with one read (it lies back to
//! back at the front of the data) the first time it needs one of its chunks,
//! and places the profile's chunks in profile order between faults, before
//! anything else; then it goes on as without a profile. Chunks taken from
//! that buffer are checked exactly as chunks read from the file
//! ([`memimg::Image::decode_extent_with`]).
//!
//! For an image in object storage the handler only places: the fetch
//! threads of `fetch.rs` fetch the working set (one ranged GET for the whole
//! range, or chunk by chunk in profile order when it is placed in the
//! background) and decode it from that buffer the same way; [`Ordered`] is
//! the local source.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memimg::{Extent, Image, Profile};

use super::lazy::ChunkSource;

/// Records the first touch of each chunk, by faults, in order.
#[derive(Debug)]
pub(crate) struct Recorder {
    image_id: [u8; 16],
    until: Option<Instant>,
    state: Mutex<Recording>,
}

#[derive(Debug)]
struct Recording {
    on: bool,
    seen: Vec<bool>,
    order: Vec<u64>,
}

impl Recorder {
    /// Records for an image of `chunks` chunks, for at most `within`.
    pub(crate) fn new(image_id: [u8; 16], chunks: usize, within: Duration) -> Recorder {
        Recorder {
            image_id,
            until: Instant::now().checked_add(within),
            state: Mutex::new(Recording {
                on: true,
                seen: vec![false; chunks],
                order: Vec::new(),
            }),
        }
    }

    /// True while it still records.
    pub(crate) fn recording(&self) -> bool {
        let on = self.state.lock().is_ok_and(|s| s.on);
        on && self.until.is_none_or(|u| Instant::now() < u)
    }

    /// A fault touched `chunk`.
    pub(crate) fn touch(&self, chunk: u64) {
        if !self.recording() {
            return;
        }
        if let Ok(mut s) = self.state.lock() {
            let Some(k) = usize::try_from(chunk).ok().filter(|&k| k < s.seen.len()) else {
                return;
            };
            if !std::mem::replace(&mut s.seen[k], true) {
                s.order.push(chunk);
            }
        }
    }

    /// Stops recording (the program is ready).
    pub(crate) fn stop(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.on = false;
        }
    }

    /// The profile so far; `None` when no chunk was touched.
    pub(crate) fn profile(&self) -> Option<Profile> {
        let s = self.state.lock().ok()?;
        (!s.order.is_empty()).then(|| Profile {
            image_id: self.image_id,
            chunks: s.order.clone(),
        })
    }
}

/// The image as a chunk source that reads the working set of an optimized
/// image with one read, the first time one of its chunks is needed, and
/// takes its chunks from that buffer until each has been fetched once.
pub(crate) struct Ordered {
    img: Image,
    /// The working set's file range, until it is read.
    range: Option<std::ops::Range<u64>>,
    /// Its bytes, once read, and the chunks of it not yet fetched.
    ws: Option<(u64, Vec<u8>)>,
    left: usize,
    /// For each chunk, whether the profile lists it.
    listed: Vec<bool>,
    /// Reads made for the working set (one, or none) and their bytes, for
    /// the handle's statistics.
    counts: Arc<[AtomicU64; 2]>,
}

impl Ordered {
    /// With `one_read`, the working set is read with one read when first
    /// needed; without, each chunk is read on its own (from the page cache,
    /// once the read-ahead asked for by [`read_ahead`] has brought it in).
    pub(crate) fn new(img: Image, counts: Arc<[AtomicU64; 2]>, one_read: bool) -> Ordered {
        let range = img.working_set_range().ok().flatten().filter(|_| one_read);
        let profile = img
            .load_order()
            .ok()
            .flatten()
            .map(<[u64]>::to_vec)
            .unwrap_or_default();
        let mut listed = vec![false; img.chunk_locs().len()];
        for &c in &profile {
            // The reader checked every number below the chunk count.
            if let Some(l) = usize::try_from(c).ok().and_then(|k| listed.get_mut(k)) {
                *l = true;
            }
        }
        Ordered {
            left: profile.len(),
            listed,
            img,
            range,
            ws: None,
            counts,
        }
    }

    fn in_profile(&self, chunk: u64) -> bool {
        usize::try_from(chunk)
            .ok()
            .and_then(|k| self.listed.get(k))
            .copied()
            .unwrap_or(false)
    }
}

impl ChunkSource for Ordered {
    fn fetch(&mut self, ext: &Extent, out: &mut [u8]) -> Result<(), memimg::Error> {
        if self.range.is_some() && self.in_profile(ext.chunk) {
            if let Some(r) = self.range.take() {
                // One read for the whole working set. If it fails, every
                // chunk is read on its own, as without a profile.
                if let Ok(b) = self.img.file_range(r.start, r.end - r.start) {
                    self.counts[0].fetch_add(1, Ordering::Relaxed);
                    self.counts[1].fetch_add(r.end - r.start, Ordering::Relaxed);
                    self.ws = Some((r.start, b.into_owned()));
                }
            }
        }
        let r = match &self.ws {
            Some((at, bytes)) => self.img.decode_extent_with(*at, bytes, ext, out),
            None => self.img.decode_extent(ext, out),
        };
        if self.ws.is_some() && self.in_profile(ext.chunk) {
            self.left = self.left.saturating_sub(1);
            if self.left == 0 {
                // Every chunk of it has been fetched: let the memory go.
                self.ws = None;
            }
        }
        r
    }
}

/// Asks the kernel to read the working set of an image with a load order
/// (one sequential range) into the page cache in the background, at once,
/// so that whatever reads it next (the one read, or chunk by chunk) finds it
/// there or on its way. Best effort: nothing happens when the file cannot be
/// opened or has no load order.
pub(crate) fn read_ahead(img: &Image) {
    use std::os::fd::AsRawFd;
    let (Some(path), Ok(Some(r))) = (img.path(), img.working_set_range()) else {
        return;
    };
    let Ok(f) = std::fs::File::open(path) else {
        return;
    };
    let (Ok(off), Ok(len)) = (
        libc::off_t::try_from(r.start),
        libc::off_t::try_from(r.end - r.start),
    ) else {
        return;
    };
    // SAFETY: posix_fadvise only reads its arguments; the descriptor is
    // open for the call's duration.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), off, len, libc::POSIX_FADV_WILLNEED) };
}
