//! Writing a child image (format 1.1, spec.md *Incremental images*) while
//! reading memory: each run of pages is compared with what the parent chain
//! holds at the same addresses, and only what differs is stored.
//!
//! The comparison is in two steps, so its cost follows what changed:
//!
//! 1. A run that lines up with a whole data extent of the chain (one chunk
//!    of the parent, or of a link below it) without page digests is hashed
//!    (XXH3-128) and compared with that extent's raw checksum, from the
//!    parent's index: equal, the run is recorded as the parent's pages
//!    without reading anything of the parent.
//! 2. Otherwise (the checksum differs, or the run covers part of an extent)
//!    it is compared page by page: the pages that are equal are the
//!    parent's, the others are stored. So a child holds exactly the pages
//!    that changed, not the whole chunks around them. When the link that
//!    holds the extent has page digests (spec.md, *Page digests*), each
//!    page is hashed (XXH3-64) and compared with its digest, and nothing
//!    of the parent is read but its index; otherwise the extent is decoded
//!    once and compared byte for byte.
//!
//! Zero pages are recorded as zero (they cost nothing either way); pages
//! the parent lacks (a gap, absent, a region it recorded without data) are
//! stored.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use memimg::{Chain, Extent, RegionInfo, Segment, SegmentKind, Writer};
use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_128;
use zeroize::Zeroizing;

use crate::error::CaptureError;
use crate::live::Sink;
use crate::track::ChildSink;

/// The format's writer is the sink of an incremental persist: every call is
/// the writer's own (`push_in_parent` needs [`memimg::WriterOptions::parent`]).
impl<W: Write> ChildSink for Writer<W> {
    fn begin_region(&mut self, info: RegionInfo) -> Result<(), memimg::Error> {
        Writer::begin_region(self, info)
    }
    fn push_data(&mut self, data: &[u8]) -> Result<(), memimg::Error> {
        Writer::push_data(self, data)
    }
    fn push_zero(&mut self, len: u64) -> Result<(), memimg::Error> {
        Writer::push_zero(self, len)
    }
    fn push_in_parent(&mut self, len: u64) -> Result<(), memimg::Error> {
        Writer::push_in_parent(self, len)
    }
    fn end_region(&mut self) -> Result<(), memimg::Error> {
        Writer::end_region(self)
    }
}

/// What a capture with a parent did with the bytes it read (see the module
/// docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompareStats {
    /// Bytes found equal to the parent's by the chunk checksum alone.
    pub same_by_checksum: u64,
    /// Bytes found equal to the parent's after decoding its chunk.
    pub same_by_compare: u64,
    /// Bytes found equal to the parent's by their page digests (the parent
    /// has them), without decoding anything.
    pub same_by_digest: u64,
    /// Bytes stored: they differ from the parent's, or it has none there.
    pub stored: u64,
    /// Bytes of the parent chain decoded to compare.
    pub decoded: u64,
}

/// A writer of a child image that stores only what differs from `parent`
/// (see the module docs). Its writer must have been made with the parent
/// record of `parent`'s image ([`memimg::WriterOptions::parent_of`]).
pub(crate) struct ChildWriter<'c, W: Write> {
    w: Writer<W>,
    parent: &'c Chain,
    /// The next address of the open region.
    at: u64,
    stats: CompareStats,
    /// A link of the chain has page digests: pages are compared by their
    /// digests, which the walker computes as it reads them.
    digests: bool,
}

impl<'c, W: Write> ChildWriter<'c, W> {
    pub(crate) fn new(w: Writer<W>, parent: &'c Chain) -> Self {
        ChildWriter {
            w,
            parent,
            at: 0,
            stats: CompareStats::default(),
            digests: parent.links().iter().any(memimg::Image::has_page_digests),
        }
    }

    pub(crate) fn finish(self) -> Result<(W, memimg::WriteStats, CompareStats), CaptureError> {
        let (w, st) = self.w.finish()?;
        Ok((w, st, self.stats))
    }

