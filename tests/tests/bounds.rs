//! Resource bounds on hostile input: allocation stays within a small multiple
//! of the file size (or of one chunk), and the error is typed.
//!
//! A counting global allocator measures the peak bytes allocated while each
//! hostile image is opened, read and verified; the cases run one after the
//! other in this binary's single test so the count is not shared.
#![allow(clippy::unwrap_used, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use memimg::raw::RegionRaw;
use memimg::ErrorKind;
use memimg::{verify_bytes, Codec, Image, RegionInfo, VerifyOptions, Writer, WriterOptions};
use memimg_tests::Forge;

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every call to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Peak bytes allocated (above the level at the start) while `f` runs.
fn peak_during(f: impl FnOnce()) -> usize {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

fn plain(codec: Codec, fill: u8, pages: usize) -> Vec<u8> {
    let opts = WriterOptions::new()
        .page_size(4096)
        .chunk_size(1 << 20)
        .codec(codec)
        .workers(0);
    let mut w = Writer::new(Vec::new(), opts).unwrap();
    w.add_region(
        RegionInfo::new(0x10000, (pages * 4096) as u64),
        &vec![fill; pages * 4096],
    )
    .unwrap();
    w.finish().unwrap().0
}

fn hostile(name: &str, bytes: Vec<u8>, bound: usize) {
    let len = bytes.len();
    let mut err = String::new();
    let peak = peak_during(|| {
        let opened = Image::from_bytes(bytes.clone(), None);
        match opened {
            Err(e) => err = format!("open: {:?}: {e}", e.kind()),
            Ok(img) => {
                let mut buf = vec![0u8; 4096];
                match img.read_at(0x10000, &mut buf) {
                    Err(e) => err = format!("read_at: {:?}: {e}", e.kind()),
                    Ok(()) => err = "read_at succeeded".into(),
                }
            }
        }
        let r = verify_bytes(
            bytes,
            None,
            &VerifyOptions {
                decode: true,
                progress: None,
            },
        );
        assert!(!r.is_intact(), "{name}: verify says intact");
    });
    println!(
        "{name}: file {len} bytes, peak allocation {peak} bytes ({:.1}x), error: {err}",
        peak as f64 / len as f64
    );
    assert!(
        err.contains("Malformed") || err.contains("Checksum") || err.contains("Truncated"),
        "{name}: {err}"
    );
    assert!(
        peak <= bound,
        "{name}: peak allocation {peak} exceeds {bound}"
    );
}

#[test]
fn hostile_images_stay_bounded() {
    // 1. An index that claims 2^40 extents (and 2^32-1 regions).
    let base = plain(Codec::None, 1, 2);
    let mut f = Forge::disassemble(&base);
    f.body_head.extent_count = 1 << 40;
    f.body_head.region_count = u32::MAX;
    f.keep_counts = true;
    let forged = f.assemble();
    let n = forged.len();
    hostile("index claiming 2^40 extents", forged, 8 * n);

    // 2. A chunk that claims 4 GiB decompressed: an extent of 2^20 pages.
    let base = plain(Codec::Zstd(1), 7, 4);
    let mut f = Forge::disassemble(&base);
    f.extents[0].page_count = 1 << 20;
    f.regions[0].len = 1 << 32;
    let forged = f.assemble();
    let n = forged.len();
    hostile("chunk claiming 4 GiB", forged, 8 * n);

    // 3. A zstd bomb: a frame of 16 MiB of one byte under an extent of one page.
    let mut f = Forge::disassemble(&plain(Codec::Zstd(1), 7, 1));
    f.chunks[0] = zstd::bulk::compress(&vec![7u8; 16 << 20], 19).unwrap();
    let forged = f.assemble();
    let n = forged.len();
    // Decoding may hold one chunk (at most the chunk size, 1 MiB here) per thread.
    hostile("zstd bomb", forged, 8 * n + 4 * (1 << 20));

    // 4. Every region names the same bytes of the string table: a 640 KB
    // image used to make `imgtool inspect` allocate 5.8 GB, and the reader
    // 1.6 GB (5,000 copies of a 320 KiB name). Names must be packed in region
    // order (spec.md, *Strings and meta*).
    let forged = regions_sharing_one_name(5000, 320 << 10);
    let n = forged.len();
    assert!((600_000..700_000).contains(&n), "{n} bytes");
    let e = Image::from_bytes(forged.clone(), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert_eq!(e.location().region, Some(1), "{e}");
    assert!(e.message().contains("string table"), "{e}");
    hostile("regions sharing one name", forged, 8 * n);
}

/// An image built from parts, every checksum right, of `regions` one-page
/// regions without data whose names are all the whole `name_len`-byte string
/// table.
fn regions_sharing_one_name(regions: u64, name_len: u32) -> Vec<u8> {
    let mut f = Forge::new(4096, 4096, None);
    f.strings = vec![b'n'; name_len as usize];
    for i in 0..regions {
        f.regions.push(RegionRaw {
            start: 0x10_0000 + i * 4096,
            len: 4096,
            name_off: 0,
            name_len,
            prot: 3,
            kind: 4,
            ..RegionRaw::default()
        });
    }
    f.assemble()
}
