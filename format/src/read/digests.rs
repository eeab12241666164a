//! Page digests (spec.md, *Page digests*): the `xxh3_64` of every page of
//! every data extent, in chunk order, in one body record of an image that
//! sets `PAGE_DIGESTS`.
//!
//! They let a writer of a child tell which pages changed since its parent
//! from the parent's index alone (a chunk's raw checksum settles only the
//! whole chunk), and `verify` checks them against the pages it decodes.

use xxhash_rust::xxh3::xxh3_64;

use super::body::single_record;
use super::Image;
use crate::error::{malformed, Error, ErrorKind, Location, Result};
use crate::model::{Extent, ExtentKind, Features, Header};

use crate::meta::B_PAGE_DIGESTS;

/// The page-digests record of an image that sets `PAGE_DIGESTS`, checked:
/// exactly one digest for every page of every data extent.
#[derive(Debug, Clone)]
pub(crate) struct PageDigests {
    values: Vec<u64>,
    /// Chunk `n`'s digests are `values[first[n]..first[n + 1]]`.
    first: Vec<usize>,
}

impl PageDigests {
    /// The digests of chunk `n`'s pages, in address order.
    fn of_chunk(&self, n: u64) -> Option<&[u64]> {
        let n = usize::try_from(n).ok()?;
        let (a, b) = (*self.first.get(n)?, *self.first.get(n.checked_add(1)?)?);
        self.values.get(a..b)
    }
}

/// Finds and checks the page-digests record among the body's meta records
/// (`meta`, at file offset `base`), given the body's extents. Without
/// `PAGE_DIGESTS`, records of type 3 are records of unknown type, ignored
/// as in 1.0, and this returns `None`.
///
/// # Errors
/// `Malformed`, at the record: none or two, or a length other than eight
/// bytes for each page of the data extents.
pub(super) fn parse_page_digests(
    meta: &[u8],
    header: &Header,
    extents: &[Extent],
    base: u64,
) -> Result<Option<PageDigests>> {
    if header.features.compat & Features::PAGE_DIGESTS == 0 {
        return Ok(None);
    }
    let Some((vbase, value)) = single_record(meta, base, B_PAGE_DIGESTS, "page-digests")? else {
        return Err(malformed(
            Location::at(base),
            "the image sets PAGE_DIGESTS but its body holds no page-digests record",
        ));
    };
    // Data extents are chunks 0, 1, 2 … in extent order (checked by the
    // body's parser), so their page counts in extent order are in chunk
    // order. Bounded by the extent table, which the index holds.
    let mut first = vec![0usize];
    let mut pages = 0u64;
    for e in extents.iter().filter(|e| e.kind == ExtentKind::Data) {
        pages += u64::from(e.page_count);
        first.push(usize::try_from(pages).unwrap_or(usize::MAX));
    }
    if Some(value.len() as u64) != pages.checked_mul(8) {
        return Err(malformed(
            Location::at(vbase - 8),
            format!(
                "page-digests record of {} bytes, where the data extents hold {pages} pages (8 bytes each)",
                value.len()
            ),
        ));
    }
    let values = value
        .chunks_exact(8)
        .map(|b| {
            let mut v = [0u8; 8];
            v.copy_from_slice(b);
            u64::from_le_bytes(v)
        })
        .collect();
    Ok(Some(PageDigests { values, first }))
}

/// The digest of each page of `pages` (whole pages of `page_size` bytes).
pub fn page_digests_of(pages: &[u8], page_size: u32) -> impl Iterator<Item = u64> + '_ {
    pages.chunks(page_size.max(1) as usize).map(xxh3_64)
}

/// The error of pages that are not whole pages of `ext`.
fn not_whole(len: u64, addr: u64, ext: &Extent) -> Error {
    Error::plain(
        ErrorKind::InvalidInput,
        format!(
            "{len} bytes at {addr:#x} are not whole pages of the extent at {:#x}",
            ext.addr
        ),
    )
}

