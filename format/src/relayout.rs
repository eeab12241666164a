//! Relayout (spec.md, *Load order*): a copy of an image whose chunks are
//! stored in load order, the profile's first.
//!
//! Only the chunks' file offsets move. Every chunk's stored bytes are copied
//! unchanged (checked against their stored checksum on the way), so chunk
//! numbers, extents, checksums, nonces and associated data stay as they were,
//! and so does the image id (chunks are bound to it). The header gains the
//! `LOAD_ORDER` bit; the index body gains the load-order record (replacing
//! any earlier one), and an encrypted image's new index is sealed under the
//! same data key with a fresh random non-zero `index_nonce_salt`, so no
//! (key, nonce) pair is used twice. The key slot is copied as it is: it
//! binds the image id and KDF fields, neither of which changes.

use std::io::{BufWriter, Write};
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;
use zeroize::Zeroizing;

use crate::atomic::{AtomicFile, ImageLock};
use crate::crypt::{self, Key};
use crate::error::{Error, ErrorKind, Location, Result};
use crate::model::{ChunkCodec, ExtentKind, Features};
use crate::raw::{self, *};
use crate::read::Image;
use crate::rewrite::check_modifiable;
use crate::write::{build_index, build_trailer};
use crate::Profile;

/// Body record type 2 (spec.md, *Strings and meta*).
const B_LOAD_ORDER: u16 = 2;

/// What a relayout wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayoutStats {
    /// Chunks copied.
    pub chunks: u64,
    /// Chunks of the working set (the profile), stored first.
    pub working_set_chunks: u64,
    /// Stored bytes of the working set, from the first chunk's offset to the
    /// end of the last (the one read that fetches it).
    pub working_set_bytes: u64,
    /// Length of the new file.
    pub file_len: u64,
}

/// Writes to `out` a copy of `src` laid out in load order by `profile`
/// (spec.md, *Load order*): the profile's chunks first, in profile order,
/// then every other chunk by number. The content, the image id, the data
/// key and the key slot stay; see the module docs.
///
/// # Errors
/// `KeyRequired` when `src` is encrypted and locked (the body is needed);
/// `WrongImage` or `InvalidInput` when the profile does not apply to `src`
/// ([`Profile::check_for`]); `Unsupported` when `src` sets a
/// read-only-compatible feature this code does not know (its header is
/// copied); damage kinds when a chunk's stored bytes do not match their
/// checksum; I/O errors from `out`.
pub fn relayout<W: Write>(
    src: &Image,
    profile: &Profile,
    mut out: W,
) -> Result<(W, RelayoutStats)> {
    let stats = relayout_dyn(src, profile, &mut out)?;
    Ok((out, stats))
}

