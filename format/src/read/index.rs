//! The index head and chunk map (spec.md, *Index*, *Index head*, *Chunk map*).

use xxhash_rust::xxh3::xxh3_64;

use super::{Sink, TrailerInfo};
use crate::error::{malformed, Error, ErrorKind, Location, Result};
use crate::model::*;
use crate::raw::{self, *};
use crate::source::{usize_of, Source};

/// What the index head and chunk map say.
pub(super) struct IndexParts {
    /// The chunk map.
    pub chunks: Vec<ChunkLoc>,
    /// Length of the index head and chunk map: the body starts here.
    pub map_end: usize,
    /// The salt of the index nonce (1.1).
    pub salt: u64,
}

/// Parses the index head and chunk map; the body is `index[map_end..]`.
pub(super) fn parse_index(
    _src: &Source,
    header: &Header,
    trailer: &TrailerInfo,
    index: &[u8],
    sink: &mut Sink,
) -> Result<IndexParts> {
    let base = trailer.index_offset;
    let loc = Location::at(base);
    let sum = xxh3_64(index);
    if sum != trailer.index_checksum {
        sink.report(Error::new(
            ErrorKind::Checksum,
            loc,
            format!(
                "index checksum mismatch ({} says {:016x}, index hashes to {sum:016x})",
                if trailer.read {
                    "trailer"
                } else {
                    "header's index record"
                },
                trailer.index_checksum
            ),
        ))?;
    }
    if index.len() < INDEX_HEAD_LEN {
        return Err(malformed(
            loc,
            format!("index of {} bytes is shorter than its head", index.len()),
        ));
    }
    let h: IndexHeadRaw =
        raw::from_bytes(index).ok_or_else(|| malformed(loc, "index head does not parse"))?;
    if h.magic != INDEX_MAGIC {
        return Err(malformed(loc, "index magic is wrong"));
    }
    if h.reserved != [0; 24] {
        sink.report(Error::new(
            ErrorKind::NonZeroPadding,
            Location::at(base + 40),
            "reserved index bytes are not zero",
        ))?;
    }
    let encrypted = header.cipher != Cipher::None;
    // The index nonce salt (1.1): only an encrypted image that sets a 1.1
    // feature may have one; elsewhere the field is reserved, as in 1.0.
    let salt_allowed = encrypted && header.features.incompat & Features::V1_1_INCOMPAT != 0;
    if h.index_nonce_salt != 0 && !salt_allowed {
        sink.report(Error::new(
            ErrorKind::NonZeroPadding,
            Location::at(base + 32),
            if encrypted {
                "the index nonce salt is not zero in an image without 1.1 features (reserved bytes there)"
            } else {
                "the index nonce salt is not zero in a plain image"
            },
        ))?;
    }
    let map_len = h
        .chunk_count
        .checked_mul(CHUNK_ENTRY_LEN as u64)
        .ok_or_else(|| malformed(loc, format!("chunk count {} overflows", h.chunk_count)))?;
    let expect = (INDEX_HEAD_LEN as u64)
        .checked_add(map_len)
        .and_then(|v| v.checked_add(h.body_len));
    if expect != Some(index.len() as u64) {
        return Err(malformed(
            loc,
            format!(
                "index head claims {} chunks and a {}-byte body, which do not add up to the index length {}",
                h.chunk_count,
                h.body_len,
                index.len()
            ),
        ));
    }
    let tag = if encrypted { TAG_LEN as u64 } else { 0 };
    if h.body_plain_len.checked_add(tag) != Some(h.body_len) {
        return Err(malformed(
            loc,
            format!(
                "index body lengths {} and {} disagree",
                h.body_len, h.body_plain_len
            ),
        ));
    }
    let map_end = INDEX_HEAD_LEN + usize_of(map_len)?;
    let mut chunks = Vec::with_capacity(usize_of(h.chunk_count)?);
    for (i, e) in index[INDEX_HEAD_LEN..map_end]
        .chunks_exact(CHUNK_ENTRY_LEN)
        .enumerate()
    {
        let c: ChunkEntryRaw =
            raw::from_bytes(e).ok_or_else(|| malformed(loc, "chunk entry does not parse"))?;
        let eoff = base + (INDEX_HEAD_LEN + i * CHUNK_ENTRY_LEN) as u64;
        if c.reserved != 0 {
            sink.report(Error::new(
                ErrorKind::NonZeroPadding,
                Location::chunk(i as u64, eoff),
                "reserved chunk entry bytes are not zero",
            ))?;
        }
        // A chunk holds at most chunk_size bytes of pages, stored raw or as a
        // smaller zstd frame, plus the tag when encrypted; an encrypted chunk
        // holds at least one byte besides its tag.
        let tag32 = if encrypted { 16u32 } else { 0 };
        let (min, max) = (tag32 + 1, header.chunk_size + tag32);
        if c.stored_len < min {
            return Err(malformed(
                Location::chunk(i as u64, eoff),
                if encrypted {
                    format!(
                        "encrypted chunk of {} bytes is shorter than its {TAG_LEN}-byte tag and one byte of data",
                        c.stored_len
                    )
                } else {
                    "chunk has no stored bytes".to_string()
                },
            ));
        }
        if c.stored_len > max {
            return Err(malformed(
                Location::chunk(i as u64, eoff),
                format!(
                    "chunk stores {} bytes, more than the chunk size {} allows ({max})",
                    c.stored_len, header.chunk_size
                ),
            ));
        }
        // The data area: from the data start to the index, or, when the
        // index comes first, to the trailer.
        let data_end = if header.index_first.is_some() {
            trailer.offset
        } else {
            trailer.index_offset
        };
        if c.offset < header.data_start()
            || c.offset
                .checked_add(u64::from(c.stored_len))
                .is_none_or(|e| e > data_end)
        {
            return Err(malformed(
                Location::chunk(i as u64, eoff),
                format!(
                    "chunk at {:#x} of {} bytes lies outside the data area",
                    c.offset, c.stored_len
                ),
            ));
        }
        chunks.push(ChunkLoc {
            offset: c.offset,
            stored_len: c.stored_len,
            stored_checksum: c.stored_checksum,
        });
    }
    Ok(IndexParts {
        chunks,
        map_end,
        salt: h.index_nonce_salt,
    })
}
