//! Verify: walk everything and report every problem with its location.

use std::path::Path;

use rayon::prelude::*;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::crypt::Key;
use crate::error::{Error, ErrorKind, Location};
use crate::model::{ChunkCodec, Extent, ExtentKind};
use crate::read::{open_source, Image};
use crate::source::{map_path, Source};

/// One problem found by verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What kind of problem.
    pub kind: ErrorKind,
    /// Where.
    pub location: Location,
    /// What, in words.
    pub message: String,
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        Problem {
            kind: e.kind(),
            location: e.location(),
            message: e.message().to_string(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loc = self.location.to_string();
        if loc.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{loc}: {}", self.message)
        }
    }
}

/// The verdict of a verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every check passed.
    Intact,
    /// Damage was found.
    Damaged,
    /// The image could not be checked (not an image, unsupported, wrong key, I/O).
    Unchecked,
}

/// What verify found.
#[derive(Debug, Default)]
pub struct Report {
    /// Every problem, in file order.
    pub problems: Vec<Problem>,
    /// Why the image could not be checked, if it could not.
    pub fatal: Option<Error>,
    /// Chunks whose stored bytes were checked.
    pub chunks_checked: u64,
    /// Chunks decoded and checked against their raw-content checksum.
    pub chunks_decoded: u64,
    /// Stored bytes read.
    pub bytes_checked: u64,
    /// True when the index was readable (plain image, or a key was given).
    pub unlocked: bool,
}

impl Report {
    /// The verdict.
    pub fn status(&self) -> Status {
        if self.fatal.is_some() {
            Status::Unchecked
        } else if self.problems.is_empty() {
            Status::Intact
        } else {
            Status::Damaged
        }
    }

    /// True when every check passed.
    pub fn is_intact(&self) -> bool {
        self.status() == Status::Intact
    }
}

/// How deep verify goes.
#[derive(Default)]
pub struct VerifyOptions<'a> {
    /// Decode every data chunk (decrypt and decompress) and check its raw
    /// checksum. Needs the key for an encrypted image. By default off: stored
    /// checksums, tags of the index, structure and padding are checked.
    pub decode: bool,
    /// Called with the stored bytes of each chunk as it is checked.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// Verifies the image at `path`.
///
/// Damage found while opening is reported along with everything found after,
/// as far as the structure allows going on.
pub fn verify_path(path: &Path, key: Option<&Key>, opts: &VerifyOptions<'_>) -> Report {
    match map_path(path) {
        Ok(src) => verify_source(src, key, opts),
        Err(e) => Report {
            fatal: Some(e),
            ..Report::default()
        },
    }
}

/// Verifies an image held in memory.
pub fn verify_bytes(bytes: Vec<u8>, key: Option<&Key>, opts: &VerifyOptions<'_>) -> Report {
    verify_source(Source::Bytes(bytes), key, opts)
}

fn verify_source(src: Source, key: Option<&Key>, opts: &VerifyOptions<'_>) -> Report {
    let mut report = Report::default();
    match open_source(src, key, false) {
        Err(e) if e.is_damage() => report.problems.push(e.into()),
        Err(e) => report.fatal = Some(e),
        Ok((img, problems)) => {
            report
                .problems
                .extend(problems.into_iter().map(Problem::from));
            img.verify_into(&mut report, opts);
        }
    }
    report
        .problems
        .sort_by_key(|p| (p.location.offset.unwrap_or(u64::MAX), p.location.chunk));
    report.problems.dedup();
    report
}

impl Image {
    /// Verifies an open image: stored checksums and padding of every chunk,
    /// and with `opts.decode`, every chunk's raw content.
    pub fn verify(&self, opts: &VerifyOptions<'_>) -> Report {
        let mut r = Report::default();
        self.verify_into(&mut r, opts);
        r
    }

