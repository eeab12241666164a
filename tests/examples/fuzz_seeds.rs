//! Writes the fuzz seed corpora from real images made by the writer:
//! `cargo run -p memimg-tests --example fuzz_seeds -- fuzz/corpus`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let seeds = memimg_tests::fuzz::seeds();
    for t in [
        "open",
        "open_encrypted",
        "header",
        "trailer",
        "index",
        "roundtrip",
        "structured",
    ] {
        std::fs::create_dir_all(dir.join(t)).unwrap();
    }
    for (i, (name, bytes)) in seeds.iter().enumerate() {
        let (h, _, idx, tr) = memimg_tests::parts_of(bytes);
        let target = if *name == "encrypted" {
            "open_encrypted"
        } else {
            "open"
        };
        std::fs::write(dir.join(target).join(format!("seed-{i}-{name}")), bytes).unwrap();
        std::fs::write(dir.join("header").join(format!("seed-{i}")), &bytes[h]).unwrap();
        if *name != "encrypted" {
            std::fs::write(
                dir.join("index").join(format!("seed-{i}")),
                &bytes[idx.clone()],
            )
            .unwrap();
            // The trailer target gets everything after the header.
            std::fs::write(
                dir.join("trailer").join(format!("seed-{i}")),
                &bytes[4096..],
            )
            .unwrap();
            let _ = tr;
        }
    }
    for i in 0..8u8 {
        let v: Vec<u8> = (0..64u8)
            .map(|k| k.wrapping_mul(31).wrapping_add(i))
            .collect();
        std::fs::write(dir.join("roundtrip").join(format!("seed-{i}")), v).unwrap();
    }
    // Descriptions for the structured target: plain and encrypted, raw and
    // compressed, a few regions, no mutation, then the same with a few.
    let mut rng = memimg_tests::Rng::new(8);
    // From seed 16 on, format 1.1's other features too (flag 0x80, then a
    // byte of them: a bound key slot, an index nonce salt, a load order,
    // page digests).
    for i in 0..24u8 {
        let mut v = vec![0u8; 40 + usize::from(i % 16) * 8];
        rng.fill(&mut v);
        v[0] = i & 0x3c | (i >> 2 & 0x30);
        if i >= 16 {
            // Encrypted or not, raw or compressed; slot, salt, load order.
            v[0] = 0x80 | (i & 1) << 4 | (i & 2) << 4 | (i & 0x0c);
            v[1] = 7 | (i & 1) << 3;
        }
        if i % 16 < 8 {
            v.truncate(40);
        }
        std::fs::write(dir.join("structured").join(format!("seed-{i}")), v).unwrap();
    }
    println!("wrote {} seed images to {}", seeds.len(), dir.display());
}
