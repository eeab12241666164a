//! `imgtool diff`: compare the content of two images, not their encoding.
//!
//! Regions are matched by start address. Within a matched pair the extents of
//! both sides are walked together; a data extent whose position and
//! raw-content checksum match its counterpart is not decoded and compared,
//! equal zero or absent runs are equal, and everything else is decoded and
//! compared page by page, in parallel.
//!
//! "Identical" never rests on bytes that were not read: the chunks of the
//! extents that matched by checksum are read and checked, in parallel. In a
//! plain image that is their stored checksum (which the chunk map holds in
//! clear); in an encrypted one they are decrypted, so their authentication
//! tag, which binds each chunk to its place in its image, is checked, and
//! then decompressed and checked against their raw-content checksum. A
//! swapped, replayed or altered chunk thus makes the diff fail (exit 2)
//! instead of passing for equal. `--index-only` skips this check, and its
//! output says that the result rests on the index alone.
//!
//! Incremental images (format 1.1) are compared through their chains: each
//! side's pages come from whichever link holds them. Pages both sides take
//! from the same chunk of the same file (one file, opened by both chains:
//! a child and its parent) are the same bytes and are neither decoded nor
//! read (a copy of an image, even with the same id and index, is read): a child against its
//! parent decodes only the pages the child stores, and lists exactly those
//! of them that differ (`bytes_shared`).
//!
//! Three kinds of difference are kept apart:
//! - regions found in only one image (`only_in_a`, `only_in_b`), each with a
//!   reason: another region overlaps it with other bounds, it was recorded
//!   without data, it is a read-only file mapping (which core dumps such as
//!   gcore leave out), or simply nothing is there in the other image;
//! - pages that differ in content (`ranges`, counted in `pages_differ`);
//! - pages captured in only one image: data or zero pages on one side and
//!   absent ("not captured") pages, or the tail of a longer region, on the
//!   other (`captured_only_in_a`, `captured_only_in_b`). Nothing says their
//!   bytes differ, so they are not counted as differing pages; but the images
//!   do not hold the same content, so they make the diff "different" (exit 1),
//!   as the regions found in only one image do.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Result};
use memimg::{Chain, Extent, ExtentKind, Image, Region, SegmentKind};
use memimg_remote::Location;
use rayon::prelude::*;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::cli::DiffArgs;
use crate::cmd::inspect::hex_if_binary;
use crate::keys::KeySource;
use crate::{fmt, ui};

/// Most bytes of one unit of parallel work: work that spans more is split.
const MAX_ITEM: u64 = 8 << 20;

struct Plan {
    a: Location,
    b: Location,
    key_a: Option<KeySource>,
    key_b: Option<KeySource>,
    json: bool,
    check: Check,
}

impl Plan {
    fn new(args: &DiffArgs) -> Result<Plan> {
        let key_a = args.key.source();
        let key_b = if args.key_b.plain_b {
            None
        } else {
            args.key_b.source().or_else(|| key_a.clone())
        };
        Ok(Plan {
            a: crate::open::location(&args.a)?,
            b: crate::open::location(&args.b)?,
            key_a,
            key_b,
            json: args.json,
            check: if args.index_only {
                Check::IndexOnly
            } else {
                Check::StoredBytes
            },
        })
    }
}

/// What diff reads of the chunks that match by raw-content checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Read and check them: the stored checksum, and in an encrypted image
    /// the tag and the raw-content checksum. The default.
    StoredBytes,
    /// Trust the index: do not read them (`--index-only`).
    IndexOnly,
}

/// The JSON document of `diff --json`.
#[derive(Debug, Serialize, Default)]
pub struct DiffDoc {
    /// The first image.
    pub a: String,
    /// The second image.
    pub b: String,
    /// True when the content is the same.
    pub identical: bool,
    /// Regions found only in the first image.
    pub only_in_a: Vec<RegionRef>,
    /// Regions found only in the second image.
    pub only_in_b: Vec<RegionRef>,
    /// Regions in both that differ.
    pub changed: Vec<RegionDiff>,
    /// Pages whose content differs, over all regions in both.
    pub pages_differ: u64,
    /// The same in bytes.
    pub bytes_differ: u64,
    /// Pages of regions in both that only the first image captured.
    pub pages_captured_only_in_a: u64,
    /// Pages of regions in both that only the second image captured.
    pub pages_captured_only_in_b: u64,
    /// Bytes compared by raw-content checksum, without decoding both sides
    /// and comparing them.
    pub bytes_skipped_by_checksum: u64,
    /// Bytes decoded and compared.
    pub bytes_decoded: u64,
    /// Bytes both images take from the same chunk of the same image (a
    /// child and its parent, two children of one parent): the same bytes,
    /// neither decoded nor read.
    pub bytes_shared: u64,
    /// True with `--index-only`: the chunks of `bytes_skipped_by_checksum`
    /// were not read, so the result rests on the index alone.
    pub index_only: bool,
    /// Chunks (of both images) that matched by checksum and whose stored
    /// bytes were read and checked: the stored checksum, and with a key the
    /// tag and raw content. 0 with `--index-only`.
    pub chunks_checked: u64,
    /// Their stored bytes.
    pub stored_bytes_checked: u64,
    /// Chunks that matched by checksum and were not read (`--index-only`).
    pub chunks_not_read: u64,
}

