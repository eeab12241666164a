//! Shared helpers for the end-to-end tests, golden images, fuzz targets and benchmarks:
//! deterministic content generators and small image builders.

// Test support: every size here is small and made by this crate, so narrowing
// casts cannot truncate; the image tuples are simplest spelled out.
#![allow(clippy::cast_possible_truncation, clippy::type_complexity)]

pub mod fuzz;

/// Records that the test `test` cannot run here, for the reason `why`, so a
/// skip shows as a skip and never as a pass (the skip protocol shared by the
/// test crates).
///
/// When the environment variable `MEMIMG_REQUIRE_ALL` is set and not empty
/// (on CI, where every tool is installed), it panics with `would skip: WHY`
/// instead. Otherwise it appends `TEST<TAB>WHY` to the file named by
/// `MEMIMG_SKIP_LOG`, when set (scripts/test.sh counts those lines as
/// skipped), and prints `skipped: WHY` on stderr; the caller then returns.
///
/// # Panics
/// Under `MEMIMG_REQUIRE_ALL`, always.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("MEMIMG_REQUIRE_ALL").is_some_and(|v| !v.is_empty()) {
        panic!("would skip: {why}");
    }
    if let Some(log) = std::env::var_os("MEMIMG_SKIP_LOG") {
        use std::io::Write;
        let line = format!("{test}\t{why}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("cannot log the skip to {}: {e}", log.to_string_lossy());
        }
    }
    eprintln!("skipped: {why}");
}

use memimg::{Codec, Key, RegionInfo, RegionKind, Writer, WriterOptions};

/// A fast deterministic generator (xorshift64*), so content is reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced by a constant).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// What a page holds in the generated content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// All zero.
    Zero,
    /// Random bytes (incompressible).
    Random,
    /// Heap-like records: headers, small ints, pointers, short strings.
    Heap,
    /// Text.
    Text,
}

/// Fills one page of kind `kind`, seeded by `seed`.
pub fn fill_page(page: &mut [u8], kind: PageKind, seed: u64) {
    let mut rng = Rng::new(seed);
    match kind {
        PageKind::Zero => page.fill(0),
        PageKind::Random => rng.fill(page),
        PageKind::Heap => fill_heap(page, &mut rng),
        PageKind::Text => {
            const WORDS: &[&str] = &[
                "memory ",
                "image ",
                "region ",
                "chunk ",
                "page ",
                "heap ",
                "stack ",
                "restore ",
                "the ",
                "of ",
                "and ",
                "a ",
                "checkpoint ",
                "process ",
                "thread ",
                "\n",
            ];
            let mut i = 0;
            while i < page.len() {
                let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].as_bytes();
                let n = w.len().min(page.len() - i);
                page[i..i + n].copy_from_slice(&w[..n]);
                i += n;
            }
        }
    }
}

/// Heap-like objects of 16 to 64 bytes: a header word with a class id and
/// size, a few small ints, a pointer into a nearby heap, a short string.
fn fill_heap(page: &mut [u8], rng: &mut Rng) {
    let base = 0x7f00_0000_0000u64 + (rng.next_u64() & 0xff_ffff) * 64;
    let mut i = 0;
    while i + 8 <= page.len() {
        let r = rng.next_u64();
        let words = 2 + (r % 7) as usize;
        let mut obj = [0u8; 72];
        obj[..8].copy_from_slice(&(((r >> 8) & 0x3f) << 32 | (words as u64 * 8)).to_le_bytes());
        obj[8..16].copy_from_slice(&(base + ((r >> 16) & 0xfff) * 16).to_le_bytes());
        obj[16..24].copy_from_slice(&((r >> 28) & 0xff).to_le_bytes());
        let name = b"java/lang/String\0key-\0value\0";
        let s = (r >> 40) as usize % 12;
        obj[24..40].copy_from_slice(&name[s..s + 16]);
        let n = (words * 8).min(page.len() - i);
        page[i..i + n].copy_from_slice(&obj[..n]);
        i += n;
    }
}

