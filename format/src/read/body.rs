//! The index body (spec.md, *Body*): regions, extents, strings and meta.

use super::Body;
use crate::error::{malformed, Error, ErrorKind, Location, Result};
use crate::meta;
use crate::model::*;
use crate::raw::{self, *};
use crate::source::usize_of;

pub(super) fn parse_body(
    body: &[u8],
    header: &Header,
    chunks: &[ChunkLoc],
    base: u64,
    encrypted: bool,
) -> Result<Body> {
    let loc = Location::at(base);
    if body.len() < BODY_HEAD_LEN {
        return Err(malformed(loc, "index body is shorter than its head"));
    }
    let h: BodyHeadRaw =
        raw::from_bytes(body).ok_or_else(|| malformed(loc, "index body head does not parse"))?;
    let mut zeroed = body[..BODY_HEAD_LEN].to_vec();
    zeroed[24..32].fill(0);
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&zeroed);
    hasher.update(&body[BODY_HEAD_LEN..]);
    let sum = hasher.digest();
    if sum != h.body_checksum {
        return Err(Error::new(
            ErrorKind::Checksum,
            loc,
            format!(
                "index body checksum mismatch (stored {:016x}, body hashes to {sum:016x})",
                h.body_checksum
            ),
        ));
    }
    if h.reserved != 0 {
        return Err(Error::new(
            ErrorKind::NonZeroPadding,
            loc,
            "reserved index body bytes are not zero",
        ));
    }
    let rc = u64::from(h.region_count);
    let expect = (BODY_HEAD_LEN as u64)
        .checked_add(rc * REGION_LEN as u64)
        .and_then(|v| v.checked_add(h.extent_count.checked_mul(EXTENT_LEN as u64)?))
        .and_then(|v| v.checked_add(u64::from(h.strings_len)))
        .and_then(|v| v.checked_add(u64::from(h.meta_len)));
    if expect != Some(body.len() as u64) {
        return Err(malformed(
            loc,
            format!(
                "index body claims {} regions and {} extents, which do not fit its {} bytes",
                h.region_count,
                h.extent_count,
                body.len()
            ),
        ));
    }
    let ps = header.page_size;
    let psu = u64::from(ps);
    let chunk_pages = header.chunk_size / ps;
    let r_start = BODY_HEAD_LEN;
    let e_start = r_start + REGION_LEN * h.region_count as usize;
    let s_start = e_start + EXTENT_LEN * usize_of(h.extent_count)?;
    let m_start = s_start + h.strings_len as usize;
    let strings = &body[s_start..m_start];
    let notes = parse_body_meta(&body[m_start..], Location::at(base + m_start as u64))?;
    let load_order = super::order::parse_load_order(
        &body[m_start..],
        header,
        chunks.len(),
        base + m_start as u64,
    )?;

    let mut extents = Vec::with_capacity(usize_of(h.extent_count)?);
    let mut next_chunk = 0u64;
    for (i, e) in body[e_start..s_start].chunks_exact(EXTENT_LEN).enumerate() {
        let r: ExtentRaw =
            raw::from_bytes(e).ok_or_else(|| malformed(loc, "extent does not parse"))?;
        let eloc = Location::at(base + (e_start + i * EXTENT_LEN) as u64)
            .with_region(r.region)
            .with_addr(r.addr);
        if r.reserved != [0; 6] {
            return Err(Error::new(
                ErrorKind::NonZeroPadding,
                eloc,
                format!("extent {i}: reserved bytes are not zero"),
            ));
        }
        if r.page_count == 0 {
            return Err(malformed(eloc, format!("extent {i} has no pages")));
        }
        let kind = match r.kind {
            0 => ExtentKind::Data,
            1 => ExtentKind::Zero,
            2 => ExtentKind::Absent,
            // 1.1: the parent's pages, only in an image with a parent.
            3 if header.features.incompat & Features::PARENT != 0 => ExtentKind::InParent,
            3 => {
                return Err(malformed(
                    eloc,
                    format!("extent {i} is in parent, but the image has no parent (the parent feature is not set)"),
                ))
            }
            k => return Err(malformed(eloc, format!("extent {i}: unknown kind {k}"))),
        };
        let codec = match (kind, r.codec) {
            (ExtentKind::Data, 0) => ChunkCodec::None,
            (ExtentKind::Data, 1) => ChunkCodec::Zstd,
            (ExtentKind::Data, c) => {
                return Err(malformed(eloc, format!("extent {i}: unknown codec {c}")))
            }
            (_, 0) => ChunkCodec::None,
            (_, _) => {
                return Err(malformed(
                    eloc,
                    format!("extent {i}: a codec on pages that are not stored"),
                ))
            }
        };
        if codec == ChunkCodec::Zstd && header.features.incompat & Features::ZSTD == 0 {
            return Err(malformed(
                eloc,
                format!("extent {i} is zstd-compressed but the zstd feature is not set"),
            ));
        }
        if kind == ExtentKind::Data {
            if r.chunk != next_chunk {
                return Err(malformed(
                    eloc,
                    format!(
                        "extent {i} names chunk {} where chunk {next_chunk} comes next",
                        r.chunk
                    ),
                ));
            }
            let Some(c) = chunks.get(usize_of(r.chunk)?) else {
                return Err(malformed(
                    eloc,
                    format!("extent {i} names chunk {}, past the chunk map", r.chunk),
                ));
            };
            if r.page_count > chunk_pages {
                return Err(malformed(
                    eloc.with_region(r.region),
                    format!(
                        "extent {i} holds {} pages, more than a chunk's {chunk_pages}",
                        r.page_count
                    ),
                ));
            }
            let raw_len = u64::from(r.page_count) * psu;
            let tag = if encrypted { TAG_LEN as u64 } else { 0 };
            if codec == ChunkCodec::None && u64::from(c.stored_len) != raw_len + tag {
                return Err(malformed(
                    Location::chunk(r.chunk, c.offset)
                        .with_region(r.region)
                        .with_addr(r.addr),
                    format!(
                        "raw chunk stores {} bytes for {raw_len} bytes of pages",
                        c.stored_len
                    ),
                ));
            }
            next_chunk += 1;
        } else if r.chunk != 0 || r.raw_checksum != 0 {
            return Err(Error::new(
                ErrorKind::NonZeroPadding,
                eloc,
                format!("extent {i}: chunk fields set on pages that are not stored"),
            ));
        }
        extents.push(Extent {
            addr: r.addr,
            page_count: r.page_count,
            region: r.region,
            kind,
            codec,
            chunk: r.chunk,
            raw_checksum: r.raw_checksum,
        });
    }
    if next_chunk != chunks.len() as u64 {
        return Err(malformed(
            loc,
            format!(
                "the extents use {next_chunk} chunks but the chunk map has {}",
                chunks.len()
            ),
        ));
    }

    let mut regions = Vec::with_capacity(h.region_count as usize);
    let mut next_extent = 0u64;
    let mut next_name = 0u64;
    let mut prev_end = 0u64;
    for (i, b) in body[r_start..e_start].chunks_exact(REGION_LEN).enumerate() {
        let idx = u32::try_from(i).unwrap_or(u32::MAX);
        let r: RegionRaw =
            raw::from_bytes(b).ok_or_else(|| malformed(loc, "region does not parse"))?;
        let rloc = Location::at(base + (r_start + i * REGION_LEN) as u64).with_region(idx);
        if r.reserved != [0; 5] || r.prot & !7 != 0 || r.flags & !1 != 0 {
            return Err(Error::new(
                ErrorKind::NonZeroPadding,
                rloc,
                "region: reserved bits are not zero",
            ));
        }
        let kind = RegionKind::from_code(r.kind)
            .ok_or_else(|| malformed(rloc, format!("region: unknown kind {}", r.kind)))?;
        if !r.start.is_multiple_of(psu) || !r.len.is_multiple_of(psu) || r.len == 0 {
            return Err(malformed(
                rloc,
                format!("region {:#x}+{:#x} is not whole pages", r.start, r.len),
            ));
        }
        let end = r
            .start
            .checked_add(r.len)
            .ok_or_else(|| malformed(rloc, "region wraps the address space"))?;
        if i > 0 && r.start < prev_end {
            return Err(malformed(
                rloc,
                format!(
                    "region at {:#x} overlaps or precedes the region before it",
                    r.start
                ),
            ));
        }
        prev_end = end;
        // Names are packed in region order (spec.md, *Strings and meta*), so
        // no two regions name the same bytes and copying every name costs
        // at most the string table.
        if u64::from(r.name_off) != next_name {
            return Err(malformed(
                rloc,
                format!(
                    "region name starts at {} in the string table where {next_name} comes next (names are packed in region order)",
                    r.name_off
                ),
            ));
        }
        let name_end = next_name + u64::from(r.name_len);
        if name_end > strings.len() as u64 {
            return Err(malformed(
                rloc,
                format!(
                    "region name of {} bytes runs past the {}-byte string table",
                    r.name_len,
                    strings.len()
                ),
            ));
        }
        next_name = name_end;
        if u64::from(r.first_extent) != next_extent && r.extent_count > 0 {
            return Err(malformed(
                rloc,
                format!(
                    "region's extents start at {} where {next_extent} comes next",
                    r.first_extent
                ),
            ));
        }
        let ecount = u64::from(r.extent_count);
        if next_extent + ecount > extents.len() as u64 {
            return Err(malformed(
                rloc,
                "region's extents run past the extent table",
            ));
        }
        // The extents must cover the region exactly.
        let mut at = r.start;
        // Both bounds are ≤ extents.len(), checked just above.
        let (lo, hi) = (usize_of(next_extent)?, usize_of(next_extent + ecount)?);
        for (j, e) in extents[lo..hi].iter().enumerate() {
            if e.region != idx {
                return Err(malformed(
                    rloc,
                    format!(
                        "extent {} belongs to region {} but lies in region {idx}",
                        lo + j,
                        e.region
                    ),
                ));
            }
            if e.addr != at {
                return Err(malformed(
                    rloc.with_addr(e.addr),
                    format!("extent at {:#x} where {at:#x} comes next", e.addr),
                ));
            }
            at = e.end(ps);
            if at > end || at < e.addr {
                return Err(malformed(
                    rloc.with_addr(e.addr),
                    "extent runs past its region",
                ));
            }
        }
        if ecount > 0 && at != end {
            return Err(malformed(
                rloc,
                format!("extents cover the region only up to {at:#x}, not {end:#x}"),
            ));
        }
        let first = if ecount > 0 {
            r.first_extent
        } else {
            u32::try_from(next_extent).unwrap_or(u32::MAX)
        };
        next_extent += ecount;
        regions.push(Region {
            index: idx,
            info: RegionInfo {
                start: r.start,
                len: r.len,
                prot: Prot(r.prot),
                shared: r.flags & 1 != 0,
                kind,
                name: strings[r.name_off as usize..usize_of(name_end)?].to_vec(),
                file_offset: r.file_offset,
                dev: r.dev,
                inode: r.inode,
            },
            first_extent: first,
            extent_count: r.extent_count,
        });
    }
    if next_name != strings.len() as u64 {
        return Err(malformed(
            Location::at(base + s_start as u64),
            format!(
                "the string table holds {} bytes but the region names use {next_name}",
                strings.len()
            ),
        ));
    }
    if next_extent != extents.len() as u64 {
        return Err(malformed(
            loc,
            format!(
                "{} extents belong to no region",
                extents.len() as u64 - next_extent
            ),
        ));
    }
    let page_digests = super::digests::parse_page_digests(
        &body[m_start..],
        header,
        &extents,
        base + m_start as u64,
    )?;
    Ok(Body {
        regions,
        extents,
        notes,
        load_order,
        page_digests,
    })
}

