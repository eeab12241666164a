//! Rewrites: transcode (recompress, encrypt, decrypt, full re-key) and the
//! in-place key rotation.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use crate::atomic::ImageLock;
use crate::chain::{Chain, SegmentKind};
use crate::crypt::{self, Key};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Extent, ExtentKind, Features};
use crate::raw::{ChunkEntryRaw, CHUNK_ENTRY_LEN, INDEX_HEAD_LEN, TRAILER_LEN};
use crate::read::Image;
use crate::write::{build_index, build_trailer, rewrite_header, WriteStats, Writer, WriterOptions};

/// Options for a transcode that keep the source's facts: page size, chunk
/// size, machine, validation data, process facts, producer, notes, page
/// digests (computed again from the pages written), and the parent record
/// and hint of an incremental image (so a recompressed child
/// is a child of the same parent). The caller then sets the codec, key and
/// workers.
///
/// # Errors
/// `KeyRequired` when the source is locked.
pub fn options_from(src: &Image) -> Result<WriterOptions> {
    let h = src.header();
    Ok(WriterOptions::new()
        .page_size(h.page_size)
        .chunk_size(h.chunk_size)
        .machine(h.machine)
        .validation_opt(h.validation.clone())
        .process(h.process.clone())
        .producer(h.producer.clone())
        .notes(src.notes()?.to_vec())
        .page_digests(src.has_page_digests())
        .parent_opt(h.parent, h.parent_hint.clone()))
}

