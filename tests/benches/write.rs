//! Writer throughput against the peers, measured in the same run.
//!
//! ```text
//! cargo bench -p memimg-tests --bench write            # 256 MiB, 5 runs
//! MEMIMG_BENCH_MB=64 MEMIMG_BENCH_RUNS=3 cargo bench -p memimg-tests --bench write
//! ```
//!
//! The content is the issue's mix: ¼ random, ¼ zero pages, ½ heap-like
//! records. It prints **medians** of `MEMIMG_BENCH_RUNS` runs after one
//! warm-up, with the spread (min–max), and the ratios the targets are stated
//! in:
//! - zstd level 1 on 2 workers vs `zstd -1 -T2` of the same bytes, file to
//!   file (target ≥ 0.9×);
//! - uncompressed vs writing the same bytes into a file (target ≥ 0.8×);
//! - and, to choose the default chunk size, throughput and size by chunk size.
//!
//! Neither side syncs in those rows (the page cache takes the output); the
//! same runs ending with an `fsync` of the output, on both sides, are shown
//! beside them. Each figure is also a `@@BENCH` line for `scripts/bench.sh`
//! (see `capture/benches/capture.rs`).
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

/// Median, min and max wall time.
type Spread = (Duration, Duration, Duration);

/// Median, min and max.
fn median(mut v: Vec<Duration>) -> Spread {
    v.sort();
    (v[v.len() / 2], v[0], v[v.len() - 1])
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

/// Median (min, max) wall time of `runs` runs of `f` after a warm-up run
/// (page cache of the output file); with `sync`, each run ends with an
/// fsync of `out`.
fn time(runs: usize, out: &Path, sync: bool, mut f: impl FnMut()) -> Spread {
    f();
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                if sync {
                    std::fs::File::open(out).unwrap().sync_all().unwrap();
                }
                t.elapsed()
            })
            .collect(),
    )
}

/// One `@@BENCH` line: ratio > 1 is better for memimg.
fn emit(figure: &str, ours: f64, peer: &str, theirs: f64, target: Option<f64>, work: &str) {
    let t = target.map_or("-".to_string(), |t| format!("{t}"));
    println!(
        "@@BENCH\twriter\t{figure}\t{ours:.3}\tGB/s\t{peer}\t{theirs:.3}\t{:.3}\t{t}\t{work}",
        ours / theirs
    );
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
    println!("writer benchmark: {mb} MiB of mixed content (1/4 random, 1/4 zero, 1/2 heap records), medians of {runs} runs after a warm-up");

    let has_zstd = Command::new("zstd").arg("--version").output().is_ok();
    let mut zstd_size = 0;
    let mut ours_size = 0;
    let mut raw_size = 0;
    // [not synced, synced] of each row.
    let mut rows: Vec<(&str, [Spread; 2], f64)> = Vec::new();
    for sync in [false, true] {
        let k = usize::from(sync);
        let mut put = |name, t, size: u64| {
            if let Some(r) = rows.iter_mut().find(|r| r.0 == name) {
                r.1[k] = t;
            } else {
                let mut v = [t; 2];
                v[k] = t;
                rows.push((name, v, size as f64 / 1048576.0));
            }
        };
        if has_zstd {
            let t = time(runs, &out, sync, || {
                let s = Command::new("zstd")
                    .args(["-q", "-f", "-1", "-T2"])
                    .arg(&input)
                    .arg("-o")
                    .arg(&out)
                    .status()
                    .unwrap();
                assert!(s.success());
            });
            zstd_size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            put("zstd -1 -T2 (file to file)", t, zstd_size);
        }
        let t = time(runs, &out, sync, || {
            ours_size = write_image(&data, &out, Codec::Zstd(1), memimg::DEFAULT_CHUNK_SIZE, 2)
        });
        put("memimg zstd:1, 2 workers", t, ours_size);
        let t = time(runs, &out, sync, || std::fs::write(&out, &data).unwrap());
        put("write the bytes to a file", t, len as u64);
        let t = time(runs, &out, sync, || {
            raw_size = write_image(&data, &out, Codec::None, memimg::DEFAULT_CHUNK_SIZE, 2)
        });
        put("memimg codec none, 2 workers", t, raw_size);
    }
    let _ = (zstd_size, ours_size, raw_size);
    println!(
        "{:<34} {:>22} {:>22} {:>11}",
        "", "GB/s not synced (spread)", "GB/s synced (spread)", "output MiB"
    );
    let cell = |t: Spread| {
        format!(
            "{:.3} ({:.2}-{:.2})",
            gbs(len, t.0),
            gbs(len, t.2),
            gbs(len, t.1)
        )
    };
    for (name, t, size) in &rows {
        println!(
            "{name:<34} {:>22} {:>22} {size:>11.1}",
            cell(t[0]),
            cell(t[1])
        );
    }
    let find = |n: &str| rows.iter().find(|r| r.0 == n).map(|r| r.1);
    let ours_z = find("memimg zstd:1, 2 workers").unwrap();
    let copy = find("write the bytes to a file").unwrap();
    let ours_raw = find("memimg codec none, 2 workers").unwrap();
    for (k, sync) in [(0, "not synced"), (1, "synced")] {
        if let Some(z) = find("zstd -1 -T2 (file to file)") {
            println!(
                "ratio zstd:1 vs zstd -1 -T2, {sync}: {:.2}x (target >= 0.90x)",
                z[k].0.as_secs_f64() / ours_z[k].0.as_secs_f64()
            );
            emit(
                &format!("write, {mb} MiB, zstd:1, {sync}"),
                gbs(len, ours_z[k].0),
                "zstd -1 -T2, file to file",
                gbs(len, z[k].0),
                Some(0.9),
                "the same bytes, level 1, two threads, each output in the page cache (synced: then fsynced)",
            );
        }
        println!(
            "ratio none vs file write, {sync}:    {:.2}x (target >= 0.80x)",
            copy[k].0.as_secs_f64() / ours_raw[k].0.as_secs_f64()
        );
        emit(
            &format!("write, {mb} MiB, codec none, {sync}"),
            gbs(len, ours_raw[k].0),
            "writing the same bytes to a file",
            gbs(len, copy[k].0),
            Some(0.8),
            "memimg stores the non-zero pages with checksums; the peer writes every byte",
        );
    }

    if std::env::var_os("MEMIMG_BENCH_CHUNKS").is_some()
        || std::env::args().any(|a| a == "--chunks")
    {
        println!("\nchunk size (zstd:1, 2 workers)      GB/s   output MiB");
        for chunk in [64u32 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20] {
            let mut size = 0;
            let t = time(runs, &out, false, || {
                size = write_image(&data, &out, Codec::Zstd(1), chunk, 2)
            });
            println!(
                "{:>8} KiB                      {:>9.3} {:>10.1}",
                chunk >> 10,
                gbs(len, t.0),
                size as f64 / 1048576.0
            );
        }
    }
}
