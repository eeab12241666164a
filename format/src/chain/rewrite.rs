//! Rewrites of chains: flatten (a chain into one full image) and rebase (a
//! child pointed at another parent with the same content).

use std::io::Write;
use std::path::Path;

use super::{Chain, ChainOptions, Segment, SegmentKind};
use crate::atomic::{AtomicFile, ImageLock};
use crate::crypt::Key;
use crate::error::{Error, ErrorKind, Location, Result};
use crate::meta;
use crate::model::{ExtentKind, Features};
use crate::rewrite::{check_modifiable, copy_rewrite, transcode_from};
use crate::write::{rewrite_header, WriteStats, WriterOptions};

/// Writes the content of `chain` as one full image (no parent) to `out`,
/// with `opts` (a new image id; [`crate::options_from`] the chain's image
/// keeps its facts, and the parent it names is dropped here): every page the
/// chain reads, from whichever link holds it, and the not-captured runs as
/// absent pages. `progress` is called with raw bytes done.
///
/// # Errors
/// `ParentRequired` when the chain is partial and its image takes pages
/// from the missing parent; `KeyRequired` for a locked link; damage kinds
/// (naming the link) when a chunk is damaged; writing errors.
pub fn flatten<W: Write>(
    chain: &Chain,
    out: W,
    opts: WriterOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(W, WriteStats)> {
    let opts = opts.parent_opt(None, None);
    transcode_from(chain.image(), Some(chain), out, opts, progress)
}

/// Writes `chain`'s image to `out` as a child of `new_parent`'s image
/// instead of its current parent: after checking that every page it takes
/// from its parent is the same in the new parent (by the chunks' content
/// checksums where both hold the same chunk, else by decoding and
/// comparing), it is copied with a new parent record (and `hint`, or no
/// hint), its chunks' stored bytes and key slot unchanged, and a new index
/// sealed with a fresh index nonce salt when encrypted. Its image id stays.
///
/// Use it to point a child at a flattened, recompressed or relaid-out copy
/// of its parent, which it otherwise refuses (the parent's index changed).
///
/// # Errors
/// `InvalidInput` when the image is a full image, or the new parent has
/// another page size or machine, or is too deep; `ParentMismatch` when the
/// new parent's content differs where the child takes pages from its
/// parent (naming the address), or its chain holds the child (a cycle);
/// `ParentRequired` when either chain lacks a parent it needs; `KeyRequired`
/// for a locked link; `Unsupported` when the image has unknown
/// read-only-compatible features; damage kinds; writing errors.
pub fn rebase<W: Write>(
    chain: &Chain,
    new_parent: &Chain,
    hint: Option<&str>,
    out: W,
) -> Result<(W, WriteStats)> {
    let img = chain.image();
    check_modifiable(img)?;
    if img.parent().is_none() {
        return Err(Error::plain(
            ErrorKind::InvalidInput,
            "the image is a full image: it has no parent to replace",
        ));
    }
    let np = new_parent.image();
    let (h, nh) = (img.header(), np.header());
    if nh.page_size != h.page_size {
        return Err(Error::plain(
            ErrorKind::InvalidInput,
            format!(
                "the new parent has {}-byte pages, the child {}-byte pages",
                nh.page_size, h.page_size
            ),
        ));
    }
    if let Some(d) = nh.machine.first_difference(&h.machine) {
        return Err(Error::plain(
            ErrorKind::InvalidInput,
            format!("the new parent was captured on another machine: the {d} differs"),
        ));
    }
    if let Some(i) = new_parent
        .links()
        .iter()
        .position(|l| l.header().image_id == h.image_id)
    {
        return Err(Error::new(
            ErrorKind::ParentMismatch,
            Location::default().with_link(u32::try_from(i + 1).unwrap_or(u32::MAX)),
            format!(
                "the new parent's chain holds the image {} itself: a cycle",
                h.image_id_hex()
            ),
        ));
    }
    let record = np.as_parent()?;
    if let Some(hint) = hint {
        if hint.len() > meta::MAX_PARENT_HINT {
            return Err(Error::plain(
                ErrorKind::InvalidInput,
                format!(
                    "the parent hint is {} bytes; the limit is {}",
                    hint.len(),
                    meta::MAX_PARENT_HINT
                ),
            ));
        }
    }
    let ps = h.page_size;
    for e in img
        .extents()?
        .iter()
        .filter(|e| e.kind == ExtentKind::InParent)
    {
        if let Some(at) = first_difference(chain, new_parent, e.addr, e.end(ps))? {
            return Err(Error::new(
                ErrorKind::ParentMismatch,
                Location::default().with_addr(at),
                format!(
                    "the new parent (image {}) does not hold the same content as the old one at {at:#x}, where the child takes pages from its parent",
                    nh.image_id_hex()
                ),
            ));
        }
    }
    let header = rewrite_header(img.header_bytes(), |fixed, records| {
        fixed.incompat |= Features::PARENT;
        records.retain(|(ty, _)| *ty != meta::T_PARENT && *ty != meta::T_PARENT_HINT);
        let mut r = Vec::new();
        meta::push_parent(&mut r, &record);
        records.push((meta::T_PARENT, r[4..].to_vec()));
        if let Some(hint) = hint.filter(|h| !h.is_empty()) {
            records.push((meta::T_PARENT_HINT, hint.as_bytes().to_vec()));
        }
    })?;
    let body = img.clear_body()?;
    let (out, stats) = copy_rewrite(img, &header, &img.layout_order(), body.to_vec(), 0, out)?;
    Ok((out, stats.write))
}

/// Rebases the image at `path` in place (see [`rebase`]): its chain is
/// opened with `key` and `opts`, the rebased image is written to a
/// temporary file beside it, synced, and renamed over it, under the image's
/// lock ([`ImageLock`]), so a crash leaves the old image or the new one.
///
/// # Errors
/// As [`Chain::open`] and [`rebase`]; `Busy` when another process is
/// changing the image.
pub fn rebase_in_place(
    path: &Path,
    key: Option<&Key>,
    opts: &ChainOptions<'_>,
    new_parent: &Chain,
    hint: Option<&str>,
) -> Result<WriteStats> {
    let lock = ImageLock::acquire(path, false)?;
    let chain = Chain::open(path, key, opts)?;
    let mut af = AtomicFile::create(path)?;
    let (_, stats) = rebase(&chain, new_parent, hint, std::io::BufWriter::new(af.file()))?;
    lock.check_current()?;
    af.commit()?;
    Ok(stats)
}

/// The first address in `[start, end)` where what `old`'s parents hold (its
/// image's in-parent content) differs from what `new` holds, if any.
fn first_difference(old: &Chain, new: &Chain, start: u64, end: u64) -> Result<Option<u64>> {
    let a = old.segments_from(1, start, end)?;
    let b = new.segments(start, end)?;
    let (mut i, mut j) = (0, 0);
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    let (mut ba, mut bb) = (Vec::new(), Vec::new());
    let mut at = start;
    while at < end {
        let (Some(x), Some(y)) = (a.get(i), b.get(j)) else {
            break;
        };
        let stop = x.end.min(y.end);
        if !same(
            old,
            new,
            x,
            y,
            at,
            stop,
            (&mut sa, &mut sb),
            (&mut ba, &mut bb),
        )? {
            return Ok(Some(at));
        }
        at = stop;
        if x.end == stop {
            i += 1;
        }
        if y.end == stop {
            j += 1;
        }
    }
    Ok(None)
}

/// True when `[from, to)` reads the same through `x` (of `old`) and `y` (of
/// `new`).
#[allow(clippy::too_many_arguments)]
fn same(
    old: &Chain,
    new: &Chain,
    x: &Segment,
    y: &Segment,
    from: u64,
    to: u64,
    scratch: (&mut Vec<u8>, &mut Vec<u8>),
    bufs: (&mut Vec<u8>, &mut Vec<u8>),
) -> Result<bool> {
    use SegmentKind::*;
    match (x.kind, y.kind) {
        (ParentMissing, _) => {
            let rec = old
                .missing_parent()
                .map(|(r, _)| r.image_id_hex())
                .unwrap_or_default();
            Err(Error::new(
                ErrorKind::ParentRequired,
                Location::default().with_addr(from),
                format!(
                    "the child's current parent chain lacks image {}: the content it takes from it cannot be compared",
                    rec
                ),
            ))
        }
        (_, ParentMissing) => Err(Error::new(
            ErrorKind::ParentRequired,
            Location::default().with_addr(from),
            "the new parent's chain lacks a parent: its content cannot be compared",
        )),
        // The same chunk content at the same place (128-bit content checksums).
        (Data(p), Data(q))
            if p.addr == q.addr
                && p.page_count == q.page_count
                && p.raw_checksum == q.raw_checksum =>
        {
            Ok(true)
        }
        (Zero, Zero) => Ok(true),
        (p, q) if p.is_not_captured() && q.is_not_captured() => Ok(true),
        (p, q) if p.is_not_captured() || q.is_not_captured() => Ok(false),
        _ => {
            let len = usize::try_from(to - from).unwrap_or(usize::MAX);
            let (ba, bb) = bufs;
            ba.resize(len, 0);
            bb.resize(len, 0);
            let cut = |s: &Segment| Segment {
                start: from,
                end: to,
                ..*s
            };
            old.read_segment(&cut(x), ba, scratch.0)?;
            new.read_segment(&cut(y), bb, scratch.1)?;
            Ok(ba == bb)
        }
    }
}
