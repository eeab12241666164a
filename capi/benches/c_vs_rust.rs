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
//! The C example is compiled with `cc -O2` against `libmemimg.so` of this
//! build; the Rust example is built with `cargo build --release`.
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

fn build_c(out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = target_dir();
    assert!(
        lib.join("libmemimg.so").exists(),
        "no libmemimg.so in {}",
        lib.display()
    );
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let o = Command::new(&cc)
        .args(["-O2", "-Wall"])
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join("examples/arena.c"))
        .arg(format!("-L{}", lib.display()))
        .arg("-lmemimg")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
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
    build_c(&c_exe);
    let rust_exe = build_rust();
    println!("arena of {n} strings, {runs} runs of each side after one warm-up run each");
    let (_, c_sizes) = run(&c_exe, n);
    let (_, rust_sizes) = run(&rust_exe, n);
    println!("C:    {}", c_sizes.join(", "));
    println!("Rust: {}", rust_sizes.join(", "));
    assert_eq!(
        c_sizes, rust_sizes,
        "the two programs did not build the same data"
    );
    let mut c: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut r: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for i in 0..runs {
        // Alternate which side goes first.
        let order: [(&Path, bool); 2] = if i % 2 == 0 {
            [(c_exe.as_path(), true), (rust_exe.as_path(), false)]
        } else {
            [(rust_exe.as_path(), false), (c_exe.as_path(), true)]
        };
        for (exe, is_c) in order {
            let (t, _) = run(exe, n);
            let side = if is_c { &mut c } else { &mut r };
            for (k, v) in t {
                side.entry(k).or_default().push(v);
            }
        }
    }
    println!(
        "\n{:<16} {:>12} {:>20} {:>12} {:>20} {:>8}  target",
        "measure", "C ms", "C min-max", "Rust ms", "Rust min-max", "C/Rust"
    );
    for m in MEASURES {
        let (cv, rv) = (c.get_mut(m).unwrap(), r.get_mut(m).unwrap());
        let (cm, rm) = (median(cv), median(rv));
        let spread = |v: &[f64]| format!("{:.3}-{:.3}", v[0], v[v.len() - 1]);
        let ratio = cm / rm;
        println!(
            "{m:<16} {cm:>12.3} {:>20} {rm:>12.3} {:>20} {ratio:>8.3}  {}",
            spread(cv),
            spread(rv),
            if ratio <= 1.05 {
                "met (<= 1.05)"
            } else {
                "missed (> 1.05)"
            }
        );
    }
}