/// A region, named.
#[derive(Debug, Serialize, Clone)]
pub struct RegionRef {
    /// Its index in its image.
    pub index: u32,
    /// Start, hex.
    pub start: String,
    /// End (exclusive), hex.
    pub end: String,
    /// Bytes.
    pub size: u64,
    /// Name (invalid UTF-8 replaced).
    pub name: String,
    /// The name's bytes in hex, only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    /// The name's bytes.
    #[serde(skip)]
    pub name_raw: Vec<u8>,
    /// Permissions, as in /proc/PID/maps.
    pub perms: String,
    /// Kind.
    pub kind: String,
    /// Bytes of data or zero pages it holds (absent pages not counted).
    pub captured_bytes: u64,
    /// Why the other image has no region here, as far as the images tell.
    pub reason: String,
}

/// A region present in both images that differs.
#[derive(Debug, Serialize, Clone)]
pub struct RegionDiff {
    /// Index in the first image.
    pub index_a: u32,
    /// Index in the second image.
    pub index_b: u32,
    /// Start, hex.
    pub start: String,
    /// End in the first image (exclusive), hex.
    pub end: String,
    /// Name in the first image (invalid UTF-8 replaced).
    pub name: String,
    /// The name's bytes in hex, only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    /// The name's bytes.
    #[serde(skip)]
    pub name_raw: Vec<u8>,
    /// Changed attributes.
    pub changes: Vec<Change>,
    /// Page ranges whose content differs.
    pub ranges: Vec<RangeDoc>,
    /// Pages that differ.
    pub pages: u64,
    /// Bytes that differ (pages × page size).
    pub bytes: u64,
    /// Page ranges captured in the first image only (not counted in `pages`).
    pub captured_only_in_a: Vec<RangeDoc>,
    /// Page ranges captured in the second image only (not counted in `pages`).
    pub captured_only_in_b: Vec<RangeDoc>,
}

/// One changed attribute.
#[derive(Debug, Serialize, Clone)]
pub struct Change {
    /// `perms`, `kind`, `name` or `size`.
    pub field: &'static str,
    /// In the first image.
    pub a: String,
    /// In the second image.
    pub b: String,
    /// For a name that is not UTF-8: its bytes in the first image, in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a_hex: Option<String>,
    /// For a name that is not UTF-8: its bytes in the second image, in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b_hex: Option<String>,
    /// For the text output: both values escaped for a terminal.
    #[serde(skip)]
    pub shown: (String, String),
}

impl Change {
    /// A change of an attribute that is plain text (not from the file's bytes).
    fn text(field: &'static str, a: String, b: String) -> Change {
        Change {
            field,
            shown: (a.clone(), b.clone()),
            a,
            b,
            a_hex: None,
            b_hex: None,
        }
    }
}

/// A run of differing pages.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct RangeDoc {
    /// First address, hex.
    pub start: String,
    /// End (exclusive), hex.
    pub end: String,
    /// Pages.
    pub pages: u64,
    /// Bytes.
    pub bytes: u64,
    /// Why, for a range captured in one image only: `not captured in B`,
    /// `beyond the end of the region in B`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Compares two images: exit 0 identical, 1 different, 2 error.
///
/// # Errors
/// When a key cannot be read, an image cannot be opened or unlocked, or a
/// chunk is damaged.
pub fn diff(args: &DiffArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    let key_a = plan.key_a.as_ref().map(KeySource::load).transpose()?;
    let key_b = if plan.key_b == plan.key_a {
        key_a.clone()
    } else {
        plan.key_b.as_ref().map(KeySource::load).transpose()?
    };
    let a = crate::open::open_chain_at(&plan.a, key_a.as_ref(), true, &args.chain)?;
    let b = crate::open::open_chain_at(
        &plan.b,
        key_b.as_ref(),
        true,
        &args.chain_b.chain(args.chain.no_hints),
    )
    .map_err(|e| {
        if args.key_b.source().is_none() && key_b.is_some() && !b_encrypted(&plan.b) {
            anyhow::anyhow!(
                "{} is not encrypted, but it was given A's key (no key was given for B): \
                 refusing to read it as if the key had opened it; give --plain-b to compare \
                 with a plain image",
                plan.b
            )
        } else {
            e
        }
    })?;
    let mut doc = compare_with(&a, &b, plan.check).map_err(|e| name_side(e, &plan))?;
    doc.a = plan.a.to_string();
    doc.b = plan.b.to_string();
    if plan.json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    } else {
        write_text(&doc, a.image().header().page_size, out)?;
    }
    Ok(super::code(if doc.identical {
        crate::EXIT_OK
    } else {
        crate::EXIT_FOUND
    }))
}

