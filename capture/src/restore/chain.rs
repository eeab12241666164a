//! Restoring a chain of incremental images (format 1.1): each page comes
//! from whichever link of the chain holds it (`Chain::segments`), with every
//! strategy.
//!
//! Eager and mmap restores go link by link, deepest first (see `plan`): an
//! extent of a parent that its children override in part is placed over
//! its whole range, as a flattened image's chunk would be, and the
//! children's pages are laid over it afterwards (zeros a child recorded
//! there are cleared again). So a parent's chunk cut into pieces by
//! scattered changes costs one decode into place or one mapping, not one
//! per piece.
//!
//! - mmap maps each run of raw pages straight from the file of the link
//!   that holds it (all links plain, uncompressed, local files), runs of
//!   adjacent chunks of one file as one mapping, the deepest link's into
//!   free space with anonymous gaps between them (as for one image), the
//!   nearer links' over those; a run of at most
//!   [`MMAP_COPY_MAX_PAGES`] pages (a child's few changed pages) is copied
//!   into the private mapping instead of being mapped;
//! - eager decodes each chunk the chain shows once, from its link, in
//!   parallel: straight into place when the chain shows at least half of
//!   it, else into a buffer from which its pieces are copied;
//! - lazy serves each chunk-sized piece of a region on first touch,
//!   composed from the links that hold its pages (each extent that several
//!   runs share decoded once), so that a chain takes as many faults as its
//!   flattened image.
//!
//! A page whose parent is missing (a partial chain) or not captured fails
//! the restore before anything is mapped, naming the link and address:
//! nothing is ever restored from the wrong image.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use memimg::{Chain, Extent, Image, Region, Segment, SegmentKind};
use rayon::prelude::*;
use zeroize::Zeroizing;