fn relayout_dyn(src: &Image, profile: &Profile, out: &mut dyn Write) -> Result<RelayoutStats> {
    profile.check_for(src)?;
    check_modifiable(src)?;
    let header = new_header(src)?;
    let ps = u64::from(src.header().page_size);
    let encrypted = src.is_encrypted();
    let dek = if encrypted {
        Some(src.dek().ok_or_else(|| {
            Error::plain(
                ErrorKind::KeyRequired,
                "the image is encrypted: a relayout needs its key (to seal the new index)",
            )
        })?)
    } else {
        None
    };
    // Which chunks are raw (page-aligned in a plain image).
    let n = src.chunk_locs().len();
    let mut raw_chunk = vec![false; n];
    for e in src.extents()?.iter().filter(|e| e.kind == ExtentKind::Data) {
        if let Some(f) = usize::try_from(e.chunk)
            .ok()
            .and_then(|i| raw_chunk.get_mut(i))
        {
            *f = !encrypted && e.codec == ChunkCodec::None;
        }
    }
    let mut order: Vec<u64> = profile.chunks.clone();
    let mut listed = vec![false; n];
    for &c in &profile.chunks {
        // check_for: every number is below the chunk count.
        listed[usize::try_from(c).unwrap_or(0)] = true;
    }
    order.extend((0..n as u64).filter(|&c| !listed[usize::try_from(c).unwrap_or(0)]));

    let mut put = |b: &[u8]| {
        out.write_all(b)
            .map_err(|e| Error::io("writing the relaid image", e))
    };
    put(&header)?;
    let mut pos = ps;
    let mut entries = vec![ChunkEntryRaw::default(); n];
    let mut ws_end = ps;
    let zeros = vec![0u8; usize::try_from(ps).unwrap_or(4096)];
    for (k, &c) in order.iter().enumerate() {
        let i = usize::try_from(c).unwrap_or(0);
        let at = if raw_chunk[i] {
            pos.div_ceil(ps) * ps
        } else {
            pos
        };
        let pad = usize::try_from(at - pos).unwrap_or(0);
        put(&zeros[..pad])?;
        // Checked against its stored checksum (and the padding in front of
        // it in the source): damage is not copied into a file that verifies.
        let bytes = src.read_stored(c)?;
        put(&bytes)?;
        let loc = src.chunk_locs()[i];
        entries[i] = ChunkEntryRaw {
            offset: at,
            stored_len: loc.stored_len,
            reserved: 0,
            stored_checksum: loc.stored_checksum,
        };
        pos = at + u64::from(loc.stored_len);
        if k + 1 == profile.chunks.len() {
            ws_end = pos;
        }
    }
    let body = new_body(src, &profile.chunks)?;
    let salt = if encrypted {
        crypt::fresh_index_salt()?
    } else {
        0
    };
    // build_index seals the body in place: the plaintext goes with it.
    let index = build_index(&header, &entries, body.to_vec(), dek, salt)?;
    drop(body);
    let index_offset = pos;
    put(&index.bytes)?;
    pos += index.bytes.len() as u64;
    let t = src.trailer();
    let slot = key_slot(src)?;
    let trailer = build_trailer(
        pos,
        index_offset,
        index.bytes.len() as u64,
        index.checksum,
        t.generation,
        &src.header().image_id,
        &slot,
    );
    put(&trailer)?;
    pos += trailer.len() as u64;
    out.flush()
        .map_err(|e| Error::io("flushing the relaid image", e))?;
    Ok(RelayoutStats {
        chunks: n as u64,
        working_set_chunks: profile.chunks.len() as u64,
        working_set_bytes: ws_end - ps,
        file_len: pos,
    })
}

/// Relays out the image at `path` in place, crash-safely: the new image is
/// written to a temporary file beside it, checked, synced and renamed over
/// it, under the image's lock (as the other in-place changes take it), so a
/// key rotation or in-place rewrite cannot run meanwhile. Killed at any
/// moment, the image is the old one or the new one.
///
/// # Errors
/// `Busy` when another process holds the image's lock or replaced the file
/// meanwhile; as [`relayout`]; damage kinds when the new file fails its
/// check (nothing is renamed then).
pub fn relayout_in_place(
    path: &Path,
    key: Option<&Key>,
    profile: &Profile,
) -> Result<RelayoutStats> {
    let lock = ImageLock::acquire(path, false)?;
    let reader = lock
        .file()
        .try_clone()
        .map_err(|e| Error::io("duplicating the file handle", e))?;
    let src = Image::from_reader(reader, key)?;
    let af = AtomicFile::create(path)?;
    let w = BufWriter::with_capacity(1 << 20, af);
    let (w, stats) = relayout(&src, profile, w)?;
    let af = w
        .into_inner()
        .map_err(|e| Error::io("flushing the relaid image", e.into_error()))?;
    let report = crate::verify_path(af.tmp_path(), key, &crate::VerifyOptions::default());
    if !report.is_intact() {
        let first = report
            .fatal
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| report.problems.first().map(ToString::to_string))
            .unwrap_or_default();
        return Err(Error::plain(
            ErrorKind::Malformed,
            format!("the relaid image failed its check ({first}); the image was not changed"),
        ));
    }
    lock.check_current()?;
    af.commit()?;
    drop(lock);
    Ok(stats)
}

