//! Times the stages of a transcode (none → zstd:1) on the benchmark mix, to
//! see where recompress spends its time:
//! `cargo run --release -p memimg-tests --example transcode_profile [MiB]`.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation, missing_docs)]

use std::time::Instant;

use memimg::{
    options_from, transcode, Codec, Image, RegionInfo, VerifyOptions, Writer, WriterOptions,
};

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let data = memimg_tests::mixed_content(mb << 20, 4096, 7);
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = dir.path().join("src.img");
    let mut w = Writer::new(
        std::fs::File::create(&src).unwrap(),
        WriterOptions::new().codec(Codec::None),
    )
    .unwrap();
    for (i, part) in data.chunks(64 << 20).enumerate() {
        w.add_region(
            RegionInfo::new(0x1000_0000 + (i as u64) * (64 << 20), part.len() as u64),
            part,
        )
        .unwrap();
    }
    w.finish().unwrap();
    let img = Image::open(&src).unwrap();
    let dst = dir.path().join("dst.img");
    for round in 0..3 {
        let t = Instant::now();
        let opts = options_from(&img).unwrap().codec(Codec::Zstd(1));
        transcode(
            &img,
            std::io::BufWriter::new(std::fs::File::create(&dst).unwrap()),
            opts,
            &|_| {},
        )
        .unwrap();
        let t_tr = t.elapsed();
        let t = Instant::now();
        let r = memimg::verify_path(
            &dst,
            None,
            &VerifyOptions {
                decode: true,
                progress: None,
            },
        );
        assert!(r.is_intact());
        let t_ver = t.elapsed();
        let t = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0usize;
        for e in img.extents().unwrap() {
            let l = e.len(4096) as usize;
            img.decode_extent(e, &mut buf[..l]).unwrap();
            n += l;
        }
        let t_dec = t.elapsed();
        let t = Instant::now();
        let mut w = Writer::new(
            std::io::BufWriter::new(std::fs::File::create(&dst).unwrap()),
            WriterOptions::new().codec(Codec::Zstd(1)),
        )
        .unwrap();
        for (i, part) in data.chunks(64 << 20).enumerate() {
            w.add_region(
                RegionInfo::new(0x1000_0000 + (i as u64) * (64 << 20), part.len() as u64),
                part,
            )
            .unwrap();
        }
        w.finish().unwrap();
        println!(
            "round {round}: writer alone from memory {:.2}s",
            t.elapsed().as_secs_f64()
        );
        println!(
            "round {round}: transcode {:.2}s ({:.0} MB/s), deep verify of output {:.2}s, serial decode of source {:.2}s ({n} bytes)",
            t_tr.as_secs_f64(),
            (mb << 20) as f64 / t_tr.as_secs_f64() / 1e6,
            t_ver.as_secs_f64(),
            t_dec.as_secs_f64()
        );
    }
}