/// True when the image at `loc` opens and is encrypted.
fn b_encrypted(loc: &Location) -> bool {
    match loc {
        Location::Local(p) => Image::open(p).is_ok_and(|i| i.is_encrypted()),
        Location::S3(url) => crate::open::reader(url)
            .ok()
            .and_then(|r| Image::from_read_at(r, None).ok())
            .is_some_and(|i| i.is_encrypted()),
    }
}

/// Names the image of a chunk that failed its check.
fn name_side(e: anyhow::Error, plan: &Plan) -> anyhow::Error {
    match e.downcast::<SideError>() {
        Ok(SideError(side, err)) => {
            let path = if side == 0 { &plan.a } else { &plan.b };
            crate::open::lib_error(err, path, "checking")
        }
        Err(e) => e,
    }
}

/// A chunk of image A (0) or B (1) that failed its check.
#[derive(Debug)]
struct SideError(usize, memimg::Error);

impl std::fmt::Display for SideError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "image {}: {}", ["A", "B"][self.0], self.1)
    }
}

impl std::error::Error for SideError {}

/// A region found in `img` only; `other` is the other image's region table,
/// named `who` ("A" or "B").
fn region_ref(img: &Image, r: &Region, other: &[Region], who: &str) -> Result<RegionRef> {
    let ps = img.header().page_size;
    let captured: u64 = if r.has_data() {
        img.region_extents(r)?
            .iter()
            .filter(|e| e.kind != ExtentKind::Absent)
            .map(|e| e.len(ps))
            .sum()
    } else {
        0
    };
    let overlap = other
        .iter()
        .find(|o| o.info.start < r.info.end() && r.info.start < o.info.end());
    let file = r.info.name.first() == Some(&b'/');
    let reason = if let Some(o) = overlap {
        format!(
            "{who}'s region {}-{} {} overlaps it with other bounds",
            fmt::addr(o.info.start),
            fmt::addr(o.info.end()),
            fmt::escape(&o.info.name)
        )
    } else if !r.has_data() {
        format!("{who} has no region here; this one is recorded without data")
    } else if captured == 0 {
        format!("{who} has no region here; none of its pages were captured either")
    } else if file && !r.info.prot.write() {
        format!(
            "{who} has no region here: a read-only file mapping, which core dumps (gcore, the kernel) leave out"
        )
    } else {
        format!("{who} has no region here")
    };
    Ok(RegionRef {
        index: r.index,
        start: fmt::addr(r.info.start),
        end: fmt::addr(r.info.end()),
        size: r.info.len,
        name: r.info.name_lossy(),
        name_hex: hex_if_binary(&r.info.name),
        name_raw: r.info.name.clone(),
        perms: fmt::perms(&r.info),
        kind: r.info.kind.to_string(),
        captured_bytes: captured,
        reason,
    })
}

/// A run of one side of a diff, held in one way by one link of its chain:
/// as an extent of its own (`addr`, `page_count`, `kind`; through `Deref`),
/// with the link's extent it is part of.
#[derive(Debug, Clone, Copy)]
struct Piece {
    /// The run, as an extent: its checksum is the real extent's, and means
    /// something only when `whole`.
    ext: Extent,
    /// The link that holds it (0: the image itself).
    link: usize,
    /// The link's extent it is part of (data runs).
    real: Extent,
    /// True when the run is all of `real`.
    whole: bool,
    /// The file of the link (device, inode) and its image id: two pieces of
    /// the same owner and real extent are the same bytes of the same file.
    /// `None` when the link is not a local file: never shared.
    owner: Option<(u64, u64, [u8; 16])>,
}

impl std::ops::Deref for Piece {
    type Target = Extent;
    fn deref(&self) -> &Extent {
        &self.ext
    }
}

