//! The trailer (spec.md, *Trailer*, *Finding the active trailer*).

use xxhash_rust::xxh3::xxh3_64;

use super::{Sink, TrailerInfo};
use crate::crypt;
use crate::error::{malformed, Error, ErrorKind, Location, Result};
use crate::model::*;
use crate::raw::{self, *};
use crate::source::Source;
use crate::zero::is_zero;

/// The unit a power cut may tear a write at: a disk writes a 512-byte sector
/// whole (and a 4096-byte page is whole sectors), so a torn 256-byte write is
/// cut at most once, at a multiple of 512 (spec.md, *Finding the active
/// trailer*).
const SECTOR: u64 = 512;

/// Parses `b`, the 256 bytes at file offset `o`, as a trailer; returns it
/// when its magic and checksum are right and it records its own offset.
fn valid_trailer(b: &[u8], o: u64) -> Option<TrailerRaw> {
    let t: TrailerRaw = raw::from_bytes(b)?;
    let sum = xxh3_64(b.get(..TRAILER_LEN - 8)?);
    (t.magic == TRAILER_MAGIC && t.checksum == sum && t.trailer_offset == o).then_some(t)
}

/// `b`, the 256 bytes at file offset `at`, cut at the multiple of
/// [`SECTOR`] that falls inside it (if one does): the first piece and the
/// rest.
fn pieces(at: u64, b: &[u8]) -> (&[u8], &[u8]) {
    let cut = (at / SECTOR + 1) * SECTOR - at;
    b.split_at(usize::try_from(cut).unwrap_or(usize::MAX).min(b.len()))
}

/// True when the 256 bytes `b` at `at` are a write torn by a power cut:
/// their first piece or the rest is all zero (all of them, when they lie in
/// one sector).
fn torn(at: u64, b: &[u8]) -> bool {
    let (first, rest) = pieces(at, b);
    is_zero(first) || (!rest.is_empty() && is_zero(rest))
}

/// What a 256-byte block between the index and the active trailer is.
enum Block {
    /// All zero: a superseded trailer that a rotation zeroed.
    Zero,
    /// A superseded trailer not zeroed yet.
    Superseded,
    /// A superseded trailer partly zeroed: a rotation's zeroing torn by a
    /// power cut.
    TornZeroing,
    /// Anything else.
    Foreign,
}

fn block_at(b: &[u8], p: u64, active: &TrailerRaw) -> Block {
    if is_zero(b) {
        return Block::Zero;
    }
    if let Some(old) = valid_trailer(b, p) {
        if old.generation < active.generation
            && old.index_offset == active.index_offset
            && old.index_len == active.index_len
            && old.index_checksum == active.index_checksum
        {
            return Block::Superseded;
        }
        return Block::Foreign;
    }
    if !torn(p, b) {
        return Block::Foreign;
    }
    // What is left of a trailer: a first piece long enough to hold the magic
    // and the offset must hold this trailer's.
    let (first, _) = pieces(p, b);
    if first.len() >= 16 && !is_zero(first) {
        let at = first[8..16].try_into().ok().map(u64::from_le_bytes);
        if first[..8] != TRAILER_MAGIC || at != Some(p) {
            return Block::Foreign;
        }
    }
    Block::TornZeroing
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
    // Every candidate lies in the last 512 bytes (after the header): one read.
    let tl = TRAILER_LEN as u64;
    let span = (flen - ps).min(2 * tl);
    let base = flen - span;
    let end = src.get(base, span, "trailer")?;
    let at = |o: u64| usize::try_from(o - base).unwrap_or(usize::MAX);
    let mut found = None;
    for k in 0..=tl {
        let Some(o) = flen.checked_sub(tl + k).filter(|&o| o >= base) else {
            break;
        };
        let Some(t) = end.get(at(o)..at(o + tl)).and_then(|b| valid_trailer(b, o)) else {
            continue;
        };
        // 256 bytes after a valid trailer are a complete trailer, unless a
        // power cut tore its append: a damaged newest trailer must never
        // hand the image back to the previous generation's key slot.
        if k == tl && !torn(o + tl, &end[at(o + tl)..]) {
            break;
        }
        found = Some((t, k));
        break;
    }
    let Some((t, tail)) = found else {
        return Err(no_trailer(flen - tl, &end[at(flen - tl)..]));
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
    if let Some(rec) = header.index_first {
        if (t.index_offset, t.index_len, t.index_checksum)
            != (ps, rec.index_len, rec.index_checksum)
        {
            sink.report(malformed(
                Location::at(o + 16),
                format!(
                    "the trailer locates an index at {:#x} of {} bytes (checksum {:016x}); the header's index record one at {ps:#x} of {} bytes (checksum {:016x})",
                    t.index_offset, t.index_len, t.index_checksum, rec.index_len, rec.index_checksum
                ),
            ))?;
        }
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
        // kek_check is reserved in a slot that is not bound (1.0).
        let kek_reserved = !header.is_slot_bound() && t.key_slot.kek_check != [0; 16];
        if t.key_slot.reserved0 != [0; 3] || t.key_slot.reserved1 != [0; 8] || kek_reserved {
            sink.report(Error::new(
                ErrorKind::NonZeroPadding,
                Location::at(o + 64),
                "reserved key slot bytes are not zero",
            ))?;
        }
        Some(k)
    };
    // Between the index and the active trailer: superseded trailers, zeroed
    // or not, or partly zeroed by a torn rotation. When the index comes
    // first the chunks lie there, and the layout check puts the trailer
    // right after them (a plain image is never rotated).
    let index_end = if header.index_first.is_some() {
        o
    } else {
        index_end
    };
    let gap = o - index_end;
    let (mut superseded, mut torn_zeroing) = (0, 0);
    if gap % tl != 0 {
        sink.report(malformed(
            Location::at(index_end),
            format!(
                "{gap} bytes between the index and the trailer are not whole superseded trailers"
            ),
        ))?;
    } else {
        let mut p = index_end;
        while p < o {
            let b = src.get(p, tl, "superseded trailer")?;
            match block_at(&b, p, &t) {
                Block::Zero => {}
                Block::Superseded => superseded += 1,
                Block::TornZeroing => {
                    torn_zeroing += 1;
                    sink.note(malformed(
                        Location::at(p),
                        "a superseded trailer is partly zeroed: a key rotation was cut off while zeroing it (rotating the key again finishes the job)",
                    ));
                }
                Block::Foreign => sink.report(malformed(
                    Location::at(p),
                    "a block between the index and the trailer is neither zero nor a superseded trailer",
                ))?,
            }
            p += tl;
        }
    }
    if tail > 0 && header.index_first.is_some() {
        // A plain image is never rotated: its trailer is the file's end
        // (spec.md, *Index first*), as a reader opening it from its front
        // takes it to be.
        sink.report(malformed(
            Location::at(o + tl),
            format!("{tail} bytes after the trailer of an image whose index comes first"),
        ))?;
    } else if tail > 0 {
        let what = if tail == tl {
            "a torn new trailer"
        } else {
            "part of a new trailer"
        };
        sink.note(malformed(
            Location::at(o + tl),
            format!("{tail} bytes after the trailer, {what}: a key rotation was cut off before its trailer was written (the previous key slot is in force)"),
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
            partly_zeroed: torn_zeroing,
            read: true,
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
