//! The load order (spec.md, *Load order*): the load-order record of the
//! index body, and the layout order it gives the chunks.
//!
//! An image that sets `LOAD_ORDER` stores its profile's chunks first, in
//! profile order, then every other chunk in ascending number; the layout
//! rule of *Chunk data* applies in that order. Without the body (an
//! encrypted image opened without a key) the profile is unknown, and the
//! chunks are taken in ascending offset: they must still tile the data area.

use xxhash_rust::xxh3::xxh3_64;

use super::{check_padding, Image};
use crate::error::{malformed, Error, ErrorKind, Location, Result};
use crate::model::{Extent, ExtentKind, Features, Header};

/// Body record type 2: the load-order record.
pub(crate) const B_LOAD_ORDER: u16 = 2;

/// The load-order record of an image that sets `LOAD_ORDER`, checked: at
/// least one number, each below the chunk count, none twice.
#[derive(Debug, Clone)]
pub(crate) struct LoadOrder {
    /// The profile: chunk numbers in first-touch order.
    pub chunks: Vec<u64>,
    /// For each chunk, the one before it in layout order (`None` for the
    /// first), so the padding in front of a chunk is found at once.
    prev: Vec<Option<u64>>,
}

impl LoadOrder {
    /// The chunk before `n` in layout order.
    pub(crate) fn prev(&self, n: usize) -> Option<usize> {
        self.prev
            .get(n)
            .copied()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
    }
}

/// Finds and checks the load-order record among the body's meta records
/// (`meta`, at file offset `base`; its records' framing was checked by the
/// caller). Without `LOAD_ORDER`, records of type 2 are records of unknown
/// type, ignored as in 1.0, and this returns `None`.
///
/// # Errors
/// `Malformed`, at the record or the number at fault: no record or two, a
/// length that is not a whole number of u64s or is zero, a number past the
/// chunk map, a number listed twice.
pub(super) fn parse_load_order(
    meta: &[u8],
    header: &Header,
    chunk_count: usize,
    base: u64,
) -> Result<Option<LoadOrder>> {
    if header.features.incompat & Features::LOAD_ORDER == 0 {
        return Ok(None);
    }
    let Some((vbase, value)) = super::body::single_record(meta, base, B_LOAD_ORDER, "load-order")?
    else {
        return Err(malformed(
            Location::at(base),
            "the image sets LOAD_ORDER but its body holds no load-order record",
        ));
    };
    let rec = Location::at(vbase - 8);
    if value.is_empty() || !value.len().is_multiple_of(8) {
        return Err(malformed(
            rec,
            format!(
                "load-order record of {} bytes: it holds one or more 8-byte chunk numbers",
                value.len()
            ),
        ));
    }
    let count = value.len() / 8;
    if count > chunk_count {
        return Err(malformed(
            rec,
            format!("load-order record lists {count} chunks; the image has {chunk_count}"),
        ));
    }
    // Both are bounded by the chunk map, which the index holds.
    let mut prev: Vec<Option<u64>> = vec![None; chunk_count];
    let mut listed = vec![false; chunk_count];
    let mut chunks = Vec::with_capacity(count);
    for (i, b) in value.chunks_exact(8).enumerate() {
        let mut v = [0u8; 8];
        v.copy_from_slice(b);
        let n = u64::from_le_bytes(v);
        let loc = Location::at(vbase + 8 * i as u64).with_chunk(n);
        let Some(slot) = usize::try_from(n).ok().filter(|&k| k < chunk_count) else {
            return Err(malformed(
                loc,
                format!(
                    "load-order entry {i} names chunk {n}, past the chunk map ({chunk_count} chunks)"
                ),
            ));
        };
        if std::mem::replace(&mut listed[slot], true) {
            return Err(malformed(
                loc,
                format!("load-order entry {i} names chunk {n} a second time"),
            ));
        }
        prev[slot] = chunks.last().copied();
        chunks.push(n);
    }
    // Then every other chunk, in ascending number.
    let mut last = chunks.last().copied();
    for (n, l) in listed.iter().enumerate() {
        if !l {
            prev[n] = last;
            last = Some(n as u64);
        }
    }
    Ok(Some(LoadOrder { chunks, prev }))
}

/// The chunks in layout order (spec.md, *Chunk data*): the profile's, then
/// the others by number, when the body is known; by offset when the image
/// sets `LOAD_ORDER` and its body is locked; else by number.
pub(super) fn layout_sequence(img: &Image) -> Vec<usize> {
    let n = img.chunks.len();
    if let Some(o) = img.body.as_ref().and_then(|b| b.load_order.as_ref()) {
        let mut out: Vec<usize> = Vec::with_capacity(n);
        let mut listed = vec![false; n];
        for &c in &o.chunks {
            // Checked below the chunk count when the body was parsed.
            if let Some(k) = usize::try_from(c).ok().filter(|&k| k < n) {
                listed[k] = true;
                out.push(k);
            }
        }
        out.extend((0..n).filter(|&k| !listed[k]));
        return out;
    }
    let mut out: Vec<usize> = (0..n).collect();
    if img.header.features.incompat & Features::LOAD_ORDER != 0 {
        out.sort_by_key(|&k| img.chunks[k].offset);
    }
    out
}

