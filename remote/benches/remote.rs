//! Images on object storage, against a local moto server (and s3s-fs when
//! scripts/bench.d/remote.sh installed it), in one run per server: what
//! `imgtool inspect` and `cat` fetch, `capture -o s3://` against a capture
//! to a file then an upload, lazy restore from a URL against a download then
//! an eager restore, and the peak RSS of the reader and of the capture.
//!
//! ```text
//! cargo build --release -p imgtool && cargo bench -p memimg-remote --bench remote
//! MEMIMG_REMOTE_BENCH_MIB=64 MEMIMG_REMOTE_BENCH_RUNS=2 cargo bench -p memimg-remote --bench remote
//! scripts/bench.d/remote.sh      # builds imgtool, then runs this
//! ```
//!
//! Needs root (ptrace, for `imgtool capture`), userfaultfd, `moto_server`
//! and Python's boto3 (both installed by `scripts/setup.sh` with
//! `moto[server]`), and the release `imgtool` (`target/release/imgtool`
//! beside this bench, or `IMGTOOL=PATH`). It starts moto on a free loopback
//! port and stops it at the end; nothing leaves 127.0.0.1. moto's version
//! is printed, since every remote figure depends on it.
//!
//! - `MEMIMG_REMOTE_BENCH_MIB` (default 1024): the process captured and the
//!   structure restored. The RSS figures also use a process a quarter that
//!   size, to show they stay flat.
//! - `MEMIMG_REMOTE_BENCH_RUNS` (default 5): timed runs per figure, after one
//!   untimed warm-up run; figures are **medians**, with the spread (min–max).
//! - `MEMIMG_REMOTE_BENCH_ONLY=capture|restore|loadorder`: the capture,
//!   reads and RSS sections, or the restore section, alone; or the
//!   load-order section, which runs only when asked for
//!   (scripts/bench.d/loadorder-s3.sh): the arena example's startup
//!   (capture/examples/shared/arena.rs) restored from the store lazily from
//!   a plain image, lazily from the image laid out by its recorded profile
//!   (working set fetched before returning, and in the background), and
//!   eagerly; first answer, all answers, faults waited, GETs. It reads
//!   `ARENA_N` (3,000,000 keys), `ARENA_SAMPLE` (n / 20,000 lookups),
//!   `ARENA_RUNS` (default `MEMIMG_REMOTE_BENCH_RUNS`) and
//!   `MEMIMG_REMOTE_BENCH_EAGER_RUNS` (1: an eager restore from moto makes a
//!   GET per chunk and takes minutes), and needs no imgtool.
//! - `MEMIMG_REMOTE_BENCH_DIR`: scratch directory (default the system temp
//!   dir); it holds at most one image and one download at a time (and the
//!   objects s3s-fs serves).
//! - `MEMIMG_REMOTE_BENCH_S3S_FS`: the `s3s-fs` binary; when set, every
//!   figure is measured again against it, labelled `[s3s-fs VERSION]`
//!   (scripts/bench.d/remote.sh installs it into `target/tools`).
//! - `MEMIMG_REMOTE_BENCH_SERVERS`: `moto`, `s3s-fs` or both
//!   (comma-separated; default: every server there is).
//! - `MEMIMG_REMOTE_BENCH_MAX_REQUEST`: the lazy restore's
//!   `RemoteOptions::max_request` in bytes (default the restore's, 16 MiB),
//!   to choose it.
//!
//! **Like with like.** Each ratio compares the same work on the same bytes,
//! and both sides run as processes:
//! - capture: `imgtool capture --codec zstd:1 -o s3://…` (streamed into a
//!   multipart upload, 8 MiB parts, 3 in flight) against `imgtool capture
//!   --codec zstd:1 -o FILE` (which fsyncs the file) followed by boto3's
//!   `upload_file` of that file, with the same part size and parts in
//!   flight; the same process, captured by each side in turn. boto3 runs in
//!   a Python process started beforehand with its client made, so Python's
//!   start-up is not counted against it.
//! - lazy restore: a new process calls `restore_from(s3://…, Lazy)`, starts
//!   the prefetch and walks the structure; the peer downloads the object with
//!   boto3's `download_file` (8 ranged GETs in flight, as the restore's 8
//!   fetch workers), then a new process restores it eagerly from the file
//!   and walks it. Process start-up is counted on neither side.
//! - bytes fetched: counted by imgtool itself (`IMGTOOL_REMOTE_STATS=1`),
//!   against the header page, index and trailer the image has (and the one
//!   chunk `cat` needs), read from the image.
//!
//! **The process** holds a mixed heap, as the capture bench's does: in each
//! MiB, 256 KiB of random pages, 256 KiB of zero pages, 512 KiB of 48-byte
//! objects. **The structure** is the same content at a fixed address, with
//! a chain threaded through every non-zero page in a shuffled order (as a
//! hash map's nodes are reached from its buckets); the walk follows the
//! chain and sums every word of every page it reaches, and must find the
//! sum and count computed before the structure was persisted (zstd:1).
//!
//! **moto's cost per request.** moto (5.2.1) reads the whole object for
//! every GET, under a lock of that object, and then slices the range asked
//! for: against moto a ranged GET takes time in proportion to the object's
//! size, and GETs of one object are served one at a time. The bench prints
//! what a 4 KiB GET costs from a 1 MiB object and from the structure's
//! image. Figures made of many small GETs (a lazy or eager restore from a
//! URL fetches each 512 KiB chunk with a GET of its own) are therefore far
//! slower against moto than against S3 or a server that reads ranges from
//! storage; boto3's download, in 8 MiB ranges, makes 64 times fewer GETs.
//! The bytes-fetched and RSS figures do not depend on it. s3s-fs (0.14.1)
//! serves each range from its file (with the ETag stored at upload), so
//! its figures show memimg rather than the server: a 4 KiB GET of the
//! structure's 25.7 MiB image took 0.4–4.6 ms there against 13–26 ms from
//! moto in the same runs (under load).
//!
//! Each figure is printed for people and as one `@@BENCH` line for
//! `scripts/bench.sh` (see `capture/benches/capture.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use memimg::{Codec, Image, RegionKind};
use memimg_capture::memimg_remote::{
    self as remote, CopyOptions, Location, ReaderOptions, S3Options, S3Url, Store, UploadOptions,
};
use memimg_capture::{
    restore_from, PersistOptions, Persister, RemoteOptions, RestoreOptions, Strategy,
};

