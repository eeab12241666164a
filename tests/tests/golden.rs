//! Golden images: checked into tests/golden/, `v1-*` freeze version 1.0 and
//! `v1.1-*` version 1.1 (a bound key slot, a chain of three incremental
//! images). Every future reader must keep reading them, byte for byte.
//! Never regenerate a frozen version: `MEMIMG_WRITE_GOLDEN=1` (1.0) and
//! `MEMIMG_WRITE_GOLDEN_1_1=1` (1.1) with `--ignored` wrote them once.

use std::path::PathBuf;

use memimg::{verify_path, Codec, Image, Key, VerifyOptions, WriterOptions};
use memimg_tests::{golden_page, write_golden, GOLDEN_KEY, GOLDEN_REGIONS};

pub(crate) fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// True when the environment variable `var` asks a golden writer to run:
/// it is `1`. Run with --ignored or --include-ignored but without it (unset,
/// empty, `0` or anything else), a writer leaves the frozen images alone:
/// they are never overwritten by accident.
pub(crate) fn write_asked(var: &str) -> bool {
    match std::env::var_os(var) {
        Some(v) if v == "1" => true,
        v => {
            eprintln!(
                "{var} is {}: the golden images are left as they are (set it to 1 to write them)",
                v.map_or_else(|| "not set".into(), |v| format!("{v:?}"))
            );
            false
        }
    }
}

const CASES: &[(&str, bool)] = &[
    ("v1-plain", false),
    ("v1-zstd", false),
    ("v1-encrypted", true),
];

/// Not a test: it writes the golden images, when asked. Ignored, so that it
/// counts as skipped rather than as a pass that checked nothing.
#[test]
#[ignore = "writes the golden images: MEMIMG_WRITE_GOLDEN=1 cargo test -p memimg-tests --test main write_golden -- --ignored"]
fn write_golden_when_asked() {
    if !write_asked("MEMIMG_WRITE_GOLDEN") {
        return;
    }
    let key = Key::raw(GOLDEN_KEY);
    let producer = "memimg golden v1";
    let base = || {
        WriterOptions::new()
            .workers(0)
            .producer(producer)
            .validation("golden", b"v1 validation data".to_vec())
    };
    std::fs::write(
        dir().join("v1-plain.img"),
        write_golden(base().codec(Codec::None)).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir().join("v1-zstd.img"),
        write_golden(base().codec(Codec::Zstd(3))).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir().join("v1-encrypted.img"),
        write_golden(base().codec(Codec::Zstd(3)).key(key)).unwrap(),
    )
    .unwrap();
    std::fs::write(dir().join("v1-encrypted.key"), GOLDEN_KEY).unwrap();
}

