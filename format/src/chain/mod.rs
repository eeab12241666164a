//! Chains of incremental images (format 1.1; spec.md, *Incremental images*).
//!
//! A child image stores only the pages that changed since its parent; its
//! in-parent extents are the parent's pages at the same addresses, and the
//! parent may itself be a child. A [`Chain`] holds an image and its parents,
//! nearest first, each checked against the parent record of the link before
//! it (id, index checksum, depth, page size and machine) and no image twice:
//! reading through it gives every generation's content exactly, from
//! whichever link holds each page.
//!
//! ```text
//!  link 0 (the image, depth 2)   | data | in parent | zero | in parent  |
//!  link 1 (its parent, depth 1)  |      | data      |      | in parent  |
//!  link 2 (a full image, depth 0)|      |           |      | data       |
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::crypt::Key;
use crate::error::{Error, ErrorKind, Location, Result};
use crate::model::{Extent, ExtentKind, Header, ParentRecord};
use crate::read::{Hold, Image};
use crate::source::usize_of;

mod rewrite;

pub use rewrite::{flatten, rebase, rebase_in_place};

/// An image and its parents, nearest first: `links()[0]` is the image,
/// `links()[1]` its parent, and so on. A chain is **complete** when its last
/// link is a full image (it has no parent); a partial chain (a child whose
/// parent was not given or found) reads every page its links hold, and
/// fails with [`ErrorKind::ParentRequired`] on the others.
///
/// # Security
/// Each parent is accepted only when it is the image its child's parent
/// record names (spec.md, *Incremental images*): same id, same index
/// checksum (so a parent rewritten since is refused), depth one less, same
/// page size and machine facts, and no image id twice in the chain. The
/// depth of the first record bounds the number of links (at most
/// [`crate::MAX_CHAIN_DEPTH`]), so a chain holds at most 65 images.
#[derive(Debug)]
pub struct Chain {
    links: Vec<Image>,
}

/// Gives the key of an encrypted parent: called with its link number (1 for
/// the image's parent) and its header.
pub type ParentKey<'a> = dyn Fn(u32, &Header) -> Option<Key> + 'a;

/// How [`Chain::open`] finds and unlocks an image's parents.
#[derive(Default)]
pub struct ChainOptions<'a> {
    /// Parents given explicitly, nearest first: `parents[0]` is the image's
    /// parent, `parents[1]` that one's parent, and so on. Links past the end
    /// are found through their child's hint. By default none.
    pub parents: Vec<PathBuf>,
    /// Follow parent hints to find the parents not given. By default on
    /// (`false` in this field): set it to ignore hints.
    pub no_hints: bool,
    /// The key of an encrypted parent, called with its link number (1 for
    /// the image's parent) and its header. When this is `None` (the
    /// default), or returns `None`, the image's own key is used.
    pub parent_key: Option<&'a ParentKey<'a>>,
}

impl std::fmt::Debug for ChainOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainOptions")
            .field("parents", &self.parents)
            .field("no_hints", &self.no_hints)
            .field("parent_key", &self.parent_key.is_some())
            .finish()
    }
}

/// Where an address of a chain is held: the link that answers and what it
/// holds there (see [`Chain::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// The link that holds the address (0 is the image).
    pub link: usize,
    /// Its extent there; `None` when the address lies in no extent of that
    /// link (a gap between regions, or a region recorded without data).
    /// Never an in-parent extent, except at the last link of a partial
    /// chain, whose parent is missing.
    pub extent: Option<Extent>,
}

/// A run of addresses of a chain held in one way by one link (see
/// [`Chain::segments`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The link that holds it.
    pub link: usize,
    /// How.
    pub kind: SegmentKind,
}

/// How a [`Segment`] is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// Stored: the segment is part (or all) of this data extent of its link.
    Data(Extent),
    /// Zero pages.
    Zero,
    /// An absent extent: not captured.
    Absent,
    /// A region of the link recorded without data: not captured.
    NoData,
    /// No region of the link holds it: not captured.
    Gap,
    /// In-parent pages at the last link of a partial chain: the parent is
    /// missing.
    ParentMissing,
}

impl SegmentKind {
    /// True when reading the segment fails as not captured.
    pub fn is_not_captured(&self) -> bool {
        matches!(
            self,
            SegmentKind::Absent | SegmentKind::NoData | SegmentKind::Gap
        )
    }
}