const MIB: usize = 1 << 20;
/// Where the structure lives, in the process that builds it and in those
/// that restore it.
const ARENA: u64 = 0x2c00_0000_0000;
const BUCKET: &str = "bench";
/// Credentials moto accepts (it checks none).
const CREDS: &str = "bench";

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

// ---------------------------------------------------------------------------
// Content, the structure and its walk

/// Fills `buf` (whole pages) with the mixed pattern: in groups of 1 MiB,
/// 256 KiB random, 256 KiB of zero pages, 512 KiB of objects.
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
        match p % 256 / 64 {
            0 => page
                .chunks_mut(8)
                .for_each(|c| c.copy_from_slice(&rnd().to_le_bytes())),
            1 => page.fill(0),
            _ => {
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

/// A private anonymous mapping, at `addr` (never replacing one) or where
/// the kernel chooses.
fn map(addr: Option<u64>, len: usize) -> *mut u8 {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    if addr.is_some() {
        flags |= libc::MAP_FIXED_NOREPLACE;
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
    assert_ne!(p, libc::MAP_FAILED, "mmap of {len} bytes failed");
    p.cast()
}

/// What a walk of the structure must find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Walk {
    head: u64,
    pages: u64,
    sum: u64,
}

fn page_sum(page: &[u8]) -> u64 {
    page.chunks_exact(8).fold(0u64, |s, w| {
        s.rotate_left(5) ^ u64::from_le_bytes(w.try_into().unwrap())
    })
}

/// Builds the structure in `buf` (mapped at `base`): the mixed content, and
/// a chain through every non-zero page in a shuffled order (each page's
/// first word is the address of the next; the last holds 0).
fn build(buf: &mut [u8], base: u64) -> Walk {
    fill_mixed(buf, base);
    let mut order: Vec<u64> = (0..(buf.len() / 4096) as u64)
        .filter(|p| p % 256 / 64 != 1)
        .collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut sum = 0u64;
    for (i, &p) in order.iter().enumerate() {
        let next = order.get(i + 1).map_or(0, |&n| base + n * 4096);
        let page = &mut buf[p as usize * 4096..(p as usize + 1) * 4096];
        page[..8].copy_from_slice(&next.to_le_bytes());
        sum = sum.wrapping_add(page_sum(page));
    }
    Walk {
        head: base + order[0] * 4096,
        pages: order.len() as u64,
        sum,
    }
}

/// Follows the chain from `head`, summing every page it reaches.
fn walk(head: u64) -> Walk {
    let (mut p, mut pages, mut sum) = (head, 0u64, 0u64);
    while p != 0 {
        // SAFETY: the structure was restored at its address; every link of
        // the chain is the address of one of its pages, or 0 at the end.
        let page = unsafe { std::slice::from_raw_parts(p as usize as *const u8, 4096) };
        sum = sum.wrapping_add(page_sum(page));
        pages += 1;
        p = u64::from_le_bytes(page[..8].try_into().unwrap());
    }
    Walk { head, pages, sum }
}

// ---------------------------------------------------------------------------
// Children: this program run again

/// Child: hold `mib` MiB of mixed memory; print its address, then wait for
/// stdin to close.
fn child_hold(mib: usize) {
    let len = mib * MIB;
    let p = map(None, len);
    // SAFETY: p is a fresh private mapping of len bytes, never unmapped,
    // and this is the only reference to it.
    let buf = unsafe { std::slice::from_raw_parts_mut(p, len) };
    fill_mixed(buf, p as u64);
    println!("READY {:#x}", p as u64);
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// Child: restore `loc` with `strategy` (reaching the store through the AWS
/// variables), start the prefetch, walk the structure and check it; print
/// the time to return, the time to the end of the walk (from the call),
/// the faults served and the bytes fetched.
fn child_restore(strategy: &str, loc: &str, want: Walk) {
    let strategy: Strategy = strategy.parse().unwrap();
    let loc: Location = loc.parse().unwrap();
    let mut remote = RemoteOptions::default();
    if let Some(n) = std::env::var("MEMIMG_REMOTE_BENCH_MAX_REQUEST")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        remote.max_request = n;
    }
    let t = Instant::now();
    let r = restore_from(
        &loc,
        &remote,
        &RestoreOptions {
            strategy,
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    let ret = t.elapsed();
    if let Some(l) = &r.lazy {
        l.prefetch();
    }
    let got = walk(want.head);
    let done = t.elapsed();
    assert_eq!(got, want, "the walk found another structure");
    let faults = r.lazy.as_ref().map_or(0, |l| l.stats().faults);
    let st = remote::global_stats();
    println!(
        "TIME {} {} {faults} {} {}",
        ret.as_nanos(),
        done.as_nanos(),
        st.bytes_fetched,
        st.get_requests
    );
    drop(r);
}

// ---------------------------------------------------------------------------
// moto, boto3, imgtool

/// An S3 server this bench started (moto, or s3s-fs); killed on drop.
struct Server {
    child: Child,
    endpoint: String,
    /// Its name and version, as figures name it.
    label: String,
    /// The directory s3s-fs serves, removed on drop.
    root: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = &self.root {
            let _ = std::fs::remove_dir_all(r);
        }
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// Starts s3s-fs (`MEMIMG_REMOTE_BENCH_S3S_FS`, installed by
/// scripts/bench.d/remote.sh) on a free loopback port, serving a directory
/// under `dir` that holds the bench's bucket (s3s-fs's buckets are
/// directories), with the bench's credentials.
fn start_s3s_fs(bin: &Path, dir: &Path) -> Server {
    let root = dir.join("s3s-fs");
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", CREDS, "--secret-key", CREDS])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("s3s-fs cannot be started");
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "s3s-fs".to_string());
    let server = Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        label: version,
        root: Some(root),
    };
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "s3s-fs did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn http(port: u16, req: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(req.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The `moto_server` command: on the PATH, or where a per-user pip install
/// puts it (`~/.local/bin`), as scripts/setup.sh may.
fn moto_command() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    let local = format!("{home}/.local/bin/moto_server");
    let on_path = Command::new("sh")
        .args(["-c", "command -v moto_server"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| !p.is_empty());
    on_path.unwrap_or(local)
}

/// Starts moto on a free loopback port, with the bench's bucket.
fn start_moto(version: &str) -> Server {
    let port = free_port();
    let child = Command::new(moto_command())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server cannot be started; scripts/setup.sh installs it");
    let moto = Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        label: format!("moto {version}"),
        root: None,
    };
    let host = format!("Host: 127.0.0.1:{port}\r\nConnection: close\r\n");
    let t = Instant::now();
    while !http(port, &format!("GET /moto-api/ HTTP/1.1\r\n{host}\r\n"))
        .is_ok_and(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "moto_server did not answer within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let auth = "Authorization: AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n";
    let r = http(
        port,
        &format!("PUT /{BUCKET} HTTP/1.1\r\n{host}{auth}Content-Length: 0\r\n\r\n"),
    )
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "creating the bucket: {r}");
    moto
}

/// The version of the moto that `moto_server` runs (from the interpreter
/// its script names, else `python3`).
fn moto_version() -> String {
    let script = moto_command();
    let mut python = "python3".to_string();
    if let Ok(text) = std::fs::read_to_string(&script) {
        if let Some(interp) = text.lines().next().and_then(|l| l.strip_prefix("#!")) {
            if interp.contains("python") {
                python = interp.trim().to_string();
            }
        }
    }
    Command::new(&python)
        .args(["-c", "import moto; print(moto.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_string(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}

/// A Python process with a boto3 client made: the peer's uploads and
/// downloads, timed from the request to its answer.
struct Boto {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    version: String,
}

const BOTO_HELPER: &str = r#"
import sys, boto3
from boto3.s3.transfer import TransferConfig
endpoint, up_threads, down_threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                  aws_secret_access_key="bench", region_name="us-east-1")
part = 8 << 20
up = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=up_threads)
down = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=down_threads)
s3.list_objects_v2(Bucket="bench")
print("READY", boto3.__version__, flush=True)
for line in sys.stdin:
    op, a, b, c = line.split()
    try:
        if op == "up":
            s3.upload_file(a, b, c, Config=up)
        else:
            s3.download_file(a, b, c, Config=down)
        print("OK", flush=True)
    except Exception as e:
        print("ERR", repr(e).replace("\n", " "), flush=True)
"#;

impl Boto {
    fn start(endpoint: &str, up_threads: usize, down_threads: usize) -> Result<Boto, String> {
        let mut child = Command::new("python3")
            .args(["-c", BOTO_HELPER, endpoint])
            .arg(up_threads.to_string())
            .arg(down_threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let Some(version) = line.trim().strip_prefix("READY ") else {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "python3 with boto3 did not start: {}",
                err.lines().last().unwrap_or("")
            ));
        };
        Ok(Boto {
            version: version.to_string(),
            child,
            stdin,
            out,
        })
    }

    fn call(&mut self, op: &str, a: &str, b: &str, c: &str) -> f64 {
        let t = Instant::now();
        writeln!(self.stdin, "{op} {a} {b} {c}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(line.trim(), "OK", "boto3 {op} {a} {b} {c}");
        secs
    }

    /// Uploads `file` to `key`: seconds.
    fn upload(&mut self, file: &Path, key: &str) -> f64 {
        self.call("up", file.to_str().unwrap(), BUCKET, key)
    }

    /// Downloads `key` into `file`: seconds.
    fn download(&mut self, key: &str, file: &Path) -> f64 {
        self.call("down", BUCKET, key, file.to_str().unwrap())
    }
}

impl Drop for Boto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished command did.
struct Ran {
    secs: f64,
    /// Peak resident set, in KiB (the kernel's `ru_maxrss`).
    rss_kib: u64,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `cmd` to its end, timing it and reading its peak RSS; panics
/// unless it exits 0.
///
/// The command is started by a new process of this bench (the `spawn`
/// child), which times it and reads its `ru_maxrss` with wait4, and reports
/// both on its last line of stderr. Started from this process directly, the
/// figure would be wrong: at exec the kernel counts the peak RSS of the
/// memory the new program replaced, which for a child of this bench is this
/// bench's own (over 1 GiB once it has built the restore section's
/// structure), so every later figure would read as that. The `spawn`
/// child's memory is a few MB, less than any command it measures.
fn run(cmd: &mut Command) -> Ran {
    let mut outer = Command::new(std::env::current_exe().unwrap());
    outer.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        // A child of this bench gets its role through the spawn child.
        let k = if k == CHILD_VAR {
            INNER_CHILD_VAR.as_ref()
        } else {
            k
        };
        match v {
            Some(v) => outer.env(k, v),
            None => outer.env_remove(k),
        };
    }
    outer.env(CHILD_VAR, "spawn");
    if let Some(d) = cmd.get_current_dir() {
        outer.current_dir(d);
    }
    let o = outer.stdin(Stdio::null()).output().unwrap();
    let all = String::from_utf8_lossy(&o.stderr).into_owned();
    let (err, report) = match all.rfind(SPAWN_REPORT) {
        Some(i) => (all[..i].to_string(), &all[i + SPAWN_REPORT.len()..]),
        None => panic!("{cmd:?}: the spawn child reported nothing: {all}"),
    };
    let f: Vec<&str> = report.split_whitespace().collect();
    let (status, rss_kib, secs): (i32, u64, f64) = (
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed (status {status:#x}): {err}"
    );
    Ran {
        secs,
        rss_kib,
        stdout: o.stdout,
        stderr: err,
    }
}

/// What the `spawn` child's last line of stderr starts with.
const SPAWN_REPORT: &str = "\n@@spawn ";
/// The variable that gives a child of this bench its role.
const CHILD_VAR: &str = "MEMIMG_REMOTE_BENCH_CHILD";
/// The role the `spawn` child passes on to the command it starts.
const INNER_CHILD_VAR: &str = "MEMIMG_REMOTE_BENCH_INNER_CHILD";

/// The `spawn` child (see [`run`]): runs its arguments as a command with
/// this process's stdio, and reports its wait status, peak RSS (KiB) and
/// seconds from start to end.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std cannot see
fn child_spawn() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let t = Instant::now();
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .env_remove(CHILD_VAR)
        .env_remove(INNER_CHILD_VAR);
    if let Some(role) = std::env::var_os(INNER_CHILD_VAR) {
        cmd.env(CHILD_VAR, role);
    }
    let child = cmd.spawn().unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data, which wait4 fills.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, with valid pointers to a status word
    // and a rusage; `child` is not waited for again afterwards (std's Child
    // does not wait on drop).
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r, child.id() as libc::pid_t, "wait4 failed");
    eprint!("{SPAWN_REPORT}{status} {} {secs}", ru.ru_maxrss);
}

/// The release imgtool: `IMGTOOL`, or beside this bench's directory.
fn imgtool_path() -> PathBuf {
    if let Some(p) = std::env::var_os("IMGTOOL") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("imgtool");
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build --release -p imgtool` (or set IMGTOOL)",
        p.display()
    );
    p
}

struct Ctx {
    imgtool: PathBuf,
    server: Server,
    dir: PathBuf,
    runs: usize,
}

impl Ctx {
    fn aws_env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ENDPOINT_URL", self.server.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", CREDS.to_string()),
            ("AWS_SECRET_ACCESS_KEY", CREDS.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }

    fn s3(&self) -> S3Options {
        S3Options::default()
            .with_endpoint(&self.server.endpoint)
            .with_region("us-east-1")
            .with_credentials(CREDS, CREDS)
            .with_request_timeout(Duration::from_secs(300))
    }

    fn imgtool(&self, args: &[&str]) -> Ran {
        let mut c = Command::new(&self.imgtool);
        c.args(args).env("IMGTOOL_REMOTE_STATS", "1");
        for (k, v) in self.aws_env() {
            c.env(k, v);
        }
        run(&mut c)
    }

    fn url(key: &str) -> String {
        format!("s3://{BUCKET}/{key}")
    }
}

/// `bytes fetched` from imgtool's `IMGTOOL_REMOTE_STATS` line.
fn fetched(r: &Ran) -> u64 {
    r.stderr
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("imgtool: remote: ")?;
            let (_, after) = rest.split_once("requests, ")?;
            after.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no remote statistics in: {}", r.stderr))
}

/// A process holding mixed memory; killed on drop.
struct Held {
    child: Child,
    addr: u64,
    _stdin: ChildStdin,
}

impl Held {
    fn spawn(mib: usize) -> Held {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .env("MEMIMG_REMOTE_BENCH_CHILD", format!("hold:{mib}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = c.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("READY 0x")
            .and_then(|a| u64::from_str_radix(a, 16).ok())
            .unwrap_or_else(|| panic!("the held process said {line:?}"));
        Held {
            child: c,
            addr,
            _stdin: stdin,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Figures

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
/// of the values it returns.
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
        "{figure:<56} {ours:>10.1} {unit:<5} {peer:<40} {theirs:>10.1}  {ratio:>6.2}x  (target {t}{met})"
    );
    let server = SERVER.lock().map(|s| s.clone()).unwrap_or_default();
    // Figures against moto keep their names; those against another server
    // name it.
    let figure = if server.starts_with("moto") {
        figure.to_string()
    } else {
        format!("{figure} [{server}]")
    };
    println!("@@BENCH\tremote\t{figure}\t{ours:.3}\t{unit}\t{peer}\t{theirs:.3}\t{ratio:.3}\t{t}\t{work}; {server}");
}

/// The server the figures come from (name and version), named in every
/// figure's description.
static SERVER: Mutex<String> = Mutex::new(String::new());

fn kib(b: u64) -> f64 {
    b as f64 / 1024.0
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Capture to a URL against capture to a file then an upload; leaves the
/// last capture at `s3://bench/cap.img` and returns the peak RSS of the
/// captures to the URL (KiB, median).
fn section_capture(cx: &Ctx, held: &Held, mib: usize, boto: Option<&mut Boto>) -> u64 {
    let file = cx.dir.join("cap.img");
    let file_s = file.to_str().unwrap().to_string();
    let pid = held.pid();
    let url = Ctx::url("cap.img");
    let mut rss = Vec::new();
    let mut ours = || {
        let r = cx.imgtool(&[
            "capture", "--pid", &pid, "--codec", "zstd:1", "--force", "-o", &url,
        ]);
        rss.push(r.rss_kib as f64);
        r.secs
    };
    let Some(boto) = boto else {
        let [o] = measure(cx.runs, || [ours()]);
        println!(
            "capture -o s3://, {mib} MiB: {} (no boto3: no peer)",
            o.ms()
        );
        return Stat::of(rss).median as u64;
    };
    let mut size = 0;
    // Each run captures with both, one after the other: the same process,
    // the same load.
    let [o, cap, up, both] = measure(cx.runs, || {
        let a = ours();
        let _ = std::fs::remove_file(&file);
        let c = cx.imgtool(&["capture", "--pid", &pid, "--codec", "zstd:1", "-o", &file_s]);
        size = std::fs::metadata(&file).unwrap().len();
        let u = boto.upload(&file, "cap-file.img");
        let _ = std::fs::remove_file(&file);
        [a, c.secs, u, c.secs + u]
    });
    println!(
        "capture -o s3://, {mib} MiB process: {}; capture -o FILE {} + boto3 upload {} = {} ({:.1} MiB image)",
        o.ms(),
        cap.ms(),
        up.ms(),
        both.ms(),
        size as f64 / MIB as f64
    );
    emit(
        &format!("capture -o s3://, zstd:1, {mib} MiB process"),
        o.median * 1e3,
        "ms",
        "capture -o FILE, then boto3 upload",
        both.median * 1e3,
        both.median / o.median,
        Some(1.3),
        &format!(
            "the same process (mixed memory), zstd:1 both: imgtool streams into a multipart upload (8 MiB parts, 3 in flight); the peer is imgtool capture to a file (fsynced) then boto3 upload_file of it (8 MiB parts, 3 in flight, client made beforehand); one run's sum; {:.0} MiB image",
            size as f64 / MIB as f64
        ),
    );
    Stat::of(rss).median as u64
}

/// The header page, index and trailer of the image at `url`, its size, and
/// the stored length of the chunk holding `addr`.
fn layout(cx: &Ctx, key: &str, addr: u64) -> (u64, u64, u64) {
    let loc: Location = Ctx::url(key).parse().unwrap();
    let img: Image = remote::open_image(&loc, None, &cx.s3()).unwrap();
    let size = img.file_len();
    let ends = img.header_bytes().len() as u64 + (size - img.trailer().index_offset);
    let page = img.header().page_size;
    let ext = img
        .extents()
        .unwrap()
        .iter()
        .find(|e| e.addr <= addr && addr < e.addr + e.len(page))
        .copied()
        .expect("an extent holds the address");
    let chunk = if ext.kind == memimg::ExtentKind::Data {
        u64::from(img.chunk_locs()[ext.chunk as usize].stored_len)
    } else {
        0
    };
    (size, ends, chunk)
}

/// Bytes fetched by inspect and cat of the capture at `s3://bench/cap.img`,
/// and the reader's peak RSS (KiB) for inspect and verify.
fn section_reads(cx: &Ctx, held: &Held, mib: usize, key: &str, emit_figures: bool) -> (u64, u64) {
    let url = Ctx::url(key);
    // An object page in the middle of the held heap.
    let addr = held.addr + (mib as u64 * MIB as u64) / 2 + 128 * 4096;
    let (size, ends, chunk) = layout(cx, key, addr);
    let ins = cx.imgtool(&["inspect", &url]);
    let addr_s = format!("{addr:#x}");
    let cat = cx.imgtool(&["cat", "--addr", &addr_s, "--len", "4096", &url]);
    let mut want = vec![0u8; 4096];
    std::fs::File::open(format!("/proc/{}/mem", held.pid()))
        .unwrap()
        .read_exact_at(&mut want, addr)
        .unwrap();
    assert!(
        cat.stdout == want,
        "cat gave other bytes than the process holds"
    );
    let ver = cx.imgtool(&["verify", &url]);
    let (fi, fc) = (fetched(&ins), fetched(&cat));
    println!(
        "{mib} MiB process, image {size} bytes: header page + index + trailer {ends} bytes; inspect fetched {fi} ({:.1} ms), cat --len 4096 fetched {fc} ({:.1} ms; chunk {chunk} bytes), verify {:.1} ms; peak RSS inspect {:.1} MB, verify {:.1} MB",
        ins.secs * 1e3,
        cat.secs * 1e3,
        ver.secs * 1e3,
        mb(ins.rss_kib),
        mb(ver.rss_kib)
    );
    if emit_figures {
        emit(
            &format!("inspect s3://, {mib} MiB process: bytes fetched"),
            kib(fi),
            "KiB",
            "header page + index + trailer",
            kib(ends),
            ends as f64 / fi as f64,
            Some(1.0),
            &format!(
                "bytes imgtool inspect fetched (its IMGTOOL_REMOTE_STATS) against the image's header page, index and trailer; the object is {:.1} MiB ({:.4}% fetched)",
                size as f64 / MIB as f64,
                fi as f64 * 100.0 / size as f64
            ),
        );
        emit(
            &format!("cat --len 4096 s3://, {mib} MiB process: bytes fetched"),
            kib(fc),
            "KiB",
            "header page + index + trailer + 1 chunk",
            kib(ends + chunk),
            (ends + chunk) as f64 / fc as f64,
            Some(1.0),
            &format!(
                "bytes imgtool cat --len 4096 fetched against the same plus the one chunk it reads ({chunk} bytes stored); bytes checked against the process's own"
            ),
        );
    }
    (ins.rss_kib, ver.rss_kib)
}

fn section_rss(cx: &Ctx, mib: usize, big: [u64; 3]) {
    let small = (mib / 4).max(16);
    let held = Held::spawn(small);
    let url = Ctx::url("rss.img");
    let pid = held.pid();
    let cap = cx.imgtool(&[
        "capture", "--pid", &pid, "--codec", "zstd:1", "--force", "-o", &url,
    ]);
    let (ins, ver) = section_reads(cx, &held, small, "rss.img", false);
    for (what, s, b) in [
        ("capture -o s3://", cap.rss_kib, big[0]),
        ("inspect s3://", ins, big[1]),
        ("verify s3://", ver, big[2]),
    ] {
        emit(
            &format!("{what}: peak RSS, {mib} MiB process"),
            mb(b),
            "MB",
            &format!("the same, {small} MiB process"),
            mb(s),
            s as f64 / b as f64,
            None,
            "peak RSS (ru_maxrss) of the imgtool process; flat with the image size means a ratio near 1",
        );
    }
}

/// Builds the structure, persists it (zstd:1) and uploads it to
/// `s3://bench/arena.img`; returns what its walk must find.
fn prepare_structure(cx: &Ctx, mib: usize) -> Walk {
    let len = mib * MIB;
    let p = map(Some(ARENA), len);
    // SAFETY: p is a fresh private mapping of len bytes; buf is the only
    // reference to it until the munmap below, after its last use.
    let buf = unsafe { std::slice::from_raw_parts_mut(p, len) };
    let want = build(buf, ARENA);
    let file = cx.dir.join("arena.img");
    let per = Persister::new().region(buf, RegionKind::Heap, "structure");
    per.write_to_path(
        &file,
        &PersistOptions {
            codec: Codec::Zstd(1),
            workers: 2,
            ..PersistOptions::default()
        },
    )
    .unwrap();
    drop(per);
    // SAFETY: our own mapping of len bytes; buf and the persister that
    // borrowed it are no longer used.
    unsafe { libc::munmap(p.cast(), len) };
    let rep = remote::copy(
        &Location::Local(file.clone()),
        &Ctx::url("arena.img").parse().unwrap(),
        &cx.s3(),
        &CopyOptions {
            overwrite: true,
            ..CopyOptions::default()
        },
    )
    .unwrap();
    println!(
        "structure: {mib} MiB at {ARENA:#x}, {} pages chained; zstd:1 image {:.1} MiB",
        want.pages,
        rep.bytes as f64 / MIB as f64
    );
    let _ = std::fs::remove_file(&file);
    want
}

/// The median time of a 4 KiB ranged GET of the object at `key` (no cache).
fn get_latency(cx: &Ctx, key: &str) -> (f64, u64) {
    use memimg::ReadAt;
    let url = S3Url::parse(&Ctx::url(key)).unwrap();
    let r = Store::new(BUCKET, &cx.s3())
        .unwrap()
        .reader(
            &url,
            ReaderOptions {
                block_size: 4096,
                cache_bytes: 0,
                ..ReaderOptions::default()
            },
        )
        .unwrap();
    let len = r.len();
    let mut buf = [0u8; 4096];
    let times: Vec<f64> = (0..7u64)
        .map(|i| {
            let at = (len / 8 * i) & !4095;
            let t = Instant::now();
            r.read_exact_at(&mut buf, at).unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    (Stat::of(times).median, len)
}

/// What one small ranged GET costs on this store, for a small object and for
/// the structure's: moto reads the whole object for every GET (under a lock
/// of the object), so each GET costs time in proportion to the object's
/// size, which S3 and the S3-compatible servers built for it do not.
fn calibrate(cx: &Ctx) {
    let url = S3Url::parse(&Ctx::url("probe.bin")).unwrap();
    let mut w = Store::new(BUCKET, &cx.s3())
        .unwrap()
        .writer(&url, UploadOptions::default())
        .unwrap();
    w.write_all(&vec![0x5a; MIB]).unwrap();
    w.commit().unwrap();
    let (small, small_len) = get_latency(cx, "probe.bin");
    let (big, big_len) = get_latency(cx, "arena.img");
    println!(
        "the store answers a 4 KiB ranged GET in {:.1} ms from a {:.1} MiB object, {:.1} ms from the {:.1} MiB structure image",
        small * 1e3,
        small_len as f64 / MIB as f64,
        big * 1e3,
        big_len as f64 / MIB as f64
    );
}

/// Runs a restore child: (return, return + walk, faults, bytes fetched,
/// GET requests).
fn restore_child(cx: &Ctx, strategy: &str, loc: &str, want: Walk) -> (f64, f64, u64, u64, u64) {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.env(
        "MEMIMG_REMOTE_BENCH_CHILD",
        format!(
            "restore:{strategy}:{}:{}:{}:{}",
            want.head, want.pages, want.sum, loc
        ),
    );
    for (k, v) in cx.aws_env() {
        c.env(k, v);
    }
    let r = run(&mut c);
    let text = String::from_utf8_lossy(&r.stdout);
    let f: Vec<u64> = text
        .lines()
        .find_map(|l| l.strip_prefix("TIME "))
        .unwrap_or_else(|| panic!("restore child: {text}{}", r.stderr))
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    (f[0] as f64 / 1e9, f[1] as f64 / 1e9, f[2], f[3], f[4])
}

fn section_restore(cx: &Ctx, mib: usize, boto: Option<&mut Boto>) {
    let want = prepare_structure(cx, mib);
    calibrate(cx);
    let url = Ctx::url("arena.img");
    let mut faults = Vec::new();
    let mut got = Vec::new();
    let mut gets = Vec::new();
    let mut lazy = || {
        let (ret, done, f, b, g) = restore_child(cx, "lazy", &url, want);
        faults.push(f as f64);
        got.push(b as f64);
        gets.push(g as f64);
        [ret, done]
    };
    let Some(boto) = boto else {
        let [ret, done] = measure(cx.runs, &mut lazy);
        println!(
            "lazy restore from s3://, {mib} MiB: return {}, walked {} (no boto3: no peer)",
            ret.ms(),
            done.ms()
        );
        return;
    };
    let dl = cx.dir.join("arena-download.img");
    let dl_s = dl.to_str().unwrap().to_string();
    let [ret, done, down, eager, peer] = measure(cx.runs, || {
        let [ret, done] = lazy();
        let _ = std::fs::remove_file(&dl);
        let d = boto.download("arena.img", &dl);
        let (_, e, _, _, _) = restore_child(cx, "eager", &dl_s, want);
        let _ = std::fs::remove_file(&dl);
        [ret, done, d, e, d + e]
    });
    let (faults, got, gets) = (Stat::of(faults), Stat::of(got), Stat::of(gets));
    println!(
        "lazy restore from s3://, {mib} MiB: return {}, walked {} ({:.0} faults, {:.0} GETs, {:.1} MiB fetched); boto3 download {} then eager restore and walk {} = {}",
        ret.ms(),
        done.ms(),
        faults.median,
        gets.median,
        got.median / MIB as f64,
        down.ms(),
        eager.ms(),
        peer.ms()
    );
    emit(
        &format!("lazy restore from s3://, {mib} MiB: return"),
        ret.median * 1e3,
        "ms",
        "target 20 ms",
        20.0,
        20e-3 / ret.median,
        Some(1.0),
        "time for restore_from(s3://…, Lazy) to return in a new process (the trailer and index, and the first RemoteOptions::open_head bytes with the header page, fetched; no chunk decoded)",
    );
    emit(
        &format!("lazy restore from s3://, {mib} MiB: walked"),
        done.median * 1e3,
        "ms",
        "boto3 download alone",
        down.median * 1e3,
        down.median / done.median,
        Some(1.0),
        "from the call to the end of a walk that reads every non-zero page in a shuffled order (prefetch on, 8 fetch workers), against boto3 download_file of the object (8 ranged GETs in flight) alone",
    );
    emit(
        &format!("lazy restore from s3://, {mib} MiB: walked, vs all"),
        done.median * 1e3,
        "ms",
        "boto3 download, eager restore, walk",
        peer.median * 1e3,
        peer.median / done.median,
        None,
        "the same lazy restore and walk, against the download then a new process restoring the file eagerly and walking it (one run's sum)",
    );
}

// ---------------------------------------------------------------------------
// Load order from object storage (issue 13)

/// The arena example's structure (capture/examples/shared/arena.rs): a hash
/// map of short strings at a fixed address, looked up by a startup.
#[path = "../../capture/examples/shared/arena.rs"]
mod arena;

/// Child: one startup of the arena from `loc` (`mode`: `record` from a
/// local file, writing the profile to `MEMIMG_REMOTE_BENCH_PROFILE`;
/// `plain` or `profile`, lazy; `profile-bg`, lazy with the working set in
/// the background; `eager`): restore, look the sample up, print the times
/// from the restore call to the first and the last answer, the faults that
/// waited, the pieces prefetched, and the GETs and bytes this process asked
/// of the store (its only reader's).
fn child_startup(mode: &str, n: u64, k: u64, loc: &str) {
    let loc: Location = loc.parse().unwrap();
    let t = Instant::now();
    let r = restore_from(
        &loc,
        &RemoteOptions::default(),
        &RestoreOptions {
            strategy: if mode == "eager" {
                Strategy::Eager
            } else {
                Strategy::Lazy
            },
            record_profile: (mode == "record").then_some(Duration::from_secs(600)),
            working_set_in_background: mode == "profile-bg",
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    let mut key = String::new();
    let mut first = None;
    for i in arena::sample(n, k) {
        arena::lookup(i, &mut key);
        first.get_or_insert_with(|| t.elapsed());
    }
    let end = t.elapsed();
    let (waited, prefetched) = r.lazy.as_ref().map_or((0, 0), |l| {
        let s = l.stats();
        (s.faults_waited, s.units_prefetched)
    });
    let st = remote::global_stats();
    if let (Some(l), "record") = (&r.lazy, mode) {
        l.profile_ready();
        let to = std::env::var("MEMIMG_REMOTE_BENCH_PROFILE").unwrap();
        l.profile().unwrap().write(Path::new(&to)).unwrap();
    }
    println!(
        "STARTUP {} {} {waited} {prefetched} {} {}",
        first.unwrap_or(end).as_nanos(),
        end.as_nanos(),
        st.get_requests,
        st.bytes_fetched
    );
    drop(r);
}

/// One startup's figures: first answer and all answers (s), faults waited,
/// pieces prefetched, GETs, bytes fetched.
fn startup_child(cx: &Ctx, mode: &str, loc: &str, n: u64, k: u64, profile: &Path) -> [f64; 6] {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.env(
        "MEMIMG_REMOTE_BENCH_CHILD",
        format!("startup:{mode}:{n}:{k}:{loc}"),
    )
    .env("MEMIMG_REMOTE_BENCH_PROFILE", profile);
    for (key, v) in cx.aws_env() {
        c.env(key, v);
    }
    let r = run(&mut c);
    let text = String::from_utf8_lossy(&r.stdout);
    let f: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("STARTUP "))
        .unwrap_or_else(|| panic!("startup child ({mode}): {text}{}", r.stderr))
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    [f[0] / 1e9, f[1] / 1e9, f[2], f[3], f[4], f[5]]
}

/// The arena example's load-order phase with the images in the store:
/// build the arena, persist it (zstd:1, 64 KiB chunks), record the profile
/// of a startup of `ARENA_SAMPLE` lookups (restored lazily from the local
/// file: the chunks touched are the same), lay the image out by it, upload
/// the plain and the optimized image, then run the startup from their URLs:
/// plain lazy, lazy with the profile, the working set in the background,
/// and eager. The lazy startups are interleaved run by run, after one
/// untimed warm-up round; eager (a GET per chunk, minutes against moto)
/// runs `MEMIMG_REMOTE_BENCH_EAGER_RUNS` times (1), without a warm-up.
fn section_loadorder(cx: &Ctx) {
    let n = env_num("ARENA_N", 3_000_000) as u64;
    let k = std::env::var("ARENA_SAMPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or((n / 20_000).max(1));
    let runs = env_num("ARENA_RUNS", cx.runs).max(1);
    let eager_runs = env_num("MEMIMG_REMOTE_BENCH_EAGER_RUNS", 1).max(1);
    let t = Instant::now();
    let used = arena::build(n);
    println!(
        "load order: a hash map of {n} strings in a {} MiB arena, built in {:.0} ms",
        used >> 20,
        t.elapsed().as_secs_f64() * 1e3
    );
    let plain = cx.dir.join("lo.img");
    let plain_len = arena::persist(used, n, &plain, Codec::Zstd(1), Some(64 << 10));
    arena::unmap();
    let profile = cx.dir.join("startup.profile");
    let plain_s = plain.to_str().unwrap();
    let rec = startup_child(cx, "record", plain_s, n, k, &profile);
    let prof = memimg::Profile::read(&profile).unwrap();
    let opt = cx.dir.join("lo-optimized.img");
    let src = Image::open(&plain).unwrap();
    let f = std::io::BufWriter::new(std::fs::File::create(&opt).unwrap());
    let (w, st) = memimg::relayout(&src, &prof, f).unwrap();
    w.into_inner().unwrap().sync_all().unwrap();
    drop(src);
    println!(
        "load order: {k} lookups touched {} of {} chunks ({:.1}%, {} KiB stored; recording waited on {} faults); images {:.1} MiB",
        st.working_set_chunks,
        st.chunks,
        100.0 * st.working_set_chunks as f64 / st.chunks.max(1) as f64,
        st.working_set_bytes >> 10,
        rec[2],
        plain_len as f64 / MIB as f64
    );
    let copy = CopyOptions {
        overwrite: true,
        ..CopyOptions::default()
    };
    let (plain_url, opt_url) = (Ctx::url("lo.img"), Ctx::url("lo-optimized.img"));
    for (from, to) in [(&plain, &plain_url), (&opt, &opt_url)] {
        remote::copy(
            &Location::Local(from.clone()),
            &to.parse().unwrap(),
            &cx.s3(),
            &copy,
        )
        .unwrap();
    }
    let _ = std::fs::remove_file(&plain);
    let _ = std::fs::remove_file(&opt);
    let (small, _) = get_latency(cx, "lo.img");
    println!(
        "the store answers a 4 KiB ranged GET of the plain image in {:.1} ms (median of 7)",
        small * 1e3
    );
    let modes = [
        ("plain", &plain_url),
        ("profile", &opt_url),
        ("profile-bg", &opt_url),
    ];
    let mut all: Vec<Vec<[f64; 6]>> = vec![Vec::new(); 4];
    for round in 0..=runs {
        for (m, (mode, url)) in modes.iter().enumerate() {
            let r = startup_child(cx, mode, url, n, k, &profile);
            if round > 0 {
                all[m].push(r);
            }
        }
    }
    for _ in 0..eager_runs {
        all[3].push(startup_child(cx, "eager", &plain_url, n, k, &profile));
    }
    let med: Vec<[Stat; 6]> = all
        .iter()
        .map(|rs| std::array::from_fn(|c| Stat::of(rs.iter().map(|r| r[c]).collect())))
        .collect();
    println!(
        "{:<34} {:>24} {:>24} {:>8} {:>6} {:>9}",
        "startup from s3://", "first answer", "all answers", "waited", "GETs", "fetched"
    );
    for (i, name) in [
        "lazy",
        "lazy with the profile",
        "lazy, working set in background",
        "eager",
    ]
    .iter()
    .enumerate()
    {
        let m = &med[i];
        println!(
            "{name:<34} {:>24} {:>24} {:>8.0} {:>6.0} {:>5.1} MiB",
            m[0].ms(),
            m[1].ms(),
            m[2].median,
            m[4].median,
            m[5].median / MIB as f64
        );
    }
    println!(
        "medians of {runs} run(s) of each lazy startup (interleaved, after a warm-up round), {eager_runs} of eager"
    );
    let (pl, pr, bg, eg) = (&med[0], &med[1], &med[2], &med[3]);
    let work = format!(
        "{k} lookups of a {} MiB arena (zstd:1, 64 KiB chunks) in a new process, restored with restore_from(s3://…): lazy from the plain image vs lazy from the image laid out by the recorded profile (working set fetched before returning); eager: fetch and decode all, then look up",
        used >> 20
    );
    emit(
        "load order from s3://: faults waited",
        pr[2].median,
        "faults",
        "plain lazy",
        pl[2].median,
        pl[2].median / pr[2].median.max(1.0),
        Some(10.0),
        &work,
    );
    // Against plain lazy (target 3x), then against eager (target: faster).
    for (peer, name, suffix, target) in [
        (pl, "plain lazy", "", 3.0),
        (eg, "eager", ", vs eager", 1.0),
    ] {
        for (c, what) in [(0, "first answer"), (1, "all answers")] {
            emit(
                &format!("load order from s3://: time to {what}{suffix}"),
                pr[c].median * 1e3,
                "ms",
                name,
                peer[c].median * 1e3,
                peer[c].median / pr[c].median,
                Some(target),
                &work,
            );
        }
    }
    emit(
        "load order from s3://: GETs to all answers",
        pr[4].median,
        "GETs",
        "plain lazy",
        pl[4].median,
        pl[4].median / pr[4].median.max(1.0),
        None,
        &work,
    );
    emit(
        "load order from s3://: first answer, working set in background",
        bg[0].median * 1e3,
        "ms",
        "plain lazy",
        pl[0].median * 1e3,
        pl[0].median / bg[0].median,
        None,
        &work,
    );
    emit(
        "load order from s3://: faults waited, working set in background",
        bg[2].median,
        "faults",
        "plain lazy",
        pl[2].median,
        pl[2].median / bg[2].median.max(1.0),
        None,
        &work,
    );
}

fn main() {
    if let Ok(what) = std::env::var("MEMIMG_REMOTE_BENCH_CHILD") {
        if let Some(rest) = what.strip_prefix("startup:") {
            let p: Vec<&str> = rest.splitn(4, ':').collect();
            child_startup(p[0], p[1].parse().unwrap(), p[2].parse().unwrap(), p[3]);
            return;
        }
        let parts: Vec<&str> = what.splitn(6, ':').collect();
        match parts[0] {
            "spawn" => child_spawn(),
            "hold" => child_hold(parts[1].parse().unwrap()),
            "restore" => child_restore(
                parts[1],
                parts[5],
                Walk {
                    head: parts[2].parse().unwrap(),
                    pages: parts[3].parse().unwrap(),
                    sum: parts[4].parse().unwrap(),
                },
            ),
            _ => panic!("unknown child {what}"),
        }
        return;
    }
    // `cargo bench` passes --bench; this bench takes no filter.
    let mib = env_num("MEMIMG_REMOTE_BENCH_MIB", 1024);
    let runs = env_num("MEMIMG_REMOTE_BENCH_RUNS", 5);
    let base =
        std::env::var_os("MEMIMG_REMOTE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("memimg-remote-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(why) = memimg_capture::lazy_unavailable() {
        println!("userfaultfd is not available ({why}): no lazy restore figures");
    }
    // The servers, in turn: moto always; s3s-fs too when the bench script
    // installed it (MEMIMG_REMOTE_BENCH_S3S_FS), and MEMIMG_REMOTE_BENCH_SERVERS
    // (`moto`, `s3s-fs`, or both, comma-separated) picks among them.
    let picked = std::env::var("MEMIMG_REMOTE_BENCH_SERVERS").unwrap_or_default();
    let wants = |name: &str| picked.is_empty() || picked.split(',').any(|p| p.trim() == name);
    let s3s_fs = std::env::var_os("MEMIMG_REMOTE_BENCH_S3S_FS").map(PathBuf::from);
    let mut servers: Vec<&str> = Vec::new();
    if wants("moto") {
        servers.push("moto");
    }
    match &s3s_fs {
        Some(_) if wants("s3s-fs") => servers.push("s3s-fs"),
        Some(_) => {}
        None => println!("s3s-fs: not installed (MEMIMG_REMOTE_BENCH_S3S_FS unset): moto alone"),
    }
    for name in servers {
        let server = match (name, &s3s_fs) {
            ("s3s-fs", Some(bin)) => start_s3s_fs(bin, &dir),
            _ => start_moto(&moto_version()),
        };
        // MEMIMG_REMOTE_BENCH_ONLY=restore: the restore section alone;
        // `loadorder`: the load-order section alone (run only when asked).
        let only = std::env::var("MEMIMG_REMOTE_BENCH_ONLY").unwrap_or_default();
        let cx = Ctx {
            // The load-order section runs no imgtool.
            imgtool: if only == "loadorder" {
                PathBuf::new()
            } else {
                imgtool_path()
            },
            server,
            dir: dir.clone(),
            runs,
        };
        // The load-order section has no boto3 peer.
        let started = (only != "loadorder")
            .then(|| Boto::start(&cx.server.endpoint, 3, memimg_capture::DEFAULT_IN_FLIGHT));
        let mut boto = match started {
            Some(Ok(b)) => Some(b),
            Some(Err(why)) => {
                println!("no peer figures: {why}");
                None
            }
            None => None,
        };
        if only == "loadorder" {
            println!("{} on {}", cx.server.label, cx.server.endpoint);
        } else {
            println!(
                "{} on {}; boto3 {}; {mib} MiB; medians of {runs} runs after a warm-up",
                cx.server.label,
                cx.server.endpoint,
                boto.as_ref().map_or("missing", |b| b.version.as_str())
            );
        }
        if let Ok(mut s) = SERVER.lock() {
            s.clone_from(&cx.server.label);
        }
        if only == "loadorder" {
            if memimg_capture::lazy_unavailable().is_none() {
                section_loadorder(&cx);
            }
            drop(boto);
            drop(cx);
            continue;
        }
        if only.is_empty() || only == "capture" {
            let held = Held::spawn(mib);
            let cap_rss = section_capture(&cx, &held, mib, boto.as_mut());
            let (ins_rss, ver_rss) = section_reads(&cx, &held, mib, "cap.img", true);
            drop(held);
            section_rss(&cx, mib, [cap_rss, ins_rss, ver_rss]);
        }
        if (only.is_empty() || only == "restore") && memimg_capture::lazy_unavailable().is_none() {
            section_restore(&cx, mib, boto.as_mut());
        }
        drop(boto);
        drop(cx);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
