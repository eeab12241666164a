//! The reader: validates an image and gives safe access to it.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::codec;
use crate::crypt::{self, DataKey, Kdf, Key};
use crate::error::{malformed, Error, ErrorKind, Location, Result};
use crate::meta;
use crate::model::*;
use crate::raw::{self, *};
use crate::source::{usize_of, ReadAt, ReadSeek, Source};
use crate::{MAX_CHUNK_SIZE, VERSION_MAJOR, VERSION_MINOR};

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
}

/// The decrypted index: regions, extents, names and notes.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub regions: Vec<Region>,
    pub extents: Vec<Extent>,
    pub notes: Vec<Note>,
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
    key_slot: KeySlotRaw,
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
    /// Opens the image at `path` through a memory map, without a key.
    ///
    /// # Security
    ///
    /// Any byte sequence yields either an image or a typed [`Error`] that says
    /// what is wrong and where (file offset, region, chunk). Opening never
    /// panics, never aborts, and allocates no more than a small multiple of
    /// the file size: every count and length read from the file is checked
    /// against the bytes that remain before anything is allocated, and all
    /// arithmetic on file values is checked. Decoding a chunk allocates at
    /// most one chunk (at most 16 MiB).
    ///
    /// The one thing a map cannot protect against is another process
    /// truncating the file while it is mapped, which raises SIGBUS; use
    /// [`Image::from_reader`] on files that others may change.
    ///
    /// # Errors
    /// [`ErrorKind::NotAnImage`] when the magic is wrong, `Unsupported` for a
    /// newer major version or unknown incompatible feature, and damage kinds
    /// (`Truncated`, `Checksum`, `Malformed`, `NonZeroPadding`) otherwise.
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
        let src = map_path(path)?;
        let (img, _) = open_source(src, key, true)?;
        Ok(img.with_path(path))
    }

    /// Reads an image from bytes in memory.
    ///
    /// # Errors
    /// As [`Image::open_with_key`].
    pub fn from_bytes(bytes: Vec<u8>, key: Option<&Key>) -> Result<Image> {
        Ok(open_source(Source::Bytes(bytes), key, true)?.0)
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
        Ok(open_source(Source::Reader(Mutex::new(Box::new(reader)), len), key, true)?.0)
    }

    /// Reads an image from a positional store (a file read with `pread`, an
    /// object in remote storage), fetching only the ranges it needs: the
    /// header page, the trailer and the index when opening, then each chunk
    /// as it is read.
    ///
    /// # Errors
    /// As [`Image::open_with_key`].
    pub fn from_read_at(store: std::sync::Arc<dyn ReadAt>, key: Option<&Key>) -> Result<Image> {
        let len = store.len();
        usize_of(len)?;
        Ok(open_source(Source::At(store, len), key, true)?.0)
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

    /// The stored bytes of chunk `n`, checked against their stored checksum.
    ///
    /// # Errors
    /// `Checksum` when the bytes do not match, `Truncated` when they lie past
    /// the end of the file.
    pub fn read_stored(&self, n: u64) -> Result<Cow<'_, [u8]>> {
        let c = self.chunk_loc(n)?;
        let bytes = self.src.get(c.offset, u64::from(c.stored_len), "chunk")?;
        let sum = xxh3_64(&bytes);
        if sum != c.stored_checksum {
            return Err(Error::new(
                ErrorKind::Checksum,
                Location::chunk(n, c.offset),
                format!(
                    "stored checksum mismatch (index says {:016x}, bytes hash to {sum:016x})",
                    c.stored_checksum
                ),
            ));
        }
        Ok(bytes)
    }

    fn chunk_loc(&self, n: u64) -> Result<ChunkLoc> {
        usize::try_from(n)
            .ok()
            .and_then(|i| self.chunks.get(i))
            .copied()
            .ok_or_else(|| Error::plain(ErrorKind::InvalidInput, format!("there is no chunk {n}")))
    }

    /// Decodes an extent's pages into `out`, which must be exactly the
    /// extent's length: zero extents give zeros, data extents are checked,
    /// decrypted and decompressed.
    ///
    /// # Errors
    /// `NotCaptured` for an absent extent; damage kinds when the chunk's
    /// checksums or tag do not match.
    pub fn decode_extent(&self, ext: &Extent, out: &mut [u8]) -> Result<()> {
        let ps = self.header.page_size;
        if out.len() as u64 != ext.len(ps) {
            return Err(Error::plain(
                ErrorKind::InvalidInput,
                format!(
                    "buffer of {} bytes for an extent of {}",
                    out.len(),
                    ext.len(ps)
                ),
            ));
        }
        match ext.kind {
            ExtentKind::Zero => {
                out.fill(0);
                Ok(())
            }
            ExtentKind::Absent => Err(Error::new(
                ErrorKind::NotCaptured,
                Location::default()
                    .with_region(ext.region)
                    .with_addr(ext.addr),
                format!("{:#x}-{:#x} was not captured", ext.addr, ext.end(ps)),
            )),
            ExtentKind::Data => self.decode_data(ext, out),
        }
    }

    fn decode_data(&self, ext: &Extent, out: &mut [u8]) -> Result<()> {
        let c = self.chunk_loc(ext.chunk)?;
        let loc = Location::chunk(ext.chunk, c.offset)
            .with_region(ext.region)
            .with_addr(ext.addr);
        let stored = self
            .read_stored(ext.chunk)
            .map_err(|e| e.with_location(loc))?;
        self.decode_stored(ext, stored, out)
    }

    /// Decodes a data extent from its stored bytes, which the caller has
    /// already checked against their stored checksum.
    pub(crate) fn decode_stored(
        &self,
        ext: &Extent,
        stored: Cow<'_, [u8]>,
        out: &mut [u8],
    ) -> Result<()> {
        let c = self.chunk_loc(ext.chunk)?;
        let loc = Location::chunk(ext.chunk, c.offset)
            .with_region(ext.region)
            .with_addr(ext.addr);
        let mut owned;
        let plain: &[u8] = match &self.dek {
            Some(dek) => {
                owned = stored.into_owned();
                let aad = crypt::chunk_aad(
                    &self.header.image_id,
                    ext.chunk,
                    ext.addr,
                    ext.page_count,
                    ext.region,
                );
                let n = dek
                    .open(&crypt::chunk_nonce(ext.chunk), &aad, &mut owned)
                    .map_err(|()| {
                        Error::new(
                            ErrorKind::Authentication,
                            loc,
                            "chunk fails authentication: it was altered, moved or swapped",
                        )
                    })?;
                owned.truncate(n);
                &owned
            }
            None if self.is_encrypted() => {
                return Err(Error::plain(
                    ErrorKind::KeyRequired,
                    "the image is encrypted",
                ))
            }
            None => &stored,
        };
        match ext.codec {
            ChunkCodec::None => {
                if plain.len() != out.len() {
                    return Err(malformed(
                        loc,
                        format!(
                            "raw chunk holds {} bytes, its extent {}",
                            plain.len(),
                            out.len()
                        ),
                    ));
                }
                out.copy_from_slice(plain);
            }
            ChunkCodec::Zstd => {
                codec::decompress_into(plain, out).map_err(|m| malformed(loc, m))?;
            }
        }
        if self.check_raw {
            let sum = xxh3_128(out);
            if sum != ext.raw_checksum {
                return Err(Error::new(
                    ErrorKind::Checksum,
                    loc,
                    format!(
                        "raw content checksum mismatch (index says {:032x}, content hashes to {sum:032x})",
                        ext.raw_checksum
                    ),
                ));
            }
        }
        Ok(())
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
    /// region or in a region or extent without data; damage kinds when a
    /// chunk is damaged.
    pub fn read_at(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let ps = self.header.page_size;
        let mut done = 0usize;
        let mut scratch = Vec::new();
        while done < buf.len() {
            let a = addr
                .checked_add(done as u64)
                .ok_or_else(|| Error::plain(ErrorKind::InvalidInput, "address range wraps"))?;
            let ext = match self.extent_at(a)? {
                Some(e) => *e,
                None => {
                    let why = match self.region_at(a)? {
                        Some(r) => format!(
                            "region {} ({:#x}-{:#x}) was recorded without data",
                            r.index,
                            r.info.start,
                            r.info.end()
                        ),
                        None => self.gap_description(a)?,
                    };
                    return Err(Error::new(
                        ErrorKind::NotCaptured,
                        Location::default().with_addr(a),
                        format!("{a:#x} was not captured: {why}"),
                    ));
                }
            };
            let off_in = usize_of(a - ext.addr)?;
            let avail = usize_of(ext.len(ps))? - off_in;
            let take = avail.min(buf.len() - done);
            let dst = &mut buf[done..done + take];
            match ext.kind {
                ExtentKind::Zero => dst.fill(0),
                ExtentKind::Absent => {
                    return Err(Error::new(
                        ErrorKind::NotCaptured,
                        Location::default().with_region(ext.region).with_addr(a),
                        format!(
                            "{a:#x} was not captured: pages {:#x}-{:#x} of region {} are absent",
                            ext.addr,
                            ext.end(ps),
                            ext.region
                        ),
                    ))
                }
                ExtentKind::Data => {
                    scratch.resize(usize_of(ext.len(ps))?, 0);
                    self.decode_data(&ext, &mut scratch)?;
                    dst.copy_from_slice(&scratch[off_in..off_in + take]);
                }
            }
            done += take;
        }
        Ok(())
    }

    fn gap_description(&self, a: u64) -> Result<String> {
        let rs = &self.body()?.regions;
        let i = rs.partition_point(|r| r.info.end() <= a);
        let lo = if i > 0 { rs[i - 1].info.end() } else { 0 };
        let hi = rs.get(i).map_or(u64::MAX, |r| r.info.start);
        Ok(format!(
            "it lies in the gap {lo:#x}-{hi:#x} between regions"
        ))
    }

    /// Every (key fingerprint, nonce) pair this image's encryption used: one
    /// per chunk and one for the index under the data key, and one for the
    /// key slot under the KEK. Fingerprints are XXH3-128 of the key, not the
    /// key. Used to audit that no pair repeats across images.
    ///
    /// # Errors
    /// When the image is not encrypted or `key` does not open it.
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
        out.push((fp, crypt::INDEX_NONCE.to_vec()));
        out.push((
            crypt::kek_fingerprint(&self.key_slot, key)?,
            self.key_slot.wrap_nonce.to_vec(),
        ));
        Ok(out)
    }

    pub(crate) fn dek(&self) -> Option<&DataKey> {
        self.dek.as_ref()
    }

    /// The whole file as bytes, when it is mapped or in memory.
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