/// `len` bytes of the benchmark mix: ¼ random, ¼ zero pages, ½ heap-like
/// records, in runs of 1 to 16 pages so chunks see realistic mixtures.
pub fn mixed_content(len: usize, page_size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut rng = Rng::new(seed);
    let mut p = 0;
    let pages = len / page_size;
    while p < pages {
        let run = (1 + rng.next_u64() % 16) as usize;
        let kind = match rng.next_u64() % 4 {
            0 => PageKind::Random,
            1 => PageKind::Zero,
            _ => PageKind::Heap,
        };
        for q in p..(p + run).min(pages) {
            fill_page(
                &mut v[q * page_size..(q + 1) * page_size],
                kind,
                seed ^ q as u64,
            );
        }
        p += run;
    }
    v
}

/// The content of the golden images: page `n` of a region is a function of its
/// address only, so the golden test can check every byte without storing it.
pub fn golden_page(addr: u64, page: &mut [u8]) {
    let kind = match (addr / page.len() as u64) % 5 {
        0 => PageKind::Zero,
        1 => PageKind::Random,
        2 => PageKind::Heap,
        3 => PageKind::Text,
        _ => PageKind::Heap,
    };
    fill_page(page, kind, addr);
}

/// The regions of the golden images: (start, pages, kind, name, with data).
pub const GOLDEN_REGIONS: &Layout = &[
    (0x0040_0000, 6, RegionKind::Code, "/usr/bin/golden", true),
    (0x0060_0000, 23, RegionKind::Heap, "[heap]", true),
    (0x7ff0_0000_0000, 1, RegionKind::Other, "[vvar]", false),
    (0x7ffd_0000_0000, 9, RegionKind::Stack, "[stack]", true),
];

/// The raw key of the golden encrypted image (also checked in as
/// `tests/golden/v1-encrypted.key`).
pub const GOLDEN_KEY: [u8; 32] = *b"memimg golden v1 test key 32 B!!";

