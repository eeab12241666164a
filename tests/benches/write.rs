//! Writer throughput against the peers, measured in the same run.
//!
//! ```text
//! cargo bench -p memimg-tests --bench write            # 256 MiB, 5 runs
//! MEMIMG_BENCH_MB=64 MEMIMG_BENCH_RUNS=3 cargo bench -p memimg-tests --bench write
//! ```
//!
//! The content is the issue's mix: ¼ random, ¼ zero pages, ½ heap-like
//! records. It prints medians and the ratios the targets are stated in:
//! - zstd level 1 on 2 workers vs `zstd -1 -T2` of the same bytes (target ≥ 0.9×);
//! - uncompressed vs writing the same bytes into a file (target ≥ 0.8×);
//! - and, to choose the default chunk size, throughput and size by chunk size.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

use std::io::BufWriter;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use memimg::{Codec, RegionInfo, Writer, WriterOptions};
use memimg_tests::mixed_content;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn write_image(data: &[u8], path: &Path, codec: Codec, chunk: u32, workers: usize) -> u64 {
    let f = std::fs::File::create(path).unwrap();
    let opts = WriterOptions::new()
        .page_size(4096)
        .codec(codec)
        .chunk_size(chunk)
        .workers(workers);
    let mut w = Writer::new(BufWriter::with_capacity(1 << 20, f), opts).unwrap();
    // Regions of 64 MiB, as a process's big mappings would be.
    let step = 64 << 20;
    for (i, part) in data.chunks(step).enumerate() {
        w.add_region(
            RegionInfo::new(0x1000_0000 + (i * step) as u64, part.len() as u64),
            part,
        )
        .unwrap();
    }
    w.finish().unwrap().1.file_len
}

fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm: page cache of the output file
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn gbs(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mb: usize = std::env::var("MEMIMG_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let runs: usize = std::env::var("MEMIMG_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let len = mb << 20;
    let dir = tempfile::tempdir_in(
        std::env::var("MEMIMG_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .unwrap();
    let data = mixed_content(len, 4096, 42);
    let input = dir.path().join("input.raw");
    std::fs::write(&input, &data).unwrap();
    let out = dir.path().join("out");
    println!("writer benchmark: {mb} MiB of mixed content (1/4 random, 1/4 zero, 1/2 heap records), median of {runs} runs");

    let has_zstd = Command::new("zstd").arg("--version").output().is_ok();
    let t_zstd_cli = has_zstd.then(|| {
        time(runs, || {
            let s = Command::new("zstd")
                .args(["-q", "-f", "-1", "-T2"])
                .arg(&input)
                .arg("-o")
                .arg(&out)
                .status()
                .unwrap();
            assert!(s.success());
        })
    });
    let zstd_size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let mut ours_size = 0;
    let t_ours_z = time(runs, || {
        ours_size = write_image(&data, &out, Codec::Zstd(1), memimg::DEFAULT_CHUNK_SIZE, 2)
    });
    let t_copy = time(runs, || std::fs::write(&out, &data).unwrap());
    let mut raw_size = 0;
    let t_ours_raw = time(runs, || {
        raw_size = write_image(&data, &out, Codec::None, memimg::DEFAULT_CHUNK_SIZE, 2)
    });

    println!("{:<44} {:>9} {:>12}", "", "GB/s", "output MiB");
    if let Some(t) = t_zstd_cli {
        println!(
            "{:<44} {:>9.3} {:>12.1}",
            "zstd -1 -T2 (file to file)",
            gbs(len, t),
            zstd_size as f64 / 1048576.0
        );
    }
    println!(
        "{:<44} {:>9.3} {:>12.1}",
        "memimg zstd:1, 2 workers",
        gbs(len, t_ours_z),
        ours_size as f64 / 1048576.0
    );
    println!(
        "{:<44} {:>9.3} {:>12.1}",
        "write the bytes to a file",
        gbs(len, t_copy),
        len as f64 / 1048576.0
    );
    println!(
        "{:<44} {:>9.3} {:>12.1}",
        "memimg codec none, 2 workers",
        gbs(len, t_ours_raw),
        raw_size as f64 / 1048576.0
    );
    if let Some(t) = t_zstd_cli {
        println!(
            "ratio zstd:1 vs zstd -1 -T2: {:.2}x (target >= 0.90x)",
            t.as_secs_f64() / t_ours_z.as_secs_f64()
        );
    }
    println!(
        "ratio none vs file write:    {:.2}x (target >= 0.80x)",
        t_copy.as_secs_f64() / t_ours_raw.as_secs_f64()
    );

    if std::env::var_os("MEMIMG_BENCH_CHUNKS").is_some()
        || std::env::args().any(|a| a == "--chunks")
    {
        println!("\nchunk size (zstd:1, 2 workers)      GB/s   output MiB");
        for chunk in [64u32 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20] {
            let mut size = 0;
            let t = time(runs, || {
                size = write_image(&data, &out, Codec::Zstd(1), chunk, 2)
            });
            println!(
                "{:>8} KiB                      {:>9.3} {:>10.1}",
                chunk >> 10,
                gbs(len, t),
                size as f64 / 1048576.0
            );
        }
    }
}
