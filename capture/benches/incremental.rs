//! Incremental images (issue 12), in one run, for `MEMIMG_BENCH_INCR_MIB`
//! MiB (1024 by default) with 1% of the pages changed:
//!
//! 1. child size against a full image (target: at most 2%);
//! 2. incremental capture time against a full capture of the same process
//!    (target: at most 25%; reading and hashing everything is the floor);
//! 3. incremental persist time with write tracking against a full persist
//!    (target: at most 5%);
//! 4. restore time of a 5-deep chain against the flattened image, per
//!    strategy, each restore followed by a read of every page (target: at
//!    most 1.2x).
//!
//! Each figure is the best of `MEMIMG_BENCH_RUNS` runs (3 by default), warm
//! page cache, images not synced (`durable: false` for captures; persists
//! sync, both sides alike); a line `samples` after each gives every run's
//! figure on both sides, and their medians. The restores of the chain and
//! of the flattened image alternate. `MEMIMG_BENCH_INCR_CAPTURE=0` leaves
//! out figures 1 and 2, `MEMIMG_BENCH_INCR_PERSIST=0` figures 3 and 4;
//! `MEMIMG_BENCH_INCR_ZEROS=1` leaves a quarter of
//! every MiB of the persisted memory zero (a gap between the full image's
//! runs in every MiB); `MEMIMG_BENCH_INCR_KEEP=DIR` writes the chain and
//! its flattened copy into DIR and keeps them (to profile a restore). The
//! 1% are scattered pages, chosen at random: the hardest case for
//! chunk-level comparison, which the capture answers by comparing the
//! differing chunks page by page, by the parent's page digests (the target
//! rows: both sides are captured with `page_digests`) or by decoding the
//! parent (printed beside them, no target).
//!
//! Lines `@@BENCH\t…` join scripts/bench.sh's table (scripts/bench.d/
//! incremental.sh runs this bench): ratio > 1 means the incremental side is
//! better by that factor than the target allows, as `target / measured`.
//!
//! ```text
//! cargo bench -p memimg-capture --bench incremental
//! MEMIMG_BENCH_INCR_MIB=64 MEMIMG_BENCH_RUNS=1 cargo bench -p memimg-capture --bench incremental
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memimg::{Chain, ChainOptions, Codec, RegionKind};
use memimg_capture::{
    capture_to_path, restore, CaptureOptions, PersistOptions, Persister, RestoreOptions, Strategy,
    TrackOptions,
};

