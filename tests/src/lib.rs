//! Shared helpers for the end-to-end tests, golden images, fuzz targets and benchmarks:
//! deterministic content generators and small image builders.

// Test support: every size here is small and made by this crate, so narrowing
// casts cannot truncate; the image tuples are simplest spelled out.
#![allow(clippy::cast_possible_truncation, clippy::type_complexity)]

pub mod alloc;
pub mod forge;
pub mod fuzz;

pub use forge::{Assembly, Forge, ForgeKey, Page, SlotBinding};

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

use memimg::{Codec, Image, Key, RegionInfo, RegionKind, Writer, WriterOptions};

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

/// Small format 1.1 images for damage sweeps: (name, bytes, key), each a
/// child of a small image (its in-parent extents and parent record and hint
/// are what the sweep covers; the child verifies alone): plain, and
/// compressed and encrypted (`SLOT_BOUND`).
///
/// # Errors
/// As the writer.
pub fn small_1_1_images() -> memimg::Result<Vec<(&'static str, Vec<u8>, Option<Key>)>> {
    let key = Key::raw(GOLDEN_KEY);
    let mut out = Vec::new();
    for (name, codec, key) in [
        ("child", Codec::None, None),
        ("child, compressed+encrypted", Codec::Zstd(3), Some(key)),
    ] {
        let base = || {
            WriterOptions::new()
                .workers(0)
                .codec(codec)
                .key_opt(key.clone())
                .page_size(4096)
                .chunk_size(2 * 4096)
        };
        let parent = memimg::Chain::single(Image::from_bytes(
            write_small(base().validation("sweep", b"v1".to_vec()))?,
            key.as_ref(),
        )?);
        let mut w = Writer::new(
            Vec::new(),
            base().parent_of(parent.image())?.parent_hint("parent.img"),
        )?;
        for &(start, pages, kind, rname, data) in SMALL_REGIONS {
            let info = RegionInfo::new(start, (pages * 4096) as u64)
                .kind(kind)
                .name(rname);
            if !data {
                w.add_empty_region(info)?;
                continue;
            }
            let mut buf = vec![0u8; pages * 4096];
            for (i, p) in buf.chunks_mut(4096).enumerate() {
                golden_page(start + (i * 4096) as u64, p);
                // One page in three changes: the rest are the parent's.
                if i % 3 == 1 {
                    p[..8].copy_from_slice(&(start + i as u64).to_le_bytes());
                }
            }
            w.add_region_against(info, &buf, &parent)?;
        }
        out.push((name, w.finish()?.0, key));
    }
    Ok(out)
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

/// Fixes the header checksum after a header edit.
pub fn fix_header_checksum(bytes: &mut [u8]) {
    let mut ps = u32::from_le_bytes(bytes[0x28..0x2c].try_into().unwrap_or([0, 16, 0, 0])) as usize;
    if ps > bytes.len() || ps < 4096 {
        ps = 4096; // an edited page size beyond the file: fix the checksum where it was
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..ps - 8]);
    bytes[ps - 8..ps].copy_from_slice(&sum.to_le_bytes());
}
