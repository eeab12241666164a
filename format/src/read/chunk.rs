//! Chunk data (spec.md, *Chunk data*): a chunk's stored bytes, checked against
//! their stored checksum, then decrypted and decompressed into its pages.

use std::borrow::Cow;

use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use super::{check_padding, Image};
use crate::codec;
use crate::crypt;
use crate::error::{malformed, Error, ErrorKind, Location, Result};
use crate::model::*;
use crate::source::usize_of;

impl Image {
    /// The stored bytes of chunk `n`, checked against their stored checksum,
    /// and the padding in front of it checked to be zero.
    ///
    /// The padding is checked here, where every command that reads a chunk
    /// passes, so that a raw chunk with non-zero padding before it is damage
    /// to `cat`, `export-core` and a transcode as it is to verify; otherwise a
    /// recompress would copy such an image into one that verifies.
    ///
    /// # Errors
    /// `Checksum` when the bytes do not match, `NonZeroPadding` when the
    /// padding is not zero, `Truncated` when they lie past the end of the
    /// file.
    pub fn read_stored(&self, n: u64) -> Result<Cow<'_, [u8]>> {
        let c = self.chunk_loc(n)?;
        let (pad_at, pad_len) = self.padding_before(usize_of(n)?);
        if pad_len > 0 {
            let pad = self.src.get(pad_at, pad_len, "padding")?;
            check_padding(n, pad_at, &pad)?;
        }
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

    pub(super) fn chunk_loc(&self, n: u64) -> Result<ChunkLoc> {
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
    /// `NotCaptured` for an absent extent; `ParentRequired` for an in-parent
    /// one (see [`crate::Chain`]); damage kinds when the chunk's checksums or
    /// tag do not match.
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
            ExtentKind::InParent => Err(self.parent_required(ext.addr)),
            ExtentKind::Data => self.decode_data(ext, out),
        }
    }

    pub(super) fn decode_data(&self, ext: &Extent, out: &mut [u8]) -> Result<()> {
        let c = self.chunk_loc(ext.chunk)?;
        let loc = Location::chunk(ext.chunk, c.offset)
            .with_region(ext.region)
            .with_addr(ext.addr);
        if self.dek.is_none()
            && !self.is_encrypted()
            && ext.codec == ChunkCodec::None
            && u64::from(c.stored_len) == out.len() as u64
        {
            // A raw chunk of a plain image is its pages: read it straight
            // into `out`, with the same checks as `read_stored` then
            // `decode_stored` (padding, stored checksum, raw checksum), but
            // no buffer allocated, cleared and copied from per chunk.
            return self.decode_raw_into(ext, c, loc, out);
        }
        let stored = self.read_stored(ext.chunk).map_err(|e| e.within(loc))?;
        self.decode_stored(ext, stored, out)
    }

    /// [`Image::decode_data`] of a raw chunk of a plain image, `out` being
    /// exactly its stored length.
    fn decode_raw_into(
        &self,
        ext: &Extent,
        c: ChunkLoc,
        loc: Location,
        out: &mut [u8],
    ) -> Result<()> {
        let within = |e: Error| e.within(loc);
        let (pad_at, pad_len) = self.padding_before(usize_of(ext.chunk)?);
        if pad_len > 0 {
            let pad = self.src.get(pad_at, pad_len, "padding").map_err(within)?;
            check_padding(ext.chunk, pad_at, &pad).map_err(within)?;
        }
        self.src
            .read_exact_into(c.offset, "chunk", out)
            .map_err(within)?;
        let sum = xxh3_64(out);
        if sum != c.stored_checksum {
            return Err(Error::new(
                ErrorKind::Checksum,
                Location::chunk(ext.chunk, c.offset),
                format!(
                    "stored checksum mismatch (index says {:016x}, bytes hash to {sum:016x})",
                    c.stored_checksum
                ),
            )
            .within(loc));
        }
        self.check_raw_checksum(ext, loc, out)
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
        // The decrypted bytes are plaintext process memory: they live in a
        // buffer that is zeroed when dropped.
        let owned;
        let plain: &[u8] = match &self.dek {
            Some(dek) => {
                let aad = crypt::chunk_aad(
                    &self.header.image_id,
                    ext.chunk,
                    ext.addr,
                    ext.page_count,
                    ext.region,
                );
                owned = dek
                    .open_owned(&crypt::chunk_nonce(ext.chunk), &aad, stored)
                    .map_err(|()| {
                        Error::new(
                            ErrorKind::Authentication,
                            loc,
                            "chunk fails authentication: it was altered, moved or swapped",
                        )
                    })?;
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
        self.check_raw_checksum(ext, loc, out)
    }

    /// Checks decoded content against its extent's raw checksum, when this
    /// reader checks raw checksums.
    fn check_raw_checksum(&self, ext: &Extent, loc: Location, out: &[u8]) -> Result<()> {
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
}
