//! Resource bounds on hostile input: allocation stays within a small multiple
//! of the file size (or of one chunk), and the error is typed.
//!
//! A counting global allocator measures the peak bytes allocated while each
//! hostile image is opened, read and verified; the cases run one after the
//! other in this binary's single test so the count is not shared.
#![allow(clippy::unwrap_used, missing_docs)]

use memimg::raw::RegionRaw;
use memimg::ErrorKind;
use memimg::{verify_bytes, Codec, Image, RegionInfo, VerifyOptions, Writer, WriterOptions};
use memimg_tests::alloc::peak_during;
use memimg_tests::Forge;

#[global_allocator]
static A: memimg_tests::alloc::Counting = memimg_tests::alloc::Counting;

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

    // 5. The structured fuzz target's body on deterministic inputs, with the
    // bound its fuzz binary applies: 16 times the image plus 4 MiB.
    let mut rng = memimg_tests::Rng::new(15);
    let mut worst = 0f64;
    for i in 0..400 {
        let mut input = vec![0u8; 24 + (rng.next_u64() % 200) as usize];
        rng.fill(&mut input);
        memimg_tests::fuzz::structured_with(&input, &mut |len, run| {
            let peak = peak_during(run);
            assert!(
                peak <= 16 * len + (4 << 20),
                "structured input {i}: a {len}-byte image made the reader allocate {peak} bytes"
            );
            worst = worst.max(peak as f64 / len as f64);
        });
    }
    println!("structured: 400 inputs, worst peak allocation {worst:.1}x the image");

    // 6. Chains (format 1.1): 65 links forged by hand at the depth limit
    // (each a small plain image made a child of the one before, its
    // checksums right) open and verify within a small multiple of the
    // files; a record one deeper is refused before any parent is opened.
    let dir = tempfile::tempdir().unwrap();
    let links: Vec<Vec<u8>> = (0..=64u8).map(|k| plain(Codec::None, k, 1)).collect();
    let mut total = 0;
    for (k, bytes) in links.iter().enumerate() {
        let bytes = match k {
            0 => bytes.clone(),
            k => forge_child(
                bytes,
                &links[k - 1],
                u32::try_from(k).unwrap(),
                &format!("{}.img", k - 1),
            ),
        };
        total += bytes.len();
        std::fs::write(dir.path().join(format!("{k}.img")), bytes).unwrap();
    }
    let top = dir.path().join("64.img");
    let copts = memimg::ChainOptions::default();
    let peak = peak_during(|| {
        let chain = memimg::Chain::open(&top, None, &copts).unwrap();
        assert_eq!(chain.links().len(), 65);
        let r = memimg::verify_chain_path(&top, None, &copts, &VerifyOptions::default());
        assert!(r.is_intact(), "{:?}", r.problems);
        assert_eq!(r.parents_checked, 64);
    });
    println!("chain of 65 links: files {total} bytes, peak allocation {peak} bytes");
    assert!(peak <= 8 * total, "a chain of 65 links: peak {peak}");
    let too_deep = forge_child(&links[1], &links[64], 65, "64.img");
    std::fs::write(dir.path().join("65.img"), &too_deep).unwrap();
    let peak = peak_during(|| {
        let e = memimg::Chain::open(dir.path().join("65.img"), None, &copts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
        assert!(e.message().contains("depth 65"), "{e}");
    });
    assert!(peak <= 8 * too_deep.len(), "depth 65: peak {peak}");
}

/// `bytes` (a plain full image) made by hand a child of `parent` (the bytes
/// of an image) at `depth`, with hint `hint`: `PARENT` set, the records
/// appended, the header checksum fixed (a plain image's index does not
/// cover the header, so the image stays valid).
fn forge_child(bytes: &[u8], parent: &[u8], depth: u32, hint: &str) -> Vec<u8> {
    let p = Image::from_bytes(parent.to_vec(), None).unwrap();
    let mut record = p.header().image_id.to_vec();
    record.extend_from_slice(&p.trailer().index_checksum.to_le_bytes());
    record.extend_from_slice(&depth.to_le_bytes());
    record.extend_from_slice(&[0; 4]);
    let mut d = bytes.to_vec();
    d[0x10] |= 1 << 3;
    for (ty, value) in [(32u16, &record[..]), (33, hint.as_bytes())] {
        let meta_len = u32::from_le_bytes(d[0x58..0x5c].try_into().unwrap()) as usize;
        let at = 0x80 + meta_len;
        d[at..at + 2].copy_from_slice(&ty.to_le_bytes());
        d[at + 2..at + 4].copy_from_slice(&u16::try_from(value.len()).unwrap().to_le_bytes());
        d[at + 4..at + 4 + value.len()].copy_from_slice(value);
        let n = u32::try_from(meta_len + 4 + value.len()).unwrap();
        d[0x58..0x5c].copy_from_slice(&n.to_le_bytes());
    }
    memimg_tests::fix_header_checksum(&mut d);
    d
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