/// The source's header page with `LOAD_ORDER` set, version 1.1 at least,
/// and its checksum recomputed.
fn new_header(src: &Image) -> Result<Vec<u8>> {
    let mut page = src.header_bytes().to_vec();
    let mut fixed: HeaderFixed = raw::from_bytes(&page)
        .ok_or_else(|| Error::plain(ErrorKind::Malformed, "the source header does not parse"))?;
    fixed.incompat |= Features::LOAD_ORDER;
    fixed.version_minor = fixed.version_minor.max(1);
    page[..HEADER_FIXED_LEN].copy_from_slice(&raw::to_bytes(&fixed));
    let end = page.len() - 8;
    let sum = xxh3_64(&page[..end]);
    page[end..].copy_from_slice(&sum.to_le_bytes());
    Ok(page)
}

/// The source's key slot, as stored in its active trailer.
fn key_slot(src: &Image) -> Result<KeySlotRaw> {
    let t = src.file_range(src.trailer().offset, TRAILER_LEN as u64)?;
    let t: TrailerRaw = raw::from_bytes(&t).ok_or_else(|| {
        Error::new(
            ErrorKind::Malformed,
            Location::at(src.trailer().offset),
            "the source trailer does not parse",
        )
    })?;
    Ok(t.key_slot)
}

/// The source's index body in clear, with every load-order record removed
/// and one for `order` appended (the body checksum is recomputed by
/// `build_index`).
fn new_body(src: &Image, order: &[u64]) -> Result<Zeroizing<Vec<u8>>> {
    let t = src.trailer();
    let index = src.file_range(t.index_offset, t.index_len)?;
    let map_end = INDEX_HEAD_LEN + CHUNK_ENTRY_LEN * src.chunk_locs().len();
    let stored = index.get(map_end..).ok_or_else(|| {
        Error::new(
            ErrorKind::Malformed,
            Location::at(t.index_offset),
            "the index is shorter than its chunk map",
        )
    })?;
    let body: Zeroizing<Vec<u8>> = match src.dek() {
        Some(dek) => {
            let mut aad = src.header_bytes().to_vec();
            aad.extend_from_slice(&index[..map_end]);
            dek.open_owned(
                &crypt::index_nonce(src.index_nonce_salt()),
                &aad,
                std::borrow::Cow::Borrowed(stored),
            )
            .map_err(|()| {
                Error::new(
                    ErrorKind::Authentication,
                    Location::at(t.index_offset),
                    "index fails authentication: the image changed since it was opened",
                )
            })?
        }
        None => Zeroizing::new(stored.to_vec()),
    };
    let head: BodyHeadRaw = raw::from_bytes(&body).ok_or_else(|| {
        Error::plain(ErrorKind::Malformed, "the source index body does not parse")
    })?;
    let meta_len = usize::try_from(head.meta_len).unwrap_or(usize::MAX);
    let m_start = body.len().checked_sub(meta_len).ok_or_else(|| {
        Error::plain(
            ErrorKind::Malformed,
            "the source index body is shorter than its meta",
        )
    })?;
    let mut out = Zeroizing::new(Vec::with_capacity(body.len() + 8 + 8 * order.len()));
    out.extend_from_slice(&body[..m_start]);
    let mut rest = &body[m_start..];
    // The framing was checked when the source was opened.
    while rest.len() >= 8 {
        let ty = u16::from_le_bytes([rest[0], rest[1]]);
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let Some(rec) = rest.get(..8 + len) else {
            break;
        };
        if ty != B_LOAD_ORDER {
            out.extend_from_slice(rec);
        }
        rest = &rest[8 + len..];
    }
    crate::meta::push_u64_record(&mut out, B_LOAD_ORDER, order, "the profile's chunk numbers")?;
    let new_meta = u32::try_from(out.len() - m_start)
        .map_err(|_| Error::plain(ErrorKind::InvalidInput, "index meta exceeds 4 GiB"))?;
    out[20..24].copy_from_slice(&new_meta.to_le_bytes());
    Ok(out)
}
