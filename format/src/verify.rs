//! Verify: walk everything and report every problem with its location.

use std::borrow::Cow;
use std::path::Path;

use rayon::prelude::*;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::chain::{Chain, ChainOptions, SegmentKind};
use crate::crypt::Key;
use crate::error::{Error, ErrorKind, Location};
use crate::model::{ChunkCodec, Extent, ExtentKind, ParentRecord};

use crate::read::{check_padding, open_lenient, Image};
use crate::source::{open_path, Source};

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
        let message = match e.io_error() {
            Some(io) => format!("{}: {io}", e.message()),
            None => e.message().to_string(),
        };
        Problem {
            kind: e.kind(),
            location: e.location(),
            message,
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
    /// Parents of an incremental image checked with it (1.1): each link
    /// verified as an image, its identity checked against its child's
    /// parent record, and every in-parent range of its child found held.
    pub parents_checked: u32,
    /// When the image (or the last parent checked) has a parent that was
    /// not checked: which one, and why (not given, not found where its hint
    /// says). The bytes the image holds itself were checked all the same.
    pub parent_unchecked: Option<String>,
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
    match open_path(path) {
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
    let (opened, problems) = open_lenient(src, key);
    report
        .problems
        .extend(problems.into_iter().map(Problem::from));
    match opened {
        Err(e) if e.is_damage() => report.problems.push(e.into()),
        // Damage found before a fatal error may be its cause (a damaged
        // header names the key slot's binding): the damage is the verdict,
        // and the error is reported with it.
        Err(e) if !report.problems.is_empty() => report.problems.push(e.into()),
        Err(e) => report.fatal = Some(e),
        Ok(img) => img.verify_into(&mut report, opts),
    }
    report
        .problems
        .sort_by_key(|p| (p.location.offset.unwrap_or(u64::MAX), p.location.chunk));
    report.problems.dedup();
    report
}

/// Says which parent was not checked, and why, as
/// [`Report::parent_unchecked`] does: the parent of link `link`, whose
/// child's record is `p` and hint `hint`, "was `why`".
pub fn parent_unchecked_note(link: u32, p: &ParentRecord, hint: Option<&str>, why: &str) -> String {
    let hint = hint.map(|h| format!(", hint {h}")).unwrap_or_default();
    format!(
        "the parent of link {link} (image {}, depth {}{hint}) was {why}",
        p.image_id_hex(),
        p.depth - 1
    )
}

/// Verifies the image at `path` and its chain of parents (an incremental
/// image, 1.1; spec.md *Incremental images*): each link is verified as an
/// image (its problems name the link), then checked against its child's
/// parent record (id, index checksum, depth, page size and machine), then
/// every in-parent range of each child is checked to be held by its
/// parents (as data, as zero pages, or further down), without decoding.
///
/// Parents are found as [`Chain::open`] finds them. A parent neither given
/// nor found is reported in [`Report::parent_unchecked`], and what the
/// links present hold is checked all the same. For a full image this is
/// [`verify_path`].
pub fn verify_chain_path(
    path: &Path,
    key: Option<&Key>,
    chain_opts: &ChainOptions<'_>,
    opts: &VerifyOptions<'_>,
) -> Report {
    let mut report = verify_path(path, key, opts);
    if report.fatal.is_some() {
        return report;
    }
    // The links that open cleanly, for the identity and range checks.
    let Ok(first) = Image::open_with_key(path, key) else {
        return report;
    };
    if first.parent().is_none() {
        return report;
    }
    report.parent_unchecked = None;
    let mut chain = Chain::single(first);
    let mut at = path.to_path_buf();
    loop {
        let link = chain.links().len();
        let link32 = u32::try_from(link).unwrap_or(u32::MAX);
        let child = &chain.links()[link - 1];
        let Some(record) = child.parent().copied() else {
            break;
        };
        let hint = child.header().parent_hint.clone();
        let found = match chain_opts.parents.get(link - 1) {
            Some(p) => Some(p.clone()),
            None if chain_opts.no_hints => None,
            None => hint
                .as_deref()
                .and_then(|h| crate::chain::hint_path(&at, h)),
        };
        let Some(ppath) = found else {
            report.parent_unchecked = Some(parent_unchecked_note(
                link32 - 1,
                &record,
                hint.as_deref(),
                if hint.is_some() && !chain_opts.no_hints {
                    "not checked: its hint names no local file (give it explicitly)"
                } else {
                    "not checked: it was not given"
                },
            ));
            break;
        };
        if !ppath.exists() {
            report.problems.push(Problem {
                kind: ErrorKind::ParentRequired,
                location: Location::default().with_link(link32),
                message: parent_unchecked_note(
                    link32 - 1,
                    &record,
                    hint.as_deref(),
                    &format!(
                        "not found at {}: the pages the chain takes from it cannot be read",
                        ppath.display()
                    ),
                ),
            });
            break;
        }
        // Its identity first (known without a key): a replaced or re-keyed
        // parent is a mismatch, not an image to verify with this key.
        let locked = Image::open(&ppath).map(|i| i.with_path(&ppath));
        if let Ok(l) = &locked {
            if let Err(e) = crate::chain::check_identity(&record, l, link32) {
                report.problems.push(e.into());
                break;
            }
        }
        // The parent's key: none for a plain parent, else the one the
        // caller gives for this link, else the image's.
        let pkey = match locked {
            Ok(locked) if !locked.is_encrypted() => None,
            Ok(locked) => chain_opts
                .parent_key
                .and_then(|f| f(link32, locked.header()))
                .or_else(|| key.cloned()),
            // It does not open: verify says why, without a key.
            Err(_) => None,
        };
        let r = verify_path(&ppath, pkey.as_ref(), opts);
        report.problems.extend(
            r.problems
                .into_iter()
                .map(|p| p.at(Location::default().with_link(link32))),
        );
        if let Some(e) = r.fatal {
            let e = e.in_link(link32);
            if report.problems.is_empty() {
                report.fatal = Some(e);
            } else {
                report.problems.push(e.into());
            }
            return report;
        }
        report.chunks_checked += r.chunks_checked;
        report.chunks_decoded += r.chunks_decoded;
        report.bytes_checked += r.bytes_checked;
        let parent = match Image::open_with_key(&ppath, pkey.as_ref()) {
            Ok(p) => p.with_path(&ppath),
            // Its damage is reported above.
            Err(_) => break,
        };
        if let Err(e) = chain.push_parent(parent) {
            report.problems.push(e.into());
            break;
        }
        report.parents_checked += 1;
        at = ppath;
    }
    report.problems.extend(verify_chain_ranges(&chain));
    report.problems.sort_by_key(|p| {
        (
            p.location.link,
            p.location.offset.unwrap_or(u64::MAX),
            p.location.chunk,
        )
    });
    report.problems.dedup();
    report
}

/// Checks that every in-parent range of each link of `chain` but the last
/// is held by the links below it (as data, as zero pages, or in-parent and
/// held further down), from the indexes alone; each range that is not is
/// a `NotCaptured` problem naming the link and the address. The chain's
/// links were checked against their children's parent records when it was
/// put together. [`verify_chain_path`] ends with this; a caller that opened
/// the chain otherwise (from object storage) calls it after verifying each
/// link.
pub fn verify_chain_ranges(chain: &Chain) -> Vec<Problem> {
    let mut problems = Vec::new();
    let ps = chain.image().header().page_size;
    for link in 0..chain.links().len().saturating_sub(1) {
        let Ok(ex) = chain.links()[link].extents() else {
            continue;
        };
        for e in ex.iter().filter(|e| e.kind == ExtentKind::InParent) {
            match chain.segments_from(link + 1, e.addr, e.end(ps)) {
                Ok(segs) => {
                    for s in segs.iter().filter(|s| s.kind.is_not_captured()) {
                        let l = u32::try_from(s.link).unwrap_or(u32::MAX);
                        problems.push(Problem {
                            kind: ErrorKind::NotCaptured,
                            location: Location::default()
                                .with_link(u32::try_from(link).unwrap_or(u32::MAX))
                                .with_region(e.region)
                                .with_addr(s.start),
                            message: format!(
                                "{:#x}-{:#x} is in parent, but link {l} holds no data there ({})",
                                s.start,
                                s.end,
                                match s.kind {
                                    SegmentKind::Absent => "absent pages",
                                    SegmentKind::NoData => "a region recorded without data",
                                    _ => "no region",
                                }
                            ),
                        });
                    }
                }
                Err(err) => problems
                    .push(Problem::from(err).at(
                        Location::default().with_link(u32::try_from(link).unwrap_or(u32::MAX)),
                    )),
            }
        }
    }
    problems
}

impl Image {
    /// Verifies an open image: stored checksums and padding of every chunk,
    /// and with `opts.decode`, every chunk's raw content.
    ///
    /// A child's parent is not checked: [`Report::parent_unchecked`] says
    /// so (see [`verify_chain_path`] and [`verify_chain_ranges`]).
    pub fn verify(&self, opts: &VerifyOptions<'_>) -> Report {
        let mut r = Report::default();
        self.verify_into(&mut r, opts);
        r
    }

    /// For a child verified alone: which parent was not checked, as
    /// [`Report::parent_unchecked`] says it. `None` for a full image.
    pub fn parent_not_checked(&self) -> Option<String> {
        self.parent().map(|p| {
            parent_unchecked_note(
                0,
                p,
                self.header().parent_hint.as_deref(),
                "not checked: only this image was verified",
            )
        })
    }

    fn verify_into(&self, report: &mut Report, opts: &VerifyOptions<'_>) {
        report.unlocked = self.is_unlocked();
        report.parent_unchecked = self.parent_not_checked();
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
        let ctx = Walk {
            img: self,
            by_chunk: &by_chunk,
            decode: opts.decode && self.is_unlocked(),
            progress: opts.progress,
        };
        // Adjacent chunks, with the padding in front of each, are read in
        // one go into a buffer each worker reuses: few large reads keep a
        // file read by position as fast as a map.
        let results: Vec<(Vec<Problem>, u64)> = batches(self)
            .into_par_iter()
            .map_init(Buffers::default, |bufs, b| ctx.batch(b, bufs))
            .collect();
        for (p, d) in results {
            report.problems.extend(p);
            report.chunks_decoded += d;
        }
        report.chunks_checked = chunks.len() as u64;
        report.bytes_checked = chunks.iter().map(|c| u64::from(c.stored_len)).sum();
    }
}

/// Most bytes read at once by one verify worker (unless one chunk is larger).
///
/// Half of a core's L2 cache here (2 MiB): the bytes a read copies in are
/// still in cache when they are hashed. On 1 GiB of content, batches of 8 MiB
/// took a third more CPU time than batches of 1 MiB or 256 KiB, which were
/// alike.
const BATCH_BYTES: u64 = 1 << 20;

/// A run of chunks `first..end` whose bytes, padding in front of each
/// included, lie back to back from `start` to `stop` in the file.
struct Batch {
    first: usize,
    end: usize,
    start: u64,
    stop: u64,
}

/// Cuts the chunk map into batches of adjacent chunks of at most
/// [`BATCH_BYTES`] (or one chunk, when a chunk is larger).
fn batches(img: &Image) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    for (i, c) in img.chunk_locs().iter().enumerate() {
        let (pad_at, pad_len) = img.padding_before(i);
        let start = if pad_len > 0 { pad_at } else { c.offset };
        // Offsets and lengths were checked to lie inside the file at open.
        let stop = c.offset + u64::from(c.stored_len);
        match out.last_mut() {
            Some(b) if b.stop == start && stop - b.start <= BATCH_BYTES => {
                b.end = i + 1;
                b.stop = stop;
            }
            _ => out.push(Batch {
                first: i,
                end: i + 1,
                start,
                stop,
            }),
        }
    }
    out
}

