//! The image builder from parts (memimg_tests::forge) makes images the reader
//! accepts: otherwise the hostile images built with it would fail a checksum
//! before reaching the check they are meant for.

use memimg::{verify_bytes, Image, Key, VerifyOptions};
use memimg_tests::{Forge, ForgeKey, Page};

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