#[test]
fn golden_v1_images_still_read() {
    for &(name, encrypted) in CASES {
        let path = dir().join(format!("{name}.img"));
        let key =
            encrypted.then(|| Key::from_key_file(&dir().join(format!("{name}.key"))).unwrap());
        let img =
            Image::open_with_key(&path, key.as_ref()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let h = img.header();
        assert_eq!(h.version, (1, 0), "{name}");
        assert_eq!(h.page_size, 4096);
        assert_eq!(h.chunk_size, 4 * 4096);
        assert_eq!(h.producer, "memimg golden v1");
        let v = h.validation.as_ref().unwrap();
        assert_eq!(
            (v.tag.as_slice(), v.data.as_slice()),
            (&b"golden"[..], &b"v1 validation data"[..])
        );
        assert_eq!(img.is_encrypted(), encrypted);
        let regions = img.regions().unwrap();
        assert_eq!(regions.len(), GOLDEN_REGIONS.len());
        for (r, &(start, pages, kind, rname, data)) in regions.iter().zip(GOLDEN_REGIONS) {
            assert_eq!(r.info.start, start);
            assert_eq!(r.info.len, (pages * 4096) as u64);
            assert_eq!(r.info.kind, kind);
            assert_eq!(r.info.name, rname.as_bytes());
            assert_eq!(r.has_data(), data);
            if data {
                let mut got = vec![0u8; pages * 4096];
                img.read_at(start, &mut got).unwrap();
                let mut want = vec![0u8; 4096];
                for (i, p) in got.chunks(4096).enumerate() {
                    golden_page(start + (i * 4096) as u64, &mut want);
                    assert_eq!(p, &want[..], "{name}: page {i} of {rname}");
                }
            }
        }
        let report = verify_path(
            &path,
            key.as_ref(),
            &VerifyOptions {
                decode: true,
                progress: None,
            },
        );
        assert!(report.is_intact(), "{name}: {:?}", report.problems);
        if encrypted {
            let locked = Image::open(&path).unwrap();
            assert!(locked.regions().is_err());
            let wrong = Key::raw([1; 32]);
            assert_eq!(
                Image::open_with_key(&path, Some(&wrong))
                    .unwrap_err()
                    .kind(),
                memimg::ErrorKind::WrongKey
            );
        }
    }
}

#[test]
fn newer_major_version_and_unknown_feature_are_named() {
    let bytes = std::fs::read(dir().join("v1-plain.img")).unwrap();
    let fix = |mut b: Vec<u8>| {
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..4096 - 8]);
        b[4096 - 8..4096].copy_from_slice(&sum.to_le_bytes());
        b
    };
    let mut v2 = bytes.clone();
    v2[8..10].copy_from_slice(&2u16.to_le_bytes());
    let e = Image::from_bytes(fix(v2), None).unwrap_err();
    assert_eq!(e.kind(), memimg::ErrorKind::Unsupported);
    assert!(e.to_string().contains("version 2.0"), "{e}");
    // Bit 5 became INDEX_FIRST in 1.1; bit 6 is not known yet.
    let mut feat = bytes.clone();
    feat[0x10] |= 1 << 6;
    let e = Image::from_bytes(fix(feat), None).unwrap_err();
    assert_eq!(e.kind(), memimg::ErrorKind::Unsupported);
    assert!(e.to_string().contains("incompatible feature bit 6"), "{e}");
    // A newer minor version with no unknown incompatible feature still reads.
    let mut minor = bytes;
    minor[10..12].copy_from_slice(&7u16.to_le_bytes());
    minor[0x21] |= 1 << 1; // an unknown compatible feature (bit 9)
    Image::from_bytes(fix(minor), None).unwrap();
}

// ---------------------------------------------------------------------------
// Golden 1.1 images (spec.md, *Versions*): frozen like the 1.0 ones.
//
// - `v1.1-encrypted.img` (key `v1.1-encrypted.key`): an encrypted image with
//   `SLOT_BOUND` (key slot v2, `kek_check`), zstd;
// - `v1.1-parent.img`: a plain full 1.1 image (no 1.1 feature: a 1.0 reader
//   reads it), generation 0 of the golden content;
// - `v1.1-child.img` (plain) and `v1.1-child-zstd.img` (zstd): generation 1,
//   children of `v1.1-parent.img` (hint `v1.1-parent.img`);
// - `v1.1-grandchild.img` (zstd): generation 2, a child of `v1.1-child.img`:
//   with the two above, a chain of three.
// ---------------------------------------------------------------------------

/// Page `addr` of generation `gen` of the golden content: generation 0 is
/// [`golden_page`]; each later one changes the pages whose number `n` has
/// `(n + gen) % 7 == 0` (to random bytes) and, from generation 2, zeroes those
/// with `n % 13 == 5`. So a child holds about one page in seven.
pub(crate) fn gen_page(gen: u64, addr: u64, page: &mut [u8]) {
    golden_page(addr, page);
    let n = addr / 4096;
    for g in 1..=gen {
        if (n + g).is_multiple_of(7) {
            memimg_tests::fill_page(page, memimg_tests::PageKind::Random, addr ^ (g << 56));
        }
        if g >= 2 && n % 13 == 5 {
            page.fill(0);
        }
    }
}

/// The bytes of region `start` (`pages` pages) in generation `gen`.
pub(crate) fn gen_region(gen: u64, start: u64, pages: usize) -> Vec<u8> {
    let mut buf = vec![0u8; pages * 4096];
    for (i, p) in buf.chunks_mut(4096).enumerate() {
        gen_page(gen, start + (i * 4096) as u64, p);
    }
    buf
}

