//! Copying an image between a path and a URL, either way, checking it as it
//! streams: the engine of `imgtool cp SRC DST`.
//!
//! The source is opened as an image first (header, trailer and index are
//! checked, as by any reader). Its bytes then stream in file order, in
//! segments of whole chunks, and before a segment is written each chunk's
//! stored bytes are checked against the checksum in the chunk map, and the
//! padding between chunks against zero; the header page is compared with
//! the one the reader validated, and the index and active trailer with their
//! checksums. So a copy carries the checks of `imgtool verify` (without
//! `--deep`) and needs no key, even for an encrypted image. The copy is the
//! source's bytes exactly (superseded trailers and an unfinished key
//! rotation included), so it is byte-identical.
//!
//! A damaged source stops the copy with the same typed error that verify
//! reports, and nothing is left at the destination: a local copy is written
//! to a temporary file renamed on success, a remote copy is a multipart
//! upload completed on success and aborted otherwise.

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use memimg::raw::{TRAILER_LEN, TRAILER_MAGIC};
use memimg::{ChunkLoc, Image};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, ErrorKind, Result};
use crate::location::Location;
use crate::open::{Output, Store};
use crate::reader::{FetchOptions, ReaderOptions, Stats};
use crate::writer::{UploadOptions, UploadStats};
use crate::S3Options;

/// How [`copy`] works.
#[derive(Default)]
pub struct CopyOptions<'a> {
    /// How a remote destination is uploaded. By default 8 MiB parts, 3 in
    /// flight.
    pub upload: UploadOptions,
    /// How a remote source is fetched. By default 4 requests in flight of up
    /// to 8 MiB.
    pub fetch: FetchOptions,
    /// Replace an existing destination. By default off: an existing file or
    /// object is an [`ErrorKind::AlreadyExists`] error.
    pub overwrite: bool,
    /// Called with the number of bytes of each segment written.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Bytes copied: the source's length.
    pub bytes: u64,
    /// Chunks whose stored checksum was checked.
    pub chunks_checked: u64,
    /// What was fetched from a remote source (opening included).
    pub fetched: Option<Stats>,
    /// What was uploaded to a remote destination.
    pub uploaded: Option<UploadStats>,
}

/// Copies the image at `src` to `dst`, checking it as it goes; see the
/// module documentation.
///
/// # Errors
/// [`ErrorKind::Image`] when the source is not an image or is damaged (the
/// [`Error::image`] says what and where, as verify would);
/// [`ErrorKind::AlreadyExists`] when `dst` exists and `opts.overwrite` is
/// off; the remote kinds for remote failures; [`ErrorKind::Io`] for local
/// ones. Nothing is left at `dst` after an error.
pub fn copy(
    src: &Location,
    dst: &Location,
    s3: &S3Options,
    opts: &CopyOptions<'_>,
) -> Result<CopyReport> {
    if src == dst {
        return Err(Error::new(
            ErrorKind::Config,
            Some(&dst.to_string()),
            "the source and the destination are the same",
        ));
    }
    let name = src.to_string();
    let (img, reader) = match src {
        Location::Local(p) => (
            Image::open(p).map_err(|e| Error::from_memimg(&name, e))?,
            None,
        ),
        Location::S3(url) => {
            let r = Arc::new(Store::new(&url.bucket, s3)?.reader(url, ReaderOptions::default())?);
            let img =
                Image::from_read_at(r.clone(), None).map_err(|e| Error::from_memimg(&name, e))?;
            (img, Some(r))
        }
    };
    if !opts.overwrite && exists(dst, s3)? {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            Some(&dst.to_string()),
            "the destination exists (give overwrite to replace it)",
        ));
    }
    let plan = plan(&img, opts.fetch.max_request);
    let mut out = Output::create(dst, s3, opts.upload)?;
    let mut checker = Checker {
        img: &img,
        name: &name,
        prev_end: 0,
        chunks_checked: 0,
    };
    let mut write = |i: usize, bytes: &[u8]| -> Result<()> {
        checker.check(&plan[i], bytes)?;
        out.write_all(bytes).map_err(|e| write_error(dst, e))?;
        if let Some(p) = opts.progress {
            p(bytes.len() as u64);
        }
        Ok(())
    };
    match (&reader, img.file_bytes()) {
        (Some(r), _) => {
            let ranges: Vec<Range<u64>> = plan.iter().map(|s| s.range.clone()).collect();
            r.fetch_many(&ranges, opts.fetch, &mut write)?;
        }
        (None, Some(all)) => {
            for (i, s) in plan.iter().enumerate() {
                let piece = usize_of(s.range.start)
                    .zip(usize_of(s.range.end))
                    .and_then(|(a, b)| all.get(a..b))
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Io,
                            Some(&name),
                            "the file is shorter than when it was opened",
                        )
                    })?;
                write(i, piece)?;
            }
        }
        (None, None) => {
            for (i, s) in plan.iter().enumerate() {
                let piece = img
                    .file_range(s.range.start, s.range.end - s.range.start)
                    .map_err(|e| Error::from_memimg(&name, e))?;
                write(i, &piece)?;
            }
        }
    }
    let chunks_checked = checker.chunks_checked;
    let uploaded = match &out {
        Output::Remote(w) => Some(w.stats()),
        Output::Local(_) => None,
    };
    out.commit()?;
    Ok(CopyReport {
        bytes: img.file_len(),
        chunks_checked,
        fetched: reader.map(|r| r.stats()),
        uploaded,
    })
}

