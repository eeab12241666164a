//! The reader: validates an image and gives safe access to it.
//!
//! One module per section of spec.md, each check beside the rule it
//! enforces: [`header`] (the header page), [`trailer`] (finding the active
//! trailer), [`index`] (index head and chunk map), [`body`] (regions,
//! extents, strings, meta), [`layout`] (where chunks lie) and [`chunk`]
//! (decoding a chunk's stored bytes). This module holds the [`Image`] type
//! and its public API, and runs the checks in the order spec.md's *Reader
//! obligations* gives.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::crypt::{self, DataKey, Kdf, Key};
use crate::error::{Error, ErrorKind, Location, Result};
use crate::model::*;
use crate::raw::*;
use crate::source::{open_path, usize_of, ReadAt, ReadSeek, Source};

mod body;
mod chunk;
mod digests;
mod header;
mod index;
mod layout;
mod order;
mod trailer;

use body::parse_body;
pub use digests::page_digests_of;
use header::parse_header;
use index::parse_index;
use layout::check_layout;
pub(crate) use layout::check_padding;
use trailer::find_trailer;

/// Facts from the active trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailerInfo {
    /// File offset of the active trailer.
    pub offset: u64,
    /// Key rotations so far.
    pub generation: u32,
    /// File offset of the index.
    pub index_offset: u64,
    /// Length of the index.
    pub index_len: u64,
    /// `xxh3_64` of the index.
    pub index_checksum: u64,
    /// The KDF of the key slot, when the image is encrypted.
    pub kdf: Option<Kdf>,
    /// Bytes after the active trailer left by an unfinished key rotation.
    pub unfinished_tail: u64,
    /// Superseded trailers still in the file (not yet zeroed).
    pub superseded: u32,
    /// Superseded trailers partly zeroed: a key rotation cut off while it
    /// zeroed them (spec.md, *Finding the active trailer*).
    pub partly_zeroed: u32,
    /// False when the image was opened from its front (an `INDEX_FIRST`
    /// image read through [`Image::from_read_at`]): the trailer was not
    /// read, and these facts are what the header's index record and the
    /// layout say it must hold (spec.md, *Index first*); `verify` reads it.
    pub read: bool,
}

/// The decrypted index: regions, extents, names and notes.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub regions: Vec<Region>,
    pub extents: Vec<Extent>,
    pub notes: Vec<Note>,
    /// The load-order record (1.1, `LOAD_ORDER` only).
    pub load_order: Option<order::LoadOrder>,
    /// The page-digests record (1.1, `PAGE_DIGESTS` only).
    pub page_digests: Option<digests::PageDigests>,
}

/// What holds a piece of an image's address space (see `Image::walk`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hold<'a> {
    /// An extent of the image.
    Extent(&'a Extent),
    /// A region recorded without data.
    NoData(&'a Region),
    /// No region: the gap `lo..hi` between regions.
    Gap { lo: u64, hi: u64 },
}

/// An open, validated image.
///
/// # Security
///
/// Opening is safe on any bytes: see [`Image::open`].
pub struct Image {
    src: Source,
    path: Option<PathBuf>,
    header: Header,
    header_page: Vec<u8>,
    trailer: TrailerInfo,
    /// The active key slot; read only by the nonce audit (feature
    /// `nonce-audit`).
    #[cfg_attr(not(feature = "nonce-audit"), allow(dead_code))]
    key_slot: KeySlotRaw,
    /// The salt of the index nonce (1.1; 0 for every index sealed first
    /// under its data key).
    index_salt: u64,
    chunks: Vec<ChunkLoc>,
    body: Option<Body>,
    dek: Option<DataKey>,
    check_raw: bool,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("trailer", &self.trailer)
            .field("chunks", &self.chunks.len())
            .field("unlocked", &self.body.is_some())
            .finish()
    }
}

/// Collects problems: in strict mode the first one is returned as an error,
/// in lenient mode (verify) they are kept and parsing goes on where it can.
pub(crate) struct Sink {
    strict: bool,
    pub(crate) problems: Vec<Error>,
}