impl Chain {
    /// A chain of one image: a full image (complete), or a child without its
    /// parents (partial; add them with [`Chain::push_parent`]).
    pub fn single(image: Image) -> Chain {
        Chain { links: vec![image] }
    }

    /// A chain of `image` and its `parents`, nearest first, each checked
    /// against the link before it.
    ///
    /// # Errors
    /// As [`Chain::push_parent`].
    pub fn from_links(image: Image, parents: Vec<Image>) -> Result<Chain> {
        let mut c = Chain::single(image);
        for p in parents {
            c.push_parent(p)?;
        }
        Ok(c)
    }

    /// Adds the parent of the last link, after checking that it is the image
    /// the last link's parent record names.
    ///
    /// # Errors
    /// `InvalidInput` when the last link has no parent (the chain is
    /// complete); [`ErrorKind::ParentMismatch`], naming the new link, when
    /// `parent` is another image, was rewritten since (another index),
    /// has another depth, page size or machine, or is already in the chain.
    pub fn push_parent(&mut self, parent: Image) -> Result<()> {
        let link = u32::try_from(self.links.len()).unwrap_or(u32::MAX);
        let child = self.links.last().ok_or_else(|| {
            Error::plain(ErrorKind::InvalidInput, "a chain has at least one image")
        })?;
        let seen: HashSet<[u8; 16]> = self.links.iter().map(|l| l.header().image_id).collect();
        check_parent(child, &parent, link, &seen)?;
        self.links.push(parent);
        Ok(())
    }

    /// Opens the parent of the last link with `open` (given a key, or none)
    /// and appends it, as [`Chain::open`] opens a parent from a file: first
    /// without a key, to check it against the last link's parent record
    /// (a replaced or re-keyed parent is a mismatch, not a key that does
    /// not open it), then, when it is encrypted, with `key`. For parents
    /// read from elsewhere: object storage, say, with `open` calling
    /// [`Image::from_read_at`].
    ///
    /// # Errors
    /// `InvalidInput` when the last link has no parent; what `open`
    /// returns; as [`Chain::push_parent`].
    pub fn push_parent_with(
        &mut self,
        key: Option<&Key>,
        open: impl Fn(Option<&Key>) -> Result<Image>,
    ) -> Result<()> {
        let link = u32::try_from(self.links.len()).unwrap_or(u32::MAX);
        let record = self.last().parent().copied().ok_or_else(|| {
            Error::plain(
                ErrorKind::InvalidInput,
                "the chain is complete: its last link has no parent",
            )
        })?;
        let parent = open_checked(&record, link, &open, |_| key.cloned())?;
        self.push_parent(parent)
    }

    /// Opens the image at `path` with `key` and its parents: those in
    /// `opts.parents` first, then each found through its child's hint (a
    /// path relative to the child's directory, or absolute). Each parent is
    /// opened with the key `opts.parent_key` gives, else with `key`.
    ///
    /// A parent that is neither given nor found (its hint names no file)
    /// leaves the chain partial
    /// (see [`Chain::is_complete`]): what its links hold still reads, and
    /// the rest fails with [`ErrorKind::ParentRequired`].
    ///
    /// # Errors
    /// As [`Image::open_with_key`] for the image; for a parent, the same
    /// errors naming its link (a truncated or damaged parent, a wrong key),
    /// or [`ErrorKind::ParentMismatch`] when it is not the image its child
    /// names (another id: replaced; another index checksum: rewritten by a
    /// recompress, a full re-encryption, a relayout or a rebase; another
    /// depth, page size or machine; an image already in the chain).
    pub fn open(
        path: impl AsRef<Path>,
        key: Option<&Key>,
        opts: &ChainOptions<'_>,
    ) -> Result<Chain> {
        let path = path.as_ref();
        let mut chain = Chain::single(Image::open_with_key(path, key)?);
        let mut at = path.to_path_buf();
        while let Some(record) = chain.last().parent().copied() {
            let link = chain.links.len();
            let hint = chain.last().header().parent_hint.clone();
            // A hint naming no file leaves the chain partial; a parent given
            // explicitly must open.
            let found = match opts.parents.get(link - 1) {
                Some(p) => Some(p.clone()),
                None if opts.no_hints => None,
                None => hint
                    .as_deref()
                    .and_then(|h| hint_path(&at, h))
                    .filter(|p| p.exists()),
            };
            let Some(ppath) = found else { break };
            let link32 = u32::try_from(link).unwrap_or(u32::MAX);
            let parent = open_link(&ppath, link32, &record, key, opts)?;
            chain.push_parent(parent)?;
            at = ppath;
        }
        Ok(chain)
    }

