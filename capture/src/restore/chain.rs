//! Restoring a chain of incremental images (format 1.1): each page comes
//! from whichever link of the chain holds it (`Chain::segments`), with every
//! strategy.
//!
//! - mmap maps each run of raw pages straight from the file of the link
//!   that holds it (all links plain, uncompressed, local files);
//! - eager decodes each chunk a run needs once, from its link, and copies
//!   the runs it holds into place, in parallel;
//! - lazy serves each run on first touch from its link's chunk (a chunk
//!   that several runs share is decoded once for consecutive faults).
//!
//! A page whose parent is missing (a partial chain) or not captured fails
//! the restore before anything is mapped, naming the link and address:
//! nothing is ever restored from the wrong image.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use memimg::{Chain, Extent, Image, Region, Segment, SegmentKind};
use rayon::prelude::*;

use super::lazy::{ChunkSource, LazyHandle};
use super::{
    check, choose_strategy, prot_bits, usize_of, Reservation, RestoreOptions, Restored, Strategy,
    MADV_POPULATE_WRITE,
};
use crate::error::RestoreError;

/// Restores the content of `chain` (an image and its parents, see
/// [`memimg::Chain::open`]) into this process, as [`crate::restore`] does
/// an image: the image's machine facts and validation data are checked,
/// its regions reserved, then filled from the links that hold each page.
/// [`Strategy::Mmap`] needs every link holding a page to be a plain local
/// file with raw chunks; [`Strategy::Auto`] picks it when it can, else
/// eager. A chain of one full image restores as the image does.
///
/// # Errors
/// As [`crate::restore`]; [`RestoreError::Format`] with
/// `ParentRequired` naming the link when the chain is partial and a page
/// needs the missing parent.
pub fn restore_chain(chain: Chain, opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let t0 = Instant::now();
    let mut links = chain.into_links();
    for l in &mut links {
        // As for one image: stored checksums and tags are still checked.
        l.set_check_raw(false);
    }
    let first = links.remove(0);
    let chain = Chain::from_links(first, links)?;
    let img = chain.image();
    check(img, opts)?;
    let regions: Vec<Region> = img
        .regions()?
        .iter()
        .filter(|r| r.has_data())
        .cloned()
        .collect();
    let mut segs = Vec::new();
    for r in &regions {
        for s in chain.segments(r.info.start, r.info.end())? {
            match s.kind {
                SegmentKind::Data(_) => segs.push(s),
                SegmentKind::Zero => {}
                SegmentKind::ParentMissing => {
                    // The error a read gives: ParentRequired, naming the link.
                    let mut b = [0u8; 1];
                    let e = chain.read_at(s.start, &mut b).err().unwrap_or_else(|| {
                        memimg::Error::plain(memimg::ErrorKind::ParentRequired, "a parent is missing")
                    });
                    return Err(e.into());
                }
                _ => {
                    return Err(RestoreError::StrategyUnavailable {
                        strategy: opts.strategy.name(),
                        why: format!(
                            "region {} ({:#x}-{:#x}) has pages that were not captured (at {:#x}, link {})",
                            r.info.name_lossy(),
                            r.info.start,
                            r.info.end(),
                            s.start,
                            s.link
                        ),
                    })
                }
            }
        }
    }
    let not_mappable = mmap_unavailable(&chain, &segs);
    let strategy = choose_strategy(opts.strategy, not_mappable)?;
    let res = Reservation::new(&regions)?;
    let mut lazy = None;
    match strategy {
        Strategy::Mmap => {
            map_segments(&chain, &regions, &segs)?;
            res.protect(&regions)?;
        }
        Strategy::Eager => {
            decode_segments(&chain, &segs)?;
            res.protect(&regions)?;
        }
        _ => {
            res.protect(&regions)?;
            let (ps, piece) = (ps_of(img), u64::from(img.header().chunk_size));
            let units = units(&regions, &segs, ps, piece);
            lazy = Some(LazyHandle::start_source(
                ChainSource::new(chain, &segs),
                &units,
                &regions,
                u64::from(ps),
            )?);
        }
    }
    res.keep();
    Ok(Restored {
        strategy,
        regions: regions.into_iter().map(|r| r.info).collect(),
        elapsed: t0.elapsed(),
        lazy,
    })
}

/// Opens the chain of the image at `path` (parents found through the
/// hints, each opened with `opts.key`) and restores it, for
/// [`crate::restore`] of a child.
pub(super) fn restore_path(path: &Path, opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let chain = Chain::open(path, opts.key.as_ref(), &memimg::ChainOptions::default())?;
    restore_chain(chain, opts)
}