impl Sink {
    fn new(strict: bool) -> Self {
        Sink {
            strict,
            problems: Vec::new(),
        }
    }

    /// Records `e` in lenient mode only: a problem that does not stop reading.
    fn note(&mut self, e: Error) {
        if !self.strict {
            self.problems.push(e);
        }
    }

    /// Records `e`; returns it as an error in strict mode.
    fn report(&mut self, e: Error) -> Result<()> {
        if self.strict {
            Err(e)
        } else {
            self.problems.push(e);
            Ok(())
        }
    }
}

impl Image {
    /// Opens the image at `path`, without a key.
    ///
    /// The file is read with positional reads ([`crate::FileAt`]), never
    /// mapped: opening reads the header page, the trailer and the index, and
    /// each chunk is read when it is needed.
    ///
    /// # Security
    ///
    /// Any byte sequence yields either an image or a typed [`Error`] that says
    /// what is wrong and where (file offset, region, chunk). Opening never
    /// panics, never aborts, and allocates no more than a small multiple of
    /// the file size: every count and length read from the file is checked
    /// against the bytes that remain before anything is allocated, and all
    /// arithmetic on file values is checked. No field may make the reader
    /// use the same bytes twice (region names are packed in region order,
    /// each chunk belongs to one extent), so what it builds from the index is
    /// bounded by the index. A chunk's stored length is bounded by the chunk
    /// size, and decoding a chunk allocates at most one chunk (at most 16 MiB).
    ///
    /// Every rule that a reader of a chunk depends on is checked by every
    /// reader of it, not only by verify: the padding in front of a raw chunk
    /// must be zero, a zstd chunk must be exactly one frame of the chunk's
    /// length. (Tested on images built from parts with every checksum fixed:
    /// `tests/tests/hostile.rs`, `tests/tests/bounds.rs`, and the
    /// `structured` fuzz target.)
    ///
    /// Only a regular file is opened: a FIFO, a device (`/dev/zero`) or a
    /// directory is refused with [`ErrorKind::InvalidInput`] before any byte
    /// is read, and a FIFO with no writer does not make it wait.
    ///
    /// A file that another process truncates or rewrites while the image is
    /// open gives errors, never a signal: a read past the new end is
    /// [`ErrorKind::Truncated`] at the offset of the read, and changed bytes
    /// fail their checksums (`inspect/tests/cli/truncate.rs`).
    ///
    /// A key rotation cut off by a power cut leaves an image that opens under
    /// the key in force (spec.md, *Finding the active trailer*); a damaged
    /// complete newest trailer is damage, never a fall-back to an older key
    /// slot.
    ///
    /// Restoring by mmap (`memimg-capture`'s `Strategy::Mmap`) is the one
    /// place that maps an image, on purpose: raw chunks are mapped straight
    /// from the file into the restored program. When the file is truncated
    /// afterwards, that program gets SIGBUS when it touches a page past the
    /// new end, as with any file mapping. Restore by mmap only from a file
    /// that nobody modifies or truncates, or use the eager or lazy strategy,
    /// which copy the bytes out of the file.
    ///
    /// # Errors
    /// [`ErrorKind::NotAnImage`] when the magic is wrong, `Unsupported` for a
    /// newer major version or unknown incompatible feature, `InvalidInput`
    /// for what is not a regular file, `Io` when the file cannot be opened or
    /// read, and damage kinds (`Truncated`, `Checksum`, `Malformed`,
    /// `NonZeroPadding`) otherwise.
    pub fn open(path: impl AsRef<Path>) -> Result<Image> {
        Image::open_with_key(path, None)
    }

    /// Opens the image at `path`, unlocking it with `key` when it is encrypted.
    ///
    /// # Errors
    /// As [`Image::open`], plus `WrongKey` when the key does not open the
    /// image, `NotEncrypted` when a key is given for a plain image, and
    /// `Authentication` when the index fails its tag.
    pub fn open_with_key(path: impl AsRef<Path>, key: Option<&Key>) -> Result<Image> {
        let path = path.as_ref();
        let src = open_path(path)?;
        let (img, _) = open_source(src, key, true, false)?;
        Ok(img.with_path(path))
    }

