//! Writing a child image (format 1.1, spec.md *Incremental images*) while
//! reading memory: each run of pages is compared with what the parent chain
//! holds at the same addresses, and only what differs is stored.
//!
//! The comparison is in two steps, so its cost follows what changed:
//!
//! 1. A run that lines up with a whole data extent of the chain (one chunk
//!    of the parent, or of a link below it) is hashed (XXH3-128) and
//!    compared with that extent's raw checksum, from the parent's index:
//!    equal, the run is recorded as the parent's pages without reading
//!    anything of the parent.
//! 2. Otherwise (the checksum differs, or the run covers part of an extent)
//!    that extent is decoded once and compared page by page: the pages that
//!    are equal are the parent's, the others are stored. So a child holds
//!    exactly the pages that changed, not the whole chunks around them.
//!
//! Zero pages are recorded as zero (they cost nothing either way); pages
//! the parent lacks (a gap, absent, a region it recorded without data) are
//! stored.

use std::io::Write;
use std::path::Path;

use memimg::{Chain, Extent, RegionInfo, SegmentKind, Writer};
use xxhash_rust::xxh3::xxh3_128;

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

/// What a [`ChildWriter`] did with the bytes it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompareStats {
    /// Bytes found equal to the parent's by the chunk checksum alone.
    pub same_by_checksum: u64,
    /// Bytes found equal to the parent's after decoding its chunk.
    pub same_by_compare: u64,
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
    /// The last extent decoded, by (link, address), and its bytes.
    cache: Option<((usize, u64), Vec<u8>)>,
    stats: CompareStats,
}

impl<'c, W: Write> ChildWriter<'c, W> {
    pub(crate) fn new(w: Writer<W>, parent: &'c Chain) -> Self {
        ChildWriter {
            w,
            parent,
            at: 0,
            cache: None,
            stats: CompareStats::default(),
        }
    }

    pub(crate) fn finish(self) -> Result<(W, memimg::WriteStats, CompareStats), CaptureError> {
        let (w, st) = self.w.finish()?;
        Ok((w, st, self.stats))
    }

    /// The decoded bytes of `ext` of link `link`, decoded once for the
    /// pieces of it that follow.
    fn decoded(&mut self, link: usize, ext: &Extent) -> Result<&[u8], memimg::Error> {
        let key = (link, ext.addr);
        if self.cache.as_ref().map(|(k, _)| *k) != Some(key) {
            let ps = self.w.page_size();
            let len = usize::try_from(ext.len(ps)).unwrap_or(usize::MAX);
            let mut buf = self.cache.take().map(|(_, b)| b).unwrap_or_default();
            buf.resize(len, 0);
            self.parent.decode(link, ext, &mut buf)?;
            self.stats.decoded += len as u64;
            self.cache = Some((key, buf));
        }
        Ok(self
            .cache
            .as_ref()
            .map(|(_, b)| b.as_slice())
            .unwrap_or(&[]))
    }

    /// Pushes `data`, the next bytes of the open region, storing only what
    /// differs from the parent chain.
    pub(crate) fn push_against(&mut self, data: &[u8]) -> Result<(), memimg::Error> {
        let start = self.at;
        let end = start + data.len() as u64;
        self.at = end;
        let ps = self.w.page_size();
        let psz = ps as usize;
        for seg in self.parent.segments(start, end)? {
            let from = usize::try_from(seg.start - start).unwrap_or(usize::MAX);
            let to = usize::try_from(seg.end - start).unwrap_or(usize::MAX);
            let piece = &data[from..to];
            match seg.kind {
                SegmentKind::Data(e)
                    if e.addr == seg.start
                        && e.end(ps) == seg.end
                        && xxh3_128(piece) == e.raw_checksum =>
                {
                    self.stats.same_by_checksum += piece.len() as u64;
                    self.w.push_in_parent(piece.len() as u64)?;
                }
                SegmentKind::Data(e) => {
                    let off = usize::try_from(seg.start - e.addr).unwrap_or(usize::MAX);
                    let theirs = self.decoded(seg.link, &e)?;
                    let theirs = theirs.get(off..off + piece.len()).ok_or_else(|| {
                        memimg::Error::plain(
                            memimg::ErrorKind::InvalidInput,
                            "a segment outside its extent",
                        )
                    })?;
                    // Runs of equal and differing pages, in order.
                    let same: Vec<bool> = piece
                        .chunks(psz)
                        .zip(theirs.chunks(psz))
                        .map(|(a, b)| a == b)
                        .collect();
                    let mut i = 0;
                    while i < same.len() {
                        let s = same[i];
                        let j = (i..same.len())
                            .find(|&k| same[k] != s)
                            .unwrap_or(same.len());
                        let run = &piece[i * psz..j * psz];
                        if s {
                            self.stats.same_by_compare += run.len() as u64;
                            self.w.push_in_parent(run.len() as u64)?;
                        } else {
                            self.stats.stored += run.len() as u64;
                            self.w.push_data(run)?;
                        }
                        i = j;
                    }
                }
                _ => {
                    self.stats.stored += piece.len() as u64;
                    self.w.push_data(piece)?;
                }
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
        Ok(self.push_against(data)?)
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
