//! The image builder from parts (memimg_tests::forge) makes images the reader
//! accepts: otherwise the hostile images built with it would fail a checksum
//! before reaching the check they are meant for.

use memimg::{verify_bytes, ErrorKind, Features, Image, Key, VerifyOptions};
use memimg_tests::{Forge, ForgeKey, Page, SlotBinding};

fn page(seed: u8) -> Page {
    Page::Data(
        (0..4096u32)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect(),
    )
}

#[test]
fn forged_images_open_read_and_verify() {
    let key = ForgeKey {
        kek: [3; 32],
        dek: [4; 32],
        wrap_nonce: [5; 24],
    };
    for k in [None, Some(key)] {
        for zstd in [false, true] {
            let mut f = Forge::new(4096, 4 * 4096, k);
            let text = Page::Data(b"compressible ".repeat(315));
            f.push_region(
                0x10000,
                b"[heap]",
                &[
                    page(1),
                    Page::Zero,
                    page(2),
                    text.clone(),
                    text,
                    Page::Absent,
                ],
                2,
                zstd,
            );
            f.push_region(0x40000, b"[vvar]", &[], 1, zstd);
            f.push_region(0x50000, b"", &[page(9)], 1, zstd);
            let bytes = f.assemble();
            let kek = k.map(|k| Key::raw(k.kek));
            let img = Image::from_bytes(bytes.clone(), kek.as_ref())
                .unwrap_or_else(|e| panic!("key {}, zstd {zstd}: {e}", k.is_some()));
            let regions = img.regions().unwrap();
            assert_eq!(regions.len(), 3);
            assert_eq!(regions[0].info.name, b"[heap]");
            assert!(!regions[1].has_data());
            let mut buf = vec![0u8; 4096];
            img.read_at(0x12000, &mut buf).unwrap();
            assert_eq!(Page::Data(buf), page(2));
            img.read_at(0x50000, &mut vec![0u8; 4096]).unwrap();
            assert!(img.read_at(0x15000, &mut [0u8; 8]).is_err(), "absent page");
            let r = verify_bytes(
                bytes,
                kek.as_ref(),
                &VerifyOptions {
                    decode: true,
                    progress: None,
                },
            );
            assert!(r.is_intact(), "{:?} {:?}", r.fatal, r.problems);
            assert_eq!(r.chunks_decoded, img.chunk_locs().len() as u64);
        }
    }
}