/// One side of a segment walk: the runs of a region through the chain, or
/// one absent run for a region recorded without data.
///
/// # Errors
/// `ParentRequired` naming the link when the chain lacks a parent it needs.
fn side_extents(chain: &Chain, r: &Region, ps: u32) -> Result<Vec<Piece>> {
    let pages = |a: u64, b: u64| u32::try_from((b - a) / u64::from(ps)).unwrap_or(u32::MAX);
    let absent = |a: u64, b: u64| Extent {
        addr: a,
        page_count: pages(a, b),
        region: r.index,
        kind: ExtentKind::Absent,
        codec: memimg::ChunkCodec::None,
        chunk: 0,
        raw_checksum: 0,
    };
    // The same file, not only the same id and index: a tampered copy of an
    // image keeps both, and must be read.
    let owner = |link: usize| {
        use std::os::unix::fs::MetadataExt;
        let l = &chain.links()[link];
        let m = std::fs::metadata(l.path()?).ok()?;
        Some((m.dev(), m.ino(), l.header().image_id))
    };
    if !r.has_data() {
        let e = absent(r.info.start, r.info.end());
        return Ok(vec![Piece {
            ext: e,
            link: 0,
            real: e,
            whole: true,
            owner: owner(0),
        }]);
    }
    let mut out = Vec::new();
    for s in chain.segments(r.info.start, r.info.end())? {
        let (ext, real, whole) = match s.kind {
            SegmentKind::Data(e) => (
                Extent {
                    addr: s.start,
                    page_count: pages(s.start, s.end),
                    ..e
                },
                e,
                e.addr == s.start && e.end(ps) == s.end,
            ),
            SegmentKind::Zero => {
                let z = Extent {
                    kind: ExtentKind::Zero,
                    ..absent(s.start, s.end)
                };
                (z, z, true)
            }
            SegmentKind::ParentMissing => {
                let mut b = [0u8; 1];
                return Err(match chain.read_at(s.start, &mut b) {
                    Err(e) => anyhow::Error::new(e),
                    Ok(()) => anyhow::anyhow!("{:#x}: the parent is missing", s.start),
                });
            }
            _ => {
                let a = absent(s.start, s.end);
                (a, a, true)
            }
        };
        out.push(Piece {
            ext,
            link: s.link,
            real,
            whole,
            owner: owner(s.link),
        });
    }
    Ok(out)
}

/// A range of a region pair to decode and compare.
struct Item<'a> {
    pair: usize,
    start: u64,
    end: u64,
    ea: &'a [Piece],
    eb: &'a [Piece],
}

/// Compares the content of `a` and `b`, reading and checking the chunks that
/// match by checksum ([`Check::StoredBytes`]).
///
/// # Errors
/// When the page sizes differ, or a chunk cannot be decoded or fails its
/// check.
pub fn compare(a: &Chain, b: &Chain) -> Result<DiffDoc> {
    compare_with(a, b, Check::StoredBytes)
}