    fn verify_into(&self, report: &mut Report, opts: &VerifyOptions<'_>) {
        report.unlocked = self.is_unlocked();
        let chunks = self.chunk_locs();
        // Data extent of each chunk, when the index is readable.
        let mut by_chunk: Vec<Option<Extent>> = vec![None; chunks.len()];
        if let Ok(ex) = self.extents() {
            for e in ex.iter().filter(|e| e.kind == ExtentKind::Data) {
                if let Some(slot) = usize::try_from(e.chunk)
                    .ok()
                    .and_then(|i| by_chunk.get_mut(i))
                {
                    *slot = Some(*e);
                }
            }
        }
        let decode = opts.decode && self.is_unlocked();
        let plain = !self.is_encrypted();
        let results: Vec<(Vec<Problem>, bool)> = (0..chunks.len())
            .into_par_iter()
            .map(|i| {
                let c = chunks[i];
                let ext = by_chunk[i];
                let mut loc = Location::chunk(i as u64, c.offset);
                if let Some(e) = ext {
                    loc = loc.with_region(e.region).with_addr(e.addr);
                }
                let mut probs = Vec::new();
                let mut decoded = false;
                match self.file_range(c.offset, u64::from(c.stored_len)) {
                    Err(e) => probs.push(Problem::from(e).at(loc)),
                    Ok(bytes) => {
                        let sum = xxh3_64(&bytes);
                        if sum != c.stored_checksum {
                            probs.push(Problem {
                                kind: ErrorKind::Checksum,
                                location: loc,
                                message: format!(
                                    "stored checksum mismatch (index says {:016x}, bytes hash to {sum:016x})",
                                    c.stored_checksum
                                ),
                            });
                        } else if let (true, Some(e)) = (decode, ext) {
                            decoded = true;
                            if plain && e.codec == ChunkCodec::None {
                                let raw = xxh3_128(&bytes);
                                if raw != e.raw_checksum {
                                    probs.push(raw_mismatch(loc, e.raw_checksum, raw));
                                }
                            } else {
                                let mut buf = vec![0u8; usize::try_from(e.len(self.header().page_size)).unwrap_or(0)];
                                if let Err(err) = self.decode_stored(&e, bytes, &mut buf) {
                                    probs.push(Problem::from(err).at(loc));
                                }
                            }
                        }
                    }
                }
                if let Some(p) = opts.progress {
                    p(u64::from(c.stored_len));
                }
                (probs, decoded)
            })
            .collect();
        for (p, d) in results {
            report.problems.extend(p);
            report.chunks_checked += 1;
            report.chunks_decoded += u64::from(d);
        }
        report.bytes_checked = chunks.iter().map(|c| u64::from(c.stored_len)).sum();
        // Padding between chunks must be zero.
        let ps = u64::from(self.header().page_size);
        let mut end = ps;
        for (i, c) in chunks.iter().enumerate() {
            if c.offset > end && c.offset - end < ps {
                if let Ok(pad) = self.file_range(end, c.offset - end) {
                    if let Some(p) = pad.iter().position(|&b| b != 0) {
                        report.problems.push(Problem {
                            kind: ErrorKind::NonZeroPadding,
                            location: Location::at(end + p as u64),
                            message: format!("padding before chunk {i} is not zero"),
                        });
                    }
                }
            }
            end = end.max(c.offset + u64::from(c.stored_len));
        }
    }
}

fn raw_mismatch(loc: Location, want: u128, got: u128) -> Problem {
    Problem {
        kind: ErrorKind::Checksum,
        location: loc,
        message: format!(
            "raw content checksum mismatch (index says {want:032x}, content hashes to {got:032x})"
        ),
    }
}

impl Problem {
    fn at(mut self, loc: Location) -> Self {
        if self.location.offset.is_none() {
            self.location.offset = loc.offset;
        }
        self.location.chunk = self.location.chunk.or(loc.chunk);
        self.location.region = self.location.region.or(loc.region);
        self.location.addr = self.location.addr.or(loc.addr);
        self
    }
}