/// Writes generation `gen` of the golden layout (4-page chunks) as a child of
/// `parent` (hint `hint`), storing only what differs, or as a full image.
pub(crate) fn write_gen(
    gen: u64,
    parent: Option<(&memimg::Chain, &str)>,
    opts: WriterOptions,
) -> Vec<u8> {
    let mut opts = opts.page_size(4096).chunk_size(4 * 4096);
    if let Some((p, hint)) = parent {
        opts = opts.parent_of(p.image()).unwrap().parent_hint(hint);
    }
    let mut w = memimg::Writer::new(Vec::new(), opts).unwrap();
    for &(start, pages, kind, name, data) in GOLDEN_REGIONS {
        let info = memimg::RegionInfo::new(start, (pages * 4096) as u64)
            .kind(kind)
            .name(name);
        if !data {
            w.add_empty_region(info).unwrap();
            continue;
        }
        let buf = gen_region(gen, start, pages);
        match parent {
            Some((p, _)) => w.add_region_against(info, &buf, p).unwrap(),
            None => w.add_region(info, &buf).unwrap(),
        }
    }
    w.finish().unwrap().0
}

/// The options every 1.1 golden image is written with: no workers (the
/// bytes do not depend on threads), the 1.1 producer and validation data.
pub(crate) fn golden_1_1_options() -> WriterOptions {
    WriterOptions::new()
        .workers(0)
        .producer("memimg golden v1.1")
        .validation("golden", b"v1.1 validation data".to_vec())
}

/// Not a test: writes the 1.1 golden images, when asked (as
/// [`write_golden_when_asked`]; the 1.0 images are left alone).
#[test]
#[ignore = "writes the 1.1 golden images: MEMIMG_WRITE_GOLDEN_1_1=1 cargo test -p memimg-tests --test main write_golden_1_1 -- --ignored"]
fn write_golden_1_1_when_asked() {
    if !write_asked("MEMIMG_WRITE_GOLDEN_1_1") {
        return;
    }
    let base = golden_1_1_options;
    let key = Key::raw(GOLDEN_KEY);
    std::fs::write(
        dir().join("v1.1-encrypted.img"),
        write_gen(0, None, base().codec(Codec::Zstd(3)).key(key)),
    )
    .unwrap();
    std::fs::write(dir().join("v1.1-encrypted.key"), GOLDEN_KEY).unwrap();
    let open = |name: &str| {
        memimg::Chain::open(dir().join(name), None, &memimg::ChainOptions::default()).unwrap()
    };
    std::fs::write(
        dir().join("v1.1-parent.img"),
        write_gen(0, None, base().codec(Codec::None)),
    )
    .unwrap();
    let parent = open("v1.1-parent.img");
    std::fs::write(
        dir().join("v1.1-child.img"),
        write_gen(
            1,
            Some((&parent, "v1.1-parent.img")),
            base().codec(Codec::None),
        ),
    )
    .unwrap();
    std::fs::write(
        dir().join("v1.1-child-zstd.img"),
        write_gen(
            1,
            Some((&parent, "v1.1-parent.img")),
            base().codec(Codec::Zstd(3)),
        ),
    )
    .unwrap();
    let child = open("v1.1-child.img");
    std::fs::write(
        dir().join("v1.1-grandchild.img"),
        write_gen(
            2,
            Some((&child, "v1.1-child.img")),
            base().codec(Codec::Zstd(3)),
        ),
    )
    .unwrap();
}

/// The 1.1 golden images (name, generation, depth, encrypted, the parent's
/// file).
const CASES_1_1: &[(&str, u64, u32, bool, Option<&str>)] = &[
    ("v1.1-encrypted", 0, 0, true, None),
    ("v1.1-parent", 0, 0, false, None),
    ("v1.1-child", 1, 1, false, Some("v1.1-parent")),
    ("v1.1-child-zstd", 1, 1, false, Some("v1.1-parent")),
    ("v1.1-grandchild", 2, 2, false, Some("v1.1-child")),
];