    /// Reads an image from bytes in memory.
    ///
    /// # Errors
    /// As [`Image::open_with_key`].
    pub fn from_bytes(bytes: Vec<u8>, key: Option<&Key>) -> Result<Image> {
        Ok(open_source(Source::Bytes(bytes), key, true, false)?.0)
    }

    /// Reads an image from any `Read + Seek`, fetching only what it needs.
    ///
    /// # Errors
    /// As [`Image::open_with_key`].
    pub fn from_reader<R: ReadSeek + 'static>(mut reader: R, key: Option<&Key>) -> Result<Image> {
        let len = reader
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::io("finding the length of the image", e))?;
        usize_of(len)?;
        Ok(open_source(
            Source::Reader(Mutex::new(Box::new(reader)), len),
            key,
            true,
            false,
        )?
        .0)
    }

    /// Reads an image from a positional store (a file read with `pread`, an
    /// object in remote storage), fetching only the ranges it needs: the
    /// header page, the trailer and the index when opening, then each chunk
    /// as it is read.
    ///
    /// An image whose index comes first (1.1, `INDEX_FIRST`) is opened from
    /// its front, as spec.md allows (*Index first*): the header page and
    /// the index, checked against the header's index record, and not the
    /// trailer, so that the opening is one range from offset 0 (one GET from
    /// object storage). The trailer must then start at the length of the
    /// store minus 256 bytes, which the layout check enforces;
    /// [`TrailerInfo::read`] is false, and a verify ([`crate::verify_path`],
    /// [`Image::from_read_at_whole`]) reads it.
    ///
    /// # Errors
    /// As [`Image::open_with_key`].
    pub fn from_read_at(store: std::sync::Arc<dyn ReadAt>, key: Option<&Key>) -> Result<Image> {
        let len = store.len();
        usize_of(len)?;
        Ok(open_source(Source::At(store, len), key, true, true)?.0)
    }

    /// As [`Image::from_read_at`], but reads and checks the trailer of an
    /// image whose index comes first too (as it does every other image's),
    /// for a verify: one more read, at the end of the store.
    ///
    /// # Errors
    /// As [`Image::open_with_key`].
    pub fn from_read_at_whole(
        store: std::sync::Arc<dyn ReadAt>,
        key: Option<&Key>,
    ) -> Result<Image> {
        let len = store.len();
        usize_of(len)?;
        Ok(open_source(Source::At(store, len), key, true, false)?.0)
    }

    pub(crate) fn with_path(mut self, path: &Path) -> Image {
        self.path = Some(path.to_path_buf());
        self
    }

    /// The path the image was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The header page exactly as stored.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header_page
    }

    /// The active trailer.
    pub fn trailer(&self) -> &TrailerInfo {
        &self.trailer
    }

    /// The parent of this image, when it is an incremental image (1.1).
    pub fn parent(&self) -> Option<&ParentRecord> {
        self.header.parent.as_ref()
    }

    /// The image's depth in its chain: 0 for a full image.
    pub fn depth(&self) -> u32 {
        self.header.depth()
    }

    /// The parent record a child of this image carries: this image's id, the
    /// checksum of its index (from the active trailer), and its depth plus
    /// one.
    ///
    /// # Errors
    /// `InvalidInput` when this image is already at the deepest depth a
    /// chain may have ([`crate::MAX_CHAIN_DEPTH`]).
    pub fn as_parent(&self) -> Result<ParentRecord> {
        let depth = self.depth() + 1;
        if depth > crate::MAX_CHAIN_DEPTH {
            return Err(Error::plain(
                ErrorKind::InvalidInput,
                format!(
                    "the image is at depth {}, the deepest a chain may have: it cannot be a parent",
                    self.depth()
                ),
            ));
        }
        Ok(ParentRecord {
            image_id: self.header.image_id,
            index_checksum: self.trailer.index_checksum,
            depth,
        })
    }

    /// The salt of the index nonce (1.1, spec.md *Nonces and associated
    /// data*): 0 for the first index sealed under a data key (and in every
    /// plain or 1.0 image), a random non-zero value for an index sealed
    /// again under the same data key (a relayout, a rebase).
    pub fn index_nonce_salt(&self) -> u64 {
        self.index_salt
    }

    /// The file length.
    pub fn file_len(&self) -> u64 {
        self.src.len()
    }

    /// True when the image is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.header.cipher != Cipher::None
    }

    /// True when the index is readable (plain, or unlocked with a key).
    pub fn is_unlocked(&self) -> bool {
        self.body.is_some()
    }

    /// Where each chunk's stored bytes are (available without a key).
    pub fn chunk_locs(&self) -> &[ChunkLoc] {
        &self.chunks
    }

    fn body(&self) -> Result<&Body> {
        self.body.as_ref().ok_or_else(|| {
            Error::plain(
                ErrorKind::KeyRequired,
                "the image is encrypted: its regions and chunks need a key",
            )
        })
    }

    /// The regions, in address order.
    ///
    /// # Errors
    /// `KeyRequired` when the image is encrypted and was opened without a key.
    pub fn regions(&self) -> Result<&[Region]> {
        Ok(&self.body()?.regions)
    }

    /// All extents, in address order.
    ///
    /// # Errors
    /// As [`Image::regions`].
    pub fn extents(&self) -> Result<&[Extent]> {
        Ok(&self.body()?.extents)
    }

    /// The extents of one region (empty when it has no data).
    ///
    /// # Errors
    /// As [`Image::regions`].
    pub fn region_extents(&self, region: &Region) -> Result<&[Extent]> {
        let ex = &self.body()?.extents;
        let s = region.first_extent as usize;
        let e = s + region.extent_count as usize;
        Ok(ex.get(s..e).unwrap_or(&[]))
    }

    /// The named notes from the index.
    ///
    /// # Errors
    /// As [`Image::regions`].
    pub fn notes(&self) -> Result<&[Note]> {
        Ok(&self.body()?.notes)
    }

    /// Turns the check of each decoded chunk's raw checksum on or off. It is
    /// on by default; restore paths that have verified the image may turn it off.
    pub fn set_check_raw(&mut self, on: bool) {
        self.check_raw = on;
    }

    /// The file offset of an extent's raw pages, when they can be mapped
    /// straight from the file: a data extent stored raw in a plain image.
    pub fn raw_file_offset(&self, ext: &Extent) -> Option<u64> {
        if self.is_encrypted() || ext.kind != ExtentKind::Data || ext.codec != ChunkCodec::None {
            return None;
        }
        self.chunks
            .get(usize::try_from(ext.chunk).ok()?)
            .map(|c| c.offset)
    }

    /// The extent holding `addr`, if any.
    ///
    /// # Errors
    /// As [`Image::regions`].
    pub fn extent_at(&self, addr: u64) -> Result<Option<&Extent>> {
        let ps = self.header.page_size;
        let ex = &self.body()?.extents;
        let i = ex.partition_point(|e| e.end(ps) <= addr);
        Ok(ex.get(i).filter(|e| e.addr <= addr))
    }

    /// The region holding `addr`, if any.
    ///
    /// # Errors
    /// As [`Image::regions`].
    pub fn region_at(&self, addr: u64) -> Result<Option<&Region>> {
        let rs = &self.body()?.regions;
        let i = rs.partition_point(|r| r.info.end() <= addr);
        Ok(rs.get(i).filter(|r| r.info.start <= addr))
    }

    /// Reads the bytes at virtual address `addr` into `buf`, decoding only the
    /// chunks it touches.
    ///
    /// # Errors
    /// `NotCaptured`, naming the gap, when part of the range lies outside every
    /// region or in a region or extent without data; `ParentRequired` for
    /// pages of an incremental image that are its parent's (read them
    /// through a [`crate::Chain`]); damage kinds when a chunk is damaged.
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
        self.walk(addr, end, &mut |a, b, hold| {
            let dst = &mut buf[usize_of(a - addr)?..usize_of(b - addr)?];
            match hold {
                Hold::Extent(e) if e.kind == ExtentKind::InParent => Err(self.parent_required(a)),
                hold => self.read_piece(a, hold, dst, &mut scratch),
            }
        })
    }

    /// Calls `f(a, b, hold)` for consecutive pieces `[a, b)` that tile
    /// `[start, end)`, each held by one extent, one region without data, or
    /// one gap between regions.
    pub(crate) fn walk(
        &self,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, Hold<'_>) -> Result<()>,
    ) -> Result<()> {
        let ps = self.header.page_size;
        let mut a = start;
        while a < end {
            let (b, hold) = match self.extent_at(a)? {
                Some(e) => (e.end(ps), Hold::Extent(e)),
                None => match self.region_at(a)? {
                    Some(r) => (r.info.end(), Hold::NoData(r)),
                    None => {
                        let rs = &self.body()?.regions;
                        let i = rs.partition_point(|r| r.info.end() <= a);
                        let lo = if i > 0 { rs[i - 1].info.end() } else { 0 };
                        let hi = rs.get(i).map_or(u64::MAX, |r| r.info.start);
                        (hi, Hold::Gap { lo, hi })
                    }
                },
            };
            // Every piece ends past `a` (extents and regions are not empty,
            // and a gap ends where the next region starts).
            let b = b.min(end).max(a + 1);
            f(a, b, hold)?;
            a = b;
        }
        Ok(())
    }

    /// Fills `dst`, the bytes from `a` of a piece held by `hold`, from this
    /// image alone: zeros, decoded chunk bytes, or `NotCaptured` naming why.
    /// An in-parent extent is the caller's to resolve (it gives
    /// `ParentRequired` here).
    pub(crate) fn read_piece(
        &self,
        a: u64,
        hold: Hold<'_>,
        dst: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        let ps = self.header.page_size;
        let not_captured = |loc: Location, why: String| {
            Err(Error::new(
                ErrorKind::NotCaptured,
                loc.with_addr(a),
                format!("{a:#x} was not captured: {why}"),
            ))
        };
        match hold {
            Hold::Gap { lo, hi } => not_captured(
                Location::default(),
                format!("it lies in the gap {lo:#x}-{hi:#x} between regions"),
            ),
            Hold::NoData(r) => not_captured(
                Location::default().with_region(r.index),
                format!(
                    "region {} ({:#x}-{:#x}) was recorded without data",
                    r.index,
                    r.info.start,
                    r.info.end()
                ),
            ),
            Hold::Extent(ext) => match ext.kind {
                ExtentKind::Zero => {
                    dst.fill(0);
                    Ok(())
                }
                ExtentKind::Absent => not_captured(
                    Location::default().with_region(ext.region),
                    format!(
                        "pages {:#x}-{:#x} of region {} are absent",
                        ext.addr,
                        ext.end(ps),
                        ext.region
                    ),
                ),
                ExtentKind::InParent => Err(self.parent_required(a)),
                ExtentKind::Data => {
                    let off_in = usize_of(a - ext.addr)?;
                    scratch.resize(usize_of(ext.len(ps))?, 0);
                    self.decode_data(ext, scratch)?;
                    let piece = scratch.get(off_in..off_in + dst.len()).ok_or_else(|| {
                        Error::plain(ErrorKind::InvalidInput, "piece past its extent")
                    })?;
                    dst.copy_from_slice(piece);
                    Ok(())
                }
            },
        }
    }

    /// The error for reading in-parent pages at `a` without the parent.
    pub(crate) fn parent_required(&self, a: u64) -> Error {
        let (id, depth) = self
            .header
            .parent
            .map_or((String::new(), 0), |p| (p.image_id_hex(), p.depth));
        let hint = match &self.header.parent_hint {
            Some(h) => format!(", last seen at {h}"),
            None => String::new(),
        };
        Error::new(
            ErrorKind::ParentRequired,
            Location::default().with_addr(a),
            format!(
                "{a:#x} holds its parent's pages (an incremental image of depth {depth}): its parent, image {id}{hint}, is needed to read them"
            ),
        )
    }

    /// Test only (feature `nonce-audit`): every (key fingerprint, nonce) pair
    /// this image's encryption should have used, computed from its layout: one
    /// per chunk and one for the index under the data key, and one for the
    /// key slot under the KEK. Fingerprints are XXH3-128 of the key, not the
    /// key. The nonce audit checks it against the pairs recorded when
    /// sealing ([`crate::audit`]).
    ///
    /// # Errors
    /// When the image is not encrypted or `key` does not open it.
    #[cfg(feature = "nonce-audit")]
    #[doc(hidden)]
    pub fn nonce_audit(&self, key: &Key) -> Result<Vec<(u128, Vec<u8>)>> {
        let dek = self.dek.as_ref().ok_or_else(|| {
            Error::plain(
                ErrorKind::KeyRequired,
                "nonce audit needs an unlocked, encrypted image",
            )
        })?;
        let fp = dek.fingerprint();
        let mut out: Vec<(u128, Vec<u8>)> = (0..self.chunks.len() as u64)
            .map(|i| (fp, crypt::chunk_nonce(i).to_vec()))
            .collect();
        out.push((fp, crypt::index_nonce(self.index_salt).to_vec()));
        out.push((
            crypt::kek_fingerprint(&self.key_slot, key)?,
            self.key_slot.wrap_nonce.to_vec(),
        ));
        Ok(out)
    }

    pub(crate) fn dek(&self) -> Option<&DataKey> {
        self.dek.as_ref()
    }

    /// The active key slot as stored.
    pub(crate) fn key_slot(&self) -> &KeySlotRaw {
        &self.key_slot
    }

    /// The index body in clear, read again from the file (and decrypted, in
    /// a buffer zeroized when dropped), for rewrites that keep it: its
    /// bytes are those the image was opened with, checked against the
    /// trailer's index checksum.
    ///
    /// # Errors
    /// `KeyRequired` when the image is encrypted and locked; `Checksum` when
    /// the index changed in the file since it was opened; I/O errors.
    pub(crate) fn clear_body(&self) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        self.body()?;
        let t = &self.trailer;
        let index = self.src.get(t.index_offset, t.index_len, "index")?;
        if xxhash_rust::xxh3::xxh3_64(&index) != t.index_checksum {
            return Err(Error::new(
                ErrorKind::Checksum,
                Location::at(t.index_offset),
                "the index changed in the file since the image was opened",
            ));
        }
        let map_end = INDEX_HEAD_LEN + CHUNK_ENTRY_LEN * self.chunks.len();
        let body = index.get(map_end..).ok_or_else(|| {
            Error::new(
                ErrorKind::Malformed,
                Location::at(t.index_offset),
                "index too short",
            )
        })?;
        let mut plain = zeroize::Zeroizing::new(body.to_vec());
        if let Some(d) = &self.dek {
            let mut aad = Vec::with_capacity(self.header_page.len() + map_end);
            aad.extend_from_slice(&self.header_page);
            aad.extend_from_slice(&index[..map_end]);
            let n = d
                .open(&crypt::index_nonce(self.index_salt), &aad, &mut plain)
                .map_err(|()| {
                    Error::new(
                        ErrorKind::Authentication,
                        Location::at(t.index_offset),
                        "index fails authentication: it changed in the file since the image was opened",
                    )
                })?;
            plain.truncate(n);
        }
        Ok(plain)
    }

    /// Where the image's bytes come from.
    pub(crate) fn source(&self) -> &Source {
        &self.src
    }

    /// The whole file as bytes, when it is in memory ([`Image::from_bytes`]).
    pub fn file_bytes(&self) -> Option<&[u8]> {
        self.src.as_slice()
    }

    /// Reads `len` bytes at file offset `offset`.
    ///
    /// # Errors
    /// `Truncated` past the end of the file; I/O errors from a reader.
    pub fn file_range(&self, offset: u64, len: u64) -> Result<Cow<'_, [u8]>> {
        self.src.get(offset, len, "range")
    }
}