/// Compares the content of `a` and `b`, reading what `check` says of the
/// chunks that match by checksum.
///
/// # Errors
/// As [`compare`].
pub fn compare_with(ca: &Chain, cb: &Chain, check: Check) -> Result<DiffDoc> {
    let (a, b) = (ca.image(), cb.image());
    let ps = a.header().page_size;
    if b.header().page_size != ps {
        bail!(
            "the images have different page sizes ({} and {} bytes)",
            ps,
            b.header().page_size
        );
    }
    let ps64 = u64::from(ps);
    let (ra, rb) = (a.regions()?, b.regions()?);
    let mut doc = DiffDoc::default();
    // Match regions by start address.
    let mut pairs: Vec<(&Region, &Region)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < ra.len() || j < rb.len() {
        match (ra.get(i), rb.get(j)) {
            (Some(x), Some(y)) if x.info.start == y.info.start => {
                pairs.push((x, y));
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.info.start < y.info.start => {
                doc.only_in_a.push(region_ref(a, x, rb, "B")?);
                i += 1;
            }
            (Some(_), Some(y)) | (None, Some(y)) => {
                doc.only_in_b.push(region_ref(b, y, ra, "A")?);
                j += 1;
            }
            (Some(x), None) => {
                doc.only_in_a.push(region_ref(a, x, rb, "B")?);
                i += 1;
            }
            (None, None) => break,
        }
    }
    let sides: Vec<_> = pairs
        .iter()
        .map(|(x, y)| Ok((side_extents(ca, x, ps)?, side_extents(cb, y, ps)?)))
        .collect::<Result<_>>()?;
    let total: u64 = pairs.iter().map(|(x, y)| x.info.len.min(y.info.len)).sum();
    let pb = ui::progress(total, "diff");
    // Per pair: differing ranges, ranges captured only in A and only in B,
    // and the work to decode.
    let mut found: Vec<Vec<Range>> = vec![Vec::new(); pairs.len()];
    let mut only_a: Vec<Vec<Range>> = vec![Vec::new(); pairs.len()];
    let mut only_b: Vec<Vec<Range>> = vec![Vec::new(); pairs.len()];
    let mut items: Vec<Item<'_>> = Vec::new();
    // The chunks of extents that matched by checksum, as (image, extent).
    let mut matched: Vec<(usize, &Piece)> = Vec::new();
    for (p, ((x, y), (ea, eb))) in pairs.iter().zip(&sides).enumerate() {
        let end = x.info.end().min(y.info.end());
        if x.info.end() != y.info.end() {
            let (lo, hi) = (end, x.info.end().max(y.info.end()));
            if x.info.end() > y.info.end() {
                only_a[p].push((lo, hi, Some("beyond the end of the region in B".into())));
            } else {
                only_b[p].push((lo, hi, Some("beyond the end of the region in A".into())));
            }
        }
        let (mut i, mut j) = (0, 0);
        let mut cur = x.info.start;
        let mut open: Option<Item<'_>> = None;
        while cur < end {
            while ea.get(i).is_some_and(|e| e.end(ps) <= cur) {
                i += 1;
            }
            while eb.get(j).is_some_and(|e| e.end(ps) <= cur) {
                j += 1;
            }
            let (Some(xa), Some(xb)) = (ea.get(i), eb.get(j)) else {
                bail!("region at {:#x}: its extents do not cover it", x.info.start);
            };
            let seg_end = xa.end(ps).min(xb.end(ps)).min(end);
            use ExtentKind::{Absent, Data, Zero};
            let work = match (xa.kind, xb.kind) {
                // The same chunk of the same image on both sides: the same
                // bytes.
                // (Only through a chain: an image diffed with itself is
                // still read, as any two images are.)
                (Data, Data)
                    if xa.owner.is_some()
                        && xa.owner == xb.owner
                        && xa.real.addr == xb.real.addr
                        && (xa.link > 0 || xb.link > 0) =>
                {
                    doc.bytes_shared += seg_end - cur;
                    false
                }
                (Data, Data)
                    if xa.whole
                        && xb.whole
                        && xa.addr == xb.addr
                        && xa.page_count == xb.page_count
                        && xa.raw_checksum == xb.raw_checksum =>
                {
                    doc.bytes_skipped_by_checksum += seg_end - cur;
                    matched.push((0, xa));
                    matched.push((1, xb));
                    false
                }
                (Zero, Zero) | (Absent, Absent) => false,
                (Absent, _) => {
                    only_b[p].push((cur, seg_end, Some("not captured in A".into())));
                    false
                }
                (_, Absent) => {
                    only_a[p].push((cur, seg_end, Some("not captured in B".into())));
                    false
                }
                _ => true,
            };
            if work {
                // Extend the open item when contiguous, so a shared extent is
                // decoded once; split items that grow too large.
                match open.as_mut() {
                    Some(it) if it.end == cur && it.end - it.start < MAX_ITEM => it.end = seg_end,
                    _ => {
                        if let Some(it) = open.take() {
                            items.push(it);
                        }
                        open = Some(Item {
                            pair: p,
                            start: cur,
                            end: seg_end,
                            ea,
                            eb,
                        });
                    }
                }
            } else {
                if let Some(it) = open.take() {
                    items.push(it);
                }
                pb.inc(seg_end - cur);
            }
            cur = seg_end;
        }
        if let Some(it) = open.take() {
            items.push(it);
        }
    }
    doc.bytes_decoded = items.iter().map(|it| it.end - it.start).sum();
    doc.index_only = check == Check::IndexOnly;
    if doc.index_only {
        doc.chunks_not_read = matched.len() as u64;
    } else {
        let chains = [ca, cb];
        let chunk = a.header().chunk_size.max(b.header().chunk_size) as usize;
        matched
            .par_iter()
            .map_init(
                || Zeroizing::new(Vec::with_capacity(chunk)),
                |buf, &(side, e)| {
                    check_chunk(&chains[side].links()[e.link], &e.real, buf)
                        .map_err(|err| SideError(side, err))
                },
            )
            .collect::<std::result::Result<Vec<()>, SideError>>()?;
        doc.chunks_checked = matched.len() as u64;
        doc.stored_bytes_checked = matched
            .iter()
            .map(|&(side, e)| stored_len(&chains[side].links()[e.link], &e.real))
            .sum();
    }
    // Each worker keeps its two decode buffers (one per side) across the
    // items it takes: allocated once at the chunk size, never cleared again
    // before a decode (decoding fills the part it uses), zeroized on drop.
    let results: Vec<Result<(usize, Runs)>> = items
        .par_iter()
        .map_init(
            || (None, None),
            |(cache_a, cache_b), it| {
                let r = compare_item(ca, cb, it, ps, cache_a, cache_b)?;
                pb.inc(it.end - it.start);
                Ok((it.pair, r))
            },
        )
        .collect();
    pb.finish_and_clear();
    for r in results {
        let (p, ranges) = r?;
        found[p].extend(ranges.into_iter().map(|(s, e)| (s, e, None)));
    }
    for (p, (x, y)) in pairs.iter().enumerate() {
        let mut changes = Vec::new();
        let (pa, pb_) = (fmt::perms(&x.info), fmt::perms(&y.info));
        if pa != pb_ {
            changes.push(Change::text("perms", pa, pb_));
        }
        if x.info.kind != y.info.kind {
            changes.push(Change::text(
                "kind",
                x.info.kind.to_string(),
                y.info.kind.to_string(),
            ));
        }
        if x.info.name != y.info.name {
            changes.push(Change {
                field: "name",
                a: x.info.name_lossy(),
                b: y.info.name_lossy(),
                a_hex: hex_if_binary(&x.info.name),
                b_hex: hex_if_binary(&y.info.name),
                shown: (fmt::escape(&x.info.name), fmt::escape(&y.info.name)),
            });
        }
        if x.info.len != y.info.len {
            changes.push(Change::text(
                "size",
                x.info.len.to_string(),
                y.info.len.to_string(),
            ));
        }
        let ranges = merge(std::mem::take(&mut found[p]));
        let cap_a = merge(std::mem::take(&mut only_a[p]));
        let cap_b = merge(std::mem::take(&mut only_b[p]));
        if changes.is_empty() && ranges.is_empty() && cap_a.is_empty() && cap_b.is_empty() {
            continue;
        }
        let pages_of = |v: &[Range]| v.iter().map(|r| (r.1 - r.0) / ps64).sum::<u64>();
        let pages = pages_of(&ranges);
        doc.pages_differ += pages;
        doc.pages_captured_only_in_a += pages_of(&cap_a);
        doc.pages_captured_only_in_b += pages_of(&cap_b);
        let docs = |v: Vec<Range>| -> Vec<RangeDoc> {
            v.into_iter()
                .map(|(s, e, note)| RangeDoc {
                    start: fmt::addr(s),
                    end: fmt::addr(e),
                    pages: (e - s) / ps64,
                    bytes: e - s,
                    note,
                })
                .collect()
        };
        doc.changed.push(RegionDiff {
            index_a: x.index,
            index_b: y.index,
            start: fmt::addr(x.info.start),
            end: fmt::addr(x.info.end()),
            name: x.info.name_lossy(),
            name_hex: hex_if_binary(&x.info.name),
            name_raw: x.info.name.clone(),
            changes,
            ranges: docs(ranges),
            pages,
            bytes: pages * ps64,
            captured_only_in_a: docs(cap_a),
            captured_only_in_b: docs(cap_b),
        });
    }
    doc.bytes_differ = doc.pages_differ * ps64;
    doc.identical = doc.only_in_a.is_empty() && doc.only_in_b.is_empty() && doc.changed.is_empty();
    Ok(doc)
}

/// Reads and checks the chunk of data extent `e`: its stored checksum in a
/// plain image; in an encrypted one also its tag (which binds it to its
/// place) and its raw-content checksum, by decoding it into `buf`.
fn check_chunk(img: &Image, e: &Extent, buf: &mut Zeroizing<Vec<u8>>) -> memimg::Result<()> {
    if !img.is_encrypted() {
        return img.read_stored(e.chunk).map(drop);
    }
    let len = usize::try_from(e.len(img.header().page_size)).unwrap_or(usize::MAX);
    buf.clear();
    buf.resize(len, 0);
    img.decode_extent(e, buf)
}

/// The stored length of the chunk of data extent `e`.
fn stored_len(img: &Image, e: &Extent) -> u64 {
    usize::try_from(e.chunk)
        .ok()
        .and_then(|i| img.chunk_locs().get(i))
        .map_or(0, |c| u64::from(c.stored_len))
}

/// `[start, end)` and, for a range captured in one image only, why.
type Range = (u64, u64, Option<String>);

/// Sorts ranges and merges adjacent ones with the same note.
fn merge(mut v: Vec<Range>) -> Vec<Range> {
    v.sort_by_key(|r| r.0);
    let mut out: Vec<Range> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if last.1 == r.0 && last.2 == r.2 => last.1 = r.1,
            _ => out.push(r),
        }
    }
    out
}

