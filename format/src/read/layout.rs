//! The layout rule (spec.md, *Chunk data*): where each chunk must start.

use super::{Image, Sink};
use crate::error::{malformed, Error, ErrorKind, Location, Result};
use crate::model::*;

/// Checks that chunk offsets follow the layout rule (spec.md, *Chunk data*).
pub(super) fn check_layout(img: &Image, sink: &mut Sink) -> Result<()> {
    let ps = u64::from(img.header.page_size);
    let encrypted = img.is_encrypted();
    // Which chunks are raw: known from the body; for a locked image every
    // chunk is encrypted and so packed.
    let mut raw_flags = vec![false; img.chunks.len()];
    if let (Some(b), false) = (&img.body, encrypted) {
        for e in b.extents.iter().filter(|e| e.kind == ExtentKind::Data) {
            if let Some(f) = usize::try_from(e.chunk)
                .ok()
                .and_then(|i| raw_flags.get_mut(i))
            {
                *f = e.codec == ChunkCodec::None;
            }
        }
    }
    let mut end = img.header.data_start();
    // In layout order (spec.md, *Chunk data*): by number, or the load-order
    // profile first.
    for i in super::order::layout_sequence(img) {
        let c = &img.chunks[i];
        let expect = if raw_flags[i] {
            end.div_ceil(ps) * ps
        } else {
            end
        };
        if c.offset != expect {
            sink.report(malformed(
                Location::chunk(i as u64, c.offset),
                format!(
                    "chunk starts at {:#x}; the layout puts it at {expect:#x}",
                    c.offset
                ),
            ))?;
        }
        end = c.offset + u64::from(c.stored_len);
    }
    if img.header.index_first.is_some() {
        // The trailer right after the last chunk (spec.md, *Index first*);
        // for an image opened from its front, the end of the file.
        if end != img.trailer.offset {
            sink.report(malformed(
                Location::at(end),
                format!(
                    "the trailer starts at {:#x}, not right after the last chunk ({end:#x})",
                    img.trailer.offset
                ),
            ))?;
        }
    } else if end != img.trailer.index_offset {
        sink.report(malformed(
            Location::at(end),
            format!(
                "the index starts at {:#x}, not right after the last chunk ({end:#x})",
                img.trailer.index_offset
            ),
        ))?;
    }
    Ok(())
}

impl Image {
    /// The padding in front of chunk `n`, as (file offset, length): the bytes
    /// from the end of the chunk before it in layout order (`n - 1`, unless
    /// the image has a load order; `P` for the first) up to chunk
    /// `n`'s start, which the layout rule makes zero. Only a raw chunk of a
    /// plain image has any; the length is 0 for the others, and for chunks
    /// whose offsets break the layout rule (which opening reports).
    pub(crate) fn padding_before(&self, n: usize) -> (u64, u64) {
        let ps = u64::from(self.header.page_size);
        let prev = match self.body.as_ref().and_then(|b| b.load_order.as_ref()) {
            Some(o) => o.prev(n),
            // A locked image with a load order is encrypted: every chunk
            // is packed, with no padding.
            None if self.has_load_order() => {
                return (self.chunks.get(n).map_or(ps, |c| c.offset), 0)
            }
            None => n.checked_sub(1),
        };
        let prev_end = match prev.and_then(|p| self.chunks.get(p)) {
            Some(p) => p.offset + u64::from(p.stored_len),
            None => self.header.data_start(),
        };
        match self.chunks.get(n) {
            Some(c) if c.offset > prev_end && c.offset - prev_end < ps => {
                (prev_end, c.offset - prev_end)
            }
            _ => (prev_end, 0),
        }
    }
}

/// Checks that the padding `bytes`, at file offset `start` in front of chunk
/// `n`, is all zero (spec.md, *Chunk data*: "the bytes skipped by rounding
/// are padding and must be zero").
pub(crate) fn check_padding(n: u64, start: u64, bytes: &[u8]) -> Result<()> {
    match crate::zero::first_non_zero(bytes) {
        None => Ok(()),
        Some(p) => Err(Error::new(
            ErrorKind::NonZeroPadding,
            Location::at(start + p as u64).with_chunk(n),
            format!("padding before chunk {n} is not zero"),
        )),
    }
}