/// Parses and validates an image. In lenient mode, problems that do not stop
/// parsing are returned in the second value.
/// `front`: an `INDEX_FIRST` image may be opened from its front, without
/// reading its trailer (spec.md, *Index first*).
pub(crate) fn open_source(
    src: Source,
    key: Option<&Key>,
    strict: bool,
    front: bool,
) -> Result<(Image, Vec<Error>)> {
    let mut sink = Sink::new(strict);
    let img = open_into(src, key, &mut sink, front)?;
    Ok((img, sink.problems))
}

/// Parses and validates an image in lenient mode (verify): the problems
/// found are returned whether or not the image could be opened, so that
/// damage found before a fatal error (a header whose checksum fails, then a
/// key that does not open the slot that header describes) is still reported.
pub(crate) fn open_lenient(src: Source, key: Option<&Key>) -> (Result<Image>, Vec<Error>) {
    let mut sink = Sink::new(false);
    let img = open_into(src, key, &mut sink, false);
    (img, sink.problems)
}

/// The trailer of an `INDEX_FIRST` image opened from its front (spec.md,
/// *Index first*): not read, but where the header's index record and the
/// layout rule say it is and what it must hold.
fn front_trailer(src: &Source, header: &Header, rec: IndexRecord) -> Result<TrailerInfo> {
    let flen = src.len();
    let tl = TRAILER_LEN as u64;
    let min = header.data_start().saturating_add(tl);
    if flen < min {
        return Err(crate::error::truncated(
            0,
            "an image whose index comes first (header, index and trailer)",
            min,
            flen,
        ));
    }
    Ok(TrailerInfo {
        offset: flen - tl,
        generation: 0,
        index_offset: u64::from(header.page_size),
        index_len: rec.index_len,
        index_checksum: rec.index_checksum,
        kdf: None,
        unfinished_tail: 0,
        superseded: 0,
        partly_zeroed: 0,
        read: false,
    })
}