impl Image {
    /// The load-order profile stored in the image (spec.md, *Load order*):
    /// the chunk numbers a restored program touched first, in order, whose
    /// chunks the file holds first. `None` when the image has no profile.
    ///
    /// # Errors
    /// `KeyRequired` when the image has a profile but is encrypted and was
    /// opened without a key (the profile is in the encrypted body).
    pub fn load_order(&self) -> Result<Option<&[u64]>> {
        if !self.has_load_order() {
            return Ok(None);
        }
        Ok(self
            .body()?
            .load_order
            .as_ref()
            .map(|o| o.chunks.as_slice()))
    }

    /// True when the image sets `LOAD_ORDER`: its chunks are laid out with
    /// a load-order profile first. Known without a key.
    pub fn has_load_order(&self) -> bool {
        self.header.features.incompat & Features::LOAD_ORDER != 0
    }

    /// Every chunk number in layout order: the order of their stored bytes
    /// in the file (the profile's chunks first, when the image has one).
    /// Known without a key: the offsets say it.
    pub fn layout_order(&self) -> Vec<u64> {
        let mut out: Vec<u64> = (0..self.chunks.len() as u64).collect();
        // Offsets were checked to tile the data area when the image opened.
        out.sort_by_key(|&k| usize::try_from(k).map_or(0, |k| self.chunks[k].offset));
        out
    }

    /// The file range `start..end` that holds the working set: the stored
    /// bytes of the profile's chunks, back to back from the first chunk's
    /// offset (padding in front of raw chunks of a plain image included), so
    /// a restore fetches the whole working set with one read. `None` when
    /// the image has no profile.
    ///
    /// # Errors
    /// As [`Image::load_order`].
    pub fn working_set_range(&self) -> Result<Option<std::ops::Range<u64>>> {
        let Some(order) = self.load_order()? else {
            return Ok(None);
        };
        let loc = |c: &u64| {
            usize::try_from(*c)
                .ok()
                .and_then(|k| self.chunks.get(k))
                .copied()
                .ok_or_else(|| {
                    Error::plain(ErrorKind::InvalidInput, format!("there is no chunk {c}"))
                })
        };
        let (Some(first), Some(last)) = (order.first(), order.last()) else {
            return Ok(None);
        };
        let first = loc(first)?;
        let last = loc(last)?;
        // The first chunk in layout order starts at P: no padding before it.
        Ok(Some(first.offset..last.offset + u64::from(last.stored_len)))
    }
}

impl Image {
    /// Decodes the data extent `ext` into `out`, as [`Image::decode_extent`],
    /// taking its chunk's stored bytes from `bytes` (the file's bytes from
    /// offset `at`, such as the working set read in one go, see
    /// [`Image::working_set_range`]) when they hold the chunk, and from the
    /// file otherwise. Bytes given here are checked exactly as bytes read
    /// from the file: the stored checksum, the padding in front of the chunk
    /// (when `bytes` holds it), the tag, the raw checksum when on. So wrong
    /// bytes given here are damage, never content.
    ///
    /// # Errors
    /// As [`Image::decode_extent`].
    pub fn decode_extent_with(
        &self,
        at: u64,
        bytes: &[u8],
        ext: &Extent,
        out: &mut [u8],
    ) -> Result<()> {
        if ext.kind != ExtentKind::Data || out.len() as u64 != ext.len(self.header.page_size) {
            return self.decode_extent(ext, out);
        }
        let c = self.chunk_loc(ext.chunk)?;
        let held = |off: u64, len: u64| {
            let s = usize::try_from(off.checked_sub(at)?).ok()?;
            let e = s.checked_add(usize::try_from(len).ok()?)?;
            bytes.get(s..e)
        };
        let Some(stored) = held(c.offset, u64::from(c.stored_len)) else {
            return self.decode_extent(ext, out);
        };
        let loc = Location::chunk(ext.chunk, c.offset)
            .with_region(ext.region)
            .with_addr(ext.addr);
        let n = usize::try_from(ext.chunk).unwrap_or(usize::MAX);
        let (pad_at, pad_len) = self.padding_before(n);
        if pad_len > 0 {
            match held(pad_at, pad_len) {
                Some(pad) => check_padding(ext.chunk, pad_at, pad)?,
                None => {
                    let pad = self.src.get(pad_at, pad_len, "padding")?;
                    check_padding(ext.chunk, pad_at, &pad)?;
                }
            }
        }
        let sum = xxh3_64(stored);
        if sum != c.stored_checksum {
            return Err(Error::new(
                ErrorKind::Checksum,
                loc,
                format!(
                    "stored checksum mismatch (index says {:016x}, bytes hash to {sum:016x})",
                    c.stored_checksum
                ),
            ));
        }
        self.decode_stored(ext, std::borrow::Cow::Borrowed(stored), out)
    }
}