use super::lazy::{ChunkSource, LazyHandle};
use super::{
    check, choose_strategy, place_run, prot_bits, usize_of, Pages, Reservation, RestoreOptions,
    Restored, Strategy, MADV_POPULATE_WRITE,
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
                // Zeros too: a restore clears them where a deeper link's
                // extent placed whole lies under them.
                SegmentKind::Data(_) | SegmentKind::Zero => segs.push(s),
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
    let strategy = choose_strategy(opts.strategy, || mmap_unavailable(&chain, &segs))?;
    let mut lazy = None;
    let res = match strategy {
        // The deepest link mapped into free space, the rest over it.
        Strategy::Mmap => map_segments(&chain, &regions, &segs)?,
        _ => Reservation::new(&regions)?,
    };
    match strategy {
        Strategy::Mmap => res.protect(&regions)?,
        Strategy::Eager => {
            decode_segments(&chain, &regions, &segs)?;
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

/// Address ranges `[start, end)` of the segments read from one extent.
type Pieces = Vec<(u64, u64)>;

/// One data extent of a link and how a restore places it.
struct Placement {
    link: usize,
    ext: Extent,
    /// The parts of `ext` the chain shows (its segments), in address order.
    pieces: Pieces,
    /// Placed over its whole range (decoded or mapped straight into place),
    /// the nearer links' pages laid over it afterwards; else only its
    /// pieces are placed.
    whole: bool,
}

impl Placement {
    /// The ranges this placement writes: the whole extent, or its pieces.
    fn ranges(&self, ps: u32) -> Pieces {
        if self.whole {
            vec![(self.ext.addr, self.ext.end(ps))]
        } else {
            self.pieces.clone()
        }
    }
}

/// What one link places, in the order of the restore.
#[derive(Default)]
struct Phase {
    placements: Vec<Placement>,
    /// Zero segments of this link that lie over an extent of a deeper link
    /// placed whole: they are cleared after it.
    zeros: Pieces,
}

/// The restore of a chain, link by link, deepest first: each data extent
/// the chain shows, placed whole or by pieces, and the zeros to clear over
/// the extents of deeper links placed whole. A link's phase writes only
/// ranges that no other extent of that link writes, so a phase's
/// placements may run in any order, in parallel; a phase runs after the
/// deeper ones, so the nearer links' pages end up on top.
///
/// `whole_ok(ext, shown)` says whether a partly shown extent (`shown` of
/// its bytes are the chain's) lying inside one region is placed whole;
/// a wholly shown extent always is.
fn plan(
    chain: &Chain,
    regions: &[Region],
    segs: &[Segment],
    whole_ok: impl Fn(&Extent, u64) -> bool,
) -> Vec<Phase> {
    let ps = ps_of(chain.image());
    let mut index: HashMap<(usize, u64), usize> = HashMap::new();
    let mut all: Vec<Placement> = Vec::new();
    for s in segs {
        if let SegmentKind::Data(e) = s.kind {
            let i = *index.entry((s.link, e.addr)).or_insert_with(|| {
                all.push(Placement {
                    link: s.link,
                    ext: e,
                    pieces: Vec::new(),
                    whole: false,
                });
                all.len() - 1
            });
            all[i].pieces.push((s.start, s.end));
        }
    }
    let in_one_region = |a: u64, b: u64| {
        let i = regions.partition_point(|r| r.info.end() <= a);
        regions
            .get(i)
            .is_some_and(|r| r.info.start <= a && b <= r.info.end())
    };
    for p in &mut all {
        let (a, b) = (p.ext.addr, p.ext.end(ps));
        let shown: u64 = p.pieces.iter().map(|(x, y)| y - x).sum();
        p.whole =
            p.pieces.as_slice() == [(a, b)] || (in_one_region(a, b) && whole_ok(&p.ext, shown));
    }
    // Extents placed whole while nearer links show part of them: the
    // ranges that may need zeros laid over them.
    let mut under: Vec<(u64, u64, usize)> = all
        .iter()
        .filter(|p| p.whole && p.pieces.as_slice() != [(p.ext.addr, p.ext.end(ps))])
        .map(|p| (p.ext.addr, p.ext.end(ps), p.link))
        .collect();
    under.sort_unstable();
    let longest = under.iter().map(|u| u.1 - u.0).max().unwrap_or(0);
    let depth = chain.links().len();
    let mut phases: Vec<Phase> = (0..depth).map(|_| Phase::default()).collect();
    for p in all {
        let l = p.link;
        phases[l].placements.push(p);
    }
    if !under.is_empty() {
        for s in segs {
            if s.kind != SegmentKind::Zero {
                continue;
            }
            // Extents placed whole that start before the segment ends and
            // may reach into it (none is longer than `longest`).
            let lo = under.partition_point(|u| u.0 < s.start.saturating_sub(longest));
            let hi = under.partition_point(|u| u.0 < s.end);
            if under[lo..hi]
                .iter()
                .any(|u| u.2 > s.link && u.1 > s.start && u.0 < s.end)
            {
                phases[s.link].zeros.push((s.start, s.end));
            }
        }
    }
    phases.reverse();
    phases
}

/// Clears `[a, b)` to zeros with a fresh anonymous private mapping (what
/// the reservation was), replacing whatever a deeper link placed there.
fn clear(a: u64, b: u64, prot: libc::c_int) -> Result<(), RestoreError> {
    // SAFETY: a..b lies inside a region this restore reserved, or mapped
    // whole in the first phase of an mmap restore, and still owns
    // (MAP_FIXED only replaces our own mappings there).
    let p = unsafe {
        libc::mmap(
            usize_of(a) as *mut libc::c_void,
            usize_of(b - a),
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(RestoreError::last_os(format!("clearing {a:#x}-{b:#x}")));
    }
    Ok(())
}

/// A buffer for decoding a chunk that is placed in part, reused by one
/// worker and zeroed when dropped (plaintext process memory).
type Scratch = Zeroizing<Vec<u8>>;

/// Places `ranges` of `ext` (a data extent of link `link`) by decoding it:
/// straight into its place when the range is the whole extent, else into
/// `scratch` and copied from there.
fn decode_into_place(
    chain: &Chain,
    link: usize,
    ext: &Extent,
    ranges: &[(u64, u64)],
    scratch: &mut Scratch,
    populate: bool,
) -> Result<(), RestoreError> {
    let ps = ps_of(chain.image());
    if ranges == [(ext.addr, ext.end(ps))] {
        // SAFETY: the extent lies inside a region this restore reserved
        // read-write (or mapped read-write whole, the first phase of an mmap
        // restore), and no other task of this phase writes it (see `plan`).
        let out = unsafe {
            std::slice::from_raw_parts_mut(usize_of(ext.addr) as *mut u8, usize_of(ext.len(ps)))
        };
        if populate {
            // Fault the pages in with one call rather than one trap per
            // page (Linux 5.14+; elsewhere the decode faults them in).
            // SAFETY: our own read-write mapping, about to be overwritten.
            unsafe { libc::madvise(out.as_mut_ptr().cast(), out.len(), MADV_POPULATE_WRITE) };
        }
        return chain.decode(link, ext, out).map_err(RestoreError::from);
    }
    let buf = &mut **scratch;
    buf.resize(usize_of(ext.len(ps)), 0);
    chain.decode(link, ext, buf)?;
    for &(a, b) in ranges {
        // SAFETY: as above: a..b is a segment of a reserved region that no
        // other task of this phase writes.
        let out =
            unsafe { std::slice::from_raw_parts_mut(usize_of(a) as *mut u8, usize_of(b - a)) };
        let from = usize_of(a - ext.addr);
        out.copy_from_slice(&buf[from..from + out.len()]);
    }
    Ok(())
}

/// Runs of pages at most this long (64 KiB of 4 KiB pages) are copied
/// into place by an mmap restore of a chain rather than mapped: a child's
/// changed pages, scattered over its parent's chunks, would otherwise cost
/// one mapping each and cut the parent's mapping into as many more
/// (measured in the README, *Incremental images*, *Benchmark*).
const MMAP_COPY_MAX_PAGES: u64 = 16;

/// Maps the chain from its links' files: phase by phase (see `plan`),
/// each extent placed whole, and each extent shown only in part inside one
/// region, is mapped over its whole range, adjacent ones of one file
/// merged into one mapping; the nearer links' pages follow, each run of at
/// most [`MMAP_COPY_MAX_PAGES`] decoded (copied) into the private mapping,
/// longer runs mapped. The first phase (the deepest link) maps into free
/// space, as the restore of one image does (`map_from_file`): its runs
/// and the anonymous gaps between them with `MAP_FIXED_NOREPLACE`, so an
/// address in use is `AddressInUse` and nothing is split; the later
/// phases map over those mappings of ours. Mappings are made writable and
/// get their protection afterwards (`Reservation::protect`). On error,
/// everything mapped is unmapped (the returned value's drop).
fn map_segments(
    chain: &Chain,
    regions: &[Region],
    segs: &[Segment],
) -> Result<Reservation, RestoreError> {
    use std::os::unix::io::AsRawFd;
    let ps = ps_of(chain.image());
    let mut files = Vec::new();
    for l in chain.links() {
        let p = l.path().unwrap_or(Path::new(""));
        files.push(
            std::fs::File::open(p)
                .map_err(|e| RestoreError::io(format!("opening {}", p.display()), e))?,
        );
    }
    let prot_at = |addr: u64| {
        let i = regions.partition_point(|r| r.info.end() <= addr);
        regions
            .get(i)
            .filter(|r| r.info.start <= addr)
            .map_or(libc::PROT_READ, |r| prot_bits(r.info.prot))
            | libc::PROT_READ
            | libc::PROT_WRITE
    };
    let region_of = |a: u64| regions.partition_point(|r| r.info.end() <= a);
    let map = |link: usize, addr: u64, off: u64, len: u64| -> Result<(), RestoreError> {
        let off = libc::off_t::try_from(off).map_err(|_| {
            RestoreError::io(
                "mapping",
                std::io::Error::from_raw_os_error(libc::EOVERFLOW),
            )
        })?;
        // SAFETY: addr..addr+len lies inside a region the first phase has
        // mapped whole (`placed`; MAP_FIXED only replaces our own mappings
        // there).
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
    // Every extent inside one region is mapped whole: hidden pages cost
    // nothing until touched, and the nearer links' pages are laid over.
    let phases = plan(chain, regions, segs, |_, _| true);
    let mut placed = Reservation { ranges: Vec::new() };
    for (i, phase) in phases.into_iter().enumerate() {
        // Runs of adjacent ranges of one file: (link, addr, offset, len,
        // the placements and ranges it holds).
        type Run<'p> = (usize, u64, u64, u64, Vec<(&'p Placement, u64, u64)>);
        let mut runs: Vec<Run<'_>> = Vec::new();
        for p in &phase.placements {
            let base = chain.links()[p.link]
                .raw_file_offset(&p.ext)
                .ok_or_else(|| RestoreError::StrategyUnavailable {
                    strategy: "mmap",
                    why: format!("the chunk at {:#x} is not stored raw", p.ext.addr),
                })?;
            for (a, b) in p.ranges(ps) {
                let off = base + (a - p.ext.addr);
                match runs.last_mut() {
                    Some((l, ra, ro, rn, parts))
                        if *l == p.link
                            && *ra + *rn == a
                            && *ro + *rn == off
                            && region_of(*ra) == region_of(a) =>
                    {
                        *rn += b - a;
                        parts.push((p, a, b));
                    }
                    _ => runs.push((p.link, a, off, b - a, vec![(p, a, b)])),
                }
            }
        }
        let long = |len: u64| len > MMAP_COPY_MAX_PAGES * u64::from(ps);
        if i == 0 {
            // Into free space, region by region in address order: zeros
            // (anonymous) up to each run mapped from its file, and over the
            // short runs, which are copied in below.
            runs.sort_unstable_by_key(|run| run.1);
            let mut next = runs.iter().filter(|run| long(run.3)).peekable();
            for r in regions {
                let mut at = r.info.start;
                // The region's protection, writable until `protect`.
                let prot = prot_at(r.info.start);
                while let Some(&&(link, addr, off, len, _)) =
                    next.peek().filter(|run| run.1 < r.info.end())
                {
                    next.next();
                    let fd = files[link].as_raw_fd();
                    place_run(&mut placed, r, prot, fd, &mut at, (addr, off, len))?;
                }
                if at < r.info.end() {
                    placed.place(r, at, r.info.end() - at, prot, Pages::Zeros)?;
                }
            }
            if let Some(&(link, addr, ..)) = next.next() {
                return Err(RestoreError::StrategyUnavailable {
                    strategy: "mmap",
                    why: format!("the run at {addr:#x} (link {link}) lies outside every region"),
                });
            }
        }
        // The long runs mapped first, then the short ones copied over them,
        // on every core: each copy is a copy-on-write fault of its own
        // (the page in the mapping from the file) and a read, and one
        // phase's runs are disjoint.
        let mut short = Vec::new();
        for (link, addr, off, len, parts) in runs {
            if long(len) {
                if i > 0 {
                    map(link, addr, off, len)?;
                }
                continue;
            }
            short.extend(parts);
        }
        short
            .par_iter()
            .try_for_each_init(Scratch::default, |scratch, &(p, a, b)| {
                decode_into_place(chain, p.link, &p.ext, &[(a, b)], scratch, false)
            })?;
        for (a, b) in phase.zeros {
            clear(a, b, prot_at(a))?;
        }
    }
    Ok(placed)
}

/// Decodes the chain into place, phase by phase (see `plan`), each
/// phase's extents in parallel: an extent of which the chain shows most
/// inside one region is decoded straight into its place, and the nearer
/// links' pages laid over it after, as a flattened image is decoded; one
/// shown mostly in part is decoded into a buffer and its pieces copied.
fn decode_segments(
    chain: &Chain,
    regions: &[Region],
    segs: &[Segment],
) -> Result<(), RestoreError> {
    let ps = ps_of(chain.image());
    // In place when at least half of it is shown: the rest is written
    // twice (decoded, then overlaid), still less than decoding into a
    // buffer and copying every piece.
    let phases = plan(chain, regions, segs, |e, shown| 2 * shown >= e.len(ps));
    for phase in phases {
        phase
            .placements
            .par_iter()
            .try_for_each_init(Scratch::default, |scratch, p| {
                decode_into_place(chain, p.link, &p.ext, &p.ranges(ps), scratch, true)
            })?;
        for (a, b) in phase.zeros {
            clear(a, b, libc::PROT_READ | libc::PROT_WRITE)?;
        }
    }
    Ok(())
}

/// The pieces a lazy restore of the chain places: each region cut into
/// chunk-sized pieces, as a flattened image's are. A piece that any data
/// segment touches is fetched whole from [`ChainSource`], which composes it
/// from the links; one that none touches is zeros.
///
/// One piece per segment instead would cost a fault and a placement for
/// every run a child cut out of its parent's chunk: scattered changes make
/// several times as many pieces as chunks.
fn units(
    regions: &[Region],
    segs: &[Segment],
    ps: u32,
    piece: u64,
) -> Vec<(u64, u64, Option<Extent>)> {
    let mut out = Vec::new();
    let mut i = 0;
    for r in regions {
        let mut at = r.info.start;
        while at < r.info.end() {
            let end = r.info.end().min(at.saturating_add(piece));
            // The first data segment that reaches into at..end, if any.
            while i < segs.len() && segs[i].end <= at {
                i += 1;
            }
            let data = segs[i..]
                .iter()
                .take_while(|s| s.start < end)
                .find_map(|s| match s.kind {
                    SegmentKind::Data(e) => Some(e),
                    _ => None,
                });
            let pages = u32::try_from((end - at) / u64::from(ps)).unwrap_or(u32::MAX);
            out.push((
                at,
                end - at,
                // The piece as an extent of its own: ChainSource composes it
                // from the segments in its range.
                data.map(|e| Extent {
                    addr: at,
                    page_count: pages,
                    ..e
                }),
            ));
            at = end;
        }
    }
    out
}

/// A lazy restore's source of a chain's pages: a piece (see [`units`]) is
/// composed from the data segments in its range, each read from its link's
/// extent, and zeros between them.
///
/// The last extent decoded in part is kept for each link, so that a
/// parent's chunk that its children cut into several segments is decoded
/// once, although the children's segments come between its own. A segment
/// that is a whole extent is decoded straight into place.
struct ChainSource {
    chain: Chain,
    /// The data segments in address order: start, end, link, extent.
    data: Vec<(u64, u64, usize, Extent)>,
    /// Per link: the address of the extent decoded last, and its bytes
    /// (plaintext process memory: zeroed when dropped).
    cache: Vec<Option<(u64, Scratch)>>,
}

impl ChainSource {
    fn new(chain: Chain, segs: &[Segment]) -> ChainSource {
        let data = segs
            .iter()
            .filter_map(|s| match s.kind {
                SegmentKind::Data(e) => Some((s.start, s.end, s.link, e)),
                _ => None,
            })
            .collect();
        let links = segs.iter().map(|s| s.link + 1).max().unwrap_or(0);
        ChainSource {
            chain,
            data,
            cache: vec![None; links],
        }
    }

    /// Copies `a..b` of `real` (an extent of `link`) into `out`, decoding
    /// the extent once into the link's slot.
    fn copy_part(
        &mut self,
        link: usize,
        real: &Extent,
        (a, b): (u64, u64),
        out: &mut [u8],
    ) -> Result<(), memimg::Error> {
        let ps = ps_of(self.chain.image());
        let slot = self.cache.get_mut(link).ok_or_else(|| {
            memimg::Error::plain(
                memimg::ErrorKind::InvalidInput,
                format!("no link {link} in the chain"),
            )
        })?;
        if slot.as_ref().map(|(at, _)| *at) != Some(real.addr) {
            let mut buf = slot.take().map(|(_, b)| b).unwrap_or_default();
            buf.resize(usize_of(real.len(ps)), 0);
            self.chain.decode(link, real, &mut buf)?;
            *slot = Some((real.addr, buf));
        }
        let from = usize_of(a.wrapping_sub(real.addr));
        let src = slot
            .as_ref()
            .and_then(|(_, buf)| buf.get(from..from + usize_of(b - a)))
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

impl ChunkSource for ChainSource {
    fn fetch(&mut self, ext: &Extent, out: &mut [u8]) -> Result<(), memimg::Error> {
        let ps = ps_of(self.chain.image());
        let (lo, hi) = (ext.addr, ext.addr + out.len() as u64);
        out.fill(0);
        let mut k = self.data.partition_point(|d| d.1 <= lo);
        while let Some(&(s, e, link, real)) = self.data.get(k).filter(|d| d.0 < hi) {
            k += 1;
            let (a, b) = (s.max(lo), e.min(hi));
            let dst = out
                .get_mut(usize_of(a - lo)..usize_of(b - lo))
                .ok_or_else(|| {
                    memimg::Error::plain(
                        memimg::ErrorKind::InvalidInput,
                        "a segment outside its piece",
                    )
                })?;
            if real.addr == a && real.len(ps) == b - a {
                self.chain.decode(link, &real, dst)?;
            } else {
                self.copy_part(link, &real, (a, b), dst)?;
            }
        }
        Ok(())
    }
}