fn open_into(src: Source, key: Option<&Key>, sink: &mut Sink, front: bool) -> Result<Image> {
    let (header, header_page) = parse_header(&src, sink)?;
    if key.is_some() && header.cipher == Cipher::None {
        return Err(Error::plain(
            ErrorKind::NotEncrypted,
            "a key was given, but the image is not encrypted",
        ));
    }
    let (trailer, key_slot) = match header.index_first {
        Some(rec) if front => (front_trailer(&src, &header, rec)?, KeySlotRaw::default()),
        _ => find_trailer(&src, &header, sink)?,
    };
    let index = src.get(trailer.index_offset, trailer.index_len, "index")?;
    let parts = parse_index(&src, &header, &trailer, &index, sink)?;
    let (chunks, ihead_len, salt) = (parts.chunks, parts.map_end, parts.salt);
    let encrypted = header.cipher != Cipher::None;
    let mut dek = None;
    let mut body = None;
    let body_bytes = &index[ihead_len..];
    if encrypted {
        if let Some(k) = key {
            let bound = header.is_slot_bound().then_some(&header.image_id);
            let slot_at = Location::at(trailer.offset + 64);
            let d = crypt::unwrap_slot(&key_slot, k, bound, slot_at).map_err(|e| {
                // After damage (verify goes on past a damaged header), say
                // where the slot that did not open is.
                if sink.problems.is_empty() {
                    e
                } else {
                    e.within(slot_at)
                }
            })?;
            let mut aad = Vec::with_capacity(header_page.len() + ihead_len);
            aad.extend_from_slice(&header_page);
            aad.extend_from_slice(&index[..ihead_len]);
            // The index in clear names the regions and their layout: keep it
            // in a buffer that is zeroed when dropped.
            let plain = d
                .open_owned(
                    &crypt::index_nonce(salt),
                    &aad,
                    std::borrow::Cow::Borrowed(body_bytes),
                )
                .map_err(|()| {
                    Error::new(
                        ErrorKind::Authentication,
                        Location::at(trailer.index_offset),
                        "index fails authentication: the header, index or chunk map was altered",
                    )
                })?;
            body = Some(parse_body(
                &plain,
                &header,
                &chunks,
                trailer.index_offset + ihead_len as u64,
                true,
            )?);
            dek = Some(d);
        }
    } else {
        body = Some(parse_body(
            body_bytes,
            &header,
            &chunks,
            trailer.index_offset + ihead_len as u64,
            false,
        )?);
    }
    drop(index);
    let img = Image {
        src,
        path: None,
        header,
        header_page,
        trailer,
        key_slot,
        index_salt: salt,
        chunks,
        body,
        dek,
        check_raw: true,
    };
    check_layout(&img, sink)?;
    Ok(img)
}