/// A layout of regions: (start, pages, kind, name, with data).
pub type Layout = [(u64, usize, RegionKind, &'static str, bool)];

/// Writes an image of `layout` with `opts`, 4096-byte pages and chunks of
/// `chunk_pages` pages; page content comes from [`golden_page`].
///
/// # Errors
/// As the writer.
pub fn write_layout(
    layout: &Layout,
    chunk_pages: u32,
    opts: WriterOptions,
) -> memimg::Result<Vec<u8>> {
    let ps = 4096usize;
    let mut w = Writer::new(
        Vec::new(),
        opts.page_size(4096).chunk_size(chunk_pages * 4096),
    )?;
    for &(start, pages, kind, name, data) in layout {
        let info = RegionInfo::new(start, (pages * ps) as u64)
            .kind(kind)
            .name(name);
        if !data {
            w.add_empty_region(info)?;
            continue;
        }
        let mut buf = vec![0u8; pages * ps];
        for (i, p) in buf.chunks_mut(ps).enumerate() {
            golden_page(start + (i * ps) as u64, p);
        }
        w.add_region(info, &buf)?;
    }
    Ok(w.finish()?.0)
}

/// Writes an image of the golden layout with `opts` (4-page chunks).
///
/// # Errors
/// As the writer.
pub fn write_golden(opts: WriterOptions) -> memimg::Result<Vec<u8>> {
    write_layout(GOLDEN_REGIONS, 4, opts)
}

/// The layout of the small sweep images: a few pages each, so that flipping
/// every bit and truncating at every length stays quick.
pub const SMALL_REGIONS: &Layout = &[
    (0x0040_0000, 2, RegionKind::Code, "/usr/bin/small", true),
    (0x0060_0000, 4, RegionKind::Heap, "[heap]", true),
    (0x7ff0_0000_0000, 1, RegionKind::Other, "[vvar]", false),
    (0x7ffd_0000_0000, 2, RegionKind::Stack, "[stack]", true),
];

/// Writes an image of the small layout (2-page chunks).
///
/// # Errors
/// As the writer.
pub fn write_small(opts: WriterOptions) -> memimg::Result<Vec<u8>> {
    write_layout(SMALL_REGIONS, 2, opts)
}

/// Small images of each kind for damage sweeps: (name, bytes, key).
///
/// # Errors
/// As the writer.
pub fn small_images() -> memimg::Result<Vec<(&'static str, Vec<u8>, Option<Key>)>> {
    let key = Key::raw(GOLDEN_KEY);
    let base = || {
        WriterOptions::new()
            .workers(0)
            .validation("sweep", b"v1".to_vec())
    };
    Ok(vec![
        ("plain", write_small(base().codec(Codec::None))?, None),
        (
            "compressed",
            write_small(base().codec(Codec::Zstd(3)))?,
            None,
        ),
        (
            "encrypted",
            write_small(base().codec(Codec::None).key(key.clone()))?,
            Some(key.clone()),
        ),
        (
            "compressed+encrypted",
            write_small(base().codec(Codec::Zstd(3)).key(key.clone()))?,
            Some(key),
        ),
    ])
}

/// Byte ranges of an image's parts, for sweeps: (header, chunk data, index, trailer).
pub fn parts_of(
    bytes: &[u8],
) -> (
    std::ops::Range<usize>,
    std::ops::Range<usize>,
    std::ops::Range<usize>,
    std::ops::Range<usize>,
) {
    let ps = u32::from_le_bytes(bytes[0x28..0x2c].try_into().unwrap_or([0, 16, 0, 0])) as usize;
    let t = bytes.len() - memimg::raw::TRAILER_LEN;
    let tr: memimg::raw::TrailerRaw =
        memimg::raw::from_bytes(&bytes[t..]).unwrap_or_else(|| panic!("no trailer"));
    let io = tr.index_offset as usize;
    (0..ps, ps..io, io..t, t..bytes.len())
}

/// An unencrypted image taken apart into its raw structures, to forge hostile
/// images that are consistent everywhere except where a test says.
#[derive(Debug, Clone)]
pub struct Forge {
    /// The header page.
    pub header: Vec<u8>,
    /// Each chunk's stored bytes.
    pub chunks: Vec<Vec<u8>>,
    /// The body head (counts are recomputed by `assemble` unless `keep_counts`).
    pub body_head: memimg::raw::BodyHeadRaw,
    /// Region records.
    pub regions: Vec<memimg::raw::RegionRaw>,
    /// Extent records.
    pub extents: Vec<memimg::raw::ExtentRaw>,
    /// The string table.
    pub strings: Vec<u8>,
    /// The body meta.
    pub meta: Vec<u8>,
    /// Keep `body_head` counts as set, to forge lying counts.
    pub keep_counts: bool,
}

impl Forge {
    /// Takes a plain image apart.
    ///
    /// # Panics
    /// When the image is encrypted or damaged (a test helper).
    pub fn disassemble(bytes: &[u8]) -> Forge {
        use memimg::raw::*;
        let (h, _, idx, _) = parts_of(bytes);
        let index = &bytes[idx.clone()];
        let head: IndexHeadRaw = from_bytes(index).unwrap_or_else(|| panic!("index head"));
        let n = head.chunk_count as usize;
        let mut chunks = Vec::new();
        for i in 0..n {
            let e: ChunkEntryRaw = from_bytes(&index[INDEX_HEAD_LEN + i * CHUNK_ENTRY_LEN..])
                .unwrap_or_else(|| panic!("entry"));
            chunks.push(
                bytes[e.offset as usize..(e.offset + u64::from(e.stored_len)) as usize].to_vec(),
            );
        }
        let body = &index[INDEX_HEAD_LEN + n * CHUNK_ENTRY_LEN..];
        let bh: BodyHeadRaw = from_bytes(body).unwrap_or_else(|| panic!("body head"));
        let mut at = BODY_HEAD_LEN;
        let regions = (0..bh.region_count as usize)
            .map(|i| from_bytes(&body[at + i * REGION_LEN..]).unwrap_or_else(|| panic!("region")))
            .collect();
        at += REGION_LEN * bh.region_count as usize;
        let extents = (0..bh.extent_count as usize)
            .map(|i| from_bytes(&body[at + i * EXTENT_LEN..]).unwrap_or_else(|| panic!("extent")))
            .collect();
        at += EXTENT_LEN * bh.extent_count as usize;
        let strings = body[at..at + bh.strings_len as usize].to_vec();
        at += bh.strings_len as usize;
        let meta = body[at..].to_vec();
        Forge {
            header: bytes[h].to_vec(),
            chunks,
            body_head: bh,
            regions,
            extents,
            strings,
            meta,
            keep_counts: false,
        }
    }

    /// Puts the image back together with every checksum and the layout right.
    pub fn assemble(&self) -> Vec<u8> {
        use memimg::raw::*;
        use xxhash_rust::xxh3::xxh3_64;
        let ps = self.header.len() as u64;
        let mut out = self.header.clone();
        let mut map = Vec::new();
        for (i, c) in self.chunks.iter().enumerate() {
            let raw = self
                .extents
                .iter()
                .any(|e| e.kind == 0 && e.chunk == i as u64 && e.codec == 0);
            if raw {
                let pad = (ps - out.len() as u64 % ps) % ps;
                out.resize(out.len() + pad as usize, 0);
            }
            let off = out.len() as u64;
            out.extend_from_slice(c);
            map.extend_from_slice(&to_bytes(&ChunkEntryRaw {
                offset: off,
                stored_len: c.len() as u32,
                reserved: 0,
                stored_checksum: xxh3_64(c),
            }));
        }
        let mut bh = self.body_head.clone();
        if !self.keep_counts {
            bh.region_count = self.regions.len() as u32;
            bh.extent_count = self.extents.len() as u64;
            bh.strings_len = self.strings.len() as u32;
            bh.meta_len = self.meta.len() as u32;
        }
        bh.body_checksum = 0;
        let mut body = to_bytes(&bh);
        for r in &self.regions {
            body.extend_from_slice(&to_bytes(r));
        }
        for e in &self.extents {
            body.extend_from_slice(&to_bytes(e));
        }
        body.extend_from_slice(&self.strings);
        body.extend_from_slice(&self.meta);
        let sum = xxh3_64(&body);
        body[24..32].copy_from_slice(&sum.to_le_bytes());
        let head = to_bytes(&IndexHeadRaw {
            magic: INDEX_MAGIC,
            chunk_count: self.chunks.len() as u64,
            body_len: body.len() as u64,
            body_plain_len: body.len() as u64,
            reserved: [0; 32],
        });
        let index_offset = out.len() as u64;
        let mut index = head;
        index.extend_from_slice(&map);
        index.extend_from_slice(&body);
        out.extend_from_slice(&index);
        let image_id: [u8; 16] = self.header[0x30..0x40].try_into().unwrap_or([0; 16]);
        let mut t = to_bytes(&TrailerRaw {
            magic: TRAILER_MAGIC,
            trailer_offset: out.len() as u64,
            index_offset,
            index_len: index.len() as u64,
            index_checksum: xxh3_64(&index),
            generation: 0,
            reserved0: 0,
            image_id,
            key_slot: KeySlotRaw::default(),
            reserved1: [0; 56],
            checksum: 0,
        });
        let s = xxh3_64(&t[..248]);
        t[248..].copy_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&t);
        out
    }
}

/// Fixes the header checksum after a header edit.
pub fn fix_header_checksum(bytes: &mut [u8]) {
    let mut ps = u32::from_le_bytes(bytes[0x28..0x2c].try_into().unwrap_or([0, 16, 0, 0])) as usize;
    if ps > bytes.len() || ps < 4096 {
        ps = 4096; // an edited page size beyond the file: fix the checksum where it was
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..ps - 8]);
    bytes[ps - 8..ps].copy_from_slice(&sum.to_le_bytes());
}