    /// Pushes `data`, the next bytes of the open region, storing only what
    /// differs from the parent chain.
    ///
    /// The work that costs (hashing each run, comparing each parent extent
    /// whose checksum differs page by page, by its digests or decoded) is
    /// done for the whole of `data` at once, in parallel (rayon), each
    /// extent decoded once for all its pieces; then the runs go to the
    /// writer in order.
    ///
    /// `digests`, when given, are the pages' `xxh3_64` digests (one per
    /// page of `data`), compared with a link's page digests instead of
    /// hashing the pages here.
    pub(crate) fn push_against(
        &mut self,
        data: &[u8],
        digests: Option<&[u64]>,
    ) -> Result<(), memimg::Error> {
        let start = self.at;
        let end = start + data.len() as u64;
        self.at = end;
        let ps = self.w.page_size();
        let psz = ps as usize;
        let segs = self.parent.segments(start, end)?;
        let piece = |s: &Segment| -> &[u8] {
            let from = usize::try_from(s.start - start).unwrap_or(usize::MAX);
            let to = usize::try_from(s.end - start).unwrap_or(usize::MAX);
            &data[from..to]
        };
        let parent = self.parent;
        let links = parent.links();
        let by_digest = |link: usize| links.get(link).is_some_and(memimg::Image::has_page_digests);
        // 1. Runs that are a whole data extent of a link without page
        //    digests, equal by its raw checksum. (With digests, each page is
        //    hashed once, in step 2: hashing the whole run first as well
        //    would read every byte twice where a page changed.)
        let same_sum: Vec<bool> = segs
            .par_iter()
            .map(|s| match s.kind {
                SegmentKind::Data(e) if !by_digest(s.link) => {
                    e.addr == s.start && e.end(ps) == s.end && xxh3_128(piece(s)) == e.raw_checksum
                }
                _ => false,
            })
            .collect();
        // 2. The other data runs, by extent: compared page by page, by the
        //    link's page digests, or each extent decoded once.
        let mut groups: Vec<((usize, Extent), Vec<usize>)> = Vec::new();
        let mut at: HashMap<(usize, u64), usize> = HashMap::new();
        for (i, s) in segs.iter().enumerate() {
            if let SegmentKind::Data(e) = s.kind {
                if !same_sum[i] {
                    let g = *at.entry((s.link, e.addr)).or_insert_with(|| {
                        groups.push(((s.link, e), Vec::new()));
                        groups.len() - 1
                    });
                    groups[g].1.push(i);
                }
            }
        }
        let compared: Vec<Vec<(usize, Vec<bool>)>> = groups
            .par_iter()
            // A decoded parent extent is plaintext process memory: each worker's
            // buffer is zeroed when dropped.
            .map_init(Zeroizing::<Vec<u8>>::default, |buf, ((link, e), idx)| {
                if by_digest(*link) {
                    return idx
                        .iter()
                        .map(|&i| {
                            let s = &segs[i];
                            let ours = piece(s);
                            let from = usize::try_from((s.start - start) / u64::from(ps))
                                .unwrap_or(usize::MAX);
                            let known = digests.and_then(|d| d.get(from..from + ours.len() / psz));
                            let same = match known {
                                Some(d) => links[*link].same_digests(e, s.start, d)?,
                                None => links[*link].same_pages(e, s.start, ours)?,
                            };
                            Ok((i, same.unwrap_or_else(|| vec![false; ours.len() / psz])))
                        })
                        .collect();
                }
                let len = usize::try_from(e.len(ps)).unwrap_or(usize::MAX);
                buf.resize(len, 0);
                parent.decode(*link, e, buf)?;
                idx.iter()
                    .map(|&i| {
                        let s = &segs[i];
                        let off = usize::try_from(s.start - e.addr).unwrap_or(usize::MAX);
                        let ours = piece(s);
                        let theirs = buf.get(off..off + ours.len()).ok_or_else(|| {
                            memimg::Error::plain(
                                memimg::ErrorKind::InvalidInput,
                                "a segment outside its extent",
                            )
                        })?;
                        let same = ours
                            .chunks(psz)
                            .zip(theirs.chunks(psz))
                            .map(|(a, b)| a == b)
                            .collect();
                        Ok((i, same))
                    })
                    .collect()
            })
            .collect::<Result<_, memimg::Error>>()?;
        for ((link, e), _) in &groups {
            if !by_digest(*link) {
                self.stats.decoded += e.len(ps);
            }
        }
        let mut pages: Vec<Option<Vec<bool>>> = vec![None; segs.len()];
        for (i, same) in compared.into_iter().flatten() {
            pages[i] = Some(same);
        }
        // 3. In order, to the writer.
        for (i, s) in segs.iter().enumerate() {
            let piece = piece(s);
            if same_sum[i] {
                self.stats.same_by_checksum += piece.len() as u64;
                self.w.push_in_parent(piece.len() as u64)?;
                continue;
            }
            let Some(same) = &pages[i] else {
                // Zeros, or pages the parent lacks: stored.
                self.stats.stored += piece.len() as u64;
                self.w.push_data(piece)?;
                continue;
            };
            // Runs of equal and differing pages, in order.
            let kept = self.w.push_pages_against(piece, same)?;
            self.stats.stored += piece.len() as u64 - kept;
            if by_digest(s.link) {
                self.stats.same_by_digest += kept;
            } else {
                self.stats.same_by_compare += kept;
            }
        }
        Ok(())
    }
}

impl<W: Write> Sink for ChildWriter<'_, W> {
    fn begin_region(&mut self, info: RegionInfo) -> Result<(), CaptureError> {
        self.at = info.start;
        Ok(self.w.begin_region(info)?)
    }
    fn push_data(&mut self, data: &[u8]) -> Result<(), CaptureError> {
        Ok(self.push_against(data, None)?)
    }
    fn wants_digests(&self) -> bool {
        self.digests
    }
    fn push_data_digested(&mut self, data: &[u8], digests: &[u64]) -> Result<(), CaptureError> {
        Ok(self.push_against(data, Some(digests))?)
    }
    fn push_zero(&mut self, len: u64) -> Result<(), CaptureError> {
        self.at += len;
        Ok(self.w.push_zero(len)?)
    }
    fn push_absent(&mut self, len: u64) -> Result<(), CaptureError> {
        self.at += len;
        Ok(self.w.push_absent(len)?)
    }
    fn end_region(&mut self) -> Result<(), CaptureError> {
        Ok(self.w.end_region()?)
    }
    fn add_empty_region(&mut self, info: RegionInfo) -> Result<(), CaptureError> {
        Ok(self.w.add_empty_region(info)?)
    }
}

/// The parent hint a child at `child` stores for its parent at `parent`:
/// the parent's path relative to the child's directory when the parent is
/// in that directory or below it (the hint survives moving the pair
/// together), else the parent's absolute path. `None` when a path cannot be
/// made absolute or is not UTF-8 (the hint is UTF-8; the parent must then be
/// given when reading).
pub fn hint_for(child: &Path, parent: &Path) -> Option<String> {
    let abs = |p: &Path| std::path::absolute(p).ok();
    let parent = abs(parent)?;
    let dir = abs(child)?.parent()?.to_path_buf();
    let shown = match parent.strip_prefix(&dir) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
        _ => parent,
    };
    shown.to_str().map(str::to_string)
}