    /// The links, nearest first: the image, its parent, …
    pub fn links(&self) -> &[Image] {
        &self.links
    }

    /// The image (link 0).
    pub fn image(&self) -> &Image {
        &self.links[0]
    }

    /// Gives the links back.
    pub fn into_links(self) -> Vec<Image> {
        self.links
    }

    fn last(&self) -> &Image {
        &self.links[self.links.len() - 1]
    }

    /// True when the last link is a full image: every page of the chain can
    /// be read.
    pub fn is_complete(&self) -> bool {
        self.last().parent().is_none()
    }

    /// The parent the chain lacks, when it is partial: the last link's
    /// parent record and hint.
    pub fn missing_parent(&self) -> Option<(ParentRecord, Option<&str>)> {
        let last = self.last();
        last.parent()
            .map(|p| (*p, last.header().parent_hint.as_deref()))
    }

    /// Names the link `link` in errors from it, when there is more than
    /// one image to tell apart (a chain, or a child without its parent).
    fn name_link(&self, link: usize, e: Error) -> Error {
        if self.links.len() > 1 || self.image().parent().is_some() {
            e.in_link(u32::try_from(link).unwrap_or(u32::MAX))
        } else {
            e
        }
    }

    /// Reads the bytes at virtual address `addr` into `buf`, from whichever
    /// link holds each page; only the chunks touched are decoded.
    ///
    /// # Errors
    /// `NotCaptured`, naming the address and the link, when the link that
    /// finally answers holds no data there; `ParentRequired` for pages whose
    /// parent is missing (a partial chain); damage kinds naming the link
    /// when a chunk is damaged.
    pub fn read_at(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            // A range past the end of the address space: what lies before
            // the end fails first (not captured, as a 1.0 reader said), and
            // only then the wrap.
            let n = usize_of(u64::MAX - addr)?;
            self.read_at(addr, &mut buf[..n])?;
            return Err(Error::plain(ErrorKind::InvalidInput, "address range wraps"));
        };
        let mut scratch = Vec::new();
        self.read_link(0, addr, end, buf, &mut scratch)
    }

    /// Reads `[start, end)` from link `link` down into `buf`.
    fn read_link(
        &self,
        link: usize,
        start: u64,
        end: u64,
        buf: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        let img = &self.links[link];
        img.walk(start, end, &mut |a, b, hold| {
            let dst = &mut buf[usize_of(a - start)?..usize_of(b - start)?];
            match hold {
                Hold::Extent(e) if e.kind == ExtentKind::InParent => {
                    if link + 1 < self.links.len() {
                        self.read_link(link + 1, a, b, dst, scratch)
                    } else {
                        Err(self.name_link(link, img.parent_required(a)))
                    }
                }
                hold => img
                    .read_piece(a, hold, dst, scratch)
                    .map_err(|e| self.name_link(link, e)),
            }
        })
    }

    /// Where `addr` is held: the link that answers and its extent there.
    ///
    /// # Errors
    /// `KeyRequired` when a link is encrypted and locked.
    pub fn resolve(&self, addr: u64) -> Result<Resolution> {
        let mut link = 0;
        loop {
            let ext = self.links[link].extent_at(addr)?.copied();
            match ext {
                Some(e) if e.kind == ExtentKind::InParent && link + 1 < self.links.len() => {
                    link += 1;
                }
                extent => return Ok(Resolution { link, extent }),
            }
        }
    }

    /// The runs that tile `[start, end)`, each held in one way by one link:
    /// in-parent pages resolved to what the parents hold. A data segment
    /// names its whole extent, of which it may be a part (a parent's extent
    /// partly overridden by its child).
    ///
    /// # Errors
    /// `KeyRequired` when a link is encrypted and locked.
    pub fn segments(&self, start: u64, end: u64) -> Result<Vec<Segment>> {
        self.segments_from(0, start, end)
    }

    /// As [`Chain::segments`], from link `link` down (the content that
    /// link's child takes from it, for the in-parent ranges of the child).
    ///
    /// # Errors
    /// As [`Chain::segments`]; `InvalidInput` when there is no link `link`.
    pub fn segments_from(&self, link: usize, start: u64, end: u64) -> Result<Vec<Segment>> {
        if link >= self.links.len() {
            return Err(Error::plain(
                ErrorKind::InvalidInput,
                format!("the chain has no link {link}"),
            ));
        }
        let mut out = Vec::new();
        self.segments_into(link, start, end, &mut out)?;
        Ok(out)
    }

    fn segments_into(
        &self,
        link: usize,
        start: u64,
        end: u64,
        out: &mut Vec<Segment>,
    ) -> Result<()> {
        self.links[link].walk(start, end, &mut |a, b, hold| {
            let kind = match hold {
                Hold::Gap { .. } => SegmentKind::Gap,
                Hold::NoData(_) => SegmentKind::NoData,
                Hold::Extent(e) => match e.kind {
                    ExtentKind::Data => SegmentKind::Data(*e),
                    ExtentKind::Zero => SegmentKind::Zero,
                    ExtentKind::Absent => SegmentKind::Absent,
                    ExtentKind::InParent if link + 1 < self.links.len() => {
                        return self.segments_into(link + 1, a, b, out);
                    }
                    ExtentKind::InParent => SegmentKind::ParentMissing,
                },
            };
            // Neighbours of one kind merge (not data: each names its extent).
            match out.last_mut() {
                Some(s)
                    if s.end == a
                        && s.link == link
                        && s.kind == kind
                        && !matches!(kind, SegmentKind::Data(_)) =>
                {
                    s.end = b;
                }
                _ => out.push(Segment {
                    start: a,
                    end: b,
                    link,
                    kind,
                }),
            }
            Ok(())
        })
    }

    /// Decodes `ext`, an extent of link `link`, into `out` (exactly its
    /// length).
    ///
    /// # Errors
    /// As [`Image::decode_extent`], naming the link.
    pub fn decode(&self, link: usize, ext: &Extent, out: &mut [u8]) -> Result<()> {
        let img = self.links.get(link).ok_or_else(|| {
            Error::plain(
                ErrorKind::InvalidInput,
                format!("the chain has no link {link}"),
            )
        })?;
        img.decode_extent(ext, out)
            .map_err(|e| self.name_link(link, e))
    }

    /// Reads the bytes of `seg` into `out` (exactly its length): decoded,
    /// zeros, or the error reading them gives.
    ///
    /// # Errors
    /// `NotCaptured` or `ParentRequired` naming the link; damage kinds.
    pub fn read_segment(&self, seg: &Segment, out: &mut [u8], scratch: &mut Vec<u8>) -> Result<()> {
        let ps = self.image().header().page_size;
        match seg.kind {
            SegmentKind::Zero => {
                out.fill(0);
                Ok(())
            }
            SegmentKind::Data(ext) => {
                scratch.resize(usize_of(ext.len(ps))?, 0);
                self.decode(seg.link, &ext, scratch)?;
                let from = usize_of(seg.start - ext.addr)?;
                let piece = scratch.get(from..from + out.len()).ok_or_else(|| {
                    Error::plain(ErrorKind::InvalidInput, "segment past its extent")
                })?;
                out.copy_from_slice(piece);
                Ok(())
            }
            // The same error a read of it gives, naming the link.
            _ => self.read_link(seg.link, seg.start, seg.end, out, scratch),
        }
    }
}