/// Copies every region of `src` into a new image written to `out` with
/// `opts`: decoding in parallel, re-encoding on the writer's workers. The
/// content does not change; a new image id and, when encrypting, a fresh data
/// key are used. `progress` is called with raw bytes done.
///
/// # Errors
/// When the source is locked or damaged, or writing fails.
pub fn transcode<W: Write>(
    src: &Image,
    out: W,
    opts: WriterOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(W, WriteStats)> {
    transcode_from(src, None, out, opts, progress)
}

/// [`transcode`], with the in-parent extents of `src` either kept as such
/// (`chain` is `None`: the output is a child of the same parent) or
/// replaced by what `chain` (whose image is `src`) holds there: the pages
/// its parents hold, zeros, and not-captured runs as absent (a flatten).
pub(crate) fn transcode_from<W: Write>(
    src: &Image,
    chain: Option<&Chain>,
    out: W,
    opts: WriterOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(W, WriteStats)> {
    if opts.get_page_size() != src.header().page_size {
        return Err(Error::plain(
            ErrorKind::InvalidInput,
            "a transcode keeps the page size of its source",
        ));
    }
    let ps = src.header().page_size;
    let mut w = Writer::new(out, opts)?;
    let regions = src.regions()?;
    // A decoder thread decodes batches of extents in parallel and hands them
    // over in order through a short queue, so decoding overlaps with the
    // writer's zero detection, compression and output.
    let batch = rayon::current_num_threads().max(1) * 2;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Msg>>(2);
        scope.spawn(move || {
            for r in regions {
                if !r.has_data() {
                    if tx.send(Ok(Msg::Empty(r.info.clone()))).is_err() {
                        return;
                    }
                    continue;
                }
                if tx.send(Ok(Msg::Begin(r.info.clone()))).is_err() {
                    return;
                }
                let ex = match src.region_extents(r) {
                    Ok(ex) => ex,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                for group in ex.chunks(batch) {
                    let decoded: Result<Vec<Piece>> = group
                        .par_iter()
                        .map(|e| {
                            let len = e.len(ps);
                            Ok(match (e.kind, chain) {
                                (ExtentKind::Zero, _) => vec![Piece::Zero(len)],
                                (ExtentKind::Absent, _) => vec![Piece::Absent(len)],
                                (ExtentKind::InParent, None) => vec![Piece::InParent(len)],
                                (ExtentKind::InParent, Some(c)) => from_parents(c, e, ps)?,
                                (ExtentKind::Data, _) => {
                                    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
                                    src.decode_extent(e, &mut buf)?;
                                    vec![Piece::Data(buf)]
                                }
                            })
                        })
                        .collect::<Result<Vec<Vec<Piece>>>>()
                        .map(|v| v.into_iter().flatten().collect());
                    let failed = decoded.is_err();
                    if tx.send(decoded.map(Msg::Pieces)).is_err() || failed {
                        return;
                    }
                }
                if tx.send(Ok(Msg::End)).is_err() {
                    return;
                }
            }
        });
        for msg in rx {
            match msg? {
                Msg::Empty(info) => w.add_empty_region(info)?,
                Msg::Begin(info) => w.begin_region(info)?,
                Msg::End => w.end_region()?,
                Msg::Pieces(pieces) => {
                    for p in pieces {
                        let len = match p {
                            Piece::Zero(len) => {
                                w.push_zero(len)?;
                                len
                            }
                            Piece::Absent(len) => {
                                w.push_absent(len)?;
                                len
                            }
                            Piece::InParent(len) => {
                                w.push_in_parent(len)?;
                                len
                            }
                            Piece::Data(buf) => {
                                w.push_data(&buf)?;
                                buf.len() as u64
                            }
                        };
                        progress(len);
                    }
                }
            }
        }
        Ok(())
    })?;
    w.finish()
}

/// What the parents of `chain` hold for the in-parent extent `e` of its
/// image, as pieces of a full image.
fn from_parents(chain: &Chain, e: &Extent, ps: u32) -> Result<Vec<Piece>> {
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    for seg in chain.segments_from(1, e.addr, e.end(ps))? {
        let len = seg.end - seg.start;
        out.push(match seg.kind {
            SegmentKind::Zero => Piece::Zero(len),
            SegmentKind::Absent | SegmentKind::NoData | SegmentKind::Gap => Piece::Absent(len),
            SegmentKind::Data(_) | SegmentKind::ParentMissing => {
                let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
                chain.read_segment(&seg, &mut buf, &mut scratch)?;
                Piece::Data(buf)
            }
        });
    }
    Ok(out)
}

enum Piece {
    Zero(u64),
    Absent(u64),
    InParent(u64),
    Data(Vec<u8>),
}

enum Msg {
    Empty(crate::model::RegionInfo),
    Begin(crate::model::RegionInfo),
    Pieces(Vec<Piece>),
    End,
}

/// Writes a copy of `src` to `out` that keeps its chunks' stored bytes
/// unchanged and so its image id, data key and key slot: the header page
/// `header_page` (the same length as `src`'s), the chunks in `order` (every
/// chunk number once) by the layout rule (spec.md, *Chunk data*), and a new
/// index whose body is `body` (in clear), sealed, when `src` is encrypted,
/// under its data key with a fresh index nonce salt (a new index under an
/// existing data key never reuses a nonce). Each chunk is checked against
/// its stored checksum (and its padding) as it is copied.
///
/// When `header_page` sets `INDEX_FIRST` (a relayout that asked for it, or
/// a rebase of such an image), the index is written right after the header,
/// whose index record is set to it (spec.md, *Index first*); the record is
/// left out otherwise. The trailer is generation `generation` of a new
/// file.
pub(crate) fn copy_rewrite<W: Write>(
    src: &Image,
    header_page: &[u8],
    order: &[u64],
    body: Vec<u8>,
    generation: u32,
    out: W,
) -> Result<(W, CopyStats)> {
    let h = src.header();
    let ps = u64::from(h.page_size);
    if header_page.len() as u64 != ps {
        return Err(Error::plain(
            ErrorKind::InvalidInput,
            "a copy keeps the page size of its source",
        ));
    }
    let n = src.chunk_locs().len();
    let mut placed = vec![false; n];
    if order.len() != n
        || !order.iter().all(|&c| {
            usize::try_from(c)
                .ok()
                .and_then(|i| placed.get_mut(i))
                .is_some_and(|p| !std::mem::replace(p, true))
        })
    {
        return Err(Error::plain(
            ErrorKind::InvalidInput,
            "a layout names every chunk exactly once",
        ));
    }
    let encrypted = src.is_encrypted();
    let dek = match (encrypted, src.dek()) {
        (true, None) => {
            return Err(Error::plain(
                ErrorKind::KeyRequired,
                "the image is encrypted: rewriting its index needs its key",
            ))
        }
        (_, d) => d,
    };
    let index_first = crate::raw::from_bytes::<crate::raw::HeaderFixed>(header_page)
        .is_some_and(|f| f.incompat & Features::INDEX_FIRST != 0);
    if index_first && encrypted {
        return Err(Error::plain(
            ErrorKind::InvalidInput,
            "the index comes first only in a plain image (spec.md, Index first)",
        ));
    }
    let mut raw = vec![false; n];
    let mut stats = WriteStats {
        image_id: h.image_id,
        regions: src.regions()?.len() as u64,
        chunks: n as u64,
        ..WriteStats::default()
    };
    for e in src.extents()? {
        let pages = u64::from(e.page_count);
        match e.kind {
            ExtentKind::Data => {
                if let Some(r) = usize::try_from(e.chunk).ok().and_then(|i| raw.get_mut(i)) {
                    *r = !encrypted && e.codec == crate::model::ChunkCodec::None;
                }
                stats.data_bytes += e.len(h.page_size);
            }
            ExtentKind::Zero => stats.zero_pages += pages,
            ExtentKind::Absent => stats.absent_pages += pages,
            ExtentKind::InParent => stats.in_parent_pages += pages,
        }
    }
    // Every chunk's place, by the layout rule from the data start: after
    // the header, or after the index when it comes first (its length is
    // known before it is built: a plain body is stored as it is).
    let data_start = if index_first {
        ps + (INDEX_HEAD_LEN + CHUNK_ENTRY_LEN * n + body.len()) as u64
    } else {
        ps
    };
    let mut entries = vec![ChunkEntryRaw::default(); n];
    let mut end = data_start;
    for &c in order {
        let i = usize::try_from(c).unwrap_or(usize::MAX);
        let loc = src.chunk_locs()[i];
        let at = if raw[i] { end.div_ceil(ps) * ps } else { end };
        entries[i] = ChunkEntryRaw {
            offset: at,
            stored_len: loc.stored_len,
            reserved: 0,
            stored_checksum: loc.stored_checksum,
        };
        stats.stored_bytes += u64::from(loc.stored_len);
        end = at + u64::from(loc.stored_len);
    }
    let salt = if encrypted {
        crypt::fresh_index_salt()?
    } else {
        0
    };
    let header_page = rewrite_header(header_page, |_, records| {
        records.retain(|(ty, _)| *ty != crate::meta::T_INDEX);
    })?;
    let (header, index) = if index_first {
        // A plain index does not depend on the header page.
        let index = build_index(&header_page, &entries, body, None, 0)?;
        if ps + index.bytes.len() as u64 != data_start {
            return Err(Error::plain(
                ErrorKind::InvalidInput,
                "the index is not the length its chunks were placed after (a bug)",
            ));
        }
        let mut rec = (index.bytes.len() as u64).to_le_bytes().to_vec();
        rec.extend_from_slice(&index.checksum.to_le_bytes());
        let header = rewrite_header(&header_page, |_, records| {
            records.push((crate::meta::T_INDEX, rec));
        })?;
        (header, index)
    } else {
        let index = build_index(&header_page, &entries, body, dek, salt)?;
        (header_page, index)
    };
    let mut out = out;
    let mut pos = 0u64;
    let put = |out: &mut W, bytes: &[u8], pos: &mut u64| -> Result<()> {
        out.write_all(bytes)
            .map_err(|e| Error::io("writing the image", e))?;
        *pos += bytes.len() as u64;
        Ok(())
    };
    put(&mut out, &header, &mut pos)?;
    let index_offset = if index_first {
        put(&mut out, &index.bytes, &mut pos)?;
        ps
    } else {
        end
    };
    let zeros = vec![0u8; usize::try_from(ps).unwrap_or(4096)];
    for &c in order {
        let e = &entries[usize::try_from(c).unwrap_or(usize::MAX)];
        // Checked against its stored checksum (and the padding in front of
        // it in the source): damage is not copied into a file that verifies.
        let stored = src.read_stored(c)?;
        let pad = usize::try_from(e.offset.saturating_sub(pos)).unwrap_or(0);
        put(&mut out, &zeros[..pad], &mut pos)?;
        put(&mut out, &stored, &mut pos)?;
    }
    if !index_first {
        put(&mut out, &index.bytes, &mut pos)?;
    }
    let trailer = build_trailer(
        pos,
        index_offset,
        index.bytes.len() as u64,
        index.checksum,
        generation,
        &h.image_id,
        src.key_slot(),
    );
    put(&mut out, &trailer, &mut pos)?;
    out.flush()
        .map_err(|e| Error::io("flushing the image", e))?;
    stats.file_len = pos;
    stats.index_checksum = index.checksum;
    Ok((
        out,
        CopyStats {
            write: stats,
            entries,
        },
    ))
}

/// What [`copy_rewrite`] wrote: its statistics, and where each chunk went.
pub(crate) struct CopyStats {
    pub write: WriteStats,
    pub entries: Vec<ChunkEntryRaw>,
}

/// What a key rotation wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewrapStats {
    /// Bytes written to the file: the new trailer, and zeros over superseded ones.
    pub bytes_written: u64,
    /// Generation of the new trailer.
    pub generation: u32,
}