/// Runs of differing pages, `[start, end)`.
type Runs = Vec<(u64, u64)>;

/// A decoded extent, kept while the walk stays inside it; its buffer is
/// reused for the next extent.
struct Cached {
    at: (usize, u64),
    /// `bytes[..len]` holds the extent; the rest is left from larger ones.
    len: usize,
    bytes: Zeroizing<Vec<u8>>,
}

/// The bytes of `[s, e)`, which lies inside piece `p`: zeros, or decoded
/// (the whole extent of its link it is part of, once).
fn bytes_of<'c>(
    chain: &Chain,
    p: &Piece,
    s: u64,
    e: u64,
    ps: u32,
    cache: &'c mut Option<Cached>,
) -> Result<Option<&'c [u8]>> {
    if p.kind != ExtentKind::Data {
        return Ok(None);
    }
    let (img, x) = (&chain.links()[p.link], &p.real);
    if cache.as_ref().map(|c| c.at) != Some((p.link, x.addr)) {
        // Plaintext memory: zeroized on drop, and allocated at the chunk size
        // once, so that growing leaves no copy behind. It is zeroed only
        // when it grows: the decode overwrites `[..len]`, so clearing it
        // before each extent would only cost a pass over memory.
        let len = usize::try_from(x.len(ps))?;
        let mut buf = cache.take().map(|c| c.bytes).unwrap_or_else(|| {
            Zeroizing::new(Vec::with_capacity(
                len.max(img.header().chunk_size as usize),
            ))
        });
        if buf.len() < len {
            buf.resize(len, 0);
        }
        // A failed decode leaves the cache empty: part of the buffer may
        // hold bytes of the failed extent, and none of it is used again.
        chain.decode(p.link, x, &mut buf[..len])?;
        *cache = Some(Cached {
            at: (p.link, x.addr),
            len,
            bytes: buf,
        });
    }
    let c = cache.as_ref().map(|c| &c.bytes[..c.len]).unwrap_or(&[]);
    let lo = usize::try_from(s - x.addr)?;
    let hi = usize::try_from(e - x.addr)?;
    Ok(Some(&c[lo..hi]))
}

