//! The layout rule (spec.md, *Chunk data*): where each chunk must start.

use super::{Image, Sink};
use crate::error::{malformed, Location, Result};
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
    let mut end = ps;
    for (i, c) in img.chunks.iter().enumerate() {
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
    if end != img.trailer.index_offset {
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
