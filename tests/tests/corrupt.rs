//! Damage sweeps: every bit of the header, index and trailer flipped, a
//! deterministic sample across chunk data and padding, and every truncation.
//! Verify must report damage each time (or refuse the file as not an image
//! when the magic is gone), with a location, and never call it intact.

use memimg::{verify_bytes, ErrorKind, Image, Status, VerifyOptions};
use memimg_tests::{parts_of, small_1_1_images, small_images};

fn sweep_bits(
    bytes: &[u8],
    key: Option<&memimg::Key>,
    bits: &[usize],
) -> (usize, usize, Vec<String>) {
    let opts = VerifyOptions {
        decode: true,
        progress: None,
    };
    let mut detected = 0;
    let mut missed = Vec::new();
    for &bit in bits {
        let mut d = bytes.to_vec();
        d[bit / 8] ^= 1 << (bit % 8);
        let r = verify_bytes(d, key, &opts);
        match r.status() {
            Status::Damaged => {
                assert!(
                    r.problems
                        .iter()
                        .all(|p| p.location.offset.is_some() || p.location.chunk.is_some()),
                    "bit {bit}: a problem without a location: {:?}",
                    r.problems
                );
                detected += 1;
            }
            Status::Unchecked => {
                let e = r.fatal.as_ref().unwrap();
                // Only a damaged magic may make the file "not an image".
                if e.kind() == ErrorKind::NotAnImage && bit / 8 < 8 {
                    detected += 1;
                } else {
                    missed.push(format!("bit {bit}: unchecked: {e}"));
                }
            }
            Status::Intact => {
                missed.push(format!("bit {bit} (byte {:#x}): reported intact", bit / 8))
            }
        }
    }
    (bits.len(), detected, missed)
}

#[test]
fn every_bit_flip_is_detected() {
    let mut images = small_images().unwrap();
    // Format 1.1: children (parent record and hint, in-parent extents), one
    // of them encrypted with a bound key slot.
    images.extend(small_1_1_images().unwrap());
    let mut threads = Vec::new();
    for (name, bytes, key) in images {
        threads.push(std::thread::spawn(move || {
            let (h, data, idx, tr) = parts_of(&bytes);
            let mut bits: Vec<usize> = (h.start * 8..h.end * 8).collect();
            bits.extend(idx.start * 8..idx.end * 8);
            bits.extend(tr.start * 8..tr.end * 8);
            let structural = bits.len();
            // A deterministic sample of chunk data and padding: one bit in every 7 bytes.
            bits.extend((data.start..data.end).step_by(7).map(|b| b * 8 + b % 8));
            let (tried, detected, missed) = sweep_bits(&bytes, key.as_ref(), &bits);
            println!(
                "bit flips, {name}: {tried} tried ({structural} header/index/trailer, {} data/padding), {detected} detected, {} missed",
                tried - structural,
                missed.len()
            );
            assert!(missed.is_empty(), "{name}: {missed:#?}");
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn every_truncation_is_a_typed_error() {
    let mut images = small_images().unwrap();
    images.extend(small_1_1_images().unwrap());
    for (name, bytes, key) in images {
        let mut kinds = std::collections::BTreeMap::new();
        for len in 0..bytes.len() {
            let e = Image::from_bytes(bytes[..len].to_vec(), key.as_ref())
                .err()
                .unwrap_or_else(|| panic!("{name}: truncated to {len} bytes still opens"));
            *kinds.entry(format!("{:?}", e.kind())).or_insert(0usize) += 1;
        }
        println!(
            "truncations, {name}: {} tried, all typed errors: {kinds:?}",
            bytes.len()
        );
        // And verify on a sample never says intact.
        for len in (0..bytes.len()).step_by(997) {
            let r = verify_bytes(
                bytes[..len].to_vec(),
                key.as_ref(),
                &VerifyOptions::default(),
            );
            assert_ne!(r.status(), Status::Intact, "{name} at {len}");
        }
    }
}

#[test]
fn damage_reports_name_the_place() {
    let (_, bytes, _) = small_images().unwrap().remove(1);
    let (_, data, _, _) = parts_of(&bytes);
    let mut d = bytes.clone();
    d[data.start + 10] ^= 0xff;
    let r = verify_bytes(d, None, &VerifyOptions::default());
    assert_eq!(r.status(), Status::Damaged);
    let p = &r.problems[0];
    assert_eq!(p.location.chunk, Some(0));
    assert_eq!(p.location.region, Some(0));
    assert_eq!(p.location.addr, Some(0x40_0000));
    let s = p.to_string();
    assert!(
        s.contains("chunk 0") && s.contains("stored checksum"),
        "{s}"
    );
    // Two damaged chunks: both are reported, not only the first.
    let mut d = bytes.clone();
    let img = Image::from_bytes(bytes.clone(), None).unwrap();
    let locs = img.chunk_locs().to_vec();
    d[locs[0].offset as usize] ^= 1;
    d[locs[locs.len() - 1].offset as usize] ^= 1;
    let r = verify_bytes(d, None, &VerifyOptions::default());
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
}
