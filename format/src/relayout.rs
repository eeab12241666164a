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
//!
//! A plain image is written with its index first by default (1.1,
//! `INDEX_FIRST`: spec.md, *Index first*), so that a restore from object
//! storage fetches the header, the index and the working set with one GET.

use std::io::{BufWriter, Write};
use std::path::Path;

use zeroize::Zeroizing;

use crate::atomic::{AtomicFile, ImageLock};
use crate::crypt::{self, Key};
use crate::error::{Error, ErrorKind, Location, Result};
use crate::model::Features;
use crate::raw::{self, *};
use crate::read::Image;
use crate::rewrite::{check_modifiable, copy_rewrite};
use crate::write::rewrite_header;
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
    /// File offset of the end of the working set: a read of the file's
    /// first this many bytes holds it, and with [`RelayoutStats::index_first`]
    /// the header and the index too.
    pub working_set_end: u64,
    /// True when the index was written right after the header (spec.md,
    /// *Index first*).
    pub index_first: bool,
    /// Length of the new file.
    pub file_len: u64,
}

/// How [`relayout_with`] lays the image out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayoutOptions {
    /// Write the index right after the header (1.1, `INDEX_FIRST`: spec.md,
    /// *Index first*), so that the header, the index and the working set are
    /// one range from offset 0: a restore from object storage opens the
    /// image and fetches its working set with one GET. Only a plain image
    /// can: an encrypted one keeps its index at the end whatever this says.
    /// On by default. Off, the image keeps the layout any 1.1 reader that
    /// knows `LOAD_ORDER` reads (a reader that does not know `INDEX_FIRST`
    /// refuses an image that sets it).
    pub index_first: bool,
}

impl Default for RelayoutOptions {
    fn default() -> Self {
        RelayoutOptions { index_first: true }
    }
}

/// Writes to `out` a copy of `src` laid out in load order by `profile`
/// (spec.md, *Load order*): the profile's chunks first, in profile order,
/// then every other chunk by number. The content, the image id, the data
/// key and the key slot stay; see the module docs. With the default
/// options: the index first when `src` is plain ([`RelayoutOptions`]).
///
/// # Errors
/// `KeyRequired` when `src` is encrypted and locked (the body is needed);
/// `WrongImage` or `InvalidInput` when the profile does not apply to `src`
/// ([`Profile::check_for`]); `Unsupported` when `src` sets a
/// read-only-compatible feature this code does not know (its header is
/// copied); damage kinds when a chunk's stored bytes do not match their
/// checksum; I/O errors from `out`.
pub fn relayout<W: Write>(src: &Image, profile: &Profile, out: W) -> Result<(W, RelayoutStats)> {
    relayout_with(src, profile, &RelayoutOptions::default(), out)
}

/// [`relayout`], with `opts`.
///
/// # Errors
/// As [`relayout`].
pub fn relayout_with<W: Write>(
    src: &Image,
    profile: &Profile,
    opts: &RelayoutOptions,
    out: W,
) -> Result<(W, RelayoutStats)> {
    profile.check_for(src)?;
    check_modifiable(src)?;
    let encrypted = src.is_encrypted();
    if encrypted && src.dek().is_none() {
        return Err(Error::plain(
            ErrorKind::KeyRequired,
            "the image is encrypted: a relayout needs its key (to seal the new index)",
        ));
    }
    let index_first = opts.index_first && !encrypted;
    let header = rewrite_header(src.header_bytes(), |fixed, _| {
        fixed.incompat |= Features::LOAD_ORDER;
        if index_first {
            fixed.incompat |= Features::INDEX_FIRST;
        } else {
            fixed.incompat &= !Features::INDEX_FIRST;
        }
    })?;
    let n = src.chunk_locs().len();
    let mut order: Vec<u64> = profile.chunks.clone();
    let mut listed = vec![false; n];
    for &c in &profile.chunks {
        // check_for: every number is below the chunk count.
        listed[usize::try_from(c).unwrap_or(0)] = true;
    }
    order.extend((0..n as u64).filter(|&c| !listed[usize::try_from(c).unwrap_or(0)]));
    let body = new_body(src, &profile.chunks)?;
    // The key slot and its generation stay: only the layout moves.
    let (out, stats) = copy_rewrite(
        src,
        &header,
        &order,
        body.to_vec(),
        src.trailer().generation,
        out,
    )?;
    drop(body);
    let at = |c: &u64| stats.entries[usize::try_from(*c).unwrap_or(0)];
    let (ws, ws_end) = match (profile.chunks.first(), profile.chunks.last()) {
        (Some(f), Some(l)) => {
            let end = at(l).offset + u64::from(at(l).stored_len);
            (end - at(f).offset, end)
        }
        _ => (0, 0),
    };
    Ok((
        out,
        RelayoutStats {
            chunks: n as u64,
            working_set_chunks: profile.chunks.len() as u64,
            working_set_bytes: ws,
            working_set_end: ws_end,
            index_first,
            file_len: stats.write.file_len,
        },
    ))
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
    opts: &RelayoutOptions,
) -> Result<RelayoutStats> {
    let lock = ImageLock::acquire(path, false)?;
    let reader = lock
        .file()
        .try_clone()
        .map_err(|e| Error::io("duplicating the file handle", e))?;
    let src = Image::from_reader(reader, key)?;
    let af = AtomicFile::create(path)?;
    let w = BufWriter::with_capacity(1 << 20, af);
    let (w, stats) = relayout_with(&src, profile, opts, w)?;
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
