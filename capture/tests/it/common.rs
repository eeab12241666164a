//! Helpers shared by the tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The environment variable that selects a child role.
pub const ROLE: &str = "MEMIMG_TEST_ROLE";

/// Records that `test` cannot run here, and why; the test then returns.
///
/// The skip protocol shared by the project's test crates: with
/// `MEMIMG_REQUIRE_ALL` set (CI, where every tool is installed and tests run
/// as root) a skip is a failure, so this panics with `would skip: {why}`.
/// Otherwise it appends `{test}\t{why}` to the file named by
/// `MEMIMG_SKIP_LOG`, if set (scripts/test.sh counts those lines as skipped,
/// not passed), and prints `skipped: {why}` to stderr.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("MEMIMG_REQUIRE_ALL").is_some_and(|v| !v.is_empty()) {
        panic!("would skip: {why}");
    }
    if let Some(log) = std::env::var_os("MEMIMG_SKIP_LOG") {
        use std::io::Write;
        let line = format!("{test}\t{}\n", why.replace(['\n', '\t'], " "));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("writing the skip log {}: {e}", log.to_string_lossy()));
    }
    eprintln!("skipped: {why}");
}

/// The name libtest gives the test function `name` of the calling module
/// (`live::captures_patterns_zstd`), for [`skip`].
macro_rules! test_name {
    ($name:literal) => {
        concat!(module_path!(), "::", $name)
            .split_once("::")
            .map_or($name, |(_, rest)| rest)
    };
}
pub(crate) use test_name;

/// Why `tool` cannot be run here (it is not on PATH), if it cannot.
pub fn tool_missing(tool: &str) -> Option<String> {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!found).then(|| format!("{tool} is not installed"))
}

/// Fills `buf` with xorshift64 bytes from `seed`: random-looking, but the
/// same for the same seed in any process.
pub fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
}

/// Text that compresses well and is easy to recognise.
pub fn fill_text(buf: &mut [u8]) {
    let t = b"the quick brown fox jumps over the lazy dog 0123456789\n";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = t[i % t.len()];
    }
}

/// A running child process, killed and reaped on drop.
pub struct ChildProc {
    pub child: Child,
    /// `key=value` pairs from its READY line.
    pub vars: Vec<(String, u64)>,
}

impl ChildProc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn var(&self, k: &str) -> u64 {
        self.vars
            .iter()
            .find(|(n, _)| n == k)
            .unwrap_or_else(|| panic!("child did not report {k}"))
            .1
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes whose parent is `pid`, with their state letter: zombies
/// included.
pub fn children_of(pid: i32) -> Vec<(i32, u8)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The fields after the comm (which may hold anything): state, ppid.
        let Some(close) = stat.iter().rposition(|&b| b == b')') else {
            continue;
        };
        let rest = String::from_utf8_lossy(&stat[close + 2..]).into_owned();
        let mut f = rest.split(' ');
        let state = f.next().and_then(|s| s.bytes().next()).unwrap_or(b'?');
        if f.next().and_then(|s| s.parse::<i32>().ok()) == Some(pid) {
            out.push((p, state));
        }
    }
    out
}

/// A child process whose output lines arrive on `lines` and whose stdin is
/// `stdin`.
pub struct PipedChild {
    pub proc: ChildProc,
    pub stdin: std::process::ChildStdin,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl PipedChild {
    /// Sends one line to the child.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next output line that starts with `prefix`, within `secs`
    /// seconds; the lines before it are dropped.
    pub fn expect(&self, prefix: &str, secs: u64) -> String {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line starting with {prefix:?} within {secs} s: {e}"),
            }
        }
    }
}

/// Starts this binary in `role` with a pipe on its stdin, and waits for its
/// `READY k=v …` line; its later lines go to [`PipedChild::lines`].
pub fn spawn_role_piped(role: &str, args: &[(&str, String)]) -> PipedChild {
    let mut child = role_command(role, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let mut vars = Vec::new();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(30)) {
        if let Some(rest) = line.strip_prefix("READY") {
            for kv in rest.split_whitespace() {
                let (k, v) = kv.split_once('=').unwrap();
                let v = v.strip_prefix("0x").map_or_else(
                    || v.parse().unwrap(),
                    |h| u64::from_str_radix(h, 16).unwrap(),
                );
                vars.push((k.to_string(), v));
            }
            break;
        }
    }
    assert!(!vars.is_empty(), "child {role} did not start");
    PipedChild {
        proc: ChildProc { child, vars },
        stdin,
        lines: rx,
    }
}

fn role_command(role: &str, args: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new(exe);
    c.args([
        "--exact",
        "child::role_entry",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(ROLE, role);
    for (k, v) in args {
        c.env(k, v);
    }
    c
}

/// Starts this binary in `role` and waits for its `READY k=v …` line.
pub fn spawn_role(role: &str, args: &[(&str, String)]) -> ChildProc {
    let mut child = role_command(role, args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut vars = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("READY") {
            for kv in rest.split_whitespace() {
                let (k, v) = kv.split_once('=').unwrap();
                let v = v.strip_prefix("0x").map_or_else(
                    || v.parse().unwrap(),
                    |h| u64::from_str_radix(h, 16).unwrap(),
                );
                vars.push((k.to_string(), v));
            }
            break;
        }
    }
    assert!(!vars.is_empty(), "child {role} did not start");
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ChildProc { child, vars }
}

/// Runs this binary in `role` to completion and returns (success, stdout+stderr).
pub fn run_role(role: &str, args: &[(&str, String)]) -> (bool, String) {
    let out = role_command(role, args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Reads `len` bytes at `addr` from `/proc/PID/mem`.
pub fn read_mem(pid: i32, addr: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, addr)?;
    Ok(v)
}

/// The process state letter from /proc/PID/stat.
pub fn state(pid: i32) -> u8 {
    memimg_capture::procfs::state(pid).unwrap_or(b'?')
}

/// Process `pid` is gone, or a zombie (dead, holding no memory).
pub fn dead(pid: i32) -> bool {
    matches!(memimg_capture::procfs::state(pid), None | Some(b'Z' | b'X'))
}

/// Maps `len` bytes of anonymous read-write memory.
pub fn map_anon(len: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping; no existing memory is touched.
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
    p.cast()
}
