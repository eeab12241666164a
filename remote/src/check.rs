//! Checking an image's stored bytes as they stream past, in file order: the
//! checks of `imgtool verify` without `--deep`, on bytes fetched in bulk
//! (by a copy, or a remote verify) rather than read chunk by chunk.

use std::ops::Range;

use memimg::raw::{TRAILER_LEN, TRAILER_MAGIC};
use memimg::{ChunkLoc, Extent, ExtentKind, Image, Problem};
use xxhash_rust::xxh3::xxh3_64;

/// A piece of the file, in order: the header page (and the index, when it
/// comes first: spec.md, *Index first*), a run of whole chunks (with the
/// padding before each), or the index and trailers (the trailer alone when
/// the index came first).
pub(crate) struct Segment {
    pub(crate) range: Range<u64>,
    what: Part,
}

enum Part {
    Header,
    /// Positions in the layout order ([`layout`]).
    Chunks(Range<usize>),
    Tail,
}

/// The chunk numbers in layout order: the order of their bytes in the file
/// (by number, or an image's load-order profile first: spec.md, *Load
/// order*).
fn layout(img: &Image) -> Vec<usize> {
    img.layout_order()
        .into_iter()
        .filter_map(|n| usize::try_from(n).ok())
        .collect()
}

/// Cuts the file into segments that cover it exactly, each at most `max`
/// bytes unless one chunk is larger. With `whole` false, only the chunk
/// segments are returned (what verify fetches; the reader has read and
/// checked the rest when opening).
pub(crate) fn plan(img: &Image, max: u64, whole: bool) -> Vec<Segment> {
    let chunks = img.chunk_locs();
    let hp = img.header().data_start();
    let mut segs = Vec::new();
    if whole {
        segs.push(Segment {
            range: 0..hp,
            what: Part::Header,
        });
    }
    let mut start = hp;
    let mut first = 0usize;
    let order = layout(img);
    for (i, &n) in order.iter().enumerate() {
        let c = &chunks[n];
        let end = c.offset + u64::from(c.stored_len);
        if i > first && end - start > max {
            let prev = &chunks[order[i - 1]];
            let prev_end = prev.offset + u64::from(prev.stored_len);
            segs.push(Segment {
                range: start..prev_end,
                what: Part::Chunks(first..i),
            });
            start = prev_end;
            first = i;
        }
    }
    if first < chunks.len() {
        let last = &chunks[order[chunks.len() - 1]];
        let end = last.offset + u64::from(last.stored_len);
        segs.push(Segment {
            range: start..end,
            what: Part::Chunks(first..chunks.len()),
        });
        start = end;
    }
    if whole {
        segs.push(Segment {
            range: start..img.file_len(),
            what: Part::Tail,
        });
    }
    segs
}