/// Buffers one verify worker reuses: the file bytes of a batch, and a
/// chunk's decoded pages.
#[derive(Default)]
struct Buffers {
    file: Vec<u8>,
    pages: Vec<u8>,
}

/// What every batch of a verify needs.
struct Walk<'a, 'p> {
    img: &'a Image,
    by_chunk: &'a [Option<Extent>],
    decode: bool,
    progress: Option<&'p (dyn Fn(u64) + Sync)>,
}

impl Walk<'_, '_> {
    /// Checks the chunks of one batch; returns the problems and the number
    /// of chunks decoded.
    fn batch(&self, b: Batch, bufs: &mut Buffers) -> (Vec<Problem>, u64) {
        let mut probs = Vec::new();
        let mut decoded = 0;
        let len = b.stop - b.start;
        match self
            .img
            .source()
            .get_into(b.start, len, "chunks", &mut bufs.file)
        {
            Ok(bytes) => {
                for i in b.first..b.end {
                    let at = |o: u64| {
                        o.checked_sub(b.start)
                            .and_then(|d| usize::try_from(d).ok())
                            .unwrap_or(usize::MAX)
                    };
                    let c = self.img.chunk_locs()[i];
                    let (pad_at, pad_len) = self.img.padding_before(i);
                    let pad = bytes.get(at(pad_at)..at(pad_at + pad_len)).unwrap_or(&[]);
                    let stored = bytes
                        .get(at(c.offset)..at(c.offset + u64::from(c.stored_len)))
                        .unwrap_or(&[]);
                    decoded += self.chunk(i, pad_at, pad, stored, &mut bufs.pages, &mut probs);
                }
            }
            // A batch that cannot be read (the file shrank, an I/O error):
            // each chunk is read alone, so each problem names its chunk.
            Err(_) => {
                for i in b.first..b.end {
                    let c = self.img.chunk_locs()[i];
                    let (pad_at, pad_len) = self.img.padding_before(i);
                    let mut pad = Vec::new();
                    if let Ok(p) = self
                        .img
                        .source()
                        .get_into(pad_at, pad_len, "padding", &mut pad)
                    {
                        if let Err(e) = check_padding(i as u64, pad_at, p) {
                            probs.push(e.into());
                        }
                    }
                    match self.img.source().get_into(
                        c.offset,
                        u64::from(c.stored_len),
                        "chunk",
                        &mut bufs.file,
                    ) {
                        Ok(stored) => {
                            decoded +=
                                self.chunk(i, pad_at, &[], stored, &mut bufs.pages, &mut probs);
                        }
                        Err(e) => probs.push(Problem::from(e).at(self.loc(i))),
                    }
                }
            }
        }
        (probs, decoded)
    }

