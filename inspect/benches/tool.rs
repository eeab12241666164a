//! Throughput of `imgtool verify`, `diff` and `recompress` against
//! `qemu-img check`, `qemu-img compare` and `qemu-img convert -c` on the same
//! content, in the same run.
//!
//! Run it (1 GiB by default; the page cache must hold a few copies):
//!
//! ```text
//! cargo bench -p imgtool --bench tool
//! IMGTOOL_BENCH_MIB=256 IMGTOOL_BENCH_RUNS=3 cargo bench -p imgtool --bench tool
//! ```
//!
//! `IMGTOOL_BENCH_DIR` picks the scratch directory (default: the system temp
//! dir); `IMGTOOL_BENCH_KEEP=1` keeps the images there afterwards (to profile
//! one command by hand). Every figure is the **median** of `IMGTOOL_BENCH_RUNS` runs (default
//! 5) of the real binaries, after one warm-up run, with the files in the page
//! cache; the spread (min–max) is printed beside it. Throughput is content
//! bytes (the raw disk size) per second.
//!
//! **Like with like.** Each ratio compares runs that do the same work on the
//! same bytes, and says what each side does:
//! - recompress: `imgtool recompress --codec zstd:3` of the uncompressed
//!   image (zero pages not stored) against `qemu-img convert -c` with zstd
//!   (level 3, its default) of the uncompressed qcow2 of the same content
//!   (zero clusters not allocated): the same non-zero bytes in, level 3 out;
//!   imgtool syncs its output (and decodes every chunk to check it), so
//!   qemu-img's output is synced too, timed, with the unsynced time beside;
//! - diff, two rows, each reading and comparing all the content of two copies
//!   of the same 1 GiB (zero runs unstored on both sides): (a) `imgtool diff`
//!   of two codec-none images with other chunking (512 and 256 KiB chunks, so
//!   no raw-content checksum matches and everything is read, checked and
//!   compared) against `qemu-img compare` of two uncompressed qcow2; (b) the
//!   same with two zstd:1 images (everything decoded) against `qemu-img
//!   compare` of two qcow2 whose clusters are compressed with zstd
//!   (`qemu-img convert -c -o compression_type=zstd`, zstd's default level 3,
//!   64 KiB clusters: everything decoded). The 2x target is on both. A diff of
//!   a recompressed copy (same chunking, the raw-content checksums match, so
//!   it reads each chunk's stored bytes and checks their stored checksums
//!   without decoding them) and the same diff with `--index-only` (no chunk
//!   byte read) are shown apart, against (b)'s peer, as the different work
//!   they are;
//! - verify: against its own target (3 GB/s); `qemu-img check` reads
//!   metadata only and is shown for reference, without a ratio.
//!
//! Besides the table, each figure is printed as a `@@BENCH` line for
//! `scripts/bench.sh` (see `capture/benches/capture.rs`).
//!
//! The content is a memory-like mix, deterministic: a quarter of the MiBs are
//! zero, the rest text-like words with some random 8-byte values (zstd level 1
//! compresses it about 3:1).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use memimg::{Codec, RegionInfo, Writer, WriterOptions};

const MIB: usize = 1 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// MiB number `i` of the content.
fn mib_of(i: usize, buf: &mut [u8]) {
    if i % 4 == 3 {
        buf.fill(0);
        return;
    }
    let words: [&[u8]; 8] = [
        b"alpha ", b"beta ", b"gamma ", b"delta ", b"heap ", b"page ", b"0123 ", b"\n",
    ];
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut p = 0;
    while p < buf.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let piece: [u8; 8];
        let w: &[u8] = if x % 100 < 20 {
            piece = x.to_le_bytes();
            &piece
        } else {
            words[(x >> 32) as usize % 8]
        };
        let n = w.len().min(buf.len() - p);
        buf[p..p + n].copy_from_slice(&w[..n]);
        p += n;
    }
}

fn opts(codec: Codec) -> WriterOptions {
    WriterOptions::new().page_size(4096).codec(codec)
}