/// Checks each segment's bytes as they stream past.
pub(crate) struct Checker<'a> {
    img: &'a Image,
    /// The data extent of each chunk, when the index is readable, to name
    /// the region and address in problems (as verify does).
    by_chunk: Vec<Option<Extent>>,
    /// The chunk numbers in layout order.
    order: Vec<usize>,
    prev_end: u64,
    pub(crate) chunks_checked: u64,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(img: &'a Image) -> Self {
        let mut by_chunk = vec![None; img.chunk_locs().len()];
        if let Ok(ex) = img.extents() {
            for e in ex.iter().filter(|e| e.kind == ExtentKind::Data) {
                if let Some(slot) = usize::try_from(e.chunk)
                    .ok()
                    .and_then(|i| by_chunk.get_mut(i))
                {
                    *slot = Some(*e);
                }
            }
        }
        Checker {
            img,
            by_chunk,
            order: layout(img),
            prev_end: img.header().data_start(),
            chunks_checked: 0,
        }
    }

    /// Checks `bytes`, the whole of `seg`, adding each problem to `out`.
    pub(crate) fn check(&mut self, seg: &Segment, bytes: &[u8], out: &mut Vec<Problem>) {
        use memimg::ErrorKind as K;
        let base = seg.range.start;
        // An offset before the segment is out of it, as one past its end.
        let at = |off: u64| {
            off.checked_sub(base)
                .and_then(|d| usize::try_from(d).ok())
                .unwrap_or(usize::MAX)
        };
        let problem = |kind, location, message: String| Problem {
            kind,
            location,
            message,
        };
        match &seg.what {
            Part::Header => {
                let hp = self.img.header_bytes().len();
                if let Some(rec) = self.img.header().index_first {
                    let sum = xxh3_64(bytes.get(hp..).unwrap_or(&[]));
                    if sum != rec.index_checksum {
                        out.push(problem(
                            K::Checksum,
                            memimg::Location::at(hp as u64),
                            format!(
                                "index checksum mismatch (the header's index record says {:016x}, index hashes to {sum:016x})",
                                rec.index_checksum
                            ),
                        ));
                    }
                }
                if bytes.get(..hp) != Some(self.img.header_bytes()) {
                    out.push(problem(
                        K::Checksum,
                        memimg::Location::at(0),
                        "the header page differs from the one read when the image was opened: it changed in the meantime".into(),
                    ));
                }
                self.prev_end = seg.range.end;
            }
            Part::Chunks(idx) => {
                let numbers = self.order.get(idx.clone()).unwrap_or(&[]).to_vec();
                for n in numbers {
                    let c: ChunkLoc = self.img.chunk_locs()[n];
                    let pad = bytes.get(at(self.prev_end)..at(c.offset)).unwrap_or(&[]);
                    if let Some(p) = pad.iter().position(|&b| b != 0) {
                        out.push(problem(
                            K::NonZeroPadding,
                            memimg::Location::at(self.prev_end + p as u64).with_chunk(n as u64),
                            format!("padding before chunk {n} is not zero"),
                        ));
                    }
                    let end = c.offset + u64::from(c.stored_len);
                    let stored = bytes.get(at(c.offset)..at(end)).unwrap_or(&[]);
                    let sum = xxh3_64(stored);
                    if sum != c.stored_checksum {
                        let mut loc = memimg::Location::chunk(n as u64, c.offset);
                        if let Some(e) = self.by_chunk.get(n).copied().flatten() {
                            loc = loc.with_region(e.region).with_addr(e.addr);
                        }
                        out.push(problem(
                            K::Checksum,
                            loc,
                            format!(
                                "stored checksum mismatch (index says {:016x}, bytes hash to {sum:016x})",
                                c.stored_checksum
                            ),
                        ));
                    }
                    self.chunks_checked += 1;
                    self.prev_end = end;
                }
            }
            Part::Tail => {
                let t = self.img.trailer();
                let index_first = self.img.header().index_first.is_some();
                // When the index came first, the header's segment held it.
                let index = bytes
                    .get(at(t.index_offset)..at(t.index_offset + t.index_len))
                    .unwrap_or(&[]);
                if !index_first && xxh3_64(index) != t.index_checksum {
                    let sum = xxh3_64(index);
                    out.push(problem(
                        K::Checksum,
                        memimg::Location::at(t.index_offset),
                        format!(
                            "index checksum mismatch (trailer says {:016x}, index hashes to {sum:016x})",
                            t.index_checksum
                        ),
                    ));
                }
                let tr = bytes
                    .get(at(t.offset)..at(t.offset + TRAILER_LEN as u64))
                    .unwrap_or(&[]);
                // It must locate the index the image was read by (for an
                // image opened from its front, the header's index record).
                let locates = |o: usize, v: u64| {
                    tr.get(o..o + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_le_bytes)
                        == Some(v)
                };
                let ok = tr.len() == TRAILER_LEN
                    && tr[..8] == TRAILER_MAGIC
                    && locates(16, t.index_offset)
                    && locates(24, t.index_len)
                    && locates(32, t.index_checksum)
                    && tr[248..].try_into().map(u64::from_le_bytes).ok()
                        == Some(xxh3_64(&tr[..248]));
                if !ok {
                    out.push(problem(
                        K::Checksum,
                        memimg::Location::at(t.offset),
                        if t.read {
                            "the trailer differs from the one read when the image was opened: it changed in the meantime".into()
                        } else {
                            "the trailer is damaged, or does not locate the index where the header's index record does".into()
                        },
                    ));
                }
            }
        }
    }
}