/// Every 1.1 golden image reads back every byte of its generation, through
/// its chain (found by the hints), verifies intact with its chain, and says
/// what it is: version, features, parent record and hint, bound key slot.
#[test]
fn golden_1_1_images_still_read() {
    use memimg::{Chain, ChainOptions, ErrorKind, ExtentKind, Features};
    for &(name, gen, depth, encrypted, parent) in CASES_1_1 {
        let path = dir().join(format!("{name}.img"));
        let key =
            encrypted.then(|| Key::from_key_file(&dir().join(format!("{name}.key"))).unwrap());
        let chain = Chain::open(&path, key.as_ref(), &ChainOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(chain.is_complete(), "{name}");
        assert_eq!(chain.links().len() as u32, depth + 1, "{name}");
        let img = chain.image();
        let h = img.header();
        assert_eq!(h.version, (1, 1), "{name}");
        assert_eq!(h.page_size, 4096);
        assert_eq!(h.chunk_size, 4 * 4096);
        assert_eq!(h.producer, "memimg golden v1.1");
        let v = h.validation.as_ref().unwrap();
        assert_eq!(
            (v.tag.as_slice(), v.data.as_slice()),
            (&b"golden"[..], &b"v1.1 validation data"[..])
        );
        // The feature bits are exactly those of what the image is.
        let mut incompat = 0;
        if encrypted {
            incompat |= Features::ENCRYPTED | Features::SLOT_BOUND;
        }
        if h.features.incompat & Features::ZSTD != 0 {
            incompat |= Features::ZSTD;
        }
        if depth > 0 {
            incompat |= Features::PARENT;
        }
        assert_eq!(h.features.incompat, incompat, "{name}");
        assert_eq!(h.is_slot_bound(), encrypted, "{name}");
        assert_eq!(img.index_nonce_salt(), 0, "{name}: a first index");
        assert_eq!(img.depth(), depth, "{name}");
        match parent {
            None => assert!(img.parent().is_none() && h.parent_hint.is_none(), "{name}"),
            Some(p) => {
                let pimg = &chain.links()[1];
                assert_eq!(img.parent().copied(), Some(pimg.as_parent().unwrap()));
                assert_eq!(h.parent_hint.as_deref(), Some(format!("{p}.img").as_str()));
                assert_eq!(pimg.path(), Some(dir().join(format!("{p}.img")).as_path()));
            }
        }
        // Every byte of every region, through the chain.
        let regions = img.regions().unwrap();
        assert_eq!(regions.len(), GOLDEN_REGIONS.len());
        let mut in_parent = 0;
        for (r, &(start, pages, kind, rname, data)) in regions.iter().zip(GOLDEN_REGIONS) {
            assert_eq!(r.info.start, start);
            assert_eq!(r.info.len, (pages * 4096) as u64);
            assert_eq!(r.info.kind, kind);
            assert_eq!(r.info.name, rname.as_bytes());
            assert_eq!(r.has_data(), data);
            let mut got = vec![0u8; pages * 4096];
            let read = chain.read_at(start, &mut got);
            if !data {
                assert_eq!(read.unwrap_err().kind(), ErrorKind::NotCaptured, "{name}");
                continue;
            }
            read.unwrap_or_else(|e| panic!("{name}: {rname}: {e}"));
            let want = gen_region(gen, start, pages);
            for (i, (p, w)) in got.chunks(4096).zip(want.chunks(4096)).enumerate() {
                assert_eq!(p, w, "{name}: page {i} of {rname}");
                // Which link answers: a page changed in this generation is
                // the image's own.
                let addr = start + (i * 4096) as u64;
                let res = chain.resolve(addr).unwrap();
                let mut prev = vec![0u8; 4096];
                if gen > 0 {
                    gen_page(gen - 1, addr, &mut prev);
                    if prev != p {
                        assert_eq!(res.link, 0, "{name}: changed page {addr:#x}");
                    }
                }
                let own = img.extent_at(addr).unwrap().unwrap();
                if own.kind == ExtentKind::InParent {
                    in_parent += 1;
                    assert!(res.link > 0, "{name}: {addr:#x}");
                    // Alone, the image names the parent it needs.
                    let e = img.read_at(addr, &mut prev).unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::ParentRequired, "{name}: {e}");
                }
            }
        }
        // A child holds only part of its pages.
        assert_eq!(in_parent > 0, depth > 0, "{name}");
        let report = memimg::verify_chain_path(
            &path,
            key.as_ref(),
            &ChainOptions::default(),
            &VerifyOptions {
                decode: true,
                progress: None,
            },
        );
        assert!(report.is_intact(), "{name}: {:?}", report.problems);
        assert_eq!(report.parents_checked, depth, "{name}");
        assert_eq!(report.parent_unchecked, None, "{name}");
        if encrypted {
            let wrong = Key::raw([1; 32]);
            assert_eq!(
                Image::open_with_key(&path, Some(&wrong))
                    .unwrap_err()
                    .kind(),
                ErrorKind::WrongKey
            );
        }
    }
}