/// Checks that `img` may be changed in place (key rotation, in-place
/// recompress or re-encryption): it sets no read-only-compatible feature this
/// code does not know (spec.md, *Features*).
///
/// # Errors
/// `Unsupported`, naming the lowest unknown bit.
pub fn check_modifiable(img: &Image) -> Result<()> {
    let unknown_ro = img.header().features.ro_compat & !Features::KNOWN_RO_COMPAT;
    if unknown_ro != 0 {
        return Err(Error::plain(
            ErrorKind::Unsupported,
            format!(
                "unknown read-only-compatible feature bit {}: this image may be read but not modified in place here",
                unknown_ro.trailing_zeros()
            ),
        ));
    }
    Ok(())
}

/// Rotates the key-encryption key of the image at `path` in place, without
/// touching the data: appends a trailer whose key slot wraps the same data key
/// under `new_key`, syncs it, then zeroes the superseded trailers (spec.md,
/// *Key rotation in place*). A crash at any moment leaves a readable image
/// under the old or the new key.
///
/// The image's lock ([`ImageLock`]) is taken before the image is read and
/// held to the last write, so a concurrent rotation or in-place rewrite
/// either fails with `Busy` or, if it came first, has finished (and then
/// `old_key` no longer opens the image: `WrongKey`).
///
/// # Security
/// Rotation does not revoke the old key everywhere: the data key stays the
/// same, and copies of the file made before the rotation (backups, snapshots,
/// blocks an SSD remapped) still hold the old slot. After a key is
/// compromised, re-encrypt fully (a fresh data key), which rewrites the file.
///
/// # Errors
/// `Busy` when another process is changing the image; `WrongKey` when
/// `old_key` does not open the image; `Unsupported` when the image has
/// read-only-compatible features this code does not know, or when `new_key`'s
/// parameters are beyond the Argon2id cost bound; damage kinds when the image
/// is damaged; I/O errors.
pub fn rewrap_in_place(path: &Path, old_key: &Key, new_key: &Key) -> Result<RewrapStats> {
    let lock = ImageLock::acquire(path, true)?;
    let reader = lock
        .file()
        .try_clone()
        .map_err(|e| Error::io("duplicating the file handle", e))?;
    let img = Image::from_reader(reader, Some(old_key))?;
    check_modifiable(&img)?;
    let dek = img
        .dek()
        .ok_or_else(|| Error::plain(ErrorKind::NotEncrypted, "the image is not encrypted"))?;
    let t = img.trailer().clone();
    // The header stays, so the binding does: a bound slot is rewrapped
    // bound, a 1.0 slot as a 1.0 slot.
    let bound = img
        .header()
        .is_slot_bound()
        .then_some(&img.header().image_id);
    let slot = crypt::wrap_slot(dek, new_key, bound)?;
    let generation = t
        .generation
        .checked_add(1)
        .ok_or_else(|| Error::plain(ErrorKind::Unsupported, "the key was rotated 2^32 times"))?;
    let f = lock.file();
    let end = t.offset + TRAILER_LEN as u64;
    // The order below is what keeps every crash readable: (1) the unfinished
    // tail of an earlier rotation goes (one metadata change); (2) the new
    // trailer is appended in one write and made durable, so until then the
    // old trailer is in force, and after it the new one; (3) only then are
    // the superseded trailers zeroed, each block in one write, and synced.
    // Positional writes leave the reader's handle (same open file) alone.
    if t.unfinished_tail > 0 {
        f.set_len(end)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("removing an unfinished key rotation", e))?;
    }
    let trailer = build_trailer(
        end,
        t.index_offset,
        t.index_len,
        t.index_checksum,
        generation,
        &img.header().image_id,
        &slot,
    );
    f.write_all_at(&trailer, end)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("appending the new key slot", e))?;
    let mut written = TRAILER_LEN as u64;
    // Zero every superseded trailer (and whatever else an earlier crash left
    // between the index and the old trailer), so the old key no longer opens
    // this file.
    let zeros = [0u8; TRAILER_LEN];
    let mut p = t.index_offset + t.index_len;
    while p < end {
        let block = img.file_range(p, TRAILER_LEN as u64)?;
        if !crate::zero::is_zero(&block) {
            f.write_all_at(&zeros, p)
                .map_err(|e| Error::io("zeroing a superseded key slot", e))?;
            written += TRAILER_LEN as u64;
        }
        p += TRAILER_LEN as u64;
    }
    f.sync_all()
        .map_err(|e| Error::io("syncing the image", e))?;
    Ok(RewrapStats {
        bytes_written: written,
        generation,
    })
}