const PS: usize = 4096;
const ROLE: &str = "MEMIMG_INCR_BENCH_ROLE";
/// Where the persisted region lives, in this process and in the restoring
/// one.
const ADDR: u64 = 0x3c00_0000_0000;

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn map_at(addr: u64, len: usize) -> *mut u8 {
    let flags = libc::MAP_PRIVATE
        | libc::MAP_ANONYMOUS
        | if addr != 0 {
            libc::MAP_FIXED_NOREPLACE
        } else {
            0
        };
    // SAFETY: a fresh anonymous mapping; MAP_FIXED_NOREPLACE never replaces
    // an existing one.
    let p = unsafe {
        libc::mmap(
            addr as usize as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED && (addr == 0 || p as u64 == addr));
    p.cast()
}

/// Fills page `p`: 1 KiB of noise, then text (compresses about 3x).
fn fill_page(page: &mut [u8], p: u64, g: u64) {
    let mut x = (p + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (g << 32) | 1;
    for c in page[..1024].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    let t = b"the quick brown fox jumps over the lazy dog ";
    for (i, b) in page[1024..].iter_mut().enumerate() {
        *b = t[i % t.len()];
    }
}

/// 1% of `pages`, scattered, from `seed`.
fn one_percent(pages: usize, seed: u64) -> Vec<usize> {
    let mut x = seed | 1;
    let mut v: Vec<usize> = (0..pages / 100)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as usize % pages
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The target process: maps `mib` MiB, fills it, prints READY; each line
/// `change G` on stdin rewrites 1% of its pages as generation G and prints
/// CHANGED.
fn target(mib: usize) {
    let len = mib << 20;
    let base = map_at(0, len);
    // SAFETY: the mapping just made, `len` bytes.
    let mem = unsafe { std::slice::from_raw_parts_mut(base, len) };
    for (p, page) in mem.chunks_mut(PS).enumerate() {
        fill_page(page, p as u64, 0);
    }
    println!("READY");
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let g: u64 = line.strip_prefix("change ").unwrap().parse().unwrap();
        for p in one_percent(len / PS, g) {
            fill_page(&mut mem[p * PS..(p + 1) * PS], p as u64, g);
        }
        println!("CHANGED");
    }
}

/// Restores IMG with STRATEGY, reads every page of the region, prints the
/// time of both.
fn restorer(img: &str, strategy: &str, len: usize) {
    let t = Instant::now();
    let r = restore(
        Path::new(img),
        &RestoreOptions {
            strategy: strategy.parse().unwrap(),
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    let returned = t.elapsed();
    let mut sum = 0u64;
    for p in 0..len / PS {
        // SAFETY: the region is restored, readable, at ADDR.
        sum = sum.wrapping_add(u64::from(unsafe {
            std::ptr::read_volatile((ADDR as usize + p * PS) as *const u8)
        }));
    }
    let all = t.elapsed();
    drop(r);
    println!("TIME {} {} {sum}", returned.as_nanos(), all.as_nanos());
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Prints every run's figure of both sides, and their medians.
fn samples(ours: &[f64], full: &[f64], unit: &str) {
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "  samples ({unit}): ours [{}] median {:.1}; full [{}] median {:.1}; ratio of medians {:.3}",
        show(ours),
        median(ours),
        show(full),
        median(full),
        median(ours) / median(full)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Prints a figure: `ours` against `full`, the ratio `ours / full`, and
/// whether it is within `target` (a fraction of the full side).
fn emit(figure: &str, ours: f64, full: f64, unit: &str, target: f64, work: &str) {
    let frac = ours / full;
    let met = if frac <= target { "met" } else { "MISSED" };
    println!(
        "{figure:<48} {ours:>10.1} {unit:<4} against {full:>10.1} {unit:<4} = {:>6.2}% (target <= {:.0}%: {met})",
        frac * 100.0,
        target * 100.0
    );
    println!(
        "@@BENCH\tincremental\t{figure}\t{ours:.3}\t{unit}\tfull\t{full:.3}\t{:.3}\t1\t{work}",
        target / frac
    );
}

fn sh(mut c: Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let mut it = role.split(':');
        match it.next().unwrap() {
            "target" => target(it.next().unwrap().parse().unwrap()),
            "restore" => restorer(
                it.next().unwrap(),
                it.next().unwrap(),
                it.next().unwrap().parse().unwrap(),
            ),
            r => panic!("unknown role {r}"),
        }
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("incremental bench: run with `cargo bench -p memimg-capture --bench incremental`");
        return;
    }
    let mib = env_num("MEMIMG_BENCH_INCR_MIB", 1024);
    let runs = env_num("MEMIMG_BENCH_RUNS", 3);
    let tmp = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("MEMIMG_BENCH_INCR_KEEP").map(PathBuf::from);
    let dir = keep.as_deref().unwrap_or(tmp.path());
    println!(
        "== incremental images: {mib} MiB, 1% of pages changed (scattered), best of {runs}; load {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    if env_num("MEMIMG_BENCH_INCR_CAPTURE", 1) != 0 {
        capture_figures(dir, mib, runs);
    }
    if env_num("MEMIMG_BENCH_INCR_PERSIST", 1) != 0 {
        persist_and_restore_figures(dir, mib, runs, keep.is_some());
    }
}

/// Figures 1 and 2: a live process captured full, then as a child: with
/// page digests (the parent's index holds a digest of each page, so the
/// child compares pages without decoding the parent: the target rows, both
/// sides writing digests), and without (the parent's chunks that hold a
/// changed page are decoded and compared; shown, no target). The two ways
/// alternate run by run.
fn capture_figures(dir: &Path, mib: usize, runs: usize) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env(ROLE, format!("target:{mib}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "READY");
    let pid = i32::try_from(child.id()).unwrap();
    let opts = |digests: bool| CaptureOptions {
        durable: false,
        page_digests: digests,
        ..CaptureOptions::default()
    };
    let ways = [true, false];
    let base = |d: bool| dir.join(format!("base-{d}.mimg"));
    let kid = |d: bool| dir.join(format!("child-{d}.mimg"));
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        ms(t.elapsed())
    };
    // [way][run], ms.
    let mut full_ms = vec![Vec::new(); 2];
    for _ in 0..runs {
        for (w, &d) in ways.iter().enumerate() {
            full_ms[w].push(time(&mut || {
                capture_to_path(pid, &base(d), &opts(d)).unwrap();
            }));
        }
    }
    writeln!(stdin, "change 1").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "CHANGED");
    let chains: Vec<_> = ways
        .iter()
        .map(|&d| Arc::new(Chain::open(base(d), None, &ChainOptions::default()).unwrap()))
        .collect();
    let mut incr_ms = vec![Vec::new(); 2];
    let mut stored = [0; 2];
    let mut decoded = [0; 2];
    for _ in 0..runs {
        for (w, &d) in ways.iter().enumerate() {
            let copts = CaptureOptions {
                parent: Some(Arc::clone(&chains[w])),
                parent_hint: Some(format!("base-{d}.mimg")),
                ..opts(d)
            };
            incr_ms[w].push(time(&mut || {
                let r = capture_to_path(pid, &kid(d), &copts).unwrap();
                stored[w] = r.stats.data_bytes;
                decoded[w] = r.compare.map_or(0, |c| c.decoded);
            }));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let size = |p: PathBuf| std::fs::metadata(p).unwrap().len() as f64 / 1048576.0;
    let low = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    for (w, &d) in ways.iter().enumerate() {
        println!(
            "  capture, {}: full {:.1} MiB file, child {:.1} MiB file ({} KiB of pages stored, {} MiB of the parent decoded)",
            if d { "page digests" } else { "no page digests" },
            size(base(d)),
            size(kid(d)),
            stored[w] >> 10,
            decoded[w] >> 20
        );
    }
    emit(
        "child image size (capture --parent, zstd:1)",
        size(kid(true)),
        size(base(true)),
        "MiB",
        0.02,
        "child of a live capture against a full capture of the same process, zstd:1, both with page digests",
    );
    emit(
        "incremental capture time",
        low(&incr_ms[0]),
        low(&full_ms[0]),
        "ms",
        0.25,
        "capture --parent of a parent with page digests (reads and hashes every page) against a full capture with page digests, zstd:1, not synced",
    );
    samples(&incr_ms[0], &full_ms[0], "ms");
    println!(
        "  without page digests (no target): child {:.1} ms against full {:.1} ms = {:.2}% (best of {runs})",
        low(&incr_ms[1]),
        low(&full_ms[1]),
        low(&incr_ms[1]) / low(&full_ms[1]) * 100.0
    );
    samples(&incr_ms[1], &full_ms[1], "ms");
    for d in ways {
        let _ = std::fs::remove_file(base(d));
        let _ = std::fs::remove_file(kid(d));
    }
}

/// Figures 3 and 4: a tracked persist, its children, a 5-deep chain
/// restored against its flattened image.
fn persist_and_restore_figures(dir: &Path, mib: usize, runs: usize, keep: bool) {
    let len = mib << 20;
    let pages = len / PS;
    let base = map_at(ADDR, len);
    // SAFETY: the mapping just made, `len` bytes; written below only
    // between persists.
    let mem = unsafe { std::slice::from_raw_parts_mut(base, len) };
    // MEMIMG_BENCH_INCR_ZEROS=1: the second quarter of every MiB is left
    // zero (as in the capture bench's mixed memory), so that the full image
    // has a gap between its runs in every MiB.
    let zeros = env_num("MEMIMG_BENCH_INCR_ZEROS", 0) != 0;
    for (p, page) in mem.chunks_mut(PS).enumerate() {
        if zeros && p % 256 / 64 == 1 {
            continue;
        }
        fill_page(page, p as u64, 0);
    }
    // SAFETY: as above: a shared view the persister reads.
    let view = unsafe { std::slice::from_raw_parts(base.cast_const(), len) };
    let persister = Persister::new()
        .region(view, RegionKind::Heap, "arena")
        .track(&TrackOptions::default())
        .unwrap();
    let method = persister.tracking().unwrap().method;
    let po = PersistOptions::default();
    let full_path = dir.join("p0.img");
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut full = Duration::MAX;
    let mut incr = Duration::MAX;
    let (mut full_ms, mut incr_ms) = (Vec::new(), Vec::new());
    for run in 0..runs.max(1) {
        let t = Instant::now();
        persister.write_to_path(&full_path, &po).unwrap();
        full = full.min(t.elapsed());
        full_ms.push(ms(t.elapsed()));
        paths = vec![full_path.clone()];
        // Five children, 1% each; the first is timed.
        for g in 1..=5u64 {
            for p in one_percent(pages, g + 10 * run as u64) {
                let page = &mut mem[p * PS..(p + 1) * PS];
                fill_page(page, p as u64, g);
            }
            let path = dir.join(format!("p{g}.img"));
            let hint = format!("p{}.img", g - 1);
            let t = Instant::now();
            persister
                .write_child_to_path(&path, Some(&hint), &po)
                .unwrap();
            if g == 1 {
                incr = incr.min(t.elapsed());
                incr_ms.push(ms(t.elapsed()));
            }
            paths.push(path);
        }
    }
    emit(
        &format!("incremental persist time ({method})"),
        ms(incr),
        ms(full),
        "ms",
        0.05,
        "persist of a child with write tracking against a full persist, codec none, synced",
    );
    samples(&incr_ms, &full_ms, "ms");
    // The 5-deep chain and its flattened copy.
    let last = paths.last().unwrap().clone();
    let chain = Chain::open(&last, None, &ChainOptions::default()).unwrap();
    assert_eq!(chain.links().len(), 6);
    let flat = dir.join("flat.img");
    let f = std::fs::File::create(&flat).unwrap();
    let opts = memimg::options_from(chain.image())
        .unwrap()
        .codec(Codec::None);
    memimg::flatten(&chain, std::io::BufWriter::new(f), opts, &|_| {}).unwrap();
    drop(chain);
    drop(persister);
    let exe = std::env::current_exe().unwrap();
    for strategy in [Strategy::Mmap, Strategy::Eager, Strategy::Lazy] {
        let once = |img: &Path| {
            let mut c = Command::new(&exe);
            c.env(ROLE, format!("restore:{}:{strategy}:{len}", img.display()));
            let out = sh(c);
            let line = out.lines().find(|l| l.starts_with("TIME ")).unwrap();
            let all: u64 = line.split(' ').nth(2).unwrap().parse().unwrap();
            Duration::from_nanos(all)
        };
        // The chain and the flattened image alternate, run by run.
        let (mut cs, mut fs) = (Vec::new(), Vec::new());
        for _ in 0..runs.max(1) {
            cs.push(once(&last));
            fs.push(once(&flat));
        }
        let (c, f) = (*cs.iter().min().unwrap(), *fs.iter().min().unwrap());
        emit(
            &format!("restore of a 5-deep chain, {strategy}"),
            ms(c),
            ms(f),
            "ms",
            1.2,
            "restore + read of every page, chain of a full image and 5 children against the flattened image",
        );
        let v = |d: &[Duration]| d.iter().map(|&x| ms(x)).collect::<Vec<_>>();
        samples(&v(&cs), &v(&fs), "ms");
    }
    // SAFETY: our own mapping, no longer borrowed.
    unsafe { libc::munmap(base.cast(), len) };
    if keep {
        println!("  kept: {} and {}", last.display(), flat.display());
        return;
    }
    for p in paths.iter().chain([&flat]) {
        let _ = std::fs::remove_file(p);
    }
}
