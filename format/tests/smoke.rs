//! A quick round trip through every option, to catch gross breakage early.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use memimg::*;

fn content(pages: usize, ps: usize) -> Vec<u8> {
    let mut v = vec![0u8; pages * ps];
    for p in 0..pages {
        let page = &mut v[p * ps..(p + 1) * ps];
        match p % 4 {
            0 => {}
            1 => page.iter_mut().enumerate().for_each(|(i, b)| {
                *b = (i as u32).wrapping_mul(2654435761).rotate_left(p as u32) as u8
            }),
            _ => page
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i % 7) as u8 + p as u8),
        }
    }
    v
}

#[test]
fn roundtrip_all_options() {
    for codec in [Codec::None, Codec::Zstd(1)] {
        for key in [None, Some(Key::generate().unwrap())] {
            for workers in [0, 2] {
                let ps = 4096usize;
                let a = content(37, ps);
                let b = content(5, ps);
                let opts = WriterOptions::new()
                    .page_size(4096)
                    .chunk_size(8 * 4096)
                    .codec(codec)
                    .workers(workers)
                    .key_opt(key.clone())
                    .validation("t", b"data".to_vec());
                let mut w = Writer::new(Vec::new(), opts).unwrap();
                w.add_region(
                    RegionInfo::new(0x100000, a.len() as u64)
                        .name("[heap]")
                        .kind(RegionKind::Heap),
                    &a,
                )
                .unwrap();
                w.add_empty_region(
                    RegionInfo::new(0x200000, 4096)
                        .name("[vvar]")
                        .kind(RegionKind::Other),
                )
                .unwrap();
                w.begin_region(RegionInfo::new(0x300000, 4 * 4096 + b.len() as u64))
                    .unwrap();
                w.push_absent(2 * 4096).unwrap();
                w.push_data(&b).unwrap();
                w.push_zero(2 * 4096).unwrap();
                w.end_region().unwrap();
                let (bytes, stats) = w.finish().unwrap();
                assert_eq!(stats.regions, 3);
                let img = Image::from_bytes(bytes.clone(), key.as_ref()).unwrap();
                assert_eq!(img.regions().unwrap().len(), 3);
                let mut buf = vec![0u8; a.len()];
                img.read_at(0x100000, &mut buf).unwrap();
                assert_eq!(buf, a);
                let mut buf = vec![0u8; b.len()];
                img.read_at(0x300000 + 2 * 4096, &mut buf).unwrap();
                assert_eq!(buf, b);
                assert_eq!(
                    img.read_at(0x300000, &mut [0u8; 1]).unwrap_err().kind(),
                    ErrorKind::NotCaptured
                );
                assert_eq!(
                    img.read_at(0x200000, &mut [0u8; 1]).unwrap_err().kind(),
                    ErrorKind::NotCaptured
                );
                let r = verify_bytes(
                    bytes.clone(),
                    key.as_ref(),
                    &VerifyOptions {
                        decode: true,
                        progress: None,
                    },
                );
                assert!(r.is_intact(), "{:?}", r.problems);
                assert_eq!(img.header().validation.as_ref().unwrap().data, b"data");
                if key.is_some() {
                    let locked = Image::from_bytes(bytes.clone(), None).unwrap();
                    assert!(locked.regions().is_err());
                    let r = verify_bytes(bytes.clone(), None, &VerifyOptions::default());
                    assert!(r.is_intact(), "{:?}", r.problems);
                    let wrong = Key::generate().unwrap();
                    assert_eq!(
                        Image::from_bytes(bytes.clone(), Some(&wrong))
                            .unwrap_err()
                            .kind(),
                        ErrorKind::WrongKey
                    );
                }
                // every single bit flip is detected
                let mut missed = 0;
                for byte in (0..bytes.len()).step_by(97) {
                    let mut d = bytes.clone();
                    d[byte] ^= 0x10;
                    let r = verify_bytes(
                        d,
                        key.as_ref(),
                        &VerifyOptions {
                            decode: true,
                            progress: None,
                        },
                    );
                    if r.is_intact() {
                        missed += 1;
                        eprintln!(
                            "missed flip at {byte:#x} codec {codec} key {}",
                            key.is_some()
                        );
                    }
                }
                assert_eq!(missed, 0);
                for len in (0..bytes.len()).step_by(61) {
                    assert!(Image::from_bytes(bytes[..len].to_vec(), key.as_ref()).is_err());
                }
            }
        }
    }
}