/// The path a parent hint names, relative to `child` (the child's own
/// path): a relative hint resolves against the child's directory, an
/// absolute one is taken as is, and a URL (`scheme://…`) is not a local
/// path (`None`; a remote store resolves it).
pub fn hint_path(child: &Path, hint: &str) -> Option<PathBuf> {
    if hint.contains("://") || hint.is_empty() {
        return None;
    }
    let h = Path::new(hint);
    if h.is_absolute() {
        return Some(h.to_path_buf());
    }
    let dir = child.parent().unwrap_or_else(|| Path::new(""));
    Some(dir.join(h))
}

/// Opens the parent at `path` as link `link`, the parent that `record`
/// names, with its key.
fn open_link(
    path: &Path,
    link: u32,
    record: &ParentRecord,
    key: Option<&Key>,
    opts: &ChainOptions<'_>,
) -> Result<Image> {
    // Each context once: an I/O error already names the path.
    let name = |e: Error| {
        let shown = path.display().to_string();
        let at = if e.message().contains(&shown) {
            String::new()
        } else {
            format!(" {shown}")
        };
        e.prefixed(&format!(
            "parent{at} (image {}, depth {})",
            record.image_id_hex(),
            record.depth - 1
        ))
        .in_link(link)
    };
    let open = |k: Option<&Key>| match k {
        None => Image::open(path).map(|i| i.with_path(path)).map_err(name),
        Some(k) => Image::open_with_key(path, Some(k)).map_err(name),
    };
    open_checked(record, link, &open, |locked| {
        opts.parent_key
            .and_then(|f| f(link, locked.header()))
            .or_else(|| key.cloned())
    })
}