/// For a reader that fetches an image's front before anything else (from
/// object storage): given the first bytes of a file, how many bytes from
/// offset 0 open it ([`Image::from_read_at`] reads nothing else when
/// opening): `Some(Some(n))` for an image whose index comes first (1.1,
/// `INDEX_FIRST`: spec.md, *Index first*), `n` being where its data starts;
/// `Some(None)` when `head` holds a header page that is not such an
/// image's, or no valid header at all (the trailer is needed, as for any
/// image); `None` when `head` is too short to tell (less than 128 bytes, or
/// than the page size it names).
pub fn front_open_need(head: &[u8]) -> Option<Option<u64>> {
    let ps = head
        .get(0x28..0x2c)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)?;
    if !matches!(ps, 4096 | 16384 | 65536) {
        return Some(None);
    }
    let page = head.get(..ps as usize)?;
    let src = Source::Bytes(page.to_vec());
    Some(match parse_header(&src, &mut Sink::new(true)) {
        Ok((h, _)) if h.index_first.is_some() => Some(h.data_start()),
        _ => None,
    })
}

/// Entry points for the fuzz targets: each structure parsed alone.
#[doc(hidden)]
pub mod fuzz_api {
    use super::*;

    /// Parses `bytes` as a header page (strict and lenient), ignoring errors.
    pub fn header(bytes: &[u8]) {
        for strict in [true, false] {
            let mut sink = Sink::new(strict);
            let _ = parse_header(&Source::Bytes(bytes.to_vec()), &mut sink);
        }
    }