/// Decodes and compares one item; returns the differing page runs.
/// `cache_a` and `cache_b` hold the last extent decoded on each side (by
/// this worker, for any item: an extent is the same bytes in every item).
fn compare_item(
    a: &Chain,
    b: &Chain,
    it: &Item<'_>,
    ps: u32,
    cache_a: &mut Option<Cached>,
    cache_b: &mut Option<Cached>,
) -> Result<Runs> {
    let psz = ps as usize;
    let mut runs: Runs = Vec::new();
    let mut cur = it.start;
    while cur < it.end {
        let i = it.ea.partition_point(|e| e.end(ps) <= cur);
        let j = it.eb.partition_point(|e| e.end(ps) <= cur);
        let (Some(xa), Some(xb)) = (it.ea.get(i), it.eb.get(j)) else {
            bail!("{cur:#x}: the extents do not cover the region");
        };
        let seg_end = xa.end(ps).min(xb.end(ps)).min(it.end);
        let ba = bytes_of(a, xa, cur, seg_end, ps, cache_a)?;
        let bb = bytes_of(b, xb, cur, seg_end, ps, cache_b)?;
        match (ba, bb) {
            // Equal as a whole (one memcmp): no page differs. Only a
            // segment that differs somewhere is walked page by page.
            (Some(x), Some(y)) if x == y => {}
            (None, None) => {}
            _ => {
                let pages = usize::try_from((seg_end - cur) / u64::from(ps))?;
                for k in 0..pages {
                    let r = k * psz..(k + 1) * psz;
                    let same = match (ba.map(|s| &s[r.clone()]), bb.map(|s| &s[r])) {
                        (Some(x), Some(y)) => x == y,
                        (Some(x), None) | (None, Some(x)) => x.iter().all(|&v| v == 0),
                        (None, None) => true,
                    };
                    if !same {
                        let at = cur + (k * psz) as u64;
                        match runs.last_mut() {
                            Some(last) if last.1 == at => last.1 = at + u64::from(ps),
                            _ => runs.push((at, at + u64::from(ps))),
                        }
                    }
                }
            }
        }
        cur = seg_end;
    }
    Ok(runs)
}

/// One line per page range: `start-end  N pages  B bytes  (note)`.
fn write_ranges(ranges: &[RangeDoc], out: &mut dyn Write) -> Result<()> {
    for r in ranges {
        let note = r
            .note
            .as_ref()
            .map(|n| format!("  ({n})"))
            .unwrap_or_default();
        writeln!(
            out,
            "    {}-{}  {}  {} bytes{note}",
            r.start,
            r.end,
            plural(r.pages, "page"),
            r.bytes
        )?;
    }
    Ok(())
}