/// Opens link `link`, the parent that `record` names, with `open`: first
/// without a key, since its identity is known without one (header and
/// trailer), so that a replaced or re-keyed parent is a mismatch, not a key
/// that does not open it; then, when it is encrypted, with the key
/// `key_for` gives for it (none: left locked).
fn open_checked(
    record: &ParentRecord,
    link: u32,
    open: &dyn Fn(Option<&Key>) -> Result<Image>,
    key_for: impl FnOnce(&Image) -> Option<Key>,
) -> Result<Image> {
    let locked = open(None)?;
    check_identity(record, &locked, link)?;
    if !locked.is_encrypted() {
        return Ok(locked);
    }
    match key_for(&locked) {
        Some(k) => open(Some(&k)),
        None => Ok(locked),
    }
}

/// Checks that `parent` is the image `child`'s parent record names, as link
/// `link` of a chain whose ids so far are `seen`.
fn check_parent(child: &Image, parent: &Image, link: u32, seen: &HashSet<[u8; 16]>) -> Result<()> {
    let loc = Location::default().with_link(link);
    let mismatch = |msg: String| Error::new(ErrorKind::ParentMismatch, loc, msg);
    let Some(rec) = child.parent() else {
        return Err(Error::plain(
            ErrorKind::InvalidInput,
            format!("link {} is a full image: it has no parent to add", link - 1),
        ));
    };
    check_identity(rec, parent, link)?;
    let ph = parent.header();
    if seen.contains(&ph.image_id) {
        return Err(mismatch(format!(
            "image {} is already in the chain: a cycle",
            rec.image_id_hex()
        )));
    }
    let what = describe(parent);
    let ch = child.header();
    if ph.page_size != ch.page_size {
        return Err(mismatch(format!(
            "{what} has {}-byte pages, its child {}-byte pages",
            ph.page_size, ch.page_size
        )));
    }
    if let Some(d) = ph.machine.first_difference(&ch.machine) {
        return Err(mismatch(format!(
            "{what} and its child were captured on different machines: the {d} differs"
        )));
    }
    Ok(())
}

/// How a parent is named in errors: its path and id.
fn describe(img: &Image) -> String {
    let id = img.header().image_id_hex();
    match img.path() {
        Some(p) => format!("{} (image {id})", p.display()),
        None => format!("image {id}"),
    }
}

/// Checks that `parent`, as link `link`, is the image `rec` names: its id,
/// its index checksum and its depth, all known without a key.
pub(crate) fn check_identity(rec: &ParentRecord, parent: &Image, link: u32) -> Result<()> {
    let mismatch = |msg: String| {
        Error::new(
            ErrorKind::ParentMismatch,
            Location::default().with_link(link),
            msg,
        )
    };
    let ph = parent.header();
    let what = describe(parent);
    if ph.image_id != rec.image_id {
        return Err(mismatch(format!(
            "the parent must be image {}, and {what} is another image (replaced, or re-encrypted in full?)",
            rec.image_id_hex()
        )));
    }
    let got = parent.trailer().index_checksum;
    if got != rec.index_checksum {
        return Err(mismatch(format!(
            "{what} is not the parent as it was when its child was written: its index checksum is {got:016x}, the child names {:016x} (recompressed, relaid out or rebased since? rebase the child onto it, or give the original)",
            rec.index_checksum
        )));
    }
    if parent.depth() + 1 != rec.depth {
        return Err(mismatch(format!(
            "{what} has depth {}, where the child of depth {} needs depth {}",
            parent.depth(),
            rec.depth,
            rec.depth - 1
        )));
    }
    Ok(())
}
