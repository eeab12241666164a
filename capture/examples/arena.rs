//! Persist a pointer-rich structure and get it back in a new process.
//!
//! ```text
//! cargo run --release -p memimg-capture --example arena            # both phases
//! ARENA_N=500000 cargo run --release -p memimg-capture --example arena
//! cargo run --release -p memimg-capture --features remote --example arena   # and from S3
//! ```
//!
//! The first phase builds a hash map of a few million short strings in an
//! arena at a fixed address (every pointer in it is absolute), persists the
//! arena twice (raw, and zstd-compressed), then starts this program again as
//! a new process once per restore strategy. Each child restores the arena,
//! walks every bucket, looks every key up and checks every value, then
//! reports its times. The arena itself (build, persist, lookups) is in
//! `shared/arena.rs`, which the load-order section of
//! remote/benches/remote.rs and remote/tests/it/loadorder.rs include too.
//!
//! **The remote run** (feature `remote`): the compressed image is copied to
//! object storage and restored from its URL, lazily and eagerly. The store
//! is `MEMIMG_ARENA_S3=s3://BUCKET/KEY` when set, reached with the AWS
//! environment variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …);
//! otherwise the example starts a local moto server (`moto_server`, which
//! `scripts/setup.sh` installs) on a free loopback port, and stops it at
//! the end. Without either, the remote run is skipped, and says why. Each
//! line gives the time to return, the time to walk the structure, the
//! faults served, and the bytes fetched from the store (opening included).
//!
//! The second phase is about load order (spec.md, *Load order*): a program
//! that starts by looking up a sample of keys (a startup-like working set, a
//! few percent of the arena) is restored lazily while the chunks it touches
//! are recorded; the image is laid out by that profile (`imgtool optimize`
//! does the same), and the startup is run again, with the page cache dropped
//! before each run when `ARENA_DROP_CACHES=1` (root only): plain lazy, lazy
//! with the profile, and eager. It prints the faults that had to wait and
//! the time from the restore call to the first answer and to the last.
//!
//! ```text
//! ARENA_PHASE=loadorder ARENA_DROP_CACHES=1 cargo run --release -p memimg-capture --example arena
//! ```
//!
//! Settings: `ARENA_N` keys (3,000,000), `ARENA_SAMPLE` keys looked up at
//! startup (n / 20,000), `ARENA_RUNS` runs of each startup, whose median is
//! shown (1), `ARENA_PHASE` (`all`, `strategies` or `loadorder`),
//! `ARENA_BENCH=1` to print the figures for scripts/bench.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// A 64-bit-only demo: addresses and sizes are u64 and fit usize there.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use memimg::{Codec, Image, Profile};
use memimg_capture::{restore, RestoreOptions, Strategy};

#[path = "shared/arena.rs"]
mod arena;

use arena::{build, lookup, persist, sample, walk, ARENA, TAG};

fn child(strategy: &str, img: &str, n: u64) {
    let strategy: Strategy = strategy.parse().unwrap();
    // The same check as the C example's child: the image must carry this
    // program's tag and key count.
    let opts = RestoreOptions {
        strategy,
        expect_validation: Some((TAG.into(), n.to_ne_bytes().to_vec())),
        ..RestoreOptions::default()
    };
    let t = Instant::now();
    #[cfg(feature = "remote")]
    let r = {
        let loc: memimg_capture::memimg_remote::Location = img.parse().unwrap();
        memimg_capture::restore_from(&loc, &memimg_capture::RemoteOptions::default(), &opts)
            .unwrap()
    };
    #[cfg(not(feature = "remote"))]
    let r = restore(Path::new(img), &opts).unwrap();
    let restore_time = t.elapsed();
    if let Some(l) = &r.lazy {
        l.prefetch();
    }
    let t = Instant::now();
    walk(n);
    let walk_time = t.elapsed();
    let faults = r.lazy.as_ref().map(|l| l.stats().faults).unwrap_or(0);
    #[cfg(feature = "remote")]
    let fetched = memimg_capture::memimg_remote::global_stats().bytes_fetched;
    #[cfg(not(feature = "remote"))]
    let fetched = 0u64;
    println!(
        "RESULT {} {:.3} {:.1} {} {}",
        r.strategy,
        restore_time.as_secs_f64() * 1e3,
        walk_time.as_secs_f64() * 1e3,
        faults,
        fetched
    );
}