fn plural(n: u64, one: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn write_text(doc: &DiffDoc, _ps: u32, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "A: {}", doc.a)?;
    writeln!(out, "B: {}", doc.b)?;
    for (who, list) in [("A", &doc.only_in_a), ("B", &doc.only_in_b)] {
        for r in list {
            writeln!(
                out,
                "only in {who}: region {} {}-{} ({}) {} {}",
                r.index,
                r.start,
                r.end,
                fmt::size(r.size),
                r.perms,
                fmt::escape(&r.name_raw)
            )?;
            writeln!(out, "  {}", r.reason)?;
        }
    }
    for d in &doc.changed {
        writeln!(
            out,
            "{}",
            ui::bold(&format!(
                "region {}-{} {}",
                d.start,
                d.end,
                fmt::escape(&d.name_raw)
            ))
            .trim_end()
        )?;
        for c in &d.changes {
            writeln!(out, "  {}: {} -> {}", c.field, c.shown.0, c.shown.1)?;
        }
        if d.pages > 0 {
            writeln!(
                out,
                "  {} ({}) differ:",
                plural(d.pages, "page"),
                fmt::size(d.bytes)
            )?;
            write_ranges(&d.ranges, out)?;
        }
        for (who, list) in [("A", &d.captured_only_in_a), ("B", &d.captured_only_in_b)] {
            let pages: u64 = list.iter().map(|r| r.pages).sum();
            if pages == 0 {
                continue;
            }
            let bytes: u64 = list.iter().map(|r| r.bytes).sum();
            writeln!(
                out,
                "  {} ({}) captured only in {who}:",
                plural(pages, "page"),
                fmt::size(bytes),
            )?;
            write_ranges(list, out)?;
        }
    }
    if doc.identical && doc.index_only {
        writeln!(
            out,
            "{} by the index only: {} compared by raw-content checksum, their stored bytes not read",
            ui::good("identical"),
            plural(doc.chunks_not_read, "chunk"),
        )?;
    } else if doc.identical {
        writeln!(out, "{}", ui::good("identical"))?;
    } else {
        writeln!(
            out,
            "{}: {} changed, {} only in A, {} only in B, {} ({}) of content differ",
            ui::bad("different"),
            plural(doc.changed.len() as u64, "region"),
            doc.only_in_a.len(),
            doc.only_in_b.len(),
            plural(doc.pages_differ, "page"),
            fmt::size(doc.bytes_differ)
        )?;
        let (ca, cb) = (doc.pages_captured_only_in_a, doc.pages_captured_only_in_b);
        if ca + cb > 0 {
            writeln!(
                out,
                "{} captured only in A, {} captured only in B (not counted as differing)",
                plural(ca, "page"),
                plural(cb, "page"),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use memimg::{Chain, Codec, Image, RegionInfo, Writer, WriterOptions};

    use super::compare;

    const PS: u64 = 4096;
    const PSZ: usize = 4096;

    /// A region of 8 pages at 0x10000: pages 0–3 data (byte 5 is `byte`),
    /// pages 4–5 data or, when `mid_absent`, not captured; pages 6–7 absent.
    fn image(dir: &std::path::Path, name: &str, mid_absent: bool, byte: u8) -> Chain {
        let p = dir.join(name);
        let opts = WriterOptions::new()
            .page_size(4096)
            .chunk_size(64 * 1024)
            .codec(Codec::None);
        let mut w = Writer::new(std::fs::File::create(&p).unwrap(), opts).unwrap();
        w.begin_region(RegionInfo::new(0x10000, 8 * PS)).unwrap();
        let mut data = vec![7u8; 4 * PSZ];
        data[5] = byte;
        w.push_data(&data).unwrap();
        if mid_absent {
            w.push_absent(2 * PS).unwrap();
        } else {
            w.push_data(&vec![9u8; 2 * PSZ]).unwrap();
        }
        w.push_absent(2 * PS).unwrap();
        w.end_region().unwrap();
        w.finish().unwrap();
        Chain::single(Image::open(&p).unwrap())
    }

    #[test]
    fn pages_captured_in_one_image_are_not_differing_pages() {
        let d = tempfile::tempdir().unwrap();
        let a = image(d.path(), "a", false, 7);
        let b = image(d.path(), "b", true, 7);
        let doc = compare(&a, &b).unwrap();
        assert!(!doc.identical);
        assert_eq!(doc.pages_differ, 0);
        assert_eq!(doc.bytes_differ, 0);
        assert_eq!(doc.pages_captured_only_in_a, 2);
        assert_eq!(doc.pages_captured_only_in_b, 0);
        let c = &doc.changed[0];
        assert!(c.ranges.is_empty());
        assert_eq!(c.captured_only_in_a.len(), 1);
        assert_eq!(
            c.captured_only_in_a[0].start,
            crate::fmt::addr(0x10000 + 4 * PS)
        );
        assert_eq!(
            c.captured_only_in_a[0].note.as_deref(),
            Some("not captured in B")
        );
        // The other way round, and with a content difference as well.
        let b2 = image(d.path(), "b2", true, 8);
        let doc = compare(&b2, &a).unwrap();
        assert_eq!(doc.pages_differ, 1);
        assert_eq!(doc.pages_captured_only_in_a, 0);
        assert_eq!(doc.pages_captured_only_in_b, 2);
        assert_eq!(doc.changed[0].ranges.len(), 1);
        assert!(doc.changed[0].ranges[0].note.is_none());
        // The same image: identical.
        assert!(compare(&a, &a).unwrap().identical);
    }
}