/// Writes the raw disk image and memimg images of the same content.
fn prepare(dir: &Path, mib: usize) {
    let raw = dir.join("raw.img");
    let mut r = std::io::BufWriter::new(std::fs::File::create(&raw).unwrap());
    let mut none = Writer::new(
        std::fs::File::create(dir.join("none.mimg")).unwrap(),
        opts(Codec::None),
    )
    .unwrap();
    let mut zstd = Writer::new(
        std::fs::File::create(dir.join("zstd.mimg")).unwrap(),
        opts(Codec::Zstd(1)),
    )
    .unwrap();
    // Same content, other chunking (256 KiB chunks against 512 KiB): no
    // raw-content checksum matches, so diff must read (and, for zstd,
    // decode) and compare everything.
    let mut other = Writer::new(
        std::fs::File::create(dir.join("other.mimg")).unwrap(),
        opts(Codec::Zstd(1)).chunk_size(256 * 1024),
    )
    .unwrap();
    let mut other_none = Writer::new(
        std::fs::File::create(dir.join("other-none.mimg")).unwrap(),
        opts(Codec::None).chunk_size(256 * 1024),
    )
    .unwrap();
    let info = RegionInfo::new(0x1000_0000, (mib * MIB) as u64).name("heap");
    for w in [&mut none, &mut zstd] {
        w.begin_region(info.clone()).unwrap();
    }
    other_none.begin_region(info.clone()).unwrap();
    other.begin_region(info).unwrap();
    let mut buf = vec![0u8; MIB];
    for i in 0..mib {
        mib_of(i, &mut buf);
        r.write_all(&buf).unwrap();
        none.push_data(&buf).unwrap();
        zstd.push_data(&buf).unwrap();
        other.push_data(&buf).unwrap();
        other_none.push_data(&buf).unwrap();
    }
    for w in [&mut none, &mut zstd] {
        w.end_region().unwrap();
    }
    other.end_region().unwrap();
    other_none.end_region().unwrap();
    none.finish().unwrap();
    zstd.finish().unwrap();
    other.finish().unwrap();
    other_none.finish().unwrap();
    r.flush().unwrap();
    drop(r);
    qemu(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&raw),
        s(&dir.join("a.qcow2")),
    ]);
    qemu(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&raw),
        s(&dir.join("b.qcow2")),
    ]);
    // Two qcow2 of the same content with every cluster compressed with zstd
    // (qemu's level: zstd's default, 3): `qemu-img compare` of them decodes
    // everything, as imgtool's diff of two zstd images with other chunking.
    for name in ["a-zstd.qcow2", "b-zstd.qcow2"] {
        qemu(&[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
            s(&raw),
            s(&dir.join(name)),
        ]);
    }
    // A copy of the zstd image recompressed at another level: same extents.
    imgtool(&[
        "recompress",
        "--codec",
        "zstd:3",
        "-o",
        s(&dir.join("zstd3.mimg")),
        s(&dir.join("zstd.mimg")),
    ]);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu(args: &[&str]) {
    let o = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn imgtool(args: &[&str]) -> i32 {
    let o = Command::new(env!("CARGO_BIN_EXE_imgtool"))
        .args(args)
        .output()
        .unwrap();
    let code = o.status.code().unwrap_or(-1);
    assert!(
        code == 0,
        "imgtool {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    code
}

/// Wall times of `runs` runs of `f`, after one warm-up, sorted; `before`
/// runs untimed before each (removing an output file).
fn timed(runs: usize, before: &dyn Fn(), f: &dyn Fn()) -> Vec<Duration> {
    before();
    f();
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            before();
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t
}

/// Fsyncs a file (a peer's output, when memimg's side syncs too).
fn fsync(p: &Path) {
    std::fs::File::open(p).unwrap().sync_all().unwrap();
}

/// One `@@BENCH` line: ratio > 1 is better for imgtool; `target` is the
/// least ratio asked for.
#[allow(clippy::too_many_arguments)]
fn emit(
    figure: &str,
    ours: f64,
    unit: &str,
    peer: &str,
    theirs: f64,
    ratio: f64,
    target: Option<f64>,
    work: &str,
) {
    let t = target.map_or("-".to_string(), |t| format!("{t}"));
    println!("@@BENCH\timgtool\t{figure}\t{ours:.3}\t{unit}\t{peer}\t{theirs:.3}\t{ratio:.3}\t{t}\t{work}");
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // and expects a quick exit.
    if !std::env::args().any(|a| a == "--bench") {
        println!("tool bench: run with `cargo bench -p imgtool --bench tool`");
        return;
    }
    if Command::new("qemu-img").arg("--version").output().is_err() {
        println!("tool bench: skipped, qemu-img is not installed");
        return;
    }
    let mib = env_usize("IMGTOOL_BENCH_MIB", 1024);
    let runs = env_usize("IMGTOOL_BENCH_RUNS", 5).max(1);
    let base = std::env::var_os("IMGTOOL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::tempdir_in(base).unwrap();
    let d = dir.path().to_path_buf();
    let d = d.as_path();
    if std::env::var_os("IMGTOOL_BENCH_KEEP").is_some() {
        eprintln!("keeping {} (IMGTOOL_BENCH_KEEP)", d.display());
        std::mem::forget(dir);
    }
    eprintln!("preparing {mib} MiB of content in {} ...", d.display());
    prepare(d, mib);
    let bytes = (mib * MIB) as f64;
    let size = |n: &str| std::fs::metadata(d.join(n)).map(|m| m.len()).unwrap_or(0);
    let nothing = || {};
    let p = |n: &str| d.join(n);
    let mut rows: Vec<(String, Vec<Duration>)> = Vec::new();
    let mut time = |name: &str, before: &dyn Fn(), f: &dyn Fn()| {
        let v = timed(runs, before, f);
        let t = v[v.len() / 2];
        eprintln!("{name:<58} {:>8.3} s", t.as_secs_f64());
        rows.push((name.to_string(), v));
        t
    };
    let v_none = time("imgtool verify (codec none)", &nothing, &|| {
        imgtool(&["verify", s(&p("none.mimg"))]);
    });
    let v_zstd = time("imgtool verify (zstd:1)", &nothing, &|| {
        imgtool(&["verify", s(&p("zstd.mimg"))]);
    });
    let v_deep = time(
        "imgtool verify --deep (zstd:1, decode every chunk)",
        &nothing,
        &|| {
            imgtool(&["verify", "--deep", s(&p("zstd.mimg"))]);
        },
    );
    let q_check = time("qemu-img check (qcow2)", &nothing, &|| {
        qemu(&["check", s(&p("a.qcow2"))]);
    });
    let d_same = time(
        "imgtool diff (zstd:1 vs its zstd:3 copy, same chunking)",
        &nothing,
        &|| {
            imgtool(&["diff", s(&p("zstd.mimg")), s(&p("zstd3.mimg"))]);
        },
    );
    let d_index = time(
        "imgtool diff --index-only (zstd:1 vs its zstd:3 copy)",
        &nothing,
        &|| {
            imgtool(&[
                "diff",
                "--index-only",
                s(&p("zstd.mimg")),
                s(&p("zstd3.mimg")),
            ]);
        },
    );
    let d_full_none = time(
        "imgtool diff (codec none, other chunking: compare all)",
        &nothing,
        &|| {
            imgtool(&["diff", s(&p("none.mimg")), s(&p("other-none.mimg"))]);
        },
    );
    let q_cmp = time(
        "qemu-img compare (qcow2 vs qcow2, identical)",
        &nothing,
        &|| {
            qemu(&["compare", s(&p("a.qcow2")), s(&p("b.qcow2"))]);
        },
    );
    let d_full = time(
        "imgtool diff (zstd:1, other chunking: decode all)",
        &nothing,
        &|| {
            imgtool(&["diff", s(&p("zstd.mimg")), s(&p("other.mimg"))]);
        },
    );
    let q_cmp_zstd = time(
        "qemu-img compare (zstd qcow2 vs zstd qcow2, identical)",
        &nothing,
        &|| {
            qemu(&["compare", s(&p("a-zstd.qcow2")), s(&p("b-zstd.qcow2"))]);
        },
    );
    let q_cmp_raw = time(
        "qemu-img compare (raw vs qcow2, identical)",
        &nothing,
        &|| {
            qemu(&[
                "compare",
                "-f",
                "raw",
                "-F",
                "qcow2",
                s(&p("raw.img")),
                s(&p("a.qcow2")),
            ]);
        },
    );
    let rm = |n: &'static str| {
        let path = d.join(n);
        move || {
            let _ = std::fs::remove_file(&path);
        }
    };
    let r_mimg = time(
        "imgtool recompress none -> zstd:3 (synced, verified)",
        &rm("out.mimg"),
        &|| {
            imgtool(&[
                "recompress",
                "--codec",
                "zstd:3",
                "-o",
                s(&p("out.mimg")),
                s(&p("none.mimg")),
            ]);
        },
    );
    let convert = || {
        qemu(&[
            "convert",
            "-c",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
            s(&p("a.qcow2")),
            s(&p("out.qcow2")),
        ]);
    };
    let q_conv = time(
        "qemu-img convert -c zstd qcow2 -> qcow2 (synced)",
        &rm("out.qcow2"),
        &|| {
            convert();
            fsync(&p("out.qcow2"));
        },
    );
    let q_conv_nosync = time(
        "qemu-img convert -c zstd qcow2 -> qcow2 (not synced)",
        &rm("out.qcow2"),
        &convert,
    );
    let gbs = |t: Duration| bytes / t.as_secs_f64() / 1e9;
    println!();
    println!("content {mib} MiB; medians of {runs} runs (min-max); throughput = content bytes / wall time");
    println!(
        "{:<58} {:>9} {:>19} {:>10}",
        "command", "seconds", "(min-max)", "GB/s"
    );
    for (name, v) in &rows {
        let t = v[v.len() / 2];
        println!(
            "{name:<58} {:>9.3} ({:>7.3}-{:>7.3}) {:>10.2}",
            t.as_secs_f64(),
            v[0].as_secs_f64(),
            v[v.len() - 1].as_secs_f64(),
            gbs(t)
        );
    }
    println!();
    println!(
        "sizes: raw {} MiB, none.mimg {} MiB, zstd.mimg {} MiB, a.qcow2 {} MiB, a-zstd.qcow2 {} MiB, out.mimg {} MiB, out.qcow2 {} MiB",
        mib,
        size("none.mimg") >> 20,
        size("zstd.mimg") >> 20,
        size("a.qcow2") >> 20,
        size("a-zstd.qcow2") >> 20,
        size("out.mimg") >> 20,
        size("out.qcow2") >> 20
    );
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    println!();
    println!("targets (like with like; see the top of this file):");
    let verify = gbs(v_none).min(gbs(v_zstd));
    println!(
        "  verify (none) {:.2} GB/s, verify (zstd) {:.2} GB/s          target >= 3 GB/s: {}",
        gbs(v_none),
        gbs(v_zstd),
        if verify >= 3.0 { "met" } else { "MISSED" }
    );
    println!(
        "  verify --deep {:.2} GB/s; qemu-img check {:.2} GB/s (reads metadata only: no ratio)",
        gbs(v_deep),
        gbs(q_check)
    );
    let met = |r: f64, t: f64| if r >= t { "met" } else { "MISSED" };
    println!(
        "  diff, both read and compare all content, uncompressed: {:.2}x qemu-img compare (qcow2)   target >= 2x: {}",
        ratio(d_full_none, q_cmp),
        met(ratio(d_full_none, q_cmp), 2.0)
    );
    println!(
        "  diff, both decode (zstd) and compare all content: {:.2}x qemu-img compare (zstd qcow2)   target >= 2x: {}",
        ratio(d_full, q_cmp_zstd),
        met(ratio(d_full, q_cmp_zstd), 2.0)
    );
    println!(
        "  (a diff of a recompressed copy, same chunking, reads every stored byte and checks its stored checksum but decodes nothing: {:.1}x qemu-img compare (zstd qcow2); with --index-only it reads no chunk: {:.1}x; not the same work)",
        ratio(d_same, q_cmp_zstd),
        ratio(d_index, q_cmp_zstd)
    );
    println!(
        "  diff, all content, uncompressed, against qemu-img compare of raw vs qcow2: {:.2}x",
        ratio(d_full_none, q_cmp_raw)
    );
    println!(
        "  recompress to zstd:3, both synced: {:.2}x qemu-img convert -c   target >= 1.5x: {}  (qemu-img not synced: {:.2}x)",
        ratio(r_mimg, q_conv),
        if ratio(r_mimg, q_conv) >= 1.5 { "met" } else { "MISSED" },
        ratio(r_mimg, q_conv_nosync)
    );
    let ms = |t: Duration| t.as_secs_f64() * 1e3;
    emit(
        &format!("verify, {mib} MiB, codec none"),
        gbs(v_none),
        "GB/s",
        "target 3 GB/s",
        3.0,
        gbs(v_none) / 3.0,
        Some(1.0),
        "reads and checks every stored byte; qemu-img check reads metadata only, so it is no peer",
    );
    emit(
        &format!("verify, {mib} MiB, zstd:1"),
        gbs(v_zstd),
        "GB/s",
        "target 3 GB/s",
        3.0,
        gbs(v_zstd) / 3.0,
        Some(1.0),
        "reads and checks every stored byte (content bytes per second)",
    );
    emit(
        &format!("diff, {mib} MiB, all content, uncompressed"),
        ms(d_full_none),
        "ms",
        "qemu-img compare, uncompressed qcow2",
        ms(q_cmp),
        ratio(d_full_none, q_cmp),
        Some(2.0),
        "both read and compare all the non-zero content of two uncompressed copies, zero runs unstored on both sides (imgtool: codec none, other chunking, so no checksum can be skipped; it also checks each chunk's stored checksum)",
    );
    emit(
        &format!("diff, {mib} MiB, all content, zstd"),
        ms(d_full),
        "ms",
        "qemu-img compare, zstd-compressed qcow2",
        ms(q_cmp_zstd),
        ratio(d_full, q_cmp_zstd),
        Some(2.0),
        "both read, zstd-decode and compare all the non-zero content of two compressed copies (imgtool: zstd:1 in 512 and 256 KiB chunks; qemu-img: zstd level 3 in 64 KiB clusters)",
    );
    emit(
        &format!("diff, {mib} MiB, recompressed copy"),
        ms(d_same),
        "ms",
        "qemu-img compare, zstd-compressed qcow2",
        ms(q_cmp_zstd),
        ratio(d_same, q_cmp_zstd),
        None,
        "not the same work: with equal chunking imgtool compares raw-content checksums and checks the stored checksum of every chunk it reads, decoding none; qemu-img decodes and compares all data",
    );
    emit(
        &format!("diff --index-only, {mib} MiB, recompressed copy"),
        ms(d_index),
        "ms",
        "qemu-img compare, zstd-compressed qcow2",
        ms(q_cmp_zstd),
        ratio(d_index, q_cmp_zstd),
        None,
        "not the same work: compares the two indexes only and reads no chunk byte",
    );
    emit(
        &format!("recompress, {mib} MiB, to zstd:3, synced"),
        ms(r_mimg),
        "ms",
        "qemu-img convert -c zstd + fsync",
        ms(q_conv),
        ratio(r_mimg, q_conv),
        Some(1.5),
        "the same non-zero bytes in, zstd level 3 out, output synced; imgtool also decodes every chunk to check it",
    );
}