/// Maps a file, or reads a tiny one into memory (an empty file cannot be mapped).
pub(crate) fn map_path(path: &Path) -> Result<Source> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))?
        .len();
    usize_of(len)?;
    if len < 65536 {
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        return Ok(Source::Bytes(bytes));
    }
    // SAFETY: the map is read-only and private to this Image; the file is not
    // modified by this process while mapped. Another process truncating it
    // would raise SIGBUS, as documented on Image::open.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
    Ok(Source::Mapped(map))
}

/// Parses and validates an image. In lenient mode, problems that do not stop
/// parsing are returned in the second value.
pub(crate) fn open_source(
    src: Source,
    key: Option<&Key>,
    strict: bool,
) -> Result<(Image, Vec<Error>)> {
    let mut sink = Sink::new(strict);
    let (header, header_page) = parse_header(&src, &mut sink)?;
    if key.is_some() && header.cipher == Cipher::None {
        return Err(Error::plain(
            ErrorKind::NotEncrypted,
            "a key was given, but the image is not encrypted",
        ));
    }
    let (trailer, key_slot) = find_trailer(&src, &header, &mut sink)?;
    let index = src.get(trailer.index_offset, trailer.index_len, "index")?;
    let (chunks, ihead_len, body_range) = parse_index(&src, &header, &trailer, &index, &mut sink)?;
    let encrypted = header.cipher != Cipher::None;
    let mut dek = None;
    let mut body = None;
    let body_bytes = &index[body_range.0..body_range.1];
    if encrypted {
        if let Some(k) = key {
            let d = crypt::unwrap_slot(&key_slot, k, Location::at(trailer.offset + 64))?;
            let mut aad = Vec::with_capacity(header_page.len() + ihead_len);
            aad.extend_from_slice(&header_page);
            aad.extend_from_slice(&index[..ihead_len]);
            let mut plain = body_bytes.to_vec();
            let n = d
                .open(&crypt::INDEX_NONCE, &aad, &mut plain)
                .map_err(|()| {
                    Error::new(
                        ErrorKind::Authentication,
                        Location::at(trailer.index_offset),
                        "index fails authentication: the header, index or chunk map was altered",
                    )
                })?;
            plain.truncate(n);
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
        chunks,
        body,
        dek,
        check_raw: true,
    };
    check_layout(&img, &mut sink)?;
    Ok((img, sink.problems))
}

fn parse_header(src: &Source, sink: &mut Sink) -> Result<(Header, Vec<u8>)> {
    let flen = src.len();
    let head_len = flen.min(HEADER_FIXED_LEN as u64);
    let head = src.get(0, head_len, "header")?;
    let magic_len = head.len().min(8);
    if head[..magic_len] != HEADER_MAGIC[..magic_len] || head.is_empty() {
        return Err(Error::new(
            ErrorKind::NotAnImage,
            Location::at(0),
            "not a memimg image (the magic number is wrong)",
        ));
    }
    if head.len() < HEADER_FIXED_LEN {
        return Err(crate::error::truncated(
            0,
            "header",
            HEADER_FIXED_LEN as u64,
            flen,
        ));
    }
    let f: HeaderFixed = raw::from_bytes(&head)
        .ok_or_else(|| malformed(Location::at(0), "header does not parse"))?;
    let ps = f.page_size;
    if !matches!(ps, 4096 | 16384 | 65536) {
        return Err(malformed(
            Location::at(0x28),
            format!("page size {ps} is not 4096, 16384 or 65536"),
        ));
    }
    if u64::from(ps) > flen {
        return Err(crate::error::truncated(
            0,
            "header page",
            u64::from(ps),
            flen,
        ));
    }
    let page = src.get(0, u64::from(ps), "header page")?.into_owned();
    let psu = ps as usize;
    let sum = xxh3_64(&page[..psu - 8]);
    let stored = u64::from_le_bytes(page[psu - 8..].try_into().unwrap_or([0; 8]));
    let checksum_ok = sum == stored;
    // A version or feature the reader does not know is "unsupported" only when
    // the header is intact; in a damaged header it is damage.
    let refuse = |off: u64, msg: String| {
        if checksum_ok {
            Error::new(ErrorKind::Unsupported, Location::at(off), msg)
        } else {
            malformed(
                Location::at(off),
                format!("{msg} (and the header checksum does not match: the header is damaged)"),
            )
        }
    };
    if f.version_major != VERSION_MAJOR {
        return Err(refuse(
            8,
            format!(
                "format version {}.{} is not supported: this reader reads version {VERSION_MAJOR}.x",
                f.version_major, f.version_minor
            ),
        ));
    }
    let unknown = f.incompat & !crate::Features::KNOWN_INCOMPAT;
    if unknown != 0 {
        let bit = unknown.trailing_zeros();
        return Err(refuse(
            0x10,
            format!(
                "unknown incompatible feature bit {bit} ({:#x}) in a version {}.{} image: this reader ({VERSION_MAJOR}.{VERSION_MINOR}) cannot read it",
                1u64 << bit,
                f.version_major,
                f.version_minor
            ),
        ));
    }
    if !checksum_ok {
        sink.report(Error::new(
            ErrorKind::Checksum,
            Location::at(u64::from(ps) - 8),
            format!("header checksum mismatch (stored {stored:016x}, header hashes to {sum:016x})"),
        ))?;
    }
    let loc = Location::at;
    if f.header_size != ps {
        sink.report(malformed(
            loc(0x0c),
            format!("header size {} differs from page size {ps}", f.header_size),
        ))?;
    }
    let cs = f.chunk_size;
    if cs < ps || !cs.is_multiple_of(ps) || cs > MAX_CHUNK_SIZE {
        return Err(malformed(
            loc(0x2c),
            format!(
                "chunk size {cs} is not a multiple of the page size {ps} up to {MAX_CHUNK_SIZE}"
            ),
        ));
    }
    if f.reserved0 != [0; 3] {
        sink.report(Error::new(
            ErrorKind::NonZeroPadding,
            loc(0x55),
            "reserved header bytes are not zero",
        ))?;
    }
    if f.reserved1 != [0; 36] {
        sink.report(Error::new(
            ErrorKind::NonZeroPadding,
            loc(0x5c),
            "reserved header bytes are not zero",
        ))?;
    }
    let cipher = match f.cipher {
        0 => Cipher::None,
        1 => Cipher::ChaCha20Poly1305,
        c => return Err(malformed(loc(0x54), format!("unknown cipher {c}"))),
    };
    if (cipher != Cipher::None) != (f.incompat & crate::Features::ENCRYPTED != 0) {
        return Err(malformed(
            loc(0x10),
            "the encrypted feature flag and the cipher field disagree",
        ));
    }
    let endian = match f.machine_endian {
        1 => Endian::Little,
        2 => Endian::Big,
        e => {
            return Err(malformed(
                loc(0x4e),
                format!("machine endianness {e} is not 1 or 2"),
            ))
        }
    };
    if !matches!(f.machine_ptr_bytes, 4 | 8) {
        sink.report(malformed(
            loc(0x4f),
            format!("pointer width {} is not 4 or 8", f.machine_ptr_bytes),
        ))?;
    }
    if f.created_nanos >= 1_000_000_000 {
        sink.report(malformed(
            loc(0x48),
            "creation nanoseconds are 10^9 or more",
        ))?;
    }
    let meta_len = f.meta_len as usize;
    if HEADER_FIXED_LEN + meta_len > psu - 8 {
        return Err(malformed(
            loc(0x58),
            format!("header metadata of {meta_len} bytes runs past the header page"),
        ));
    }
    let tlv_end = HEADER_FIXED_LEN + meta_len;
    if let Some(p) = page[tlv_end..psu - 8].iter().position(|&b| b != 0) {
        sink.report(Error::new(
            ErrorKind::NonZeroPadding,
            loc((tlv_end + p) as u64),
            "header padding is not zero",
        ))?;
    }
    let m = match meta::parse_header_tlv(&page[HEADER_FIXED_LEN..tlv_end], HEADER_FIXED_LEN as u64)
    {
        Ok(m) => m,
        Err(e) => {
            sink.report(e)?;
            meta::HeaderMeta::default()
        }
    };
    let header = Header {
        version: (f.version_major, f.version_minor),
        features: Features {
            incompat: f.incompat,
            ro_compat: f.ro_compat,
            compat: f.compat,
        },
        page_size: ps,
        chunk_size: cs,
        image_id: f.image_id,
        created_secs: f.created_secs,
        created_nanos: f.created_nanos,
        machine: MachineFacts {
            arch: f.machine_arch,
            endian,
            ptr_bytes: f.machine_ptr_bytes,
            page_size: f.machine_page_size,
        },
        cipher,
        producer: m.producer,
        validation: m.validation,
        process: m.process,
    };
    Ok((header, page))
}

/// Validates a trailer candidate at `o`; returns it when good.
fn trailer_at(src: &Source, o: u64) -> Option<TrailerRaw> {
    let b = src.get(o, TRAILER_LEN as u64, "trailer").ok()?;
    let t: TrailerRaw = raw::from_bytes(&b)?;
    let sum = xxh3_64(&b[..TRAILER_LEN - 8]);
    (t.magic == TRAILER_MAGIC && t.checksum == sum && t.trailer_offset == o).then_some(t)
}

fn find_trailer(
    src: &Source,
    header: &Header,
    sink: &mut Sink,
) -> Result<(TrailerInfo, KeySlotRaw)> {
    let flen = src.len();
    let ps = u64::from(header.page_size);
    let min = ps + TRAILER_LEN as u64;
    if flen < min {
        return Err(crate::error::truncated(
            0,
            "an image (header and trailer)",
            min,
            flen,
        ));
    }
    let mut found = None;
    for k in 0..=TRAILER_LEN as u64 {
        let Some(o) = flen.checked_sub(TRAILER_LEN as u64 + k) else {
            break;
        };
        if o < ps {
            break;
        }
        if let Some(t) = trailer_at(src, o) {
            if k == TRAILER_LEN as u64 {
                let tail = src.get(o + TRAILER_LEN as u64, k, "trailer")?;
                if tail.iter().any(|&b| b != 0) {
                    break;
                }
            }
            found = Some((t, k));
            break;
        }
        if k == 0 {
            // A complete but damaged last trailer is damage, not an unfinished
            // rotation, unless its bytes are a torn prefix; the spec lets the
            // search go on either way and the k = 256 rule keeps it honest.
        }
    }
    let Some((t, tail)) = found else {
        let o = flen - TRAILER_LEN as u64;
        let b = src.get(o, TRAILER_LEN as u64, "trailer")?;
        let msg = if b[..8] != TRAILER_MAGIC {
            "no valid trailer at the end of the file (the trailer magic is missing: truncated or damaged)".to_string()
        } else {
            let stored = u64::from_le_bytes(b[248..256].try_into().unwrap_or([0; 8]));
            format!(
                "trailer checksum mismatch (stored {stored:016x}, trailer hashes to {:016x})",
                xxh3_64(&b[..248])
            )
        };
        let kind = if b[..8] != TRAILER_MAGIC {
            ErrorKind::Truncated
        } else {
            ErrorKind::Checksum
        };
        return Err(Error::new(kind, Location::at(o), msg));
    };
    let o = t.trailer_offset;
    let loc = Location::at(o);
    if t.image_id != header.image_id {
        sink.report(malformed(loc, "trailer image id differs from the header's"))?;
    }
    if t.reserved0 != 0 || t.reserved1 != [0; 56] {
        sink.report(Error::new(
            ErrorKind::NonZeroPadding,
            loc,
            "reserved trailer bytes are not zero",
        ))?;
    }
    let index_end = t
        .index_offset
        .checked_add(t.index_len)
        .filter(|&e| e <= o && t.index_offset >= ps)
        .ok_or_else(|| {
            malformed(
                loc,
                format!(
                    "index at {:#x} of {} bytes does not lie between the header and the trailer",
                    t.index_offset, t.index_len
                ),
            )
        })?;
    let kdf = if header.cipher == Cipher::None {
        if t.key_slot != KeySlotRaw::default() {
            sink.report(Error::new(
                ErrorKind::NonZeroPadding,
                Location::at(o + 64),
                "key slot of a plain image is not zero",
            ))?;
        }
        None
    } else {
        let k = crypt::slot_kdf(&t.key_slot, Location::at(o + 64))?;
        if t.key_slot.reserved0 != [0; 3] || t.key_slot.reserved1 != [0; 24] {
            sink.report(Error::new(
                ErrorKind::NonZeroPadding,
                Location::at(o + 64),
                "reserved key slot bytes are not zero",
            ))?;
        }
        Some(k)
    };
    // Between the index and the active trailer: superseded trailers or zeros.
    let gap = o - index_end;
    let mut superseded = 0;
    if gap % TRAILER_LEN as u64 != 0 {
        sink.report(malformed(
            Location::at(index_end),
            format!(
                "{gap} bytes between the index and the trailer are not whole superseded trailers"
            ),
        ))?;
    } else {
        let mut p = index_end;
        while p < o {
            let b = src.get(p, TRAILER_LEN as u64, "superseded trailer")?;
            if b.iter().any(|&x| x != 0) {
                match trailer_at(src, p) {
                    Some(old)
                        if old.generation < t.generation
                            && old.index_offset == t.index_offset
                            && old.index_len == t.index_len
                            && old.index_checksum == t.index_checksum =>
                    {
                        superseded += 1;
                    }
                    _ => sink.report(malformed(
                        Location::at(p),
                        "a block between the index and the trailer is neither zero nor a superseded trailer",
                    ))?,
                }
            }
            p += TRAILER_LEN as u64;
        }
    }
    if tail > 0 {
        sink.note(malformed(
            Location::at(o + TRAILER_LEN as u64),
            format!("{tail} bytes after the trailer: an unfinished key rotation (the previous key slot is in force)"),
        ));
    }
    Ok((
        TrailerInfo {
            offset: o,
            generation: t.generation,
            index_offset: t.index_offset,
            index_len: t.index_len,
            index_checksum: t.index_checksum,
            kdf,
            unfinished_tail: tail,
            superseded,
        },
        t.key_slot,
    ))
}

/// Parses the index head and chunk map; returns them and the body's range
/// within `index`.
fn parse_index(
    _src: &Source,
    header: &Header,
    trailer: &TrailerInfo,
    index: &[u8],
    sink: &mut Sink,
) -> Result<(Vec<ChunkLoc>, usize, (usize, usize))> {
    let base = trailer.index_offset;
    let loc = Location::at(base);
    let sum = xxh3_64(index);
    if sum != trailer.index_checksum {
        sink.report(Error::new(
            ErrorKind::Checksum,
            loc,
            format!(
                "index checksum mismatch (trailer says {:016x}, index hashes to {sum:016x})",
                trailer.index_checksum
            ),
        ))?;
    }
    if index.len() < INDEX_HEAD_LEN {
        return Err(malformed(
            loc,
            format!("index of {} bytes is shorter than its head", index.len()),
        ));
    }
    let h: IndexHeadRaw =
        raw::from_bytes(index).ok_or_else(|| malformed(loc, "index head does not parse"))?;
    if h.magic != INDEX_MAGIC {
        return Err(malformed(loc, "index magic is wrong"));
    }
    if h.reserved != [0; 32] {
        sink.report(Error::new(
            ErrorKind::NonZeroPadding,
            Location::at(base + 32),
            "reserved index bytes are not zero",
        ))?;
    }
    let map_len = h
        .chunk_count
        .checked_mul(CHUNK_ENTRY_LEN as u64)
        .ok_or_else(|| malformed(loc, format!("chunk count {} overflows", h.chunk_count)))?;
    let expect = (INDEX_HEAD_LEN as u64)
        .checked_add(map_len)
        .and_then(|v| v.checked_add(h.body_len));
    if expect != Some(index.len() as u64) {
        return Err(malformed(
            loc,
            format!(
                "index head claims {} chunks and a {}-byte body, which do not add up to the index length {}",
                h.chunk_count,
                h.body_len,
                index.len()
            ),
        ));
    }
    let tag = if header.cipher == Cipher::None {
        0
    } else {
        TAG_LEN as u64
    };
    if h.body_plain_len.checked_add(tag) != Some(h.body_len) {
        return Err(malformed(
            loc,
            format!(
                "index body lengths {} and {} disagree",
                h.body_len, h.body_plain_len
            ),
        ));
    }
    let map_end = INDEX_HEAD_LEN + usize_of(map_len)?;
    let mut chunks = Vec::with_capacity(usize_of(h.chunk_count)?);
    for (i, e) in index[INDEX_HEAD_LEN..map_end]
        .chunks_exact(CHUNK_ENTRY_LEN)
        .enumerate()
    {
        let c: ChunkEntryRaw =
            raw::from_bytes(e).ok_or_else(|| malformed(loc, "chunk entry does not parse"))?;
        let eoff = base + (INDEX_HEAD_LEN + i * CHUNK_ENTRY_LEN) as u64;
        if c.reserved != 0 {
            sink.report(Error::new(
                ErrorKind::NonZeroPadding,
                Location::chunk(i as u64, eoff),
                "reserved chunk entry bytes are not zero",
            ))?;
        }
        if c.stored_len == 0 {
            return Err(malformed(
                Location::chunk(i as u64, eoff),
                "chunk has no stored bytes",
            ));
        }
        if c.offset < u64::from(header.page_size)
            || c.offset
                .checked_add(u64::from(c.stored_len))
                .is_none_or(|e| e > trailer.index_offset)
        {
            return Err(malformed(
                Location::chunk(i as u64, eoff),
                format!(
                    "chunk at {:#x} of {} bytes lies outside the data area",
                    c.offset, c.stored_len
                ),
            ));
        }
        chunks.push(ChunkLoc {
            offset: c.offset,
            stored_len: c.stored_len,
            stored_checksum: c.stored_checksum,
        });
    }
    Ok((chunks, map_end, (map_end, index.len())))
}

fn parse_body(
    body: &[u8],
    header: &Header,
    chunks: &[ChunkLoc],
    base: u64,
    encrypted: bool,
) -> Result<Body> {
    let loc = Location::at(base);
    if body.len() < BODY_HEAD_LEN {
        return Err(malformed(loc, "index body is shorter than its head"));
    }
    let h: BodyHeadRaw =
        raw::from_bytes(body).ok_or_else(|| malformed(loc, "index body head does not parse"))?;
    let mut zeroed = body[..BODY_HEAD_LEN].to_vec();
    zeroed[24..32].fill(0);
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&zeroed);
    hasher.update(&body[BODY_HEAD_LEN..]);
    let sum = hasher.digest();
    if sum != h.body_checksum {
        return Err(Error::new(
            ErrorKind::Checksum,
            loc,
            format!(
                "index body checksum mismatch (stored {:016x}, body hashes to {sum:016x})",
                h.body_checksum
            ),
        ));
    }
    if h.reserved != 0 {
        return Err(Error::new(
            ErrorKind::NonZeroPadding,
            loc,
            "reserved index body bytes are not zero",
        ));
    }
    let rc = u64::from(h.region_count);
    let expect = (BODY_HEAD_LEN as u64)
        .checked_add(rc * REGION_LEN as u64)
        .and_then(|v| v.checked_add(h.extent_count.checked_mul(EXTENT_LEN as u64)?))
        .and_then(|v| v.checked_add(u64::from(h.strings_len)))
        .and_then(|v| v.checked_add(u64::from(h.meta_len)));
    if expect != Some(body.len() as u64) {
        return Err(malformed(
            loc,
            format!(
                "index body claims {} regions and {} extents, which do not fit its {} bytes",
                h.region_count,
                h.extent_count,
                body.len()
            ),
        ));
    }
    let ps = header.page_size;
    let psu = u64::from(ps);
    let chunk_pages = header.chunk_size / ps;
    let r_start = BODY_HEAD_LEN;
    let e_start = r_start + REGION_LEN * h.region_count as usize;
    let s_start = e_start + EXTENT_LEN * usize_of(h.extent_count)?;
    let m_start = s_start + h.strings_len as usize;
    let strings = &body[s_start..m_start];
    let notes = meta::parse_body_meta(&body[m_start..], Location::at(base + m_start as u64))?;

    let mut extents = Vec::with_capacity(usize_of(h.extent_count)?);
    let mut next_chunk = 0u64;
    for (i, e) in body[e_start..s_start].chunks_exact(EXTENT_LEN).enumerate() {
        let r: ExtentRaw =
            raw::from_bytes(e).ok_or_else(|| malformed(loc, "extent does not parse"))?;
        let eloc = Location::at(base + (e_start + i * EXTENT_LEN) as u64)
            .with_region(r.region)
            .with_addr(r.addr);
        if r.reserved != [0; 6] {
            return Err(Error::new(
                ErrorKind::NonZeroPadding,
                eloc,
                format!("extent {i}: reserved bytes are not zero"),
            ));
        }
        if r.page_count == 0 {
            return Err(malformed(eloc, format!("extent {i} has no pages")));
        }
        let kind = match r.kind {
            0 => ExtentKind::Data,
            1 => ExtentKind::Zero,
            2 => ExtentKind::Absent,
            k => return Err(malformed(eloc, format!("extent {i}: unknown kind {k}"))),
        };
        let codec = match (kind, r.codec) {
            (ExtentKind::Data, 0) => ChunkCodec::None,
            (ExtentKind::Data, 1) => ChunkCodec::Zstd,
            (ExtentKind::Data, c) => {
                return Err(malformed(eloc, format!("extent {i}: unknown codec {c}")))
            }
            (_, 0) => ChunkCodec::None,
            (_, _) => {
                return Err(malformed(
                    eloc,
                    format!("extent {i}: a codec on pages that are not stored"),
                ))
            }
        };
        if codec == ChunkCodec::Zstd && header.features.incompat & Features::ZSTD == 0 {
            return Err(malformed(
                eloc,
                format!("extent {i} is zstd-compressed but the zstd feature is not set"),
            ));
        }
        if kind == ExtentKind::Data {
            if r.chunk != next_chunk {
                return Err(malformed(
                    eloc,
                    format!(
                        "extent {i} names chunk {} where chunk {next_chunk} comes next",
                        r.chunk
                    ),
                ));
            }
            let Some(c) = chunks.get(usize_of(r.chunk)?) else {
                return Err(malformed(
                    eloc,
                    format!("extent {i} names chunk {}, past the chunk map", r.chunk),
                ));
            };
            if r.page_count > chunk_pages {
                return Err(malformed(
                    eloc.with_region(r.region),
                    format!(
                        "extent {i} holds {} pages, more than a chunk's {chunk_pages}",
                        r.page_count
                    ),
                ));
            }
            let raw_len = u64::from(r.page_count) * psu;
            let tag = if encrypted { TAG_LEN as u64 } else { 0 };
            if codec == ChunkCodec::None && u64::from(c.stored_len) != raw_len + tag {
                return Err(malformed(
                    Location::chunk(r.chunk, c.offset)
                        .with_region(r.region)
                        .with_addr(r.addr),
                    format!(
                        "raw chunk stores {} bytes for {raw_len} bytes of pages",
                        c.stored_len
                    ),
                ));
            }
            next_chunk += 1;
        } else if r.chunk != 0 || r.raw_checksum != 0 {
            return Err(Error::new(
                ErrorKind::NonZeroPadding,
                eloc,
                format!("extent {i}: chunk fields set on pages that are not stored"),
            ));
        }
        extents.push(Extent {
            addr: r.addr,
            page_count: r.page_count,
            region: r.region,
            kind,
            codec,
            chunk: r.chunk,
            raw_checksum: r.raw_checksum,
        });
    }
    if next_chunk != chunks.len() as u64 {
        return Err(malformed(
            loc,
            format!(
                "the extents use {next_chunk} chunks but the chunk map has {}",
                chunks.len()
            ),
        ));
    }

    let mut regions = Vec::with_capacity(h.region_count as usize);
    let mut next_extent = 0u64;
    let mut prev_end = 0u64;
    for (i, b) in body[r_start..e_start].chunks_exact(REGION_LEN).enumerate() {
        let idx = u32::try_from(i).unwrap_or(u32::MAX);
        let r: RegionRaw =
            raw::from_bytes(b).ok_or_else(|| malformed(loc, "region does not parse"))?;
        let rloc = Location::at(base + (r_start + i * REGION_LEN) as u64).with_region(idx);
        if r.reserved != [0; 5] || r.prot & !7 != 0 || r.flags & !1 != 0 {
            return Err(Error::new(
                ErrorKind::NonZeroPadding,
                rloc,
                "region: reserved bits are not zero",
            ));
        }
        let kind = RegionKind::from_code(r.kind)
            .ok_or_else(|| malformed(rloc, format!("region: unknown kind {}", r.kind)))?;
        if !r.start.is_multiple_of(psu) || !r.len.is_multiple_of(psu) || r.len == 0 {
            return Err(malformed(
                rloc,
                format!("region {:#x}+{:#x} is not whole pages", r.start, r.len),
            ));
        }
        let end = r
            .start
            .checked_add(r.len)
            .ok_or_else(|| malformed(rloc, "region wraps the address space"))?;
        if i > 0 && r.start < prev_end {
            return Err(malformed(
                rloc,
                format!(
                    "region at {:#x} overlaps or precedes the region before it",
                    r.start
                ),
            ));
        }
        prev_end = end;
        let name_end = u64::from(r.name_off) + u64::from(r.name_len);
        if name_end > strings.len() as u64 {
            return Err(malformed(rloc, "region name runs past the string table"));
        }
        if u64::from(r.first_extent) != next_extent && r.extent_count > 0 {
            return Err(malformed(
                rloc,
                format!(
                    "region's extents start at {} where {next_extent} comes next",
                    r.first_extent
                ),
            ));
        }
        let ecount = u64::from(r.extent_count);
        if next_extent + ecount > extents.len() as u64 {
            return Err(malformed(
                rloc,
                "region's extents run past the extent table",
            ));
        }
        // The extents must cover the region exactly.
        let mut at = r.start;
        // Both bounds are ≤ extents.len(), checked just above.
        let (lo, hi) = (usize_of(next_extent)?, usize_of(next_extent + ecount)?);
        for (j, e) in extents[lo..hi].iter().enumerate() {
            if e.region != idx {
                return Err(malformed(
                    rloc,
                    format!(
                        "extent {} belongs to region {} but lies in region {idx}",
                        lo + j,
                        e.region
                    ),
                ));
            }
            if e.addr != at {
                return Err(malformed(
                    rloc.with_addr(e.addr),
                    format!("extent at {:#x} where {at:#x} comes next", e.addr),
                ));
            }
            at = e.end(ps);
            if at > end || at < e.addr {
                return Err(malformed(
                    rloc.with_addr(e.addr),
                    "extent runs past its region",
                ));
            }
        }
        if ecount > 0 && at != end {
            return Err(malformed(
                rloc,
                format!("extents cover the region only up to {at:#x}, not {end:#x}"),
            ));
        }
        let first = if ecount > 0 {
            r.first_extent
        } else {
            u32::try_from(next_extent).unwrap_or(u32::MAX)
        };
        next_extent += ecount;
        regions.push(Region {
            index: idx,
            info: RegionInfo {
                start: r.start,
                len: r.len,
                prot: Prot(r.prot),
                shared: r.flags & 1 != 0,
                kind,
                name: strings[r.name_off as usize..usize_of(name_end)?].to_vec(),
                file_offset: r.file_offset,
                dev: r.dev,
                inode: r.inode,
            },
            first_extent: first,
            extent_count: r.extent_count,
        });
    }
    if next_extent != extents.len() as u64 {
        return Err(malformed(
            loc,
            format!(
                "{} extents belong to no region",
                extents.len() as u64 - next_extent
            ),
        ));
    }
    Ok(Body {
        regions,
        extents,
        notes,
    })
}

