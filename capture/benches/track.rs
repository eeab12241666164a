//! Finding the pages a program wrote: write tracking against reading
//! everything, in one run.
//!
//! ```text
//! cargo bench -p memimg-capture --bench track                       # 1 GiB, 1% written, 5 runs
//! MEMIMG_TRACK_BENCH_MIB=64 MEMIMG_TRACK_BENCH_RUNS=2 cargo bench -p memimg-capture --bench track
//! ```
//!
//! A region of `MEMIMG_TRACK_BENCH_MIB` MiB (1024 by default) of this
//! process is filled with random bytes (every page resident). Each run then
//! writes one byte in 1% of its pages, scattered (another set each run), and
//! times, in this process and on the same memory:
//!
//! - **wp-async**: `take_written` of a tracker using userfaultfd
//!   write-protection and `PAGEMAP_SCAN` (finds the written pages and
//!   re-arms them; reads no memory);
//! - **checksums**: `take_written` of a tracker forced to the checksum
//!   fallback (reads and hashes everything, in parallel on all cores);
//! - **read all**: copying the whole region through a 512 KiB buffer, the
//!   reading a full persist does (one thread);
//! - **full persist**: `Persister::write_to(io::sink())`, codec none, one
//!   worker per core: what an incremental persist avoids.
//!
//! It also times writing the 1% while the pages are armed and while they are
//! not (the cost of the write-protect faults the program takes). Each row
//! prints the median and the range over `MEMIMG_TRACK_BENCH_RUNS` runs (5 by
//! default) after one warm-up run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss
)]

use std::time::{Duration, Instant};

use memimg::{Prot, RegionKind};
use memimg_capture::{PersistOptions, Persister, TrackMethod, TrackOptions, Tracker};

const PS: usize = 4096;
const MIB: usize = 1 << 20;

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Region {
    base: *mut u8,
    len: usize,
}

impl Region {
    fn new(len: usize) -> Region {
        // SAFETY: a fresh anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let r = Region {
            base: p.cast(),
            len,
        };
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..len / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // SAFETY: inside the mapping, 8-byte aligned.
            unsafe { r.base.cast::<u64>().add(i).write(x) };
        }
        r
    }

    fn range(&self) -> std::ops::Range<u64> {
        self.base as u64..self.base as u64 + self.len as u64
    }

    /// Changes one byte in each page of `pages`.
    fn write_pages(&self, pages: &[usize]) {
        for &p in pages {
            // SAFETY: inside the mapping.
            unsafe {
                let b = self.base.add(p * PS + (p * 61) % PS);
                b.write_volatile(b.read_volatile().wrapping_add(1));
            }
        }
    }
}

/// `count` distinct pages of `0..pages`, scattered.
fn scattered(pages: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut seen = vec![false; pages];
    let mut out = Vec::with_capacity(count);
    let mut x = seed | 1;
    while out.len() < count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = (x % pages as u64) as usize;
        if !seen[p] {
            seen[p] = true;
            out.push(p);
        }
    }
    out
}

/// Median, min and max.
struct Row {
    name: &'static str,
    what: String,
    times: Vec<Duration>,
}

impl Row {
    fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t[t.len() / 2]
    }
    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }
    fn print(&self) {
        let mut t = self.times.clone();
        t.sort();
        println!(
            "{:<26} {:>10.3} ms  ({:.3} .. {:.3})  {}",
            self.name,
            Self::ms(self.median()),
            Self::ms(t[0]),
            Self::ms(t[t.len() - 1]),
            self.what
        );
    }
}