/// A startup in a child: restore (`mode`: `record`, `plain`, `profile` or
/// `eager`), look the sample up, report. `record` writes the profile to
/// `profile`.
fn startup(mode: &str, img: &Path, profile: &Path, n: u64, k: u64) {
    let t = Instant::now();
    let r = restore(
        img,
        &RestoreOptions {
            strategy: if mode == "eager" {
                Strategy::Eager
            } else {
                Strategy::Lazy
            },
            record_profile: (mode == "record").then_some(std::time::Duration::from_secs(600)),
            working_set_in_background: mode == "profile-bg",
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    let mut key = String::new();
    let mut first = None;
    for i in sample(n, k) {
        lookup(i, &mut key);
        first.get_or_insert_with(|| t.elapsed());
    }
    let end = t.elapsed();
    let (waited, prefetched) = match &r.lazy {
        Some(l) => {
            let s = l.stats();
            (s.faults_waited, s.units_prefetched)
        }
        None => (0, 0),
    };
    if let (Some(l), "record") = (&r.lazy, mode) {
        l.profile_ready();
        l.profile().unwrap().write(profile).unwrap();
    }
    println!(
        "RESULT {mode} {:.3} {:.3} {waited} {prefetched}",
        first.unwrap_or(end).as_secs_f64() * 1e3,
        end.as_secs_f64() * 1e3
    );
}

/// Drops the page cache (root only), so each startup reads the image from
/// the disk; says so when it cannot.
fn drop_caches() -> bool {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The load-order phase: record, optimize, run the startup three ways.
fn load_order_phase(used: u64, n: u64, dir: &Path) {
    let k: u64 = std::env::var("ARENA_SAMPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or((n / 20_000).max(1));
    let runs: usize = std::env::var("ARENA_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let drop = std::env::var("ARENA_DROP_CACHES").is_ok_and(|v| v == "1");
    let bench = std::env::var("ARENA_BENCH").is_ok_and(|v| v == "1");
    // 64 KiB chunks: a lookup touches a few random pages, and a smaller
    // chunk makes each fault, and the working set, smaller.
    let img = dir.join("lo.img");
    persist(used, n, &img, Codec::Zstd(1), Some(64 << 10));
    let exe = std::env::current_exe().unwrap();
    let profile = dir.join("startup.profile");
    let run = |mode: &str, img: &Path| -> Vec<f64> {
        if drop && !drop_caches() {
            eprintln!("cannot drop the page cache (not root?): the image may be read from memory");
        }
        let out = Command::new(&exe)
            .args([
                "startup",
                mode,
                img.to_str().unwrap(),
                profile.to_str().unwrap(),
            ])
            .env("ARENA_N", n.to_string())
            .env("ARENA_SAMPLE", k.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            eprintln!(
                "{mode} failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
            std::process::exit(1);
        };
        line.split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let rec = run("record", &img);
    let prof = Profile::read(&profile).unwrap();
    let src = Image::open(&img).unwrap();
    let opt = dir.join("lo-optimized.img");
    let f = std::io::BufWriter::new(std::fs::File::create(&opt).unwrap());
    let (_, st) = memimg::relayout(&src, &prof, f).unwrap();
    println!();
    println!(
        "load order: {k} lookups touched {} of {} chunks ({:.1}% of the arena, {} KiB stored); \
         recording them waited on {} faults",
        st.working_set_chunks,
        st.chunks,
        100.0 * st.working_set_chunks as f64 / st.chunks.max(1) as f64,
        st.working_set_bytes >> 10,
        rec[2]
    );
    println!(
        "page cache {} before each startup; median of {runs} run(s)",
        if drop { "dropped" } else { "NOT dropped" }
    );
    let mut res: Vec<(&str, Vec<f64>)> = Vec::new();
    for (mode, path) in [
        ("plain", &img),
        ("profile", &opt),
        ("profile-bg", &opt),
        ("eager", &img),
    ] {
        let all: Vec<Vec<f64>> = (0..runs).map(|_| run(mode, path)).collect();
        let col = |c: usize| median(all.iter().map(|r| r[c]).collect());
        res.push((mode, vec![col(0), col(1), col(2), col(3)]));
    }
    println!(
        "{:<22} {:>16} {:>16} {:>13} {:>11}",
        "startup", "first answer ms", "all answers ms", "faults waited", "prefetched"
    );
    for (mode, r) in &res {
        let name = match *mode {
            "plain" => "lazy",
            "profile" => "lazy with the profile",
            "profile-bg" => "  working set meanwhile",
            _ => "eager",
        };
        println!(
            "{name:<22} {:>16.2} {:>16.2} {:>13} {:>11}",
            r[0], r[1], r[2], r[3]
        );
    }
    if bench {
        let (plain, prof, eager) = (&res[0].1, &res[1].1, &res[3].1);
        let what = format!(
            "{k} lookups of a {} MiB arena (zstd:1, 64 KiB chunks) in a new process, page cache {}; lazy: userfaultfd, plain image vs image laid out by the recorded profile; eager: decode all, then look up",
            used >> 20,
            if drop { "dropped" } else { "warm" }
        );
        let line = |fig: &str,
                    ours: f64,
                    unit: &str,
                    peer: &str,
                    pv: f64,
                    ratio: f64,
                    target: &str| {
            println!(
                "@@BENCH\tloadorder\t{fig}\t{ours:.2}\t{unit}\t{peer}\t{pv:.2}\t{ratio:.2}\t{target}\t{what}"
            );
        };
        // At least one fault in the ratio's denominator: 0 waits is shown
        // as the plain count (the README says so).
        line(
            "faults waited",
            prof[2],
            "faults",
            "plain lazy",
            plain[2],
            plain[2] / prof[2].max(1.0),
            "10",
        );
        line(
            "time to first answer",
            prof[0],
            "ms",
            "plain lazy",
            plain[0],
            plain[0] / prof[0],
            "3",
        );
        line(
            "time to all answers",
            prof[1],
            "ms",
            "plain lazy",
            plain[1],
            plain[1] / prof[1],
            "3",
        );
        line(
            "time to first answer",
            prof[0],
            "ms",
            "eager",
            eager[0],
            eager[0] / prof[0],
            "1",
        );
        line(
            "time to all answers",
            prof[1],
            "ms",
            "eager",
            eager[1],
            eager[1] / prof[1],
            "1",
        );
        let bg = &res[2].1;
        line(
            "time to first answer, working set in the background",
            bg[0],
            "ms",
            "plain lazy",
            plain[0],
            plain[0] / bg[0],
            "-",
        );
        line(
            "faults waited, working set in the background",
            bg[2],
            "faults",
            "plain lazy",
            plain[2],
            plain[2] / bg[2].max(1.0),
            "-",
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = std::env::var("ARENA_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000_000);
    if args.len() == 4 && args[1] == "restore" {
        child(&args[2], &args[3], n);
        return;
    }
    if args.len() == 5 && args[1] == "startup" {
        let k: u64 = std::env::var("ARENA_SAMPLE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        startup(&args[2], Path::new(&args[3]), Path::new(&args[4]), n, k);
        return;
    }
    let phase = std::env::var("ARENA_PHASE").unwrap_or_else(|_| "all".into());
    let dir = std::env::temp_dir().join(format!("memimg-arena-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    let used = build(n);
    let build_time = t.elapsed();
    println!(
        "built a hash map of {n} strings in a {} MiB arena at {ARENA:#x} in {:.0} ms",
        used >> 20,
        build_time.as_secs_f64() * 1e3
    );
    let t = Instant::now();
    walk(n);
    println!(
        "walking and checking it in place takes {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    if phase == "loadorder" {
        load_order_phase(used, n, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let raw: PathBuf = dir.join("arena.img");
    let zst: PathBuf = dir.join("arena-zstd.img");
    for (path, codec) in [(&raw, Codec::None), (&zst, Codec::Zstd(1))] {
        let t = Instant::now();
        let file_len = persist(used, n, path, codec, None);
        println!(
            "persisted with codec {codec}: {} MiB file in {:.0} ms",
            file_len >> 20,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    println!();
    println!(
        "{:<8} {:<12} {:>12} {:>14} {:>8} {:>12}",
        "strategy", "image", "restore ms", "walk+check ms", "faults", "fetched"
    );
    let runs: Vec<(&str, String, &str)> = vec![
        ("mmap", raw.display().to_string(), "raw"),
        ("eager", zst.display().to_string(), "zstd:1"),
        ("lazy", zst.display().to_string(), "zstd:1"),
    ];
    for (strategy, img, image) in runs {
        run_child(strategy, &img, image, n, &[]);
    }
    #[cfg(feature = "remote")]
    remote::run(&zst, n);
    if phase != "strategies" {
        load_order_phase(used, n, &dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs this program again to restore `img` with `strategy`, and prints its
/// line of the table.
fn run_child(strategy: &str, img: &str, image: &str, n: u64, env: &[(String, String)]) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args(["restore", strategy, img])
        .env("ARENA_N", n.to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        eprintln!(
            "{strategy} of {img} failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    let fetched: u64 = f[4].parse().unwrap_or(0);
    let fetched = if fetched == 0 {
        "-".to_string()
    } else {
        format!("{:.1} MiB", fetched as f64 / (1 << 20) as f64)
    };
    println!(
        "{:<8} {:<12} {:>12} {:>14} {:>8} {:>12}",
        f[0], image, f[1], f[2], f[3], fetched
    );
}

/// The remote run: the zstd image in object storage, restored from its URL.
#[cfg(feature = "remote")]
mod remote {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use memimg_capture::memimg_remote::{self as remote, CopyOptions, Location, S3Options};

    /// A moto server this example started; stopped on drop.
    struct Moto(Child);

    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// One plain HTTP request to a local moto (creating a bucket needs no
    /// signature there).
    fn http(port: u16, req: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(req.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Starts moto on a free loopback port with a bucket `arena`; returns
    /// it and its endpoint, or why it cannot.
    fn start_moto() -> Result<(Moto, String), String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("moto_server cannot be started ({e}); scripts/setup.sh installs it")
            })?;
        let moto = Moto(child);
        let t = Instant::now();
        let host = format!("Host: 127.0.0.1:{port}\r\nConnection: close\r\n");
        loop {
            if let Ok(r) = http(port, &format!("GET /moto-api/ HTTP/1.1\r\n{host}\r\n")) {
                if r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200") {
                    break;
                }
            }
            if t.elapsed() > Duration::from_secs(60) {
                return Err("moto_server did not answer within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let auth = "Authorization: AWS4-HMAC-SHA256 Credential=arena/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n";
        let r = http(
            port,
            &format!("PUT /arena HTTP/1.1\r\n{host}{auth}Content-Length: 0\r\n\r\n"),
        )
        .map_err(|e| e.to_string())?;
        if !r.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "creating the bucket: {}",
                r.lines().next().unwrap_or("")
            ));
        }
        Ok((moto, format!("http://127.0.0.1:{port}")))
    }

    pub fn run(zst: &Path, n: u64) {
        println!();
        // Where: the caller's store, or a moto of our own.
        let (url, env, _moto) = match std::env::var("MEMIMG_ARENA_S3") {
            Ok(u) => (u, Vec::new(), None),
            Err(_) => match start_moto() {
                Ok((m, endpoint)) => {
                    let env = vec![
                        ("AWS_ENDPOINT_URL".to_string(), endpoint),
                        ("AWS_ACCESS_KEY_ID".to_string(), "arena".to_string()),
                        ("AWS_SECRET_ACCESS_KEY".to_string(), "arena".to_string()),
                        ("AWS_REGION".to_string(), "us-east-1".to_string()),
                    ];
                    ("s3://arena/arena-zstd.img".to_string(), env, Some(m))
                }
                Err(why) => {
                    println!("remote run skipped: set MEMIMG_ARENA_S3=s3://BUCKET/KEY, or install moto_server: {why}");
                    return;
                }
            },
        };
        let loc: Location = url.parse().unwrap();
        let s3 = S3Options::from_vars(
            std::env::vars()
                .filter(|(k, _)| !env.iter().any(|(e, _)| e == k))
                .chain(env.iter().cloned()),
        );
        let t = Instant::now();
        let opts = CopyOptions {
            overwrite: true,
            ..CopyOptions::default()
        };
        let rep = remote::copy(&Location::Local(zst.to_path_buf()), &loc, &s3, &opts).unwrap();
        println!(
            "uploaded the zstd:1 image to {url} ({} MiB) in {:.0} ms",
            rep.bytes >> 20,
            t.elapsed().as_secs_f64() * 1e3
        );
        for strategy in ["lazy", "eager"] {
            super::run_child(strategy, &url, "s3 zstd:1", n, &env);
        }
    }
}