#[cfg(test)]
// Test images are small and the tests run on 64-bit hosts.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::model::RegionInfo;
    use crate::verify::{verify_path, VerifyOptions};
    use std::path::PathBuf;
    use std::sync::{Arc, Barrier};

    fn write_image(path: &Path, key: &Key) {
        let opts = WriterOptions::new().key(key.clone());
        let mut w = Writer::new(std::fs::File::create(path).unwrap(), opts).unwrap();
        let data: Vec<u8> = (0..8 * 4096u32).map(|i| (i * 7 + i / 4096) as u8).collect();
        w.add_region(RegionInfo::new(0x10000, data.len() as u64), &data)
            .unwrap();
        w.finish().unwrap();
    }

    fn opens(path: &Path, key: &Key) -> std::result::Result<(), ErrorKind> {
        Image::open_with_key(path, Some(key))
            .map(drop)
            .map_err(|e| e.kind())
    }

    /// Two rotations of one image from the same key, started together: one
    /// wins, the other fails (Busy while the winner holds the lock, WrongKey
    /// once it is done), and the image opens with the winner's new key only:
    /// never with the loser's (whose rotation would otherwise have replaced
    /// the winner's trailer, reporting success for a key that no longer
    /// opens the file), never with the old one. Without the lock, both
    /// rotations read generation 0 and append at the same offset, and both
    /// report success.
    #[test]
    fn concurrent_rotations_leave_exactly_one_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let (mut busy, mut wrong) = (0, 0);
        for round in 0..24 {
            let p = dir.path().join(format!("img{round}"));
            let k0 = Key::generate().unwrap();
            write_image(&p, &k0);
            // New keys from passphrases: deriving them between reading the
            // image and appending widens the window in which two rotations
            // without a lock would both read generation 0.
            let slow = crypt::Argon2Params {
                m_cost: 8 << 10,
                t_cost: 1,
                p_cost: 1,
            };
            let keys = [
                Key::passphrase_with_params("one", slow).unwrap(),
                Key::passphrase_with_params("two", slow).unwrap(),
            ];
            let barrier = Arc::new(Barrier::new(2));
            let results: Vec<_> = std::thread::scope(|s| {
                let hs: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        let (p, k0, b) = (p.clone(), k0.clone(), barrier.clone());
                        s.spawn(move || {
                            b.wait();
                            rewrap_in_place(&p, &k0, k)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
            assert_eq!(won.len(), 1, "round {round}: {results:?}");
            let (w, l) = (won[0], 1 - won[0]);
            match results[l].as_ref().unwrap_err().kind() {
                ErrorKind::Busy => busy += 1,
                ErrorKind::WrongKey => wrong += 1,
                k => panic!("round {round}: the loser failed with {k:?}"),
            }
            assert_eq!(opens(&p, &keys[w]), Ok(()), "round {round}");
            assert_eq!(opens(&p, &keys[l]), Err(ErrorKind::WrongKey));
            assert_eq!(opens(&p, &k0), Err(ErrorKind::WrongKey));
            let opts = VerifyOptions {
                decode: true,
                progress: None,
            };
            let report = verify_path(&p, Some(&keys[w]), &opts);
            assert!(report.is_intact(), "round {round}: {report:?}");
        }
        eprintln!("losers: {busy} busy, {wrong} came second and had the wrong key");
    }

    /// While another in-place change holds the lock, a rotation fails at
    /// once with Busy and writes nothing; when it is released, it succeeds.
    #[test]
    fn rotation_fails_while_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let (k0, k1) = (Key::generate().unwrap(), Key::generate().unwrap());
        write_image(&p, &k0);
        let before = std::fs::read(&p).unwrap();
        let held = ImageLock::acquire(&p, false).unwrap();
        let e = rewrap_in_place(&p, &k0, &k1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        assert!(e.to_string().contains("being changed in place"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
        drop(held);
        rewrap_in_place(&p, &k0, &k1).unwrap();
        assert_eq!(opens(&p, &k1), Ok(()));
    }

    /// A lock whose path was renamed over (by a program that takes no lock)
    /// says so before a rename would lose that file; a new lock takes the
    /// new file.
    #[test]
    fn lock_notices_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, b"one").unwrap();
        let lock = ImageLock::acquire(&p, false).unwrap();
        lock.check_current().unwrap();
        let other: PathBuf = dir.path().join("other");
        std::fs::write(&other, b"two").unwrap();
        std::fs::rename(&other, &p).unwrap();
        let e = lock.check_current().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert!(e.to_string().contains("was replaced"), "{e}");
        // The lock held is on the old file: the new one can be locked.
        let again = ImageLock::acquire(&p, false).unwrap();
        again.check_current().unwrap();
    }

    /// Sets read-only-compatible feature `bit` in an encrypted image, as a
    /// newer writer would: header checksum, index tag (the header is part of
    /// its associated data), index checksum and trailer checksum made right.
    fn set_ro_compat_bit(p: &Path, key: &Key, bit: u32) {
        let img = Image::open_with_key(p, Some(key)).unwrap();
        let dek = img.dek().unwrap().clone();
        let t = img.trailer().clone();
        drop(img);
        let mut b = std::fs::read(p).unwrap();
        let (io, il) = (t.index_offset as usize, t.index_len as usize);
        let chunks = u64::from_le_bytes(b[io + 8..io + 16].try_into().unwrap()) as usize;
        let head = 64 + 24 * chunks;
        let mut aad = b[..4096].to_vec();
        aad.extend_from_slice(&b[io..io + head]);
        let mut body = b[io + head..io + il].to_vec();
        let n = dek.open(&crypt::index_nonce(0), &aad, &mut body).unwrap();
        body.truncate(n);
        b[0x18..0x20].copy_from_slice(&(1u64 << bit).to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..4096 - 8]);
        b[4096 - 8..4096].copy_from_slice(&sum.to_le_bytes());
        let mut aad = b[..4096].to_vec();
        aad.extend_from_slice(&b[io..io + head]);
        dek.seal(&crypt::index_nonce(0), &aad, &mut body).unwrap();
        b[io + head..io + il].copy_from_slice(&body);
        let isum = xxhash_rust::xxh3::xxh3_64(&b[io..io + il]);
        let to = t.offset as usize;
        b[to + 32..to + 40].copy_from_slice(&isum.to_le_bytes());
        let tsum = xxhash_rust::xxh3::xxh3_64(&b[to..to + 248]);
        b[to + 248..to + 256].copy_from_slice(&tsum.to_le_bytes());
        std::fs::write(p, &b).unwrap();
    }

    /// Rotation refuses an image with an unknown read-only-compatible
    /// feature (which it may read), and leaves it as it was.
    #[test]
    fn rotation_refuses_unknown_ro_compat_features() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let (k0, k1) = (Key::generate().unwrap(), Key::generate().unwrap());
        write_image(&p, &k0);
        set_ro_compat_bit(&p, &k0, 5);
        assert_eq!(opens(&p, &k0), Ok(()), "the image reads");
        let before = std::fs::read(&p).unwrap();
        let e = rewrap_in_place(&p, &k0, &k1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.message().contains("feature bit 5"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    /// An encrypted image under `key` whose length `L` satisfies `want(L)`,
    /// found by lengthening a region name (the names live in the index).
    fn image_of_length(key: &Key, want: impl Fn(u64) -> bool) -> Vec<u8> {
        for n in 0..4096 {
            let opts = WriterOptions::new().key(key.clone());
            let mut w = Writer::new(Vec::new(), opts).unwrap();
            let info = RegionInfo::new(0x10000, 4096).name(vec![b'n'; n]);
            w.add_region(info, &[9u8; 4096]).unwrap();
            let (bytes, _) = w.finish().unwrap();
            if want(bytes.len() as u64) {
                return bytes;
            }
        }
        panic!("no image length fits");
    }

    /// What a rotation from `k0` to `k1` writes: the image after it.
    fn rotated(dir: &Path, before: &[u8], k0: &Key, k1: &Key) -> Vec<u8> {
        let p = dir.join("rotated");
        std::fs::write(&p, before).unwrap();
        rewrap_in_place(&p, k0, k1).unwrap();
        std::fs::read(&p).unwrap()
    }

    /// Which of `keys` opens `bytes` (written to a file): the index of the
    /// only one that does, `Err` with each key's error kind otherwise.
    fn opened_by(dir: &Path, bytes: &[u8], keys: &[&Key]) -> std::result::Result<usize, String> {
        let p = dir.join("state");
        std::fs::write(&p, bytes).unwrap();
        let r: Vec<_> = keys.iter().map(|k| opens(&p, k)).collect();
        match r.iter().filter(|r| r.is_ok()).count() {
            1 => Ok(r.iter().position(|r| r.is_ok()).unwrap_or(0)),
            _ => Err(format!("{r:?}")),
        }
    }

    /// After a crash in `state`, a new rotation from the key in force (`from`)
    /// to `k2` succeeds, removes what the crash left and leaves an image that
    /// verifies intact under `k2`, with one zeroed block per earlier trailer.
    fn rotation_cleans_up(dir: &Path, state: &[u8], from: &Key, k2: &Key) {
        let p = dir.join("again");
        std::fs::write(&p, state).unwrap();
        rewrap_in_place(&p, from, k2).unwrap();
        let img = Image::open_with_key(&p, Some(k2)).unwrap();
        let t = img.trailer().clone();
        assert_eq!((t.unfinished_tail, t.superseded), (0, 0), "{t:?}");
        assert_eq!(img.file_len(), t.offset + TRAILER_LEN as u64);
        let opts = VerifyOptions {
            decode: true,
            progress: None,
        };
        let report = verify_path(&p, Some(k2), &opts);
        assert!(report.is_intact(), "{report:?}");
    }

    /// The states a crash during a rotation can leave that the reader
    /// accepts today, built from the bytes a real rotation writes: nothing
    /// appended; the size grown but the new trailer not written (zeros); part
    /// of the trailer appended (a split write); the trailer appended but the
    /// old one not yet zeroed. Each opens with exactly the key it should, and
    /// a later rotation cleans it up.
    #[test]
    fn torn_rotation_states_read_with_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let [k0, k1, k2] = [(); 3].map(|()| Key::generate().unwrap());
        let before = image_of_length(&k0, |_| true);
        let after = rotated(dir.path(), &before, &k0, &k1);
        let l = before.len();
        assert_eq!(after.len(), l + TRAILER_LEN);
        let new_trailer = &after[l..];
        let mut appended = before.clone();
        appended.extend_from_slice(new_trailer);
        let mut states: Vec<(String, Vec<u8>, usize)> = vec![
            ("nothing appended".into(), before.clone(), 0),
            (
                "size grown, no data".into(),
                [&before[..], &[0; TRAILER_LEN]].concat(),
                0,
            ),
            ("appended, not zeroed".into(), appended, 1),
            ("complete".into(), after.clone(), 1),
        ];
        for x in [1, 100, 255] {
            let s = [&before[..], &new_trailer[..x]].concat();
            states.push((format!("{x} bytes of the trailer appended"), s, 0));
        }
        for (what, state, want) in states {
            let got = opened_by(dir.path(), &state, &[&k0, &k1]);
            assert_eq!(got, Ok(want), "{what}");
            rotation_cleans_up(dir.path(), &state, [&k0, &k1][want], &k2);
        }
    }

    /// The states a torn write leaves when a 256-byte block straddles a page
    /// boundary and a power cut persists one page of the two: the new trailer
    /// half appended (the size grown, the rest zeros), and the superseded
    /// trailer half zeroed. The reader's rules for torn blocks (spec.md,
    /// *Finding the active trailer*) give the old key for a torn append, the
    /// new key for a torn zeroing, and a later rotation cleans up.
    #[test]
    fn torn_page_states_read_with_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let [k0, k1, k2] = [(); 3].map(|()| Key::generate().unwrap());
        let page = 4096u64;
        // The new trailer, appended at L, straddles a page boundary.
        let before = image_of_length(&k0, |l| l % page > page - 256);
        let after = rotated(dir.path(), &before, &k0, &k1);
        let l = before.len();
        let split = usize::try_from(page - l as u64 % page).unwrap();
        // A torn append happens before the old trailer is zeroed: the file
        // is the old image, then the part of the new trailer that landed.
        let first = [
            &before[..],
            &after[l..l + split],
            &[0u8; TRAILER_LEN][split..],
        ]
        .concat();
        let second = [
            &before[..],
            &[0u8; TRAILER_LEN][..split],
            &after[l + split..],
        ]
        .concat();
        for (what, state) in [("first page of the append", first), ("second page", second)] {
            assert_eq!(opened_by(dir.path(), &state, &[&k0, &k1]), Ok(0), "{what}");
            rotation_cleans_up(dir.path(), &state, &k0, &k2);
        }
        // The old trailer, at L - 256, straddles a page boundary.
        let before = image_of_length(&k0, |l| (l - 256) % page > page - 256);
        let after = rotated(dir.path(), &before, &k0, &k1);
        let o = before.len() - TRAILER_LEN;
        let split = usize::try_from(page - o as u64 % page).unwrap();
        let mut first = after.clone();
        first[o + split..o + TRAILER_LEN].copy_from_slice(&before[o + split..o + TRAILER_LEN]);
        let mut second = after.clone();
        second[o..o + split].copy_from_slice(&before[o..o + split]);
        for (what, state) in [("first page zeroed", first), ("second page zeroed", second)] {
            assert_eq!(opened_by(dir.path(), &state, &[&k0, &k1]), Ok(1), "{what}");
            rotation_cleans_up(dir.path(), &state, &k1, &k2);
        }
    }
}
