//! Capture and restore figures, each against a peer doing the same work on
//! the same process and bytes, measured in the same run.
//!
//! ```text
//! cargo bench -p memimg-capture --bench capture                       # 1 GiB; stop at 256 MiB, 1 GiB, 4 GiB
//! MEMIMG_BENCH_MIB=128 MEMIMG_BENCH_STOP_MIB=64,128 MEMIMG_BENCH_RUNS=2 cargo bench -p memimg-capture --bench capture
//! ```
//!
//! Needs root (ptrace), `gcore` (gdb), `strip` and `zstd` on PATH; rows
//! whose peer is missing are left out, and say so.
//!
//! - `MEMIMG_BENCH_MIB` (default 1024): the process of the capture, restore
//!   and RSS sections.
//! - `MEMIMG_BENCH_CAPTURE_MIB` (default: `MEMIMG_BENCH_MIB`): the
//!   processes of the capture section, a comma list (`256,1024,4096` covers
//!   the sizes of the stop section).
//! - `MEMIMG_BENCH_STOP_MIB` (default `256,1024,4096`): the processes whose
//!   stop is measured from inside.
//! - `MEMIMG_BENCH_RUNS` (default 5): timed runs per figure, after one
//!   untimed warm-up run; figures are **medians**, with the spread (min–max).
//! - `MEMIMG_BENCH_ONLY=stop|capture|durable|reserve|restore|rss`: one
//!   section.
//! - `MEMIMG_BENCH_DIR`: where images go (default the system temp dir).
//!
//! The target is this program, stripped of its symbols (so that gdb's
//! gcore loads none: `strip` makes the copy), re-executed as a child that
//! holds a mixed heap: ¼ random pages, ¼ zero pages (touched), ½ heap-like
//! objects, in groups of 1 MiB.
//!
//! **Like with like.** Both sides capture the same process; a peer that
//! does not sync is timed with and without an `fsync` of what it wrote, and
//! so is memimg (`durable: false` leaves the image in the page cache, as
//! gcore does); the zstd peer compresses the process's own bytes (the core
//! gcore wrote of it, zeros included), with the same level and threads.
//! The capture target against gcore (1.5x) is for the synced rows: it
//! includes the flush that makes the image durable (a durable capture
//! writes through the page cache up to the kernel's writeback threshold
//! and with `O_DIRECT` past it; the capture section also times it all
//! through the page cache and all `O_DIRECT`, without a target).
//! Eager restore decodes with as many threads as `zstd -d` (one), the same
//! non-zero bytes (the peer's input leaves out the zero pages the image
//! does not store); it writes into fresh memory, the peer into /dev/null.
//!
//! **The stop, from inside.** The stop section's target runs one more
//! thread, which reads the monotonic clock in a loop and keeps the longest
//! gap between two readings: that is how long the process stood still,
//! whatever the capturing tool says. It is asked for (and reset) around each
//! capture, and once while idle, which shows the noise of the machine. The
//! capturing side runs at nice 19 in this section, memimg and gcore alike, so
//! that on a machine with few cores the gap measures the stop rather than the
//! clock thread waiting for a core the capture's own threads hold.
//!
//! **Durable writing.** The `durable` section writes the bytes of an
//! uncompressed image of the mixed content (from memory) to a new file in
//! each of five ways, every one ending with an `fsync`: buffered writes;
//! buffered with `sync_file_range` every 8 MiB (what `capture_to_path` does);
//! buffered with a `sync_file_range` pipeline that waits for the range before
//! and drops it from the page cache; `O_DIRECT` with aligned 1 MiB buffers;
//! and `O_DIRECT` from a writing thread with 4 MiB buffers in flight.
//!
//! Besides a table for people, every figure is printed as one line
//! `@@BENCH<TAB>bench<TAB>figure<TAB>ours<TAB>unit<TAB>peer<TAB>peer value<TAB>ratio<TAB>target<TAB>what each side does`,
//! where ratio > 1 means memimg is better, for `scripts/bench.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss
)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memimg::{Codec, RegionKind};
use memimg_capture::{
    capture_to_path, restore, CaptureOptions, CaptureReport, Method, PersistOptions, Persister,
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

/// A comma list of sizes from the environment, or `d` when unset.
fn env_list(k: &str, d: &[usize]) -> Vec<usize> {
    std::env::var(k).map_or_else(
        |_| d.to_vec(),
        |v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
    )
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

fn now_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The longest gap the clock thread saw since it was last asked.
static MAX_GAP: AtomicU64 = AtomicU64::new(0);

/// Child: hold `mib` MiB of mixed memory (plus `reserve_gib` GiB reserved
/// and untouched), optionally with the clock thread, then answer `gap` on
/// stdin with `GAP <nanoseconds>`.
fn child_hold(mib: usize, reserve_gib: usize, gap: bool) -> ! {
    if reserve_gib > 0 {
        let _ = map(None, reserve_gib << 30, true);
    }
    let len = mib * MIB;
    let p = map(None, len, false);
    // SAFETY: p is a fresh private mapping of len bytes (map asserts it
    // succeeded), never unmapped, and this is the only reference to it.
    let buf = unsafe { std::slice::from_raw_parts_mut(p, len) };
    fill_mixed(buf, p as u64);
    if gap {
        std::thread::spawn(|| {
            let mut last = now_ns();
            loop {
                let t = now_ns();
                MAX_GAP.fetch_max(t - last, Ordering::Relaxed);
                last = t;
            }
        });
    }
    println!("READY");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line == "gap" {
            println!("GAP {}", MAX_GAP.swap(0, Ordering::Relaxed));
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The program the targets run: this one without symbols, when `strip`
/// can make it (gcore then loads no debug information), and what it is.
fn target_program(dir: &Path) -> (PathBuf, &'static str) {
    let me = std::env::current_exe().unwrap();
    let copy = dir.join("target-stripped");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&copy)
        .arg(&me)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        (copy, "stripped")
    } else {
        (me, "NOT stripped (no `strip`): gcore loads its symbols")
    }
}

struct Target {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<std::process::ChildStdout>,
}

impl Target {
    fn spawn(prog: &Path, mib: usize, reserve_gib: usize, gap: bool) -> Target {
        let mut c = Command::new(prog)
            .env(
                "MEMIMG_BENCH_CHILD",
                format!("hold:{mib}:{reserve_gib}:{}", u8::from(gap)),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = c.stdin.take().unwrap();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "READY");
        Target {
            child: c,
            stdin,
            out,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id().cast_signed()
    }

    /// The longest stop the target saw since the last call.
    fn gap(&mut self) -> Duration {
        writeln!(self.stdin, "gap").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let ns: u64 = line.trim().strip_prefix("GAP ").unwrap().parse().unwrap();
        Duration::from_nanos(ns)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Medians with their spread.
#[derive(Debug, Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Stat {
        v.sort_by(f64::total_cmp);
        Stat {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    fn ms(&self) -> String {
        format!(
            "{:.1} ms ({:.1}–{:.1})",
            self.median * 1e3,
            self.min * 1e3,
            self.max * 1e3
        )
    }
}

/// Runs `f` once untimed, then `runs` times, and gives the medians of each
/// of the values it returns (seconds).
fn measure<const N: usize>(runs: usize, mut f: impl FnMut() -> [f64; N]) -> [Stat; N] {
    f();
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); N];
    for _ in 0..runs.max(1) {
        for (c, v) in cols.iter_mut().zip(f()) {
            c.push(v);
        }
    }
    let mut out = [Stat {
        median: 0.0,
        min: 0.0,
        max: 0.0,
    }; N];
    for (o, c) in out.iter_mut().zip(cols) {
        *o = Stat::of(c);
    }
    out
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_quiet(cmd: &mut Command) {
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{cmd:?} failed");
}

fn fsync(path: &Path) {
    std::fs::File::open(path).unwrap().sync_all().unwrap();
}

/// One figure for people and one `@@BENCH` line. `ratio` > 1 is better for
/// memimg; `target` is the least ratio the issue asks for.
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
    let met = match target {
        Some(t) if ratio >= t => " met",
        Some(_) => " MISSED",
        None => "",
    };
    println!(
        "{figure:<52} {ours:>10.1} {unit:<5} {peer:<34} {theirs:>10.1}  {ratio:>6.2}x  (target {t}{met})"
    );
    println!("@@BENCH\tcapture\t{figure}\t{ours:.3}\t{unit}\t{peer}\t{theirs:.3}\t{ratio:.3}\t{t}\t{work}");
}

fn capture_opts(codec: Codec, fork: bool, durable: bool) -> CaptureOptions {
    CaptureOptions {
        codec,
        workers: 2,
        fork,
        durable,
        ..CaptureOptions::default()
    }
}

fn capture(pid: i32, out: &Path, opts: &CaptureOptions) -> CaptureReport {
    let r = capture_to_path(pid, out, opts).unwrap();
    if opts.fork {
        assert!(
            matches!(r.method, Method::Fork { .. }),
            "no fork snapshot: {:?}",
            r.method
        );
    }
    r
}

/// Child: restore an image and report how long restore took to return (and,
/// for eager, that is the whole decode).
/// CPU time of this process so far (all its threads, user and system).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Child: restores `img`, prints `TIME` (wall, to the return) and `CPU`
/// (the CPU time of this process meanwhile, steadier on a loaded machine),
/// in nanoseconds.
fn child_restore(strategy: &str, img: &str) {
    let strategy: Strategy = strategy.parse().unwrap();
    let cpu = process_cpu();
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
    let cpu = process_cpu() - cpu;
    println!("TIME {}", d.as_nanos());
    println!("CPU {}", cpu.as_nanos());
    drop(r);
}

/// Restores in a new process; `threads` sets rayon's pool (eager decoding).
fn restore_in_child(strategy: &str, img: &Path, threads: Option<usize>) -> f64 {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.env(
        "MEMIMG_BENCH_CHILD",
        format!("restore:{strategy}:{}", img.display()),
    );
    if let Some(n) = threads {
        c.env("RAYON_NUM_THREADS", n.to_string());
    }
    let out = c.output().unwrap();
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
    ns as f64 / 1e9
}

/// Child: capture `pid` and report the peak RSS of this process.
fn child_capture(pid: i32, out: &str) {
    capture_to_path(
        pid,
        Path::new(out),
        &capture_opts(Codec::Zstd(1), true, true),
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
        let (kind, rest) = role.split_once(':').unwrap();
        match kind {
            "hold" => {
                let p: Vec<&str> = rest.split(':').collect();
                child_hold(p[0].parse().unwrap(), p[1].parse().unwrap(), p[2] == "1");
            }
            "restore" => {
                let (strategy, img) = rest.split_once(':').unwrap();
                child_restore(strategy, img);
            }
            "capture" => {
                let (pid, out) = rest.split_once(':').unwrap();
                child_capture(pid.parse().unwrap(), out);
            }
            // Not used by the bench: writes the restore section's image, to
            // time or trace one restore by hand (`MEMIMG_BENCH_CHILD=
            // persist:1024:none:/tmp/m.img`, then `restore:mmap:/tmp/m.img`).
            "persist" => {
                let p: Vec<&str> = rest.splitn(3, ':').collect();
                let codec = if p[1] == "none" {
                    Codec::None
                } else {
                    Codec::Zstd(1)
                };
                persist_mixed(p[0].parse::<usize>().unwrap() * MIB, Path::new(p[2]), codec);
            }
            _ => panic!("unknown role {role}"),
        }
        return;
    }
    // `cargo test --benches` runs benches without --bench: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("capture bench: run with `cargo bench -p memimg-capture --bench capture`");
        return;
    }
    let mib = env_num("MEMIMG_BENCH_MIB", 1024);
    let runs = env_num("MEMIMG_BENCH_RUNS", 5);
    let stop_sizes = env_list("MEMIMG_BENCH_STOP_MIB", &[256, 1024, 4096]);
    let dir: PathBuf = std::env::var("MEMIMG_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = dir.join(format!("memimg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (prog, stripped) = target_program(&dir);
    println!(
        "memimg-capture benchmark: medians of {runs} runs after a warm-up (min–max in brackets), 2 workers; target program {stripped}\n"
    );
    let only = std::env::var("MEMIMG_BENCH_ONLY").ok();
    let run = |s: &str| only.as_deref().is_none_or(|o| o == s);
    if run("stop") {
        for &size in &stop_sizes {
            section_stop(&prog, size, runs, &dir);
        }
    }
    if run("capture") {
        for size in env_list("MEMIMG_BENCH_CAPTURE_MIB", &[mib]) {
            section_capture(&prog, size, runs, &dir);
        }
    }
    if run("durable") {
        section_durable(mib, runs, &dir);
    }
    if run("reserve") {
        section_reserve(&prog, mib, runs, &dir);
    }
    if run("restore") {
        section_restore(mib, runs, &dir);
    }
    if run("rss") {
        section_rss(&prog, mib, &dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// How long the process stands still, measured from inside it, with and
/// without a fork snapshot, against gcore of the same process.
fn section_stop(prog: &Path, mib: usize, runs: usize, dir: &Path) {
    println!(
        "== stop of a {mib} MiB process, measured from inside (longest gap of a clock thread); captures at nice 19"
    );
    let mut t = Target::spawn(prog, mib, 0, true);
    // This thread, and the threads the capture starts from it, yield to the
    // target's clock thread (see the module docs); gcore runs under nice.
    set_nice(19);
    std::thread::sleep(Duration::from_millis(300));
    t.gap();
    std::thread::sleep(Duration::from_secs(1));
    let idle = t.gap();
    println!(
        "  idle, no capture: longest gap {:.2} ms (the machine's noise)",
        idle.as_secs_f64() * 1e3
    );
    let out = dir.join("stop.img");
    let gib = mib as f64 / 1024.0;
    let mut stops = Vec::new();
    for (cname, codec) in [("zstd:1", Codec::Zstd(1)), ("none", Codec::None)] {
        for fork in [true, false] {
            let opts = capture_opts(codec, fork, true);
            let [inside, said, total] = measure(runs, || {
                t.gap();
                let r = capture(t.pid(), &out, &opts);
                let g = t.gap();
                [
                    g.as_secs_f64(),
                    r.frozen.as_secs_f64(),
                    r.elapsed.as_secs_f64(),
                ]
            });
            let how = if fork { "fork" } else { "no fork" };
            println!(
                "  {cname:<7} {how:<8} stop {} (capture says {}), total {} incl. fsync",
                inside.ms(),
                said.ms(),
                total.ms()
            );
            stops.push((cname, fork, inside, total));
        }
    }
    if !have("gcore") {
        println!("  gcore is not installed: no peer rows");
        set_nice(0);
        return;
    }
    let core = dir.join("core");
    let core_file = dir.join(format!("core.{}", t.pid()));
    let [g_inside, g_total, g_flushed] = measure(runs, || {
        t.gap();
        let t0 = Instant::now();
        run_quiet(
            Command::new("nice")
                .args(["-n", "19", "gcore", "-o"])
                .arg(&core)
                .arg(t.pid().to_string()),
        );
        let plain = t0.elapsed().as_secs_f64();
        fsync(&core_file);
        let flushed = t0.elapsed().as_secs_f64();
        [t.gap().as_secs_f64(), plain, flushed]
    });
    println!(
        "  gcore           stop {}, total {} without fsync, {} with",
        g_inside.ms(),
        g_total.ms(),
        g_flushed.ms()
    );
    for (cname, fork, inside, total) in stops {
        let how = if fork { "fork" } else { "no fork" };
        emit(
            &format!("stop, {mib} MiB, {cname}, {how}"),
            inside.median * 1e3,
            "ms",
            "gcore, same process",
            g_inside.median * 1e3,
            g_inside.median / inside.median,
            None,
            "longest gap of a clock thread in the target while each side captures it; memimg syncs its image, gcore does not",
        );
        if fork {
            let per_gib = inside.median * 1e3 / gib;
            emit(
                &format!("stop per GiB, {mib} MiB, {cname}, fork"),
                per_gib,
                "ms",
                "target 50 ms per GiB",
                50.0,
                50.0 / per_gib,
                Some(1.0),
                "longest gap in the target, per GiB resident",
            );
        }
        if cname == "none" {
            let work = if fork {
                "wall time until the file is durable: memimg fsyncs its image, gcore's core is fsynced after it returns; \
                 the target runs on during a fork capture, and its clock thread spins on one of the two cores while the nice-19 capture runs"
            } else {
                "wall time until the file is durable: memimg fsyncs its image, gcore's core is fsynced after it returns; \
                 the target is stopped throughout on both sides"
            };
            // With the fork, the nice-19 capture shares the cores with the
            // target's spinning clock thread, which gcore (the target
            // stopped) does not: not like with like, so no target here; the
            // capture section has the figure, the target idle on both sides.
            emit(
                &format!("capture, {mib} MiB, codec none, {how}, both synced"),
                total.median * 1e3,
                "ms",
                "gcore + fsync of the core",
                g_flushed.median * 1e3,
                g_flushed.median / total.median,
                (!fork).then_some(1.5),
                work,
            );
        }
    }
    // When the disk's sustained durable rate bounds both sides, the best
    // ratio is the bytes gcore writes over the bytes memimg writes (memimg
    // leaves out the zero pages): say so beside the figures.
    let (ours, theirs) = (file_len(&out), file_len(&core_file));
    if ours > 0 && theirs > 0 {
        println!(
            "  bytes made durable: memimg {} MiB (the last image, codec none), gcore {} MiB: \
             where the disk's sustained write rate is the bound, the best synced ratio is {:.2}x",
            ours >> 20,
            theirs >> 20,
            theirs as f64 / ours as f64
        );
    }
    let _ = std::fs::remove_file(&core_file);
    set_nice(0);
    println!();
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Sets the nice value of the calling thread (and so of the threads it
/// starts from now on).
fn set_nice(n: i32) {
    // SAFETY: setpriority takes integers only; on Linux, PRIO_PROCESS with
    // who = 0 is the calling thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) };
}

/// Capture against gcore and zstd, synced and not, on one process.
fn section_capture(prog: &Path, mib: usize, runs: usize, dir: &Path) {
    println!("== capture of a {mib} MiB process");
    let t = Target::spawn(prog, mib, 0, false);
    let img = dir.join("cap.img");
    let mut ours = Vec::new();
    let mut none_len = 0;
    // Codec none with and without the fork snapshot (the target is idle
    // here, so both have the two cores, as gcore has); zstd-1 with it.
    for (cname, codec, fork) in [
        ("none", Codec::None, true),
        ("none", Codec::None, false),
        ("zstd-1", Codec::Zstd(1), true),
    ] {
        for durable in [true, false] {
            let opts = capture_opts(codec, fork, durable);
            let [total] = measure(runs, || {
                [capture(t.pid(), &img, &opts).elapsed.as_secs_f64()]
            });
            let sync = if durable { "synced" } else { "not synced" };
            let how = if fork { "fork" } else { "no fork" };
            let how = format!("{how},");
            println!("  memimg {cname:<7} {how:<8} {sync:<11} {}", total.ms());
            ours.push((cname, fork, durable, total));
            if cname == "none" {
                none_len = file_len(&img);
            }
        }
    }
    // The same durable capture written the two other ways, to show what
    // the default (the page cache up to the kernel's writeback threshold,
    // O_DIRECT past it) changes in this run: all through the page cache
    // (direct_io off), and all O_DIRECT (direct_io_after 0).
    let ways = [
        (
            "through the page cache (direct_io off)",
            CaptureOptions {
                direct_io: false,
                ..capture_opts(Codec::None, false, true)
            },
        ),
        (
            "O_DIRECT from the first byte (direct_io_after 0)",
            CaptureOptions {
                direct_io_after: Some(0),
                ..capture_opts(Codec::None, false, true)
            },
        ),
    ];
    let default = ours
        .iter()
        .find(|(c, fork, durable, _)| *c == "none" && !*fork && *durable)
        .map(|&(_, _, _, t)| t);
    for (name, opts) in ways {
        let [w] = measure(runs, || {
            [capture(t.pid(), &img, &opts).elapsed.as_secs_f64()]
        });
        println!("  memimg none    no fork, synced, {name} {}", w.ms());
        if let Some(d) = default {
            emit(
                &format!("capture, {mib} MiB, codec none, no fork, synced: the default way against {name}"),
                d.median * 1e3,
                "ms",
                name,
                w.median * 1e3,
                w.median / d.median,
                None,
                "memimg both sides, the same process and bytes, synced; only the way of writing differs",
            );
        }
    }
    if !have("gcore") {
        println!("  gcore is not installed: no peer rows\n");
        return;
    }
    let core = dir.join("core");
    let core_file = dir.join(format!("core.{}", t.pid()));
    let [g, gs] = measure(runs, || {
        let t0 = Instant::now();
        run_quiet(
            Command::new("gcore")
                .arg("-o")
                .arg(&core)
                .arg(t.pid().to_string()),
        );
        let plain = t0.elapsed().as_secs_f64();
        fsync(&core_file);
        [plain, t0.elapsed().as_secs_f64()]
    });
    println!(
        "  gcore                       {} not synced, {} synced",
        g.ms(),
        gs.ms()
    );
    let core_len = file_len(&core_file);
    if none_len > 0 && core_len > 0 {
        println!(
            "  bytes written: memimg {} MiB (codec none), gcore {} MiB: \
             where the disk's sustained write rate bounds both, the best synced ratio is {:.2}x",
            none_len >> 20,
            core_len >> 20,
            core_len as f64 / none_len as f64
        );
    }
    let zstd = have("zstd");
    let zout = dir.join("core.zst");
    // The zstd peer compresses the process's own bytes: gcore's core of it.
    let zrun = |sync: bool| {
        let t0 = Instant::now();
        run_quiet(
            Command::new("zstd")
                .args(["-1", "-T2", "-q", "-f"])
                .arg(&core_file)
                .arg("-o")
                .arg(&zout),
        );
        if sync {
            fsync(&zout);
        }
        t0.elapsed().as_secs_f64()
    };
    let zs = zstd.then(|| measure(runs, || [zrun(false), zrun(true)]));
    // gcore then zstd, back to back in each run (one sum of one run, not a
    // sum of two medians).
    let gz = zstd.then(|| {
        measure(runs, || {
            let t0 = Instant::now();
            run_quiet(
                Command::new("gcore")
                    .arg("-o")
                    .arg(&core)
                    .arg(t.pid().to_string()),
            );
            zrun(false);
            let plain = t0.elapsed().as_secs_f64();
            fsync(&zout);
            [plain, t0.elapsed().as_secs_f64()]
        })
    });
    for (cname, fork, durable, total) in ours {
        let (peer_s, peer_label) = if durable {
            (gs, "gcore + fsync")
        } else {
            (g, "gcore")
        };
        let sync = if durable {
            "both synced"
        } else {
            "neither synced"
        };
        if cname == "none" {
            let (how, work) = if fork {
                ("fork", "memimg: fork snapshot, zero pages not stored; gcore: gdb (no symbols to load) writes every page; the target is idle, both sides have both cores")
            } else {
                ("no fork", "memimg: the target stopped throughout, zero pages not stored; gcore: gdb (no symbols to load) writes every page")
            };
            emit(
                &format!("capture, {mib} MiB, codec none, {how}, {sync}"),
                total.median * 1e3,
                "ms",
                peer_label,
                peer_s.median * 1e3,
                peer_s.median / total.median,
                // The target (1.5x) includes the final flush that makes the
                // image durable; the rows neither side syncs carry none.
                durable.then_some(1.5),
                work,
            );
        } else {
            if let Some([z, zsync]) = zs {
                let zp = if durable { zsync } else { z };
                emit(
                    &format!("capture, {mib} MiB, zstd-1, {sync}"),
                    total.median * 1e3,
                    "ms",
                    "zstd -1 -T2 of the process's bytes",
                    zp.median * 1e3,
                    zp.median / total.median,
                    Some(1.0),
                    "memimg captures the live process; zstd compresses gcore's core of it (all its bytes, zeros too) from the page cache",
                );
            }
            if let Some([gzp, gzs]) = gz {
                let p = if durable { gzs } else { gzp };
                emit(
                    &format!("capture, {mib} MiB, zstd-1 vs gcore+zstd, {sync}"),
                    total.median * 1e3,
                    "ms",
                    "gcore then zstd -1 -T2, one run",
                    p.median * 1e3,
                    p.median / total.median,
                    Some(1.5),
                    "the same process to a zstd-compressed file: memimg in one step, the peer as gcore then zstd of the core in each run",
                );
            }
        }
    }
    let zlen = std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0);
    println!(
        "  (last image: {} MiB of a {} MiB process)\n",
        zlen >> 20,
        mib
    );
    drop(t);
    let _ = std::fs::remove_file(&core_file);
    let _ = std::fs::remove_file(&zout);
}

/// Reserved but untouched address space costs nothing.
fn section_reserve(prog: &Path, mib: usize, runs: usize, dir: &Path) {
    let touched = 256.min(mib);
    let img = dir.join("reserve.img");
    let opts = capture_opts(Codec::None, true, true);
    let alone = Target::spawn(prog, touched, 0, false);
    let [a] = measure(runs, || {
        [capture(alone.pid(), &img, &opts).elapsed.as_secs_f64()]
    });
    drop(alone);
    let reserved = Target::spawn(prog, touched, 16, false);
    let [r] = measure(runs, || {
        [capture(reserved.pid(), &img, &opts).elapsed.as_secs_f64()]
    });
    drop(reserved);
    emit(
        &format!("capture, 16 GiB reserved + {touched} MiB touched"),
        r.median * 1e3,
        "ms",
        &format!("{touched} MiB alone"),
        a.median * 1e3,
        // ≤ 1.1× the time alone, as a ratio ≥ 1/1.1.
        a.median / r.median,
        Some(0.91),
        "the same capture with and without 16 GiB of untouched address space",
    );
}

/// Restore by each strategy.
fn section_restore(mib: usize, runs: usize, dir: &Path) {
    let mut mmap_times = Vec::new();
    for size in [mib / 4, mib / 2, mib] {
        let img = dir.join(format!("m{size}.img"));
        persist_mixed(size * MIB, &img, Codec::None);
        let [d] = measure(runs, || [restore_in_child("mmap", &img, None)]);
        println!("restore, mmap, {size} MiB: {}", d.ms());
        mmap_times.push((size, d));
        let _ = std::fs::remove_file(&img);
    }
    let (s2, d2) = mmap_times[2];
    emit(
        &format!("restore, mmap, {s2} MiB"),
        d2.median * 1e3,
        "ms",
        "target 5 ms",
        5.0,
        5e-3 / d2.median,
        Some(1.0),
        "time for restore() to return in a new process; it maps each run of stored pages from the file and each gap between runs (zero pages) as anonymous memory, into free space (the mixed memory has a zero run in every MiB: about 2,000 mappings per GiB), and mmap is most of the time",
    );
    let zimg = dir.join("mz.img");
    persist_mixed(mib * MIB, &zimg, Codec::Zstd(1));
    let [lazy] = measure(runs, || [restore_in_child("lazy", &zimg, None)]);
    emit(
        &format!("restore, lazy, zstd-1, {mib} MiB, return"),
        lazy.median * 1e3,
        "ms",
        "target 10 ms",
        10.0,
        10e-3 / lazy.median,
        Some(1.0),
        "time for restore() to return; pages are decoded on first touch",
    );
    let [eager1] = measure(runs, || [restore_in_child("eager", &zimg, Some(1))]);
    let [eager2] = measure(runs, || [restore_in_child("eager", &zimg, Some(2))]);
    println!(
        "restore, eager, zstd-1, {mib} MiB: {} on 1 thread, {} on 2",
        eager1.ms(),
        eager2.ms()
    );
    if have("zstd") {
        // The peer decodes the same non-zero bytes the image stores.
        let rawdump = dir.join("mixed.bin");
        let zout = dir.join("mixed.zst");
        {
            let mut v = vec![0u8; mib * MIB];
            fill_mixed(&mut v, ARENA);
            let mut f = std::io::BufWriter::new(std::fs::File::create(&rawdump).unwrap());
            for page in v.chunks(4096).filter(|p| p.iter().any(|&b| b != 0)) {
                f.write_all(page).unwrap();
            }
        }
        run_quiet(
            Command::new("zstd")
                .args(["-1", "-q", "-f"])
                .arg(&rawdump)
                .arg("-o")
                .arg(&zout),
        );
        let _ = std::fs::remove_file(&rawdump);
        let [zd] = measure(runs, || {
            let t0 = Instant::now();
            run_quiet(
                Command::new("zstd")
                    .args(["-d", "-q", "-f"])
                    .arg(&zout)
                    .arg("-o")
                    .arg("/dev/null"),
            );
            [t0.elapsed().as_secs_f64()]
        });
        let gbs = |s: f64| (mib * MIB) as f64 / s / 1e9;
        emit(
            &format!("restore, eager, zstd-1, {mib} MiB, 1 thread"),
            gbs(eager1.median),
            "GB/s",
            "zstd -d, the same non-zero bytes",
            gbs(zd.median),
            zd.median / eager1.median,
            Some(1.5),
            "one thread each, decoding the same non-zero pages: restore into fresh memory in a new process (zero pages mapped, not written), zstd -d to /dev/null; GB/s of process memory. \
             The gap is the fresh memory: restore has the kernel allocate and zero every page it fills (MADV_POPULATE_WRITE, about a quarter of its CPU time in perf), zstd reuses one buffer",
        );
        emit(
            &format!("restore, eager, zstd-1, {mib} MiB, 2 threads"),
            gbs(eager2.median),
            "GB/s",
            "zstd -d (1 thread: it decodes on one)",
            gbs(zd.median),
            zd.median / eager2.median,
            None,
            "restore's default on this 2-core machine against zstd's only way",
        );
        let _ = std::fs::remove_file(&zout);
    }
    let _ = std::fs::remove_file(&zimg);
}

/// Peak RSS of the capturing process as the target grows.
fn section_rss(prog: &Path, mib: usize, dir: &Path) {
    let img = dir.join("rss.img");
    for size in [mib / 4, mib / 2, mib] {
        let t = Target::spawn(prog, size, 0, false);
        let out = Command::new(std::env::current_exe().unwrap())
            .env(
                "MEMIMG_BENCH_CHILD",
                format!("capture:{}:{}", t.pid(), img.display()),
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
            "{:<52} {:>12}",
            format!("capture peak RSS, {size} MiB target"),
            hwm
        );
    }
}

/// The bytes of an uncompressed image of `mib` MiB of the mixed content.
fn image_bytes(mib: usize) -> Vec<u8> {
    let mut v = vec![0u8; mib * MIB];
    fill_mixed(&mut v, ARENA);
    let opts = memimg::WriterOptions::new()
        .page_size(4096)
        .codec(Codec::None)
        .workers(2);
    let mut w = memimg::Writer::new(Vec::with_capacity(mib * MIB), opts).unwrap();
    w.add_region(memimg::RegionInfo::new(ARENA, v.len() as u64), &v)
        .unwrap();
    w.finish().unwrap().0
}

/// A buffer aligned for O_DIRECT (4096 bytes).
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, len }
    }
    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: ptr holds len bytes, allocated by new, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).unwrap();
        // SAFETY: allocated by new with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

// SAFETY: an Aligned is a plain owned buffer.
unsafe impl Send for Aligned {}

fn create(path: &Path, direct: bool) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(if direct { libc::O_DIRECT } else { 0 })
        .open(path)
        .unwrap()
}

/// Writes `data` with O_DIRECT through aligned buffers of `piece` bytes:
/// the last piece is padded to a whole block and the file cut back to the
/// data's length.
fn write_direct(f: &std::fs::File, data: &[u8], piece: usize, bufs: &mut Vec<Aligned>) {
    use std::os::unix::fs::FileExt;
    if bufs.is_empty() {
        bufs.push(Aligned::new(piece));
    }
    let b = bufs[0].buf();
    for (i, c) in data.chunks(piece).enumerate() {
        let n = c.len().next_multiple_of(4096);
        b[..c.len()].copy_from_slice(c);
        b[c.len()..n].fill(0);
        f.write_all_at(&b[..n], (i * piece) as u64).unwrap();
    }
    f.set_len(data.len() as u64).unwrap();
}

/// The five ways of writing an image durably, timed on the same bytes.
fn section_durable(mib: usize, runs: usize, dir: &Path) {
    use std::os::unix::io::AsRawFd;
    println!("== durable writing of an uncompressed {mib} MiB image (bytes from memory, each ends with fsync)");
    let data = image_bytes(mib);
    let path = dir.join("durable.img");
    const STEP: usize = 8 << 20;
    let buffered = |kick: u8| {
        let t0 = Instant::now();
        let mut f = create(&path, false);
        let fd = f.as_raw_fd();
        for (i, c) in data.chunks(STEP).enumerate() {
            for p in c.chunks(MIB) {
                f.write_all(p).unwrap();
            }
            let off = (i * STEP) as i64;
            // SAFETY: sync_file_range and posix_fadvise take integers only.
            unsafe {
                match kick {
                    1 => {
                        libc::sync_file_range(fd, off, c.len() as i64, libc::SYNC_FILE_RANGE_WRITE);
                    }
                    2 => {
                        libc::sync_file_range(fd, off, c.len() as i64, libc::SYNC_FILE_RANGE_WRITE);
                        if i > 0 {
                            let prev = off - STEP as i64;
                            libc::sync_file_range(
                                fd,
                                prev,
                                STEP as i64,
                                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                                    | libc::SYNC_FILE_RANGE_WRITE
                                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                            );
                            libc::posix_fadvise(fd, prev, STEP as i64, libc::POSIX_FADV_DONTNEED);
                        }
                    }
                    _ => {}
                }
            }
        }
        f.sync_all().unwrap();
        t0.elapsed().as_secs_f64()
    };
    let mut bufs = Vec::new();
    let direct = |bufs: &mut Vec<Aligned>| {
        let t0 = Instant::now();
        let f = create(&path, true);
        write_direct(&f, &data, MIB, bufs);
        f.sync_all().unwrap();
        t0.elapsed().as_secs_f64()
    };
    let direct_thread = || {
        use std::os::unix::fs::FileExt;
        const PIECE: usize = 4 << 20;
        let t0 = Instant::now();
        let f = create(&path, true);
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Aligned, usize, u64)>(3);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Aligned>();
        for _ in 0..4 {
            empty_tx.send(Aligned::new(PIECE)).unwrap();
        }
        std::thread::scope(|s| {
            let f = &f;
            s.spawn(move || {
                for (mut b, n, off) in full_rx {
                    f.write_all_at(&b.buf()[..n], off).unwrap();
                    let _ = empty_tx.send(b);
                }
            });
            for (i, c) in data.chunks(PIECE).enumerate() {
                let mut b = empty_rx.recv().unwrap();
                let n = c.len().next_multiple_of(4096);
                b.buf()[..c.len()].copy_from_slice(c);
                b.buf()[c.len()..n].fill(0);
                full_tx.send((b, n, (i * PIECE) as u64)).unwrap();
            }
            drop(full_tx);
        });
        f.set_len(data.len() as u64).unwrap();
        f.sync_all().unwrap();
        t0.elapsed().as_secs_f64()
    };
    let ways: [(&str, &dyn Fn() -> f64); 3] = [
        ("buffered, fsync at the end", &|| buffered(0)),
        (
            "buffered, sync_file_range every 8 MiB (capture_to_path)",
            &|| buffered(1),
        ),
        (
            "buffered, sync_file_range pipeline + drop from cache",
            &|| buffered(2),
        ),
    ];
    let mut results = Vec::new();
    for (name, f) in ways {
        let [t] = measure(runs, || [f()]);
        results.push((name, t));
    }
    let [t] = measure(runs, || [direct(&mut bufs)]);
    results.push(("O_DIRECT, 1 MiB aligned writes", t));
    let [t] = measure(runs, || [direct_thread()]);
    results.push(("O_DIRECT from a thread, 4 x 4 MiB in flight", t));
    let today = results[1].1;
    let gbs = |s: f64| data.len() as f64 / s / 1e9;
    for (name, t) in &results {
        println!("  {name}: {}", t.ms());
        emit(
            &format!("durable write, {mib} MiB image: {name}"),
            gbs(t.median),
            "GB/s",
            "sync_file_range every 8 MiB (today)",
            gbs(today.median),
            today.median / t.median,
            None,
            "the same bytes from memory to a new file, ending with fsync",
        );
    }
    let _ = std::fs::remove_file(&path);
    println!();
}