fn write_error(dst: &Location, e: std::io::Error) -> Error {
    // An upload's error is this crate's own: keep its kind and message.
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        return Error::new(inner.kind(), inner.what(), inner.message().to_string());
    }
    Error::io(&dst.to_string(), "writing", e)
}

fn exists(loc: &Location, s3: &S3Options) -> Result<bool> {
    match loc {
        Location::Local(p) => Ok(p.exists()),
        Location::S3(url) => Store::new(&url.bucket, s3)?.exists(url),
    }
}

fn usize_of(v: u64) -> Option<usize> {
    usize::try_from(v).ok()
}

/// A piece of the file, in order: the header page, a run of whole chunks
/// (with the padding before each), or the index and trailers.
struct Segment {
    range: Range<u64>,
    what: Part,
}

enum Part {
    Header,
    Chunks(Range<usize>),
    Tail,
}

/// Cuts the file into segments that cover it exactly, each at most `max`
/// bytes unless one chunk is larger.
fn plan(img: &Image, max: u64) -> Vec<Segment> {
    let chunks = img.chunk_locs();
    let hp = img.header_bytes().len() as u64;
    let mut segs = vec![Segment {
        range: 0..hp,
        what: Part::Header,
    }];
    let mut start = hp;
    let mut first = 0usize;
    for (i, c) in chunks.iter().enumerate() {
        let end = c.offset + u64::from(c.stored_len);
        if i > first && end - start > max {
            let prev = &chunks[i - 1];
            let prev_end = prev.offset + u64::from(prev.stored_len);
            segs.push(Segment {
                range: start..prev_end,
                what: Part::Chunks(first..i),
            });
            start = prev_end;
            first = i;
        }
    }
    if first < chunks.len() {
        let last = &chunks[chunks.len() - 1];
        let end = last.offset + u64::from(last.stored_len);
        segs.push(Segment {
            range: start..end,
            what: Part::Chunks(first..chunks.len()),
        });
        start = end;
    }
    segs.push(Segment {
        range: start..img.file_len(),
        what: Part::Tail,
    });
    segs
}

/// Checks each segment's bytes as they stream past.
struct Checker<'a> {
    img: &'a Image,
    name: &'a str,
    prev_end: u64,
    chunks_checked: u64,
}

impl Checker<'_> {
    fn damage(&self, kind: memimg::ErrorKind, loc: memimg::Location, msg: String) -> Error {
        Error::from_memimg(self.name, memimg::Error::new(kind, loc, msg))
    }

    fn check(&mut self, seg: &Segment, bytes: &[u8]) -> Result<()> {
        use memimg::ErrorKind as K;
        let base = seg.range.start;
        let at = |off: u64| usize::try_from(off - base).unwrap_or(usize::MAX);
        match &seg.what {
            Part::Header => {
                if bytes != self.img.header_bytes() {
                    return Err(self.damage(
                        K::Checksum,
                        memimg::Location::at(0),
                        "the header page differs from the one read when the image was opened: it changed during the copy".into(),
                    ));
                }
                self.prev_end = seg.range.end;
            }
            Part::Chunks(idx) => {
                for n in idx.clone() {
                    let c: ChunkLoc = self.img.chunk_locs()[n];
                    let pad = bytes.get(at(self.prev_end)..at(c.offset)).unwrap_or(&[]);
                    if let Some(p) = pad.iter().position(|&b| b != 0) {
                        return Err(self.damage(
                            K::NonZeroPadding,
                            memimg::Location::at(self.prev_end + p as u64),
                            format!("padding before chunk {n} is not zero"),
                        ));
                    }
                    let end = c.offset + u64::from(c.stored_len);
                    let stored = bytes.get(at(c.offset)..at(end)).unwrap_or(&[]);
                    let sum = xxh3_64(stored);
                    if sum != c.stored_checksum {
                        return Err(self.damage(
                            K::Checksum,
                            memimg::Location::chunk(n as u64, c.offset),
                            format!(
                                "stored checksum mismatch (index says {:016x}, bytes hash to {sum:016x})",
                                c.stored_checksum
                            ),
                        ));
                    }
                    self.chunks_checked += 1;
                    self.prev_end = end;
                }
            }
            Part::Tail => {
                let t = self.img.trailer();
                let index = bytes
                    .get(at(t.index_offset)..at(t.index_offset + t.index_len))
                    .unwrap_or(&[]);
                let sum = xxh3_64(index);
                if sum != t.index_checksum {
                    return Err(self.damage(
                        K::Checksum,
                        memimg::Location::at(t.index_offset),
                        format!(
                            "index checksum mismatch (trailer says {:016x}, index hashes to {sum:016x})",
                            t.index_checksum
                        ),
                    ));
                }
                let tr = bytes
                    .get(at(t.offset)..at(t.offset + TRAILER_LEN as u64))
                    .unwrap_or(&[]);
                let ok = tr.len() == TRAILER_LEN
                    && tr[..8] == TRAILER_MAGIC
                    && tr[248..].try_into().map(u64::from_le_bytes).ok()
                        == Some(xxh3_64(&tr[..248]));
                if !ok {
                    return Err(self.damage(
                        K::Checksum,
                        memimg::Location::at(t.offset),
                        "the trailer differs from the one read when the image was opened: it changed during the copy".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}
