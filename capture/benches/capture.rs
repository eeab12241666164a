//! Capture and restore figures, each against a peer measured in the same run.
//!
//! ```text
//! cargo bench -p memimg-capture --bench capture                    # 1 GiB, best of 3
//! MEMIMG_BENCH_MIB=256 MEMIMG_BENCH_RUNS=2 cargo bench -p memimg-capture --bench capture
//! ```
//!
//! Needs root (ptrace), `gcore` (gdb) and `zstd` on PATH; rows whose peer is
//! missing are skipped. Every figure is the best of `MEMIMG_BENCH_RUNS` warm
//! runs (the first run of each kind warms the page cache and is not counted
//! when there are several). Images go to `MEMIMG_BENCH_DIR` (default the
//! system temp dir).
//!
//! `MEMIMG_BENCH_ONLY=capture|reserve|restore|rss` runs one section.
//!
//! The target is this program re-executed as a child (`MEMIMG_BENCH_CHILD`)
//! holding a mixed heap: ¼ random pages, ¼ zero pages (touched), ½ heap-like
//! objects (headers, small ints, pointers, short strings).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use memimg::{Codec, RegionKind};
use memimg_capture::{
    capture_to_path, capture_to_writer, restore, CaptureOptions, PersistOptions, Persister,
    RestoreOptions, Strategy,
};

const MIB: usize = 1 << 20;
const ARENA: u64 = 0x2800_0000_0000;

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Fills `buf` (whole pages) with the mixed pattern.
fn fill_mixed(buf: &mut [u8], base: u64) {
    let pages = buf.len() / 4096;
    let mut x = 0x243f_6a88_85a3_08d3u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for p in 0..pages {
        let page = &mut buf[p * 4096..(p + 1) * 4096];
        // In groups of 1 MiB, as allocators lay memory out: 256 KiB random,
        // 256 KiB of zero pages, 512 KiB of objects.
        match p % 256 / 64 {
            0 => page
                .chunks_mut(8)
                .for_each(|c| c.copy_from_slice(&rnd().to_le_bytes())),
            1 => page.fill(0),
            _ => {
                // Objects of 48 bytes: header word, small ints, a pointer into
                // the heap, a 17-byte string.
                for (i, o) in page.chunks_mut(48).enumerate() {
                    if o.len() < 48 {
                        break;
                    }
                    let r = rnd();
                    o[0..8].copy_from_slice(&(0x0000_0001_0000_0000u64 | (r & 0xff)).to_le_bytes());
                    o[8..12].copy_from_slice(&((i as u32) & 0x3ff).to_le_bytes());
                    o[12..16].copy_from_slice(&((r >> 8) as u32 & 0xffff).to_le_bytes());
                    let ptr = (base + (r % (pages as u64 * 4096))) & !7;
                    o[16..24].copy_from_slice(&ptr.to_le_bytes());
                    let s = format!("name-{:06}-{:05}", r % 1_000_000, i);
                    o[24..24 + s.len()].copy_from_slice(s.as_bytes());
                }
            }
        }
    }
}