fn ps_of(img: &Image) -> u32 {
    img.header().page_size
}

/// Why the chain's data segments cannot be mapped from their files.
fn mmap_unavailable(chain: &Chain, segs: &[Segment]) -> Option<String> {
    let ps = ps_of(chain.image());
    if ps != memimg::page_size() {
        return Some("the image page size is not this machine's".into());
    }
    for (i, l) in chain.links().iter().enumerate() {
        if l.is_encrypted() {
            return Some(format!("link {i} of the chain is encrypted"));
        }
        if l.path().is_none() {
            return Some(format!("link {i} of the chain is not a local file"));
        }
    }
    for s in segs {
        if let SegmentKind::Data(e) = s.kind {
            if chain.links()[s.link].raw_file_offset(&e).is_none() {
                return Some(format!(
                    "the chunk at {:#x} (link {}) is compressed",
                    e.addr, s.link
                ));
            }
        }
    }
    None
}

/// Maps each data segment from its link's file, merging neighbours that
/// are adjacent in memory and in the same file.
fn map_segments(chain: &Chain, regions: &[Region], segs: &[Segment]) -> Result<(), RestoreError> {
    use std::os::unix::io::AsRawFd;
    let mut files = Vec::new();
    for l in chain.links() {
        let p = l.path().unwrap_or(Path::new(""));
        files.push(
            std::fs::File::open(p)
                .map_err(|e| RestoreError::io(format!("opening {}", p.display()), e))?,
        );
    }
    let prot_at = |addr: u64| {
        regions
            .iter()
            .find(|r| r.info.start <= addr && addr < r.info.end())
            .map_or(libc::PROT_READ, |r| prot_bits(r.info.prot))
    };
    let map = |(link, addr, off, len): (usize, u64, u64, u64)| -> Result<(), RestoreError> {
        let off = libc::off_t::try_from(off).map_err(|_| {
            RestoreError::io(
                "mapping",
                std::io::Error::from_raw_os_error(libc::EOVERFLOW),
            )
        })?;
        // SAFETY: addr..addr+len lies inside a region this restore reserved
        // (MAP_FIXED only replaces our own fresh mapping).
        let p = unsafe {
            libc::mmap(
                usize_of(addr) as *mut libc::c_void,
                usize_of(len),
                prot_at(addr),
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                files[link].as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(RestoreError::last_os(format!(
                "mapping {addr:#x}-{:#x} from link {link} of the chain",
                addr + len
            )));
        }
        Ok(())
    };
    let region_of = |a: u64| {
        regions
            .iter()
            .position(|r| r.info.start <= a && a < r.info.end())
    };
    let mut run: Option<(usize, u64, u64, u64)> = None;
    for s in segs {
        let SegmentKind::Data(e) = s.kind else {
            continue;
        };
        let img = &chain.links()[s.link];
        let off = img
            .raw_file_offset(&e)
            .ok_or_else(|| RestoreError::StrategyUnavailable {
                strategy: "mmap",
                why: format!("the chunk at {:#x} is not stored raw", e.addr),
            })?
            + (s.start - e.addr);
        let len = s.end - s.start;
        run = match run {
            Some((l, a, o, n))
                if l == s.link
                    && a + n == s.start
                    && o + n == off
                    && region_of(a) == region_of(s.start) =>
            {
                Some((l, a, o, n + len))
            }
            prev => {
                if let Some(p) = prev {
                    map(p)?;
                }
                Some((s.link, s.start, off, len))
            }
        };
    }
    if let Some(p) = run {
        map(p)?;
    }
    Ok(())
}

/// Address ranges `[start, end)` of the segments read from one extent.
type Pieces = Vec<(u64, u64)>;

/// Decodes each extent the segments need once, in parallel, and copies
/// its segments into place.
fn decode_segments(chain: &Chain, segs: &[Segment]) -> Result<(), RestoreError> {
    let ps = ps_of(chain.image());
    let mut groups: HashMap<(usize, u64), (Extent, Pieces)> = HashMap::new();
    for s in segs {
        if let SegmentKind::Data(e) = s.kind {
            groups
                .entry((s.link, e.addr))
                .or_insert_with(|| (e, Vec::new()))
                .1
                .push((s.start, s.end));
        }
    }
    let work: Vec<(usize, Extent, Pieces)> = groups
        .into_iter()
        .map(|((link, _), (e, v))| (link, e, v))
        .collect();
    work.par_iter().try_for_each(|(link, e, pieces)| {
        let whole = pieces.len() == 1 && pieces[0] == (e.addr, e.end(ps));
        if whole {
            // SAFETY: the extent lies inside a region reserved read-write by
            // this restore; segments do not overlap, so each task writes its
            // own bytes.
            let out = unsafe {
                std::slice::from_raw_parts_mut(usize_of(e.addr) as *mut u8, usize_of(e.len(ps)))
            };
            // SAFETY: our own read-write mapping, about to be overwritten.
            unsafe { libc::madvise(out.as_mut_ptr().cast(), out.len(), MADV_POPULATE_WRITE) };
            return chain.decode(*link, e, out).map_err(RestoreError::from);
        }
        let mut buf = vec![0u8; usize_of(e.len(ps))];
        chain.decode(*link, e, &mut buf)?;
        for &(a, b) in pieces {
            // SAFETY: as above: a..b is a segment of a reserved region that
            // no other task writes.
            let out =
                unsafe { std::slice::from_raw_parts_mut(usize_of(a) as *mut u8, usize_of(b - a)) };
            let from = usize_of(a - e.addr);
            out.copy_from_slice(&buf[from..from + out.len()]);
        }
        buf.fill(0);
        Ok(())
    })
}

/// The pieces a lazy restore of the chain places: each data segment, and
/// the rest of each region as zeros, in chunk-sized pieces.
fn units(
    regions: &[Region],
    segs: &[Segment],
    ps: u32,
    piece: u64,
) -> Vec<(u64, u64, Option<Extent>)> {
    let mut out = Vec::new();
    let zeros = |a: u64, b: u64, out: &mut Vec<(u64, u64, Option<Extent>)>| {
        let mut x = a;
        while x < b {
            let len = piece.min(b - x);
            out.push((x, len, None));
            x += len;
        }
    };
    let mut i = 0;
    for r in regions {
        let mut at = r.info.start;
        while i < segs.len() && segs[i].start < r.info.end() {
            let s = &segs[i];
            if let SegmentKind::Data(e) = s.kind {
                zeros(at, s.start, &mut out);
                // The segment as an extent of its own: ChainSource finds its
                // link and real extent by its address.
                let pages = u32::try_from((s.end - s.start) / u64::from(ps)).unwrap_or(u32::MAX);
                out.push((
                    s.start,
                    s.end - s.start,
                    Some(Extent {
                        addr: s.start,
                        page_count: pages,
                        ..e
                    }),
                ));
                at = s.end;
            }
            i += 1;
        }
        zeros(at, r.info.end(), &mut out);
    }
    out
}

/// A lazy restore's source of a chain's pages: each piece is a data
/// segment, found by its address, read from its link's extent (decoded
/// once while consecutive pieces share it).
struct ChainSource {
    chain: Chain,
    by_addr: HashMap<u64, (usize, Extent)>,
    cache: Option<((usize, u64), Vec<u8>)>,
}

impl ChainSource {
    fn new(chain: Chain, segs: &[Segment]) -> ChainSource {
        let by_addr = segs
            .iter()
            .filter_map(|s| match s.kind {
                SegmentKind::Data(e) => Some((s.start, (s.link, e))),
                _ => None,
            })
            .collect();
        ChainSource {
            chain,
            by_addr,
            cache: None,
        }
    }
}

impl ChunkSource for ChainSource {
    fn fetch(&mut self, ext: &Extent, out: &mut [u8]) -> Result<(), memimg::Error> {
        let ps = ps_of(self.chain.image());
        let (link, real) = *self.by_addr.get(&ext.addr).ok_or_else(|| {
            memimg::Error::plain(
                memimg::ErrorKind::InvalidInput,
                format!("no segment of the chain at {:#x}", ext.addr),
            )
        })?;
        if real.addr == ext.addr && real.page_count == ext.page_count {
            return self.chain.decode(link, &real, out);
        }
        let key = (link, real.addr);
        if self.cache.as_ref().map(|(k, _)| *k) != Some(key) {
            let mut buf = self.cache.take().map(|(_, b)| b).unwrap_or_default();
            buf.resize(usize_of(real.len(ps)), 0);
            self.chain.decode(link, &real, &mut buf)?;
            self.cache = Some((key, buf));
        }
        let from = usize_of(ext.addr - real.addr);
        let src = self
            .cache
            .as_ref()
            .and_then(|(_, b)| b.get(from..from + out.len()))
            .ok_or_else(|| {
                memimg::Error::plain(
                    memimg::ErrorKind::InvalidInput,
                    "a segment outside its extent",
                )
            })?;
        out.copy_from_slice(src);
        Ok(())
    }
}

impl Drop for ChainSource {
    fn drop(&mut self) {
        // Plaintext memory of the last chunk decoded.
        if let Some((_, b)) = &mut self.cache {
            b.fill(0);
        }
    }
}
