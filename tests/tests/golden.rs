//! Golden v1 images: checked into tests/golden/, they freeze version 1.0.
//! Every future reader must keep reading them. Regenerate (only when the
//! format version changes, and never for v1) with `MEMIMG_WRITE_GOLDEN=1`
//! and `--ignored`.

use std::path::PathBuf;

use memimg::{verify_path, Codec, Image, Key, VerifyOptions, WriterOptions};
use memimg_tests::{golden_page, write_golden, GOLDEN_KEY, GOLDEN_REGIONS};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
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
    if std::env::var_os("MEMIMG_WRITE_GOLDEN").is_none() {
        // Run with --ignored or --include-ignored but without the variable:
        // never overwrite the frozen images by accident.
        eprintln!("MEMIMG_WRITE_GOLDEN is not set: the golden images are left as they are");
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
    let mut feat = bytes.clone();
    feat[0x10] |= 1 << 5;
    let e = Image::from_bytes(fix(feat), None).unwrap_err();
    assert_eq!(e.kind(), memimg::ErrorKind::Unsupported);
    assert!(e.to_string().contains("incompatible feature bit 5"), "{e}");
    // A newer minor version with no unknown incompatible feature still reads.
    let mut minor = bytes;
    minor[10..12].copy_from_slice(&7u16.to_le_bytes());
    minor[0x21] |= 1 << 1; // an unknown compatible feature (bit 9)
    Image::from_bytes(fix(minor), None).unwrap();
}
