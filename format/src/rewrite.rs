//! Rewrites: transcode (recompress, encrypt, decrypt, full re-key) and the
//! in-place key rotation.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use rayon::prelude::*;

use crate::crypt::{self, Key};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{ExtentKind, Features};
use crate::raw::TRAILER_LEN;
use crate::read::Image;
use crate::write::{build_trailer, WriteStats, Writer, WriterOptions};

/// Options for a transcode that keep the source's facts: page size, chunk
/// size, machine, validation data, process facts, producer and notes. The
/// caller then sets the codec, key and workers.
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
        .notes(src.notes()?.to_vec()))
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
                            Ok(match e.kind {
                                ExtentKind::Zero => Piece::Zero(len),
                                ExtentKind::Absent => Piece::Absent(len),
                                ExtentKind::Data => {
                                    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
                                    src.decode_extent(e, &mut buf)?;
                                    Piece::Data(buf)
                                }
                            })
                        })
                        .collect();
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

enum Piece {
    Zero(u64),
    Absent(u64),
    Data(Vec<u8>),
}

enum Msg {
    Empty(crate::model::RegionInfo),
    Begin(crate::model::RegionInfo),
    Pieces(Vec<Piece>),
    End,
}

/// What a key rotation wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewrapStats {
    /// Bytes written to the file: the new trailer, and zeros over superseded ones.
    pub bytes_written: u64,
    /// Generation of the new trailer.
    pub generation: u32,
}

/// Rotates the key-encryption key of the image at `path` in place, without
/// touching the data: appends a trailer whose key slot wraps the same data key
/// under `new_key`, syncs it, then zeroes the superseded trailers (spec.md,
/// *Key rotation in place*). A crash at any moment leaves a readable image
/// under the old or the new key.
///
/// # Errors
/// `WrongKey` when `old_key` does not open the image; `Unsupported` when the
/// image has read-only-compatible features this code does not know; damage
/// kinds when the image is damaged; I/O errors.
pub fn rewrap_in_place(path: &Path, old_key: &Key, new_key: &Key) -> Result<RewrapStats> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {} for writing", path.display()), e))?;
    let reader = file
        .try_clone()
        .map_err(|e| Error::io("duplicating the file handle", e))?;
    let img = Image::from_reader(reader, Some(old_key))?;
    let unknown_ro = img.header().features.ro_compat & !Features::KNOWN_RO_COMPAT;
    if unknown_ro != 0 {
        return Err(Error::plain(
            ErrorKind::Unsupported,
            format!(
                "unknown read-only-compatible feature bit {}: this image may be read but not modified here",
                unknown_ro.trailing_zeros()
            ),
        ));
    }
    let dek = img
        .dek()
        .ok_or_else(|| Error::plain(ErrorKind::NotEncrypted, "the image is not encrypted"))?;
    let t = img.trailer().clone();
    let slot = crypt::wrap_slot(dek, new_key)?;
    let mut f = file;
    let end = t.offset + TRAILER_LEN as u64;
    if t.unfinished_tail > 0 {
        f.set_len(end)
            .map_err(|e| Error::io("removing an unfinished key rotation", e))?;
        f.sync_all()
            .map_err(|e| Error::io("syncing the image", e))?;
    }
    let generation = t
        .generation
        .checked_add(1)
        .ok_or_else(|| Error::plain(ErrorKind::Unsupported, "the key was rotated 2^32 times"))?;
    let trailer = build_trailer(
        end,
        t.index_offset,
        t.index_len,
        t.index_checksum,
        generation,
        &img.header().image_id,
        &slot,
    );
    f.seek(SeekFrom::Start(end))
        .and_then(|_| f.write_all(&trailer))
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("appending the new key slot", e))?;
    let mut written = TRAILER_LEN as u64;
    // Zero every superseded trailer, so the old key no longer opens the file.
    let zeros = [0u8; TRAILER_LEN];
    let mut p = t.index_offset + t.index_len;
    while p < end {
        let block = img.file_range(p, TRAILER_LEN as u64)?;
        if block.iter().any(|&b| b != 0) {
            f.seek(SeekFrom::Start(p))
                .and_then(|_| f.write_all(&zeros))
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