/// The one body meta record of type `ty` (`meta` at file offset `base`),
/// as the file offset of its value and the value; `None` when there is
/// none. `name` names the record in errors.
///
/// # Errors
/// `Malformed` when a record runs past the body, or when there are two
/// records of the type (the body carries at most one).
pub(super) fn single_record<'a>(
    meta: &'a [u8],
    base: u64,
    ty: u16,
    name: &str,
) -> Result<Option<(u64, &'a [u8])>> {
    let mut found: Option<(u64, &[u8])> = None;
    let mut at = 0usize;
    while meta.len().saturating_sub(at) >= 8 {
        let t = u16::from_le_bytes([meta[at], meta[at + 1]]);
        let len = u32::from_le_bytes([meta[at + 4], meta[at + 5], meta[at + 6], meta[at + 7]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let Some(value) = meta.get(at + 8..).and_then(|v| v.get(..len)) else {
            return Err(malformed(
                Location::at(base + at as u64),
                "index meta record runs past the body",
            ));
        };
        if t == ty {
            if found.is_some() {
                return Err(malformed(
                    Location::at(base + at as u64),
                    format!("a second {name} record (the body carries exactly one)"),
                ));
            }
            found = Some((base + at as u64 + 8, value));
        }
        at += 8 + len;
    }
    Ok(found)
}

/// Parses the body meta records; `loc` locates the meta for errors.
fn parse_body_meta(meta: &[u8], loc: Location) -> Result<Vec<Note>> {
    let mut notes = Vec::new();
    let mut rest = meta;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(Error::new(
                ErrorKind::Malformed,
                loc,
                "index meta record cut short",
            ));
        }
        let ty = u16::from_le_bytes([rest[0], rest[1]]);
        let reserved = u16::from_le_bytes([rest[2], rest[3]]);
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        if reserved != 0 {
            return Err(Error::new(
                ErrorKind::NonZeroPadding,
                loc,
                "index meta record has non-zero reserved bytes",
            ));
        }
        if rest.len() - 8 < len {
            return Err(Error::new(
                ErrorKind::Malformed,
                loc,
                "index meta record runs past the body",
            ));
        }
        let value = &rest[8..8 + len];
        if ty == meta::B_NOTE {
            if value.len() < 2 {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    loc,
                    "note record too short",
                ));
            }
            let nl = usize::from(u16::from_le_bytes([value[0], value[1]]));
            if value.len() - 2 < nl {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    loc,
                    "note name runs past its record",
                ));
            }
            notes.push(Note {
                name: String::from_utf8_lossy(&value[2..2 + nl]).into_owned(),
                data: value[2 + nl..].to_vec(),
            });
        }
        rest = &rest[8 + len..];
    }
    Ok(notes)
}