/// Format 1.1 from the builder: a key slot bound to its image, an index
/// nonce salt, and a load-order record with the chunks laid out in its
/// order. Each image opens, reads back, verifies intact and reads as
/// described; and each binding, salt or layout that disagrees with the rest
/// is refused as spec.md says (so the fuzz target's mutations of them mean
/// what they say).
#[test]
fn forged_1_1_images_open_read_and_verify() {
    let key = ForgeKey {
        kek: [3; 32],
        dek: [4; 32],
        wrap_nonce: [5; 24],
    };
    let deep = VerifyOptions {
        decode: true,
        progress: None,
    };
    for k in [None, Some(key)] {
        for zstd in [false, true] {
            let what = format!("key {}, zstd {zstd}", k.is_some());
            let kek = k.map(|k| Key::raw(k.kek));
            let text = Page::Data(b"compressible ".repeat(315));
            let mut f = Forge::new(4096, 4096, k);
            f.push_region(
                0x10000,
                b"[heap]",
                &[page(1), Page::Zero, page(2), text, Page::Absent, page(4)],
                1,
                zstd,
            );
            assert_eq!(f.chunks.len(), 4, "{what}");
            let profile = vec![2u64, 0, 3];
            f.push_load_order(&profile);
            f.layout = Some(profile.clone());
            f.set_incompat(Features::LOAD_ORDER);
            if k.is_some() {
                f.slot_binding = Some(SlotBinding::default());
                f.set_incompat(Features::SLOT_BOUND);
                f.index_nonce_salt = 0x1234_5678_9abc_def0;
            }
            let open = |f: &Forge| Image::from_bytes(f.assemble(), kek.as_ref());
            let bytes = f.assemble();
            let img = open(&f).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(img.load_order().unwrap(), Some(&profile[..]), "{what}");
            assert_eq!(img.layout_order(), [2, 0, 3, 1], "{what}");
            assert_eq!(img.header().is_slot_bound(), k.is_some(), "{what}");
            assert_eq!(img.index_nonce_salt(), f.index_nonce_salt, "{what}");
            let mut buf = vec![0u8; 4096];
            img.read_at(0x12000, &mut buf).unwrap();
            assert_eq!(Page::Data(buf), page(2), "{what}");
            img.read_at(0x15000, &mut vec![0u8; 4096]).unwrap();
            let r = verify_bytes(bytes, kek.as_ref(), &deep);
            assert!(r.is_intact(), "{what}: {:?} {:?}", r.fatal, r.problems);
            assert_eq!(r.chunks_decoded, 4, "{what}");

            // A layout that does not follow the record.
            let mut g = f.clone();
            g.layout = Some(vec![0, 2, 3]);
            let e = open(&g).expect_err("a layout out of the record's order");
            assert_eq!(e.kind(), ErrorKind::Malformed, "{what}: {e}");
            // A chunk listed twice, and one past the chunk map.
            for bad in [[2u64, 0, 2], [2, 0, 4]] {
                let mut g = f.clone();
                g.meta.clear();
                g.push_load_order(&bad);
                let e = open(&g).expect_err("a bad load-order record");
                assert_eq!(e.kind(), ErrorKind::Malformed, "{what} {bad:?}: {e}");
            }
            let Some(kek) = kek.as_ref() else {
                // A plain image has no salt: the field is reserved there.
                let mut g = f.clone();
                g.index_nonce_salt = 1;
                let e = open(&g).expect_err("a salt in a plain image");
                assert_eq!(e.kind(), ErrorKind::NonZeroPadding, "{what}: {e}");
                continue;
            };
            // Bound to another image, or to other KDF fields: the KEK check
            // matches, the wrap does not authenticate.
            let mut other_fields = [0u8; 32];
            other_fields[0] = 1;
            other_fields[4] = 8;
            for b in [
                SlotBinding {
                    image_id: Some([9; 16]),
                    kdf_fields: None,
                },
                SlotBinding {
                    image_id: None,
                    kdf_fields: Some(other_fields),
                },
            ] {
                let mut g = f.clone();
                g.slot_binding = Some(b);
                let e = open(&g).expect_err("a slot bound elsewhere");
                assert_eq!(e.kind(), ErrorKind::Authentication, "{what} {b:?}: {e}");
            }
            // A 1.0 slot in an image that says SLOT_BOUND: no KEK check.
            let mut g = f.clone();
            g.slot_binding = None;
            let e = open(&g).expect_err("an unbound slot");
            assert_eq!(e.kind(), ErrorKind::WrongKey, "{what}: {e}");
            // The index sealed under another salt than its head's.
            let g = f.assemble_with(&mut |a| a.seal_salt ^= 1);
            let e = Image::from_bytes(g, Some(kek)).expect_err("a nonce of another salt");
            assert_eq!(e.kind(), ErrorKind::Authentication, "{what}: {e}");
        }
    }
}

/// The forge's reused compression context gives the bytes a fresh one
/// gives, chunk after chunk (a context that kept state from the previous
/// chunk would not), and the frames decode to the input.
#[test]
fn zstd_frame_matches_a_fresh_context() {
    let text = b"compressible ".repeat(1000);
    let random: Vec<u8> = (0..16384u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let inputs: [&[u8]; 5] = [&text, &random, &text[..4096], &[], &random[..100]];
    for round in 0..2 {
        for (i, raw) in inputs.iter().enumerate() {
            let frame = memimg_tests::forge::zstd_frame(raw)
                .unwrap_or_else(|| panic!("round {round}, input {i}: zstd failed"));
            let fresh = zstd::bulk::compress(raw, 1).expect("zstd");
            assert!(
                frame == fresh,
                "round {round}, input {i}: a {}-byte frame, a fresh context gives {} bytes",
                frame.len(),
                fresh.len()
            );
            assert_eq!(
                zstd::bulk::decompress(&frame, raw.len()).expect("decodes"),
                *raw,
                "round {round}, input {i}"
            );
        }
    }
}
