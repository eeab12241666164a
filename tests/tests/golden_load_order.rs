//! Golden 1.1 images with a load order (`LOAD_ORDER`): checked into
//! tests/golden/, they freeze the load-order record and the layout rule in
//! layout order, and (`v1.1-index-first`) the index placed right after the
//! header with the header's index record (`INDEX_FIRST`). Every future
//! reader must keep reading them. Regenerate (never, once released) with
//! `MEMIMG_WRITE_GOLDEN=1` and `--ignored`.

use memimg::{
    relayout_with, verify_path, Codec, Image, Key, Profile, ReadAt, RelayoutOptions, VerifyOptions,
};
use memimg_tests::forge::Forge;
use memimg_tests::{golden_page, write_golden, GOLDEN_KEY, GOLDEN_REGIONS};

use crate::golden::dir;

/// The frozen profile: chunk numbers in "first touch" order.
const ORDER: &[u64] = &[8, 3, 0, 6];

/// (name, encrypted, index first)
const CASES: &[(&str, bool, bool)] = &[
    ("v1.1-load-order-plain", false, false),
    ("v1.1-load-order-encrypted", true, false),
    ("v1.1-index-first", false, true),
];

/// Not a test: it writes the golden images, when asked.
#[test]
#[ignore = "writes the golden images: MEMIMG_WRITE_GOLDEN=1 cargo test -p memimg-tests --test main write_load_order_golden -- --ignored"]
fn write_load_order_golden_when_asked() {
    if !crate::golden::write_asked("MEMIMG_WRITE_GOLDEN") {
        return;
    }
    let key = Key::raw(GOLDEN_KEY);
    for &(name, encrypted, index_first) in CASES {
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
        let (out, _) =
            relayout_with(&img, &p, &RelayoutOptions { index_first }, Vec::new()).unwrap();
        std::fs::write(dir().join(format!("{name}.img")), out).unwrap();
        if encrypted {
            std::fs::write(dir().join(format!("{name}.key")), GOLDEN_KEY).unwrap();
        }
    }
}

#[test]
fn golden_load_order_images_still_read() {
    for &(name, encrypted, index_first) in CASES {
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
        // The index: at the end, or right after the header, where the
        // header's index record says (its length and checksum).
        let t = img.trailer().clone();
        let mut end = if index_first {
            let rec = img.header().index_first.expect("the index record");
            assert_eq!(t.index_offset, 4096, "{name}");
            assert_eq!(
                (rec.index_len, rec.index_checksum),
                (t.index_len, t.index_checksum)
            );
            let index = &bytes[4096..(4096 + t.index_len) as usize];
            assert_eq!(xxhash_rust::xxh3::xxh3_64(index), rec.index_checksum);
            4096 + t.index_len
        } else {
            assert_eq!(img.header().index_first, None, "{name}");
            4096u64
        };
        assert_eq!(img.header().data_start(), end, "{name}");
        let ws_start = end;
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
        if index_first {
            assert_eq!(t.offset, end, "{name}: the trailer right after the data");
        } else {
            assert_eq!(t.index_offset, end, "{name}");
        }
        assert_eq!(t.offset + 256, bytes.len() as u64, "{name}");
        let ws = img.working_set_range().unwrap().unwrap();
        let first = img.chunk_locs()[ORDER[0] as usize];
        let last = img.chunk_locs()[*ORDER.last().unwrap() as usize];
        assert!(first.offset - ws_start < 4096, "{name}");
        assert_eq!(ws, first.offset..last.offset + u64::from(last.stored_len));
        // Opened from its front: the header page and the index, nothing
        // past the data start (the trailer is not read).
        let at = std::sync::Arc::new(Reads {
            bytes: bytes.clone(),
            max_end: std::sync::Mutex::new(0),
        });
        let front = Image::from_read_at(at.clone(), key.as_ref()).unwrap();
        let max_end = *at.max_end.lock().unwrap();
        if index_first {
            assert!(!front.trailer().read, "{name}");
            assert_eq!(max_end, ws_start, "{name}: read up to {max_end:#x}");
            assert_eq!(
                memimg::front_open_need(&bytes[..4096]),
                Some(Some(ws_start)),
                "{name}"
            );
        } else {
            assert!(front.trailer().read, "{name}");
            assert_eq!(max_end, bytes.len() as u64, "{name}");
            assert_eq!(memimg::front_open_need(&bytes[..4096]), Some(None));
        }
        assert_eq!(front.trailer().index_checksum, t.index_checksum, "{name}");
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
        } else if !index_first {
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

/// A store over bytes that remembers the furthest byte read.
struct Reads {
    bytes: Vec<u8>,
    max_end: std::sync::Mutex<u64>,
}

impl ReadAt for Reads {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset as usize + buf.len();
        let src = self
            .bytes
            .get(offset as usize..end)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        let mut m = self.max_end.lock().unwrap();
        *m = (*m).max(end as u64);
        Ok(())
    }

    fn describe(&self) -> String {
        "test bytes".into()
    }
}