/// Checks that chunk offsets follow the layout rule (spec.md, *Chunk data*).
fn check_layout(img: &Image, sink: &mut Sink) -> Result<()> {
    let ps = u64::from(img.header.page_size);
    let encrypted = img.is_encrypted();
    // Which chunks are raw: known from the body; for a locked image every
    // chunk is encrypted and so packed.
    let mut raw_flags = vec![false; img.chunks.len()];
    if let (Some(b), false) = (&img.body, encrypted) {
        for e in b.extents.iter().filter(|e| e.kind == ExtentKind::Data) {
            if let Some(f) = usize::try_from(e.chunk)
                .ok()
                .and_then(|i| raw_flags.get_mut(i))
            {
                *f = e.codec == ChunkCodec::None;
            }
        }
    }
    let mut end = ps;
    for (i, c) in img.chunks.iter().enumerate() {
        let expect = if raw_flags[i] {
            end.div_ceil(ps) * ps
        } else {
            end
        };
        if c.offset != expect {
            sink.report(malformed(
                Location::chunk(i as u64, c.offset),
                format!(
                    "chunk starts at {:#x}; the layout puts it at {expect:#x}",
                    c.offset
                ),
            ))?;
        }
        end = c.offset + u64::from(c.stored_len);
    }
    if end != img.trailer.index_offset {
        sink.report(malformed(
            Location::at(end),
            format!(
                "the index starts at {:#x}, not right after the last chunk ({end:#x})",
                img.trailer.index_offset
            ),
        ))?;
    }
    Ok(())
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
            index_checksum: xxh3_64(bytes),
            kdf: None,
            unfinished_tail: 0,
            superseded: 0,
        };
        if let Ok((chunks, _, (s, e))) =
            parse_index(&src, &header, &trailer, bytes, &mut Sink::new(false))
        {
            let _ = parse_body(&bytes[s..e], &header, &chunks, ps, false);
        }
    }
}