    /// Appends `bytes` to a valid header page of `template` and looks for the
    /// trailer (strict and lenient), ignoring errors.
    pub fn trailer(template_header: &[u8], bytes: &[u8]) {
        let mut file = template_header.to_vec();
        file.extend_from_slice(bytes);
        let src = Source::Bytes(file);
        let mut sink = Sink::new(false);
        let Ok((header, _)) = parse_header(&src, &mut sink) else {
            return;
        };
        for strict in [true, false] {
            let _ = find_trailer(&src, &header, &mut Sink::new(strict));
        }
    }

    /// Parses `bytes` as the index of an image with the header `template`,
    /// plain (the body in clear), ignoring errors.
    pub fn index(template_header: &[u8], bytes: &[u8]) {
        let src = Source::Bytes(template_header.to_vec());
        let mut sink = Sink::new(false);
        let Ok((header, _)) = parse_header(&src, &mut sink) else {
            return;
        };
        let ps = u64::from(header.page_size);
        let trailer = TrailerInfo {
            offset: ps + bytes.len() as u64,
            generation: 0,
            index_offset: ps,
            index_len: bytes.len() as u64,
            index_checksum: xxhash_rust::xxh3::xxh3_64(bytes),
            kdf: None,
            unfinished_tail: 0,
            superseded: 0,
            partly_zeroed: 0,
            read: true,
        };
        if let Ok(p) = parse_index(&src, &header, &trailer, bytes, &mut Sink::new(false)) {
            let _ = parse_body(&bytes[p.map_end..], &header, &p.chunks, ps, false);
        }
    }
}
