//! Persist and restore through the C ABI against the Rust API, on the same
//! data: the C example (`capi/examples/arena.c`) against the Rust arena
//! example (`capture/examples/arena.rs`).
//!
//! ```text
//! cargo bench -p memimg-capi --bench c_vs_rust
//! CAPI_BENCH_N=500000 CAPI_BENCH_RUNS=3 cargo bench -p memimg-capi --bench c_vs_rust
//! ```
//!
//! Both programs build the same hash map (same layout, keys and hash, so the
//! same arena bytes: `imgtool diff` of their images says `identical`), of
//! `CAPI_BENCH_N` strings (default 3,000,000, a 192 MiB arena), persist it
//! raw and with zstd:1 with the same defaults (one worker per core, through
//! a temporary file, fsync and rename), and restore it in a new process with
//! mmap (raw image), eager and lazy (zstd:1). Each side runs as processes
//! and times its own calls the same way; the sides alternate, `CAPI_BENCH_RUNS`
//! times (default 5), after one warm-up run each. The table gives the median
//! and the spread (min to max) of each, and the ratio C / Rust of the
//! medians; the target is within 5%.
//!
//! The C example is compiled twice with `cc -O2`: against `libmemimg.so` of
//! this build ("C"), and with `libmemimg.a` linked into the executable ("C
//! static"), as the Rust example, built with `cargo build --release`, has
//! the library in its own. The three programs run in turn, each run
//! starting with the next side; the table gives both C sides against Rust.
//!
//! Each side's restore figure is the time of one call in a new process:
//! `memimg_restore()` in C, `memimg_capture::restore()` in Rust, with the
//! same strategy on the same kind of file; the walk that checks every node
//! comes after it, outside the figure, on both sides. Neither side warms
//! anything up first, so each figure includes the first touch of the code
//! it runs (page faults on the library's pages, the C side's first
//! `malloc`). Both sides persist the key count as validation data and check
//! it on restore. A restore figure is a fraction of a millisecond for mmap and
//! lazy: read the medians with their spreads, and run it on a quiet machine.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

// The tests' way of finding the compiler and the library and compiling C.
#[allow(dead_code)]
#[path = "../tests/c/support.rs"]
mod support;
use support::Link;

/// The measures both programs print, by name: milliseconds.
type Times = BTreeMap<&'static str, f64>;

const MEASURES: [&str; 5] = [
    "persist none",
    "persist zstd:1",
    "restore mmap",
    "restore eager",
    "restore lazy",
];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn target_dir() -> PathBuf {
    // This bench runs from target/release/deps.
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

/// Compiles the C example (`-O2`) as the tests do: against `libmemimg.so`,
/// or with `libmemimg.a` linked in (`Link::Static`), as the Rust example
/// has the library in its executable.
fn build_c(out: &Path, link: Link) {
    let cc = support::cc().expect("no working C compiler ($CC or cc)");
    let src = support::crate_dir().join("examples/arena.c");
    support::compile(cc, &[src], out, link, &["-O2"]);
}

fn build_rust() -> PathBuf {
    let o = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "memimg-capture",
            "--example",
            "arena",
        ])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .unwrap();
    assert!(o.success(), "building the Rust arena example failed");
    let exe = target_dir().parent().unwrap().join("examples/arena");
    assert!(exe.exists(), "{} was not built", exe.display());
    exe
}

/// Runs one program and reads its times and the sizes it reports.
fn run(exe: &Path, n: u64) -> (Times, Vec<String>) {
    let o = Command::new(exe)
        .env("ARENA_N", n.to_string())
        // The Rust example's load-order phase (after the strategies) is
        // not compared here: without this it ran after every restore, as
        // extra work for the machine and the bench's time.
        .env("ARENA_PHASE", "strategies")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{} failed:\n{text}{}",
        exe.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let mut t = Times::new();
    let mut sizes = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "persisted with codec none: 192 MiB file in 228 ms"
        if let ["persisted", "with", "codec", codec, mib, "MiB", "file", "in", ms, "ms"] = f[..] {
            let key = if codec == "none:" {
                "persist none"
            } else {
                "persist zstd:1"
            };
            t.insert(key, ms.parse().unwrap());
            sizes.push(format!("{codec} {mib} MiB"));
        }
        // "built a hash map of N strings in a 192 MiB arena at ..." (11 words)
        if line.starts_with("built a hash map") {
            sizes.push(f[..f.len().min(11)].join(" "));
        }
        // "mmap     raw      0.284   1048.5   0 [checked]"
        if f.len() >= 5 {
            let key = match (f[0], f[1]) {
                ("mmap", "raw") => "restore mmap",
                ("eager", "zstd:1") => "restore eager",
                ("lazy", "zstd:1") => "restore lazy",
                _ => continue,
            };
            t.insert(key, f[2].parse().unwrap());
        }
    }
    for m in MEASURES {
        assert!(
            t.contains_key(m),
            "{} printed no {m}:\n{text}",
            exe.display()
        );
    }
    (t, sizes)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    // `cargo bench` passes --bench; anything else (cargo test's listing)
    // means: do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_or("CAPI_BENCH_N", 3_000_000);
    let runs = env_or("CAPI_BENCH_RUNS", 5).max(1);
    let dir = tempfile::tempdir().unwrap();
    let c_exe = dir.path().join("arena-c");
    build_c(&c_exe, Link::Shared);
    let cs_exe = dir.path().join("arena-c-static");
    build_c(&cs_exe, Link::Static);
    let rust_exe = build_rust();
    // The sides, in the order of the table; each run starts with the next
    // one in turn, so that no side always goes first.
    let sides: [(&str, &Path); 3] = [
        ("C", c_exe.as_path()),
        ("C static", cs_exe.as_path()),
        ("Rust", rust_exe.as_path()),
    ];
    println!("arena of {n} strings, {runs} runs of each side after one warm-up run each");
    let mut sizes = Vec::new();
    for (name, exe) in sides {
        let (_, s) = run(exe, n);
        println!("{name:<9} {}", s.join(", "));
        sizes.push(s);
    }
    assert!(
        sizes.windows(2).all(|w| w[0] == w[1]),
        "the programs did not build the same data"
    );
    let mut times: Vec<BTreeMap<&str, Vec<f64>>> = vec![BTreeMap::new(); sides.len()];
    for i in 0..usize::try_from(runs).unwrap() {
        for j in 0..sides.len() {
            let side = (i + j) % sides.len();
            let (t, _) = run(sides[side].1, n);
            for (k, v) in t {
                times[side].entry(k).or_default().push(v);
            }
        }
    }
    println!(
        "\n{:<16} {:>9} {:>17} {:>9} {:>17} {:>9} {:>17} {:>7} {:>9}  target <= 1.05",
        "measure",
        "C ms",
        "min-max",
        "static",
        "min-max",
        "Rust ms",
        "min-max",
        "C/Rust",
        "static/R"
    );
    let spread = |v: &[f64]| format!("{:.3}-{:.3}", v[0], v[v.len() - 1]);
    let verdict = |r: f64| if r <= 1.05 { "met" } else { "missed" };
    for m in MEASURES {
        let mut cells = String::new();
        let mut medians = Vec::new();
        for side in times.iter_mut() {
            let v = side.get_mut(m).unwrap();
            let med = median(v);
            cells.push_str(&format!(" {med:>9.3} {:>17}", spread(v)));
            medians.push(med);
        }
        let (c, cs) = (medians[0] / medians[2], medians[1] / medians[2]);
        println!(
            "{m:<16}{cells} {c:>7.3} {cs:>9.3}  {}, {}",
            verdict(c),
            verdict(cs)
        );
    }
}