fn map(addr: Option<u64>, len: usize, noreserve: bool) -> *mut u8 {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    if addr.is_some() {
        flags |= libc::MAP_FIXED_NOREPLACE;
    }
    if noreserve {
        flags |= libc::MAP_NORESERVE;
    }
    // SAFETY: an anonymous mapping, either where the kernel chooses or with
    // MAP_FIXED_NOREPLACE, which never replaces an existing mapping; no
    // memory of this process is touched.
    let p = unsafe {
        libc::mmap(
            addr.unwrap_or(0) as usize as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

/// Child: hold `mib` MiB of mixed memory (plus `reserve_gib` GiB reserved
/// and untouched), then sleep.
fn child_hold(mib: usize, reserve_gib: usize) -> ! {
    if reserve_gib > 0 {
        let _ = map(None, reserve_gib << 30, true);
    }
    let len = mib * MIB;
    let p = map(None, len, false);
    // SAFETY: p is a fresh private mapping of len bytes (map asserts it
    // succeeded), never unmapped, and this is the only reference to it.
    let buf = unsafe { std::slice::from_raw_parts_mut(p, len) };
    fill_mixed(buf, p as u64);
    println!("READY");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

struct Target(Child);

impl Target {
    fn spawn(mib: usize, reserve_gib: usize) -> Target {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .env("MEMIMG_BENCH_CHILD", format!("hold:{mib}:{reserve_gib}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY");
        Target(c)
    }
    fn pid(&self) -> i32 {
        self.0.id().cast_signed()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn best(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let n = runs.max(1);
    let mut v: Vec<Duration> = (0..n + usize::from(n > 1)).map(|_| f()).collect();
    if n > 1 {
        v.remove(0); // warm-up
    }
    v.into_iter().min().unwrap()
}

fn time_cmd(cmd: &mut Command) -> Option<Duration> {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    st.success().then(|| t.elapsed())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn row(what: &str, ours: String, peer: &str, theirs: String, ratio: f64, target: &str) {
    println!("{what:<44} {ours:>12}  {peer:<22} {theirs:>12}  {ratio:>6.2}x  (target {target})");
}

fn capture(pid: i32, out: &Path, codec: Codec) -> Duration {
    let opts = CaptureOptions {
        codec,
        workers: 2,
        ..CaptureOptions::default()
    };
    let t = Instant::now();
    capture_to_path(pid, out, &opts).unwrap();
    t.elapsed()
}

/// Child: restore an image and report how long restore took to return (and,
/// for eager, that is the whole decode).
fn child_restore(strategy: &str, img: &str) {
    let strategy: Strategy = strategy.parse().unwrap();
    let t = Instant::now();
    let r = restore(
        Path::new(img),
        &RestoreOptions {
            strategy,
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    let d = t.elapsed();
    println!("TIME {}", d.as_nanos());
    drop(r);
}

fn restore_in_child(strategy: &str, img: &Path) -> Duration {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(
            "MEMIMG_BENCH_CHILD",
            format!("restore:{strategy}:{}", img.display()),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let ns: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("TIME "))
        .unwrap_or_else(|| {
            panic!(
                "restore child failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .parse()
        .unwrap();
    Duration::from_nanos(ns)
}

/// Child: capture `pid` and report the peak RSS of this process.
fn child_capture(pid: i32, out: &str) {
    capture_to_path(
        pid,
        Path::new(out),
        &CaptureOptions {
            workers: 2,
            ..CaptureOptions::default()
        },
    )
    .unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .to_string();
    println!("HWM {hwm}");
}

fn persist_mixed(len: usize, path: &Path, codec: Codec) {
    let p = map(Some(ARENA), len, false);
    // SAFETY: p is a fresh private mapping of len bytes (map asserts it
    // succeeded); buf is the only reference to it until the munmap below,
    // after its last use.
    let buf = unsafe { std::slice::from_raw_parts_mut(p, len) };
    fill_mixed(buf, ARENA);
    let per = Persister::new().region(buf, RegionKind::Heap, "mixed");
    per.write_to_path(
        path,
        &PersistOptions {
            codec,
            workers: 2,
            ..PersistOptions::default()
        },
    )
    .unwrap();
    drop(per);
    // SAFETY: our own mapping of len bytes; buf and the persister that
    // borrowed it are no longer used.
    unsafe { libc::munmap(p.cast(), len) };
}

fn main() {
    if let Ok(role) = std::env::var("MEMIMG_BENCH_CHILD") {
        let parts: Vec<&str> = role.splitn(3, ':').collect();
        match parts[0] {
            "hold" => child_hold(parts[1].parse().unwrap(), parts[2].parse().unwrap()),
            "restore" => child_restore(parts[1], parts[2]),
            "capture" => child_capture(parts[1].parse().unwrap(), parts[2]),
            _ => panic!("unknown role {role}"),
        }
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mib = env_num("MEMIMG_BENCH_MIB", 1024);
    let runs = env_num("MEMIMG_BENCH_RUNS", 3);
    let dir: PathBuf = std::env::var("MEMIMG_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = dir.join(format!("memimg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "memimg-capture benchmark: {mib} MiB mixed process, best of {runs} warm runs, 2 workers\n"
    );

    let only = std::env::var("MEMIMG_BENCH_ONLY").ok();
    let run = |s: &str| only.as_deref().is_none_or(|o| o == s);
    let raw = dir.join("raw.img");
    let zout = dir.join("x.zst");
    if run("capture") {
        section_capture(mib, runs, &dir);
    }
    if run("reserve") {
        section_reserve(mib, runs, &raw);
    }
    if run("restore") {
        section_restore(mib, runs, &dir, &zout);
    }
    if run("rss") {
        section_rss(mib, &raw);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Capture against gcore and zstd.
fn section_capture(mib: usize, runs: usize, dir: &Path) {
    let t = Target::spawn(mib, 0);
    let t0 = &t;
    let raw = dir.join("raw.img");
    let ours_none = best(runs, || capture(t.pid(), &raw, Codec::None));
    // Where the time goes: the same capture into a plain file (no fsync,
    // no rename) and into nothing at all.
    for (what, codec) in [("none", Codec::None), ("zstd-1", Codec::Zstd(1))] {
        let opts = CaptureOptions {
            codec,
            workers: 2,
            ..CaptureOptions::default()
        };
        let plain = best(runs, || {
            let t = Instant::now();
            let f = std::fs::File::create(dir.join("plain.img")).unwrap();
            capture_to_writer(t0.pid(), std::io::BufWriter::with_capacity(MIB, f), &opts).unwrap();
            t.elapsed()
        });
        let sink = best(runs, || {
            let t = Instant::now();
            capture_to_writer(t0.pid(), std::io::sink(), &opts).unwrap();
            t.elapsed()
        });
        println!(
            "  (codec {what}: into a file without fsync {}, into io::sink {})",
            ms(plain),
            ms(sink)
        );
    }
    let core = dir.join("core");
    let gcore = have("gcore").then(|| {
        best(runs, || {
            time_cmd(
                Command::new("gcore")
                    .arg("-o")
                    .arg(&core)
                    .arg(t.pid().to_string()),
            )
            .expect("gcore failed")
        })
    });
    let core_file = dir.join(format!("core.{}", t.pid()));
    if let Some(g) = gcore {
        row(
            "capture, codec none",
            ms(ours_none),
            "gcore",
            ms(g),
            g.as_secs_f64() / ours_none.as_secs_f64(),
            "≥ 1.5",
        );
    }
    let zimg = dir.join("z.img");
    let ours_z = best(runs, || capture(t.pid(), &zimg, Codec::Zstd(1)));
    let zout = dir.join("x.zst");
    if have("zstd") {
        let z = best(runs, || {
            time_cmd(
                Command::new("zstd")
                    .args(["-1", "-T2", "-q", "-f"])
                    .arg(&raw)
                    .arg("-o")
                    .arg(&zout),
            )
            .unwrap()
        });
        row(
            "capture, zstd-1",
            ms(ours_z),
            "zstd -1 -T2 of raw",
            ms(z),
            z.as_secs_f64() / ours_z.as_secs_f64(),
            "≥ 1.0",
        );
        if let Some(g) = gcore {
            let zc = best(runs, || {
                time_cmd(
                    Command::new("zstd")
                        .args(["-1", "-T2", "-q", "-f"])
                        .arg(&core_file)
                        .arg("-o")
                        .arg(dir.join("core.zst")),
                )
                .unwrap()
            });
            let both = g + zc;
            row(
                "capture, zstd-1",
                ms(ours_z),
                "gcore + zstd -1 -T2",
                ms(both),
                both.as_secs_f64() / ours_z.as_secs_f64(),
                "≥ 1.5",
            );
        }
    }
    let zlen = std::fs::metadata(&zimg).map(|m| m.len()).unwrap_or(0);
    println!("  (zstd-1 image: {} MiB of {} MiB)", zlen >> 20, mib);
    drop(t);
    let _ = std::fs::remove_file(&core_file);
    let _ = std::fs::remove_file(dir.join("core.zst"));
}

/// Reserved but untouched address space costs nothing.
fn section_reserve(mib: usize, runs: usize, raw: &Path) {
    let touched = 256.min(mib);
    let alone = Target::spawn(touched, 0);
    let a = best(runs, || capture(alone.pid(), raw, Codec::None));
    drop(alone);
    let reserved = Target::spawn(touched, 16);
    let r = best(runs, || capture(reserved.pid(), raw, Codec::None));
    drop(reserved);
    row(
        &format!("capture, 16 GiB reserved + {touched} MiB"),
        ms(r),
        &format!("{touched} MiB alone"),
        ms(a),
        r.as_secs_f64() / a.as_secs_f64(),
        "≤ 1.1 (ours/peer)",
    );
}

/// Restore by each strategy.
fn section_restore(mib: usize, runs: usize, dir: &Path, zout: &Path) {
    let mut mmap_times = Vec::new();
    for size in [mib / 4, mib / 2, mib] {
        let img = dir.join(format!("m{size}.img"));
        persist_mixed(size * MIB, &img, Codec::None);
        let d = best(runs, || restore_in_child("mmap", &img));
        mmap_times.push((size, d));
        let _ = std::fs::remove_file(&img);
    }
    for (size, d) in &mmap_times {
        println!(
            "{:<44} {:>12}",
            format!("restore, mmap, {size} MiB"),
            ms(*d)
        );
    }
    let (s0, d0) = mmap_times[0];
    let (s2, d2) = mmap_times[2];
    row(
        &format!("restore mmap {s2} MiB vs {s0} MiB (flatness)"),
        ms(d2),
        &format!("{s0} MiB"),
        ms(d0),
        d2.as_secs_f64() / d0.as_secs_f64(),
        "≈ 1, ≤ 5 ms",
    );
    let zimg = dir.join("mz.img");
    persist_mixed(mib * MIB, &zimg, Codec::Zstd(1));
    let lazy = best(runs, || restore_in_child("lazy", &zimg));
    println!(
        "{:<44} {:>12}  (target ≤ 10 ms)",
        format!("restore, lazy, zstd-1 {mib} MiB, return"),
        ms(lazy)
    );
    let eager = best(runs, || restore_in_child("eager", &zimg));
    if have("zstd") {
        // The same bytes as one zstd stream.
        let rawdump = dir.join("mixed.bin");
        {
            let mut v = vec![0u8; mib * MIB];
            fill_mixed(&mut v, ARENA);
            std::fs::write(&rawdump, &v).unwrap();
        }
        Command::new("zstd")
            .args(["-1", "-q", "-f"])
            .arg(&rawdump)
            .arg("-o")
            .arg(zout)
            .status()
            .unwrap();
        let _ = std::fs::remove_file(&rawdump);
        let zd = best(runs, || {
            time_cmd(
                Command::new("zstd")
                    .args(["-d", "-q", "-f"])
                    .arg(zout)
                    .arg("-o")
                    .arg("/dev/null"),
            )
            .unwrap()
        });
        let gbs = |d: Duration| format!("{:.2} GB/s", (mib * MIB) as f64 / d.as_secs_f64() / 1e9);
        row(
            &format!("restore, eager, zstd-1 {mib} MiB"),
            gbs(eager),
            "zstd -d",
            gbs(zd),
            zd.as_secs_f64() / eager.as_secs_f64(),
            "≥ 1.5",
        );
    }
    let _ = std::fs::remove_file(&zimg);
}

/// Peak RSS of the capturing process as the target grows.
fn section_rss(mib: usize, raw: &Path) {
    for size in [mib / 4, mib / 2, mib] {
        let t = Target::spawn(size, 0);
        let out = Command::new(std::env::current_exe().unwrap())
            .env(
                "MEMIMG_BENCH_CHILD",
                format!("capture:{}:{}", t.pid(), raw.display()),
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let hwm = text
            .lines()
            .find_map(|l| l.strip_prefix("HWM "))
            .unwrap_or("?")
            .to_string();
        println!(
            "{:<44} {:>12}",
            format!("capture peak RSS, {size} MiB target"),
            hwm
        );
    }
}
