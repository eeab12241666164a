//! Golden 1.1 images with a load order (`LOAD_ORDER`): checked into
//! tests/golden/, they freeze the load-order record and the layout rule in
//! layout order. Every future reader must keep reading them. Regenerate
//! (never, once released) with `MEMIMG_WRITE_GOLDEN=1` and `--ignored`.

use std::path::PathBuf;

use memimg::{relayout, verify_path, Codec, Image, Key, Profile, VerifyOptions};
use memimg_tests::forge::Forge;
use memimg_tests::{golden_page, write_golden, GOLDEN_KEY, GOLDEN_REGIONS};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// The frozen profile: chunk numbers in "first touch" order.
const ORDER: &[u64] = &[8, 3, 0, 6];

const CASES: &[(&str, bool)] = &[
    ("v1.1-load-order-plain", false),
    ("v1.1-load-order-encrypted", true),
];

/// Not a test: it writes the golden images, when asked.
#[test]
#[ignore = "writes the golden images: MEMIMG_WRITE_GOLDEN=1 cargo test -p memimg-tests --test main write_load_order_golden -- --ignored"]
fn write_load_order_golden_when_asked() {
    if std::env::var_os("MEMIMG_WRITE_GOLDEN").is_none() {
        eprintln!("MEMIMG_WRITE_GOLDEN is not set: the golden images are left as they are");
        return;
    }
    let key = Key::raw(GOLDEN_KEY);
    for &(name, encrypted) in CASES {
        let opts = crate::golden::golden_1_1_options().codec(if encrypted {
            Codec::Zstd(3)
        } else {
            Codec::None
        });
        let opts = if encrypted {
            opts.key(key.clone())
        } else {
            opts
        };
        let bytes = write_golden(opts).unwrap();
        let k = encrypted.then_some(&key);
        let img = Image::from_bytes(bytes, k).unwrap();
        let p = Profile {
            image_id: img.header().image_id,
            chunks: ORDER.to_vec(),
        };
        let (out, _) = relayout(&img, &p, Vec::new()).unwrap();
        std::fs::write(dir().join(format!("{name}.img")), out).unwrap();
        if encrypted {
            std::fs::write(dir().join(format!("{name}.key")), GOLDEN_KEY).unwrap();
        }
    }
}

#[test]
fn golden_load_order_images_still_read() {
    for &(name, encrypted) in CASES {
        let path = dir().join(format!("{name}.img"));
        let key =
            encrypted.then(|| Key::from_key_file(&dir().join(format!("{name}.key"))).unwrap());
        let img =
            Image::open_with_key(&path, key.as_ref()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let h = img.header();
        assert_eq!(h.version, (1, 1), "{name}");
        assert!(img.has_load_order(), "{name}");
        assert_eq!(h.producer, "memimg golden v1.1");
        assert_eq!(img.load_order().unwrap().unwrap(), ORDER, "{name}");
        assert_eq!(img.is_encrypted(), encrypted);
        assert_eq!(img.index_nonce_salt() != 0, encrypted, "{name}");
        // The layout: the profile's chunks first, then the rest by number,
        // each where the layout rule puts it (raw chunks of the plain image
        // page-aligned, zero padding before them), the index right after.
        let n = img.chunk_locs().len() as u64;
        let mut want: Vec<u64> = ORDER.to_vec();
        want.extend((0..n).filter(|c| !ORDER.contains(c)));
        assert_eq!(img.layout_order(), want, "{name}");
        let bytes = std::fs::read(&path).unwrap();
        let mut end = 4096u64;
        for &c in &want {
            let loc = img.chunk_locs()[c as usize];
            let at = if encrypted {
                end
            } else {
                end.div_ceil(4096) * 4096
            };
            assert_eq!(loc.offset, at, "{name}: chunk {c}");
            assert!(
                bytes[end as usize..at as usize].iter().all(|&b| b == 0),
                "{name}: padding before chunk {c}"
            );
            end = at + u64::from(loc.stored_len);
        }
        assert_eq!(img.trailer().index_offset, end, "{name}");
        let ws = img.working_set_range().unwrap().unwrap();
        let last = img.chunk_locs()[*ORDER.last().unwrap() as usize];
        assert_eq!(ws, 4096..last.offset + u64::from(last.stored_len));
        // Every page of every region.
        let regions = img.regions().unwrap();
        assert_eq!(regions.len(), GOLDEN_REGIONS.len());
        for (r, &(start, pages, kind, rname, data)) in regions.iter().zip(GOLDEN_REGIONS) {
            assert_eq!(
                (r.info.start, r.info.len, r.info.kind),
                (start, (pages * 4096) as u64, kind)
            );
            assert_eq!(r.info.name, rname.as_bytes());
            if data {
                let mut got = vec![0u8; pages * 4096];
                img.read_at(start, &mut got).unwrap();
                let mut page = vec![0u8; 4096];
                for (i, p) in got.chunks(4096).enumerate() {
                    golden_page(start + (i * 4096) as u64, &mut page);
                    assert_eq!(p, &page[..], "{name}: page {i} of {rname}");
                }
            }
        }
        // Every stored byte: checksums, tags, decoded content.
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
            // Without the key: the layout checks by offset; the profile is
            // sealed.
            let locked = Image::open(&path).unwrap();
            assert!(locked.has_load_order() && locked.load_order().is_err());
            assert_eq!(locked.layout_order(), want);
        } else {
            // The record's bytes, read by a reader written from spec.md.
            let meta = Forge::disassemble(&bytes).meta;
            let mut rec = vec![2, 0, 0, 0];
            rec.extend_from_slice(&((ORDER.len() * 8) as u32).to_le_bytes());
            for c in ORDER {
                rec.extend_from_slice(&c.to_le_bytes());
            }
            assert!(meta.ends_with(&rec), "{name}: {meta:?}");
        }
    }
}
