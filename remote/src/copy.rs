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

use memimg::Image;

use crate::check::{plan, Checker};
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
    let plan = plan(&img, opts.fetch.max_request, true);
    let mut out = Output::create(dst, s3, opts.upload)?;
    let mut checker = Checker::new(&img);
    let mut problems = Vec::new();
    let mut write = |i: usize, bytes: &[u8]| -> Result<()> {
        checker.check(&plan[i], bytes, &mut problems);
        if let Some(p) = problems.drain(..).next() {
            // The first problem stops the copy, as damage stops a reader.
            let e = memimg::Error::new(p.kind, p.location, p.message);
            return Err(Error::from_memimg(&name, e));
        }
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
