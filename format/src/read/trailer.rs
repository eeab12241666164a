//! The trailer (spec.md, *Trailer*, *Finding the active trailer*).

use xxhash_rust::xxh3::xxh3_64;

use super::{Sink, TrailerInfo};
use crate::crypt;
use crate::error::{malformed, Error, ErrorKind, Location, Result};
use crate::model::*;
use crate::raw::{self, *};
use crate::source::Source;

/// Validates a trailer candidate at `o`; returns it when good.
fn trailer_at(src: &Source, o: u64) -> Option<TrailerRaw> {
    let b = src.get(o, TRAILER_LEN as u64, "trailer").ok()?;
    let t: TrailerRaw = raw::from_bytes(&b)?;
    let sum = xxh3_64(&b[..TRAILER_LEN - 8]);
    (t.magic == TRAILER_MAGIC && t.checksum == sum && t.trailer_offset == o).then_some(t)
}

pub(super) fn find_trailer(
    src: &Source,
    header: &Header,
    sink: &mut Sink,
) -> Result<(TrailerInfo, KeySlotRaw)> {
    let flen = src.len();
    let ps = u64::from(header.page_size);
    let min = ps + TRAILER_LEN as u64;
    if flen < min {
        return Err(crate::error::truncated(
            0,
            "an image (header and trailer)",
            min,
            flen,
        ));
    }
    let mut found = None;
    for k in 0..=TRAILER_LEN as u64 {
        let Some(o) = flen.checked_sub(TRAILER_LEN as u64 + k) else {
            break;
        };
        if o < ps {
            break;
        }
        if let Some(t) = trailer_at(src, o) {
            if k == TRAILER_LEN as u64 {
                let tail = src.get(o + TRAILER_LEN as u64, k, "trailer")?;
                if tail.iter().any(|&b| b != 0) {
                    break;
                }
            }
            found = Some((t, k));
            break;
        }
        if k == 0 {
            // A complete but damaged last trailer is damage, not an unfinished
            // rotation, unless its bytes are a torn prefix; the spec lets the
            // search go on either way and the k = 256 rule keeps it honest.
        }
    }
    let Some((t, tail)) = found else {
        let o = flen - TRAILER_LEN as u64;
        let b = src.get(o, TRAILER_LEN as u64, "trailer")?;
        return Err(no_trailer(o, &b));
    };
    let o = t.trailer_offset;
    let loc = Location::at(o);
    if t.image_id != header.image_id {
        sink.report(malformed(loc, "trailer image id differs from the header's"))?;
    }
    if t.reserved0 != 0 || t.reserved1 != [0; 56] {
        sink.report(Error::new(
            ErrorKind::NonZeroPadding,
            loc,
            "reserved trailer bytes are not zero",
        ))?;
    }
    let index_end = t
        .index_offset
        .checked_add(t.index_len)
        .filter(|&e| e <= o && t.index_offset >= ps)
        .ok_or_else(|| {
            malformed(
                loc,
                format!(
                    "index at {:#x} of {} bytes does not lie between the header and the trailer",
                    t.index_offset, t.index_len
                ),
            )
        })?;
    let kdf = if header.cipher == Cipher::None {
        if t.key_slot != KeySlotRaw::default() {
            sink.report(Error::new(
                ErrorKind::NonZeroPadding,
                Location::at(o + 64),
                "key slot of a plain image is not zero",
            ))?;
        }
        None
    } else {
        let k = crypt::slot_kdf(&t.key_slot, Location::at(o + 64))?;
        if t.key_slot.reserved0 != [0; 3] || t.key_slot.reserved1 != [0; 24] {
            sink.report(Error::new(
                ErrorKind::NonZeroPadding,
                Location::at(o + 64),
                "reserved key slot bytes are not zero",
            ))?;
        }
        Some(k)
    };
    // Between the index and the active trailer: superseded trailers or zeros.
    let gap = o - index_end;
    let mut superseded = 0;
    if gap % TRAILER_LEN as u64 != 0 {
        sink.report(malformed(
            Location::at(index_end),
            format!(
                "{gap} bytes between the index and the trailer are not whole superseded trailers"
            ),
        ))?;
    } else {
        let mut p = index_end;
        while p < o {
            let b = src.get(p, TRAILER_LEN as u64, "superseded trailer")?;
            if b.iter().any(|&x| x != 0) {
                match trailer_at(src, p) {
                    Some(old)
                        if old.generation < t.generation
                            && old.index_offset == t.index_offset
                            && old.index_len == t.index_len
                            && old.index_checksum == t.index_checksum =>
                    {
                        superseded += 1;
                    }
                    _ => sink.report(malformed(
                        Location::at(p),
                        "a block between the index and the trailer is neither zero nor a superseded trailer",
                    ))?,
                }
            }
            p += TRAILER_LEN as u64;
        }
    }
    if tail > 0 {
        sink.note(malformed(
            Location::at(o + TRAILER_LEN as u64),
            format!("{tail} bytes after the trailer: an unfinished key rotation (the previous key slot is in force)"),
        ));
    }
    Ok((
        TrailerInfo {
            offset: o,
            generation: t.generation,
            index_offset: t.index_offset,
            index_len: t.index_len,
            index_checksum: t.index_checksum,
            kdf,
            unfinished_tail: tail,
            superseded,
        },
        t.key_slot,
    ))
}

/// Why the last 256 bytes of the file, at `o`, are not the active trailer.
fn no_trailer(o: u64, b: &[u8]) -> Error {
    let loc = Location::at(o);
    if b.get(..8) != Some(&TRAILER_MAGIC[..]) {
        return Error::new(
            ErrorKind::Truncated,
            loc,
            "no valid trailer at the end of the file (the trailer magic is missing: truncated or damaged)",
        );
    }
    let stored = u64::from_le_bytes(b[248..256].try_into().unwrap_or([0; 8]));
    let sum = xxh3_64(&b[..248]);
    if stored != sum {
        return Error::new(
            ErrorKind::Checksum,
            loc,
            format!(
                "trailer checksum mismatch (stored {stored:016x}, trailer hashes to {sum:016x})"
            ),
        );
    }
    // Magic and checksum are right: the offset it records is not where it is.
    let said = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    malformed(
        loc,
        format!(
            "the trailer records its offset as {said:#x} but lies at {o:#x}: bytes were added to or removed from the file before it"
        ),
    )
}