fn main() {
    let mib = env_num("MEMIMG_TRACK_BENCH_MIB", 1024);
    let runs = env_num("MEMIMG_TRACK_BENCH_RUNS", 5).max(1);
    let len = mib * MIB;
    let pages = len / PS;
    let n = (pages / 100).max(1);
    println!(
        "track bench: {mib} MiB ({pages} pages), {n} pages (1%) written per run, median of {runs} runs after a warm-up"
    );
    let t0 = Instant::now();
    let region = Region::new(len);
    println!("filled in {:.0} ms", t0.elapsed().as_secs_f64() * 1e3);
    let sets: Vec<Vec<usize>> = (0..=runs as u64)
        .map(|i| scattered(pages, n, 0x1234_5678 + i))
        .collect();

    // wp-async.
    let t0 = Instant::now();
    let wp = Tracker::start(
        &[region.range()],
        &TrackOptions {
            force: Some(TrackMethod::WpAsync),
            ..TrackOptions::default()
        },
    );
    let arm = t0.elapsed();
    let mut wp_row = None;
    let mut armed_writes = Vec::new();
    match wp {
        Ok(mut t) => {
            println!(
                "wp-async: armed {mib} MiB in {:.3} ms",
                arm.as_secs_f64() * 1e3
            );
            let mut times = Vec::new();
            for (i, set) in sets.iter().enumerate() {
                let t1 = Instant::now();
                region.write_pages(set);
                let w = t1.elapsed();
                let t1 = Instant::now();
                let got = t.take_written().unwrap();
                let d = t1.elapsed();
                let found: u64 = got.iter().map(|r| (r.end - r.start) / PS as u64).sum();
                assert_eq!(found, set.len() as u64, "wp-async found another set");
                if i > 0 {
                    times.push(d);
                    armed_writes.push(w);
                }
            }
            wp_row = Some(Row {
                name: "wp-async take_written",
                what: format!("{n} pages found, 0 bytes read"),
                times,
            });
        }
        Err(e) => println!("wp-async: not available here: {e}"),
    }

    // Writes to pages that are not armed (no tracker), for the fault cost.
    let mut plain_writes = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let t1 = Instant::now();
        region.write_pages(set);
        if i > 0 {
            plain_writes.push(t1.elapsed());
        }
    }

    // checksums.
    let t0 = Instant::now();
    let mut sums = Tracker::start(
        &[region.range()],
        &TrackOptions {
            force: Some(TrackMethod::Checksums),
            ..TrackOptions::default()
        },
    )
    .unwrap();
    let first = t0.elapsed();
    println!(
        "checksums: first pass over {mib} MiB in {:.0} ms",
        first.as_secs_f64() * 1e3
    );
    let mut times = Vec::new();
    let mut pieces = 0;
    for (i, set) in sets.iter().enumerate() {
        region.write_pages(set);
        let t1 = Instant::now();
        let got = sums.take_written().unwrap();
        let d = t1.elapsed();
        pieces = got.iter().map(|r| r.end - r.start).sum::<u64>() / (512 << 10);
        if i > 0 {
            times.push(d);
        }
    }
    drop(sums);
    let sums_row = Row {
        name: "checksums take_written",
        what: format!("{pieces} pieces of 512 KiB reported, {mib} MiB read"),
        times,
    };

    // read all.
    let mut buf = vec![0u8; 512 << 10];
    let mut times = Vec::new();
    for i in 0..=runs {
        let t1 = Instant::now();
        let mut at = 0;
        while at < len {
            let k = buf.len().min(len - at);
            // SAFETY: inside the mapping; nothing writes meanwhile.
            let src = unsafe { std::slice::from_raw_parts(region.base.add(at), k) };
            buf[..k].copy_from_slice(src);
            std::hint::black_box(&buf);
            at += k;
        }
        if i > 0 {
            times.push(t1.elapsed());
        }
    }
    let read_row = Row {
        name: "read all",
        what: format!("{mib} MiB copied through 512 KiB, one thread"),
        times,
    };

    // full persist.
    // SAFETY: the region outlives the persister and nothing writes to it
    // while the image is written.
    let p = unsafe {
        Persister::new().region_raw(region.base, len, Prot::RW, RegionKind::Heap, "bench")
    };
    let mut times = Vec::new();
    for i in 0..=runs {
        let t1 = Instant::now();
        let (_, st) = p
            .write_to(std::io::sink(), &PersistOptions::default())
            .unwrap();
        if i > 0 {
            times.push(t1.elapsed());
        }
        std::hint::black_box(st);
    }
    let persist_row = Row {
        name: "full persist (to sink)",
        what: format!("codec none, {} workers", PersistOptions::default().workers),
        times,
    };

    println!();
    if let Some(r) = &wp_row {
        r.print();
    }
    sums_row.print();
    read_row.print();
    persist_row.print();
    println!();
    let ratio = |a: &Row, b: &Row| a.median().as_secs_f64() / b.median().as_secs_f64();
    if let Some(r) = &wp_row {
        println!(
            "wp-async / read all:       {:.4}  ({:.1}x faster)",
            ratio(r, &read_row),
            1.0 / ratio(r, &read_row)
        );
        println!("wp-async / full persist:   {:.4}", ratio(r, &persist_row));
    }
    println!(
        "checksums / read all:      {:.2}",
        ratio(&sums_row, &read_row)
    );
    if let Some(r) = &wp_row {
        println!("checksums / wp-async:      {:.1}", ratio(&sums_row, r));
    }
    if !armed_writes.is_empty() {
        armed_writes.sort();
        plain_writes.sort();
        let a = armed_writes[armed_writes.len() / 2].as_secs_f64();
        let b = plain_writes[plain_writes.len() / 2].as_secs_f64();
        println!(
            "writing {n} pages: {:.3} ms armed, {:.3} ms not armed: {:.2} us per first write to an armed page",
            a * 1e3,
            b * 1e3,
            (a - b) / n as f64 * 1e6
        );
    }
}