impl Image {
    /// True when the image sets `PAGE_DIGESTS`: its index holds a digest
    /// of every stored page. Known without a key.
    pub fn has_page_digests(&self) -> bool {
        self.header.features.compat & Features::PAGE_DIGESTS != 0
    }

    /// The digests (`xxh3_64`) of chunk `chunk`'s pages, in address order;
    /// `None` when the image has no page digests or no such chunk.
    ///
    /// # Errors
    /// `KeyRequired` when the image is encrypted and was opened without a
    /// key (the digests are in the encrypted body).
    pub fn page_digests(&self, chunk: u64) -> Result<Option<&[u64]>> {
        if !self.has_page_digests() {
            return Ok(None);
        }
        Ok(self
            .body()?
            .page_digests
            .as_ref()
            .and_then(|d| d.of_chunk(chunk)))
    }

    /// For each page of `pages` (whole pages at `addr`, inside data extent
    /// `ext` of this image), whether it hashes to the digest the index
    /// holds for the page at its address: the pages that are, by the
    /// digests, the same as this image's, without decoding anything. `None`
    /// when the image has no page digests or `ext` is not a data extent.
    ///
    /// # Errors
    /// `InvalidInput` when the pages are not whole or not inside `ext`;
    /// `KeyRequired` when the digests are in a locked body.
    pub fn same_pages(&self, ext: &Extent, addr: u64, pages: &[u8]) -> Result<Option<Vec<bool>>> {
        let ps = self.header.page_size;
        let Some(want) = self.stored_digests(ext, addr, pages.len() / ps as usize)? else {
            return Ok(None);
        };
        if !(pages.len() as u64).is_multiple_of(u64::from(ps)) {
            return Err(not_whole(pages.len() as u64, addr, ext));
        }
        Ok(Some(
            want.iter()
                .zip(page_digests_of(pages, ps))
                .map(|(w, g)| *w == g)
                .collect(),
        ))
    }

    /// [`Image::same_pages`] for pages whose digests (`xxh3_64` of each,
    /// as [`page_digests_of`] computes them) the caller has already: one
    /// per page at `addr`. A capture hashes each page as it reads it, while
    /// the page is in the cache.
    ///
    /// # Errors
    /// As [`Image::same_pages`].
    pub fn same_digests(
        &self,
        ext: &Extent,
        addr: u64,
        digests: &[u64],
    ) -> Result<Option<Vec<bool>>> {
        Ok(self
            .stored_digests(ext, addr, digests.len())?
            .map(|want| want.iter().zip(digests).map(|(w, g)| w == g).collect()))
    }

    /// The index's digests of the `n` pages at `addr` in data extent `ext`;
    /// `None` when the image has no page digests or `ext` is not a data
    /// extent.
    fn stored_digests(&self, ext: &Extent, addr: u64, n: usize) -> Result<Option<&[u64]>> {
        if ext.kind != ExtentKind::Data {
            return Ok(None);
        }
        let Some(digests) = self.page_digests(ext.chunk)? else {
            return Ok(None);
        };
        let psu = u64::from(self.header.page_size);
        addr.checked_sub(ext.addr)
            .filter(|o| o.is_multiple_of(psu))
            .and_then(|o| usize::try_from(o / psu).ok())
            .and_then(|first| digests.get(first..first.checked_add(n)?))
            .map(Some)
            .ok_or_else(|| not_whole(n as u64 * psu, addr, ext))
    }

    /// The first page of `ext`'s decoded `pages` whose digest is not the
    /// one the index holds: its address and the two digests (stored, found).
    /// `None` when every page matches, or the image has no digests.
    pub(crate) fn digest_mismatch(&self, ext: &Extent, pages: &[u8]) -> Option<(u64, u64, u64)> {
        if ext.kind != ExtentKind::Data {
            return None;
        }
        let want = self.page_digests(ext.chunk).ok().flatten()?;
        let ps = self.header.page_size;
        want.iter()
            .zip(page_digests_of(pages, ps))
            .enumerate()
            .find(|(_, (w, g))| w != &g)
            .map(|(i, (w, g))| (ext.addr + i as u64 * u64::from(ps), *w, g))
    }
}