    /// Where chunk `i` is, with its region and address when known.
    fn loc(&self, i: usize) -> Location {
        let c = self.img.chunk_locs()[i];
        let mut loc = Location::chunk(i as u64, c.offset);
        if let Some(e) = self.by_chunk[i] {
            loc = loc.with_region(e.region).with_addr(e.addr);
        }
        loc
    }

    /// Checks one chunk's padding and stored bytes, and with `decode` its
    /// content; returns 1 when it was decoded.
    fn chunk(
        &self,
        i: usize,
        pad_at: u64,
        pad: &[u8],
        stored: &[u8],
        pages: &mut Vec<u8>,
        probs: &mut Vec<Problem>,
    ) -> u64 {
        let c = self.img.chunk_locs()[i];
        let loc = self.loc(i);
        if let Err(e) = check_padding(i as u64, pad_at, pad) {
            probs.push(e.into());
        }
        let mut decoded = 0;
        let sum = xxh3_64(stored);
        if sum != c.stored_checksum {
            probs.push(Problem {
                kind: ErrorKind::Checksum,
                location: loc,
                message: format!(
                    "stored checksum mismatch (index says {:016x}, bytes hash to {sum:016x})",
                    c.stored_checksum
                ),
            });
        } else if let (true, Some(e)) = (self.decode, self.by_chunk[i]) {
            decoded = 1;
            if !self.img.is_encrypted() && e.codec == ChunkCodec::None {
                let raw = xxh3_128(stored);
                if raw != e.raw_checksum {
                    probs.push(raw_mismatch(loc, e.raw_checksum, raw));
                } else {
                    self.digests(&e, stored, loc, probs);
                }
            } else {
                let len = usize::try_from(e.len(self.img.header().page_size)).unwrap_or(0);
                pages.clear();
                pages.resize(len, 0);
                match self.img.decode_stored(&e, Cow::Borrowed(stored), pages) {
                    Ok(()) => self.digests(&e, pages, loc, probs),
                    Err(err) => probs.push(Problem::from(err).at(loc)),
                }
            }
        }
        if let Some(p) = self.progress {
            p(u64::from(c.stored_len));
        }
        decoded
    }

    /// Checks the page digests of `e`'s decoded `pages`, when the image
    /// has them (spec.md, *Page digests*): a page whose digest differs is
    /// damage, at its address.
    fn digests(&self, e: &Extent, pages: &[u8], loc: Location, probs: &mut Vec<Problem>) {
        if let Some((addr, want, got)) = self.img.digest_mismatch(e, pages) {
            probs.push(Problem {
                kind: ErrorKind::Checksum,
                location: loc.with_addr(addr),
                message: format!(
                    "page digest mismatch (index says {want:016x}, the page hashes to {got:016x})"
                ),
            });
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
        self.location.link = self.location.link.or(loc.link);
        self
    }
}
