//! `imgtool capture` end to end: a live child with a known pattern at a known
//! address is captured and read back with inspect, cat, verify and gdb; a
//! gcore of the same frozen child is imported and diffed against the capture;
//! SIGKILL at many moments never leaves a partial image or a stopped child;
//! and the errors are clear.
//!
//! The children are this test binary itself, re-executed with
//! `IMGTOOL_CAPTURE_ROLE` set: it runs only [`child_role`], which maps a region
//! at a fixed address, fills it, prints `READY …` and sleeps until killed.
//! Tests that need gdb, gcore or ptrace skip where those are missing or
//! cannot attach, through the skip protocol (support/skip.rs): a skip shows in
//! scripts/test.sh's summary, and fails on CI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use memimg::VerifyOptions;

use crate::common::*;
use crate::gdb::{gdb_bytes, have};
use crate::skip::skip;

const ROLE: &str = "IMGTOOL_CAPTURE_ROLE";
const MIB: &str = "IMGTOOL_CAPTURE_MIB";
/// Where the pattern child maps its region (MAP_FIXED_NOREPLACE).
pub(crate) const ADDR: u64 = 0x5a5a_0000_0000;
pub(crate) const PAGES: usize = 16;

/// The known bytes of the pattern region: a different byte sequence on each
/// page, never zero.
pub(crate) fn pattern() -> Vec<u8> {
    (0..PAGES * PS as usize)
        .map(|i| ((i * 7 + i / 4096 * 13 + 3) % 251 + 1) as u8)
        .collect()
}

/// Maps `len` bytes read-write at `addr`, or anywhere when `addr` is 0.
fn map(addr: u64, len: usize) -> &'static mut [u8] {
    let flags = libc::MAP_PRIVATE
        | libc::MAP_ANONYMOUS
        | if addr != 0 {
            libc::MAP_FIXED_NOREPLACE
        } else {
            0
        };
    // SAFETY: a fresh anonymous mapping; MAP_FIXED_NOREPLACE never replaces
    // an existing one. It is never unmapped, so 'static holds.
    unsafe {
        let p = libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        );
        assert!(p != libc::MAP_FAILED, "mmap at {addr:#x} failed");
        assert!(
            addr == 0 || p as u64 == addr,
            "mapped at {p:?}, not {addr:#x}"
        );
        std::slice::from_raw_parts_mut(p.cast::<u8>(), len)
    }
}

/// Not a test: the entry point of a re-executed child. Without the role
/// variable it does nothing.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let region = map(ADDR, PAGES * PS as usize);
    region.copy_from_slice(&pattern());
    let mut extra = 0u64;
    if role == "big" {
        // MIB MiB: 3/8 random, 3/8 text, 1/4 touched zeros.
        let mib: usize = std::env::var(MIB).unwrap().parse().unwrap();
        let big = map(0, mib << 20);
        let (rand, rest) = big.split_at_mut((mib * 3 / 8) << 20);
        let (text, zero) = rest.split_at_mut((mib * 3 / 8) << 20);
        let mut x = 0x1234_5678_9abc_def1u64;
        for c in rand.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let t = b"the quick brown fox jumps over the lazy dog 0123456789\n";
        for (i, b) in text.iter_mut().enumerate() {
            *b = t[i % t.len()];
        }
        // SAFETY: writing zeros inside the mapping touches its pages.
        unsafe { std::ptr::write_volatile(zero.as_mut_ptr(), 0) };
        for p in zero.chunks_mut(4096) {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_volatile(p.as_mut_ptr(), 0) };
        }
        extra = big.as_ptr() as u64;
    } else {
        assert_eq!(role, "pattern", "unknown role {role}");
    }
    println!("READY addr={ADDR:#x} big={extra:#x}");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A running child, killed and reaped on drop.
pub(crate) struct Target {
    child: Child,
}

impl Target {
    pub(crate) fn spawn(role: &str, mib: usize) -> Target {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "capture::child_role",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(ROLE, role)
            .env(MIB, mib.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines
            .by_ref()
            .map(Result::unwrap)
            .find(|l| l.starts_with("READY"));
        assert!(ready.is_some(), "the {role} child did not start");
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Target { child }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/PID/status` field.
    fn status(&self, field: &str) -> String {
        let st = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        st.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in the status"))
            .trim()
            .to_string()
    }

    /// The state letter from `/proc/PID/stat`.
    fn state(&self) -> char {
        let st = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        st.rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .chars()
            .next()
            .unwrap()
    }

    /// Waits up to two seconds for the child to be running or sleeping: not
    /// stopped, not traced, not exited. Returns what it last saw otherwise.
    pub(crate) fn running(&mut self) -> Result<(), String> {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Err(format!("the child exited: {st}"));
            }
            let (state, tracer) = (self.state(), self.status("TracerPid"));
            if !matches!(state, 'T' | 't') && tracer == "0" {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(2) {
                return Err(format!("state {state}, TracerPid {tracer}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).unwrap();
        // SAFETY: kill(2) on our own child, which has not been reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Bytes from `/proc/PID/mem`.
    fn mem(&self, addr: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(format!("/proc/{}/mem", self.pid())).unwrap();
        let mut v = vec![0u8; len];
        f.read_exact_at(&mut v, addr).unwrap();
        v
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(v: &serde_json::Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

pub(crate) fn capture(pid: u32, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let pid = pid.to_string();
    let mut a = vec!["capture", "--pid", &pid, "-o", s(out)];
    a.extend(extra);
    run(&a)
}

/// Captures the pattern child, or returns why it cannot be captured here.
pub(crate) fn capture_or_skip(t: &Target, out: &Path, test: &str) -> Option<(String, String)> {
    capture_with_or_skip(t, out, &[], test)
}

/// [`capture_or_skip`] with more arguments to `capture`.
fn capture_with_or_skip(
    t: &Target,
    out: &Path,
    extra: &[&str],
    test: &str,
) -> Option<(String, String)> {
    let (code, o, err) = capture(t.pid(), out, extra);
    if code == 2 && err.contains("ermission") {
        skip(test, &format!("ptrace is not permitted here: {err}"));
        return None;
    }
    assert_eq!(code, 0, "capture failed:\n{o}{err}");
    Some((o, err))
}

#[test]
fn capture_live_child_then_inspect_cat_verify() {
    let mut t = Target::spawn("pattern", 0);
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("live.mimg");
    let Some((o, _)) = capture_or_skip(
        &t,
        &img,
        concat!(
            module_path!(),
            "::capture_live_child_then_inspect_cat_verify"
        ),
    ) else {
        return;
    };
    assert!(o.contains(&format!("captured pid {}", t.pid())), "{o}");
    assert!(o.contains("frozen for"), "{o}");

    // inspect: the process facts and the region at the known address.
    let (code, text, err) = run(&["inspect", "--json", s(&img)]);
    assert_eq!(code, 0, "{err}");
    let doc = json(&text);
    assert_eq!(doc["process"]["pid"], t.pid());
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", t.pid())).unwrap();
    assert_eq!(doc["process"]["comm"], comm.trim_end());
    let regions = doc["regions"].as_array().unwrap();
    let r = regions
        .iter()
        .find(|r| hex(&r["start"]) == ADDR)
        .unwrap_or_else(|| panic!("no region at {ADDR:#x}:\n{text}"));
    assert_eq!(hex(&r["end"]), ADDR + PAGES as u64 * PS, "{r}");
    assert_eq!(r["perms"], "rw-p", "{r}");
    assert_eq!(r["data_bytes"], PAGES as u64 * PS, "{r}");

    // cat: the first 64 bytes, and a whole page in the middle.
    let want = pattern();
    for (off, len) in [(0usize, 64usize), (5 * PS as usize, PS as usize)] {
        let o = bin()
            .args([
                "cat",
                "--addr",
                &format!("{:#x}", ADDR + off as u64),
                "--len",
                &len.to_string(),
                s(&img),
            ])
            .output()
            .unwrap();
        assert_success(&o);
        assert_eq!(o.stdout, want[off..off + len], "cat at +{off:#x}");
    }
    // The image holds what /proc/PID/mem shows (the child no longer writes).
    assert_eq!(t.mem(ADDR, want.len()), want);
    assert_eq!(read(&img, None, ADDR, want.len()), want);

    let (code, o, err) = run(&["verify", s(&img)]);
    assert_eq!(code, 0, "{o}{err}");

    // The child runs on, neither stopped nor traced.
    t.running().unwrap_or_else(|e| panic!("after capture: {e}"));
}

#[test]
fn capture_export_core_gdb_prints_known_bytes() {
    const TEST: &str = concat!(
        module_path!(),
        "::capture_export_core_gdb_prints_known_bytes"
    );
    if !have("gdb") {
        skip(TEST, "gdb is not installed");
        return;
    }
    let mut t = Target::spawn("pattern", 0);
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("live.mimg");
    let core = d.path().join("live.core");
    if capture_or_skip(&t, &img, TEST).is_none() {
        return;
    }
    let (code, o, err) = run(&["export-core", s(&img), "-o", s(&core)]);
    assert_eq!(code, 0, "{o}{err}");
    let want = pattern();
    for off in [0u64, 3 * PS + 100, (PAGES as u64 - 1) * PS + PS - 16] {
        let got = gdb_bytes(&core, ADDR + off, 16)
            .unwrap_or_else(|text| panic!("gdb x/16xb {:#x} printed:\n{text}", ADDR + off));
        assert_eq!(got, want[off as usize..off as usize + 16], "at +{off:#x}");
    }
    t.running().unwrap_or_else(|e| panic!("after capture: {e}"));
}

/// Runs `cmd` with a time limit; returns (exit code, stdout+stderr), or
/// None when it did not finish in time (it is killed).
fn run_limited(mut cmd: Command, limit: Duration) -> Option<(i32, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    Some((
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    ))
}

#[test]
fn gcore_and_capture_of_a_frozen_child_agree() {
    const TEST: &str = concat!(
        module_path!(),
        "::gcore_and_capture_of_a_frozen_child_agree"
    );
    if !have("gdb") || Command::new("gcore").arg("-h").output().is_err() {
        skip(TEST, "gdb's gcore is not installed");
        return;
    }
    let mut t = Target::spawn("pattern", 0);
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("g");
    let gcore_file = PathBuf::from(format!("{}.{}", prefix.display(), t.pid()));
    let ours = d.path().join("ours.mimg");
    let theirs = d.path().join("gcore.mimg");

    // Freeze the child for both captures.
    t.signal(libc::SIGSTOP);
    let start = Instant::now();
    while t.state() != 'T' {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "SIGSTOP: state {}",
            t.state()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut g = Command::new("gcore");
    g.arg("-o").arg(&prefix).arg(t.pid().to_string());
    let gcore = run_limited(g, Duration::from_secs(60));
    let (code, o, err) = capture(t.pid(), &ours, &[]);
    t.signal(libc::SIGCONT);

    let Some((_, gtext)) = gcore else {
        panic!("gcore of a stopped child did not finish in 60 s");
    };
    if !gcore_file.exists() {
        skip(
            TEST,
            &format!("gcore could not attach (ptrace not permitted?): {gtext}"),
        );
        return;
    }
    if code == 2 && err.contains("ermission") {
        skip(TEST, &format!("ptrace is not permitted here: {err}"));
        return;
    }
    assert_eq!(code, 0, "capture of the stopped child failed:\n{o}{err}");
    t.running().unwrap_or_else(|e| panic!("after SIGCONT: {e}"));

    let (code, o, err) = run(&["import-core", s(&gcore_file), "-o", s(&theirs)]);
    assert_eq!(code, 0, "{o}{err}");

    let (code, text, err) = run(&["diff", "--json", s(&ours), s(&theirs)]);
    assert!(code == 0 || code == 1, "diff failed ({code}): {text}{err}");
    let j = json(&text);
    // No differing bytes in any region present in both.
    assert_eq!(j["pages_differ"], 0, "{text}");
    assert_eq!(j["bytes_differ"], 0, "{text}");
    let changed = j["changed"].as_array().unwrap();
    for c in changed {
        assert!(
            c["ranges"].as_array().unwrap().is_empty(),
            "differing bytes in a region present in both: {c}"
        );
    }
    // Something was compared: the pattern region is in both, with data.
    assert!(
        j["bytes_skipped_by_checksum"].as_u64().unwrap() + j["bytes_decoded"].as_u64().unwrap()
            >= PAGES as u64 * PS,
        "{text}"
    );
    for side in ["only_in_a", "only_in_b"] {
        for r in j[side].as_array().unwrap() {
            assert!(
                hex(&r["end"]) <= ADDR || hex(&r["start"]) >= ADDR + PAGES as u64 * PS,
                "the pattern region is {side}: {r}"
            );
        }
    }
    // Regions present in only one image are listed, each with a reason.
    let only: Vec<_> = ["only_in_a", "only_in_b"]
        .iter()
        .flat_map(|side| j[side].as_array().unwrap().iter().map(move |r| (*side, r)))
        .collect();
    for (side, r) in &only {
        let why = r["reason"].as_str().unwrap_or("");
        assert!(!why.is_empty(), "{side} without a reason: {r}");
    }
    // What only our capture has is explained: regions recorded without data
    // ([vvar]), read-only file mappings gcore leaves out, or file mappings
    // none of whose pages were ever loaded.
    for r in j["only_in_a"].as_array().unwrap() {
        let why = r["reason"].as_str().unwrap();
        assert!(
            why.contains("recorded without data")
                || why.contains("read-only file mapping")
                || why.contains("none of its pages were captured"),
            "a region only in the capture, unexplained: {r}"
        );
    }
    // Pages only gcore holds are in regions our capture could not read
    // (PROT_NONE guards, [vsyscall]), which gdb dumps anyway.
    let (_, itext, _) = run(&["inspect", "--json", s(&ours)]);
    let idoc = json(&itext);
    let perms_in_ours = |start: u64| {
        idoc["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| hex(&r["start"]) == start)
            .map(|r| r["perms"].as_str().unwrap().to_string())
            .unwrap()
    };
    // Pages captured in only one image are listed apart, not as differences.
    let (mut cap_a, mut cap_b) = (0, 0);
    for c in changed {
        for (k, n) in [
            ("captured_only_in_a", &mut cap_a),
            ("captured_only_in_b", &mut cap_b),
        ] {
            for r in c[k].as_array().unwrap() {
                assert!(!r["note"].as_str().unwrap().is_empty(), "{r}");
                *n += r["pages"].as_u64().unwrap();
            }
        }
        if !c["captured_only_in_b"].as_array().unwrap().is_empty() {
            let perms = perms_in_ours(hex(&c["start"]));
            assert!(
                perms.starts_with('-'),
                "gcore holds pages of a readable region ({perms}) that the capture lacks: {c}"
            );
        }
    }
    assert_eq!(j["pages_captured_only_in_a"], cap_a, "{text}");
    assert_eq!(j["pages_captured_only_in_b"], cap_b, "{text}");
    eprintln!(
        "capture vs gcore: {} regions only in the capture, {} only in the gcore, {} regions \
         in both with other attributes or coverage, {cap_a} pages captured only by us, \
         {cap_b} only by gcore, 0 differing pages",
        j["only_in_a"].as_array().unwrap().len(),
        j["only_in_b"].as_array().unwrap().len(),
        changed.len()
    );
    for (side, r) in &only {
        eprintln!(
            "  {side}: {} {}-{} {}: {}",
            r["perms"], r["start"], r["end"], r["name"], r["reason"]
        );
    }
    // The text output says the same.
    let (code2, text, _) = run(&["diff", s(&ours), s(&theirs)]);
    assert_eq!(code2, code, "{text}");
    if std::env::var_os("IMGTOOL_SHOW_DIFF").is_some() {
        eprintln!("{text}");
    }
    assert!(
        text.contains("0 pages (0 B) of content differ") || code == 0,
        "{text}"
    );
}

/// Files in `dir` other than temporaries of killed runs, which are removed
/// and counted.
fn finals(dir: &Path, tmps: &mut usize) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            std::fs::remove_file(&p).unwrap();
            *tmps += 1;
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
fn sigkill_capture_at_many_moments() {
    const TEST: &str = concat!(module_path!(), "::sigkill_capture_at_many_moments");
    let mut t = Target::spawn("big", 256);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.mimg");
    // A full capture first, to learn how long one takes.
    let started = Instant::now();
    let (code, o, err) = capture(t.pid(), &out, &["--codec", "zstd:1"]);
    let full = started.elapsed();
    if code == 2 && err.contains("ermission") {
        skip(TEST, &format!("ptrace is not permitted here: {err}"));
        return;
    }
    assert_eq!(code, 0, "{o}{err}");
    assert!(
        std::fs::metadata(&out).unwrap().len() > 64 << 20,
        "the capture is smaller than the child's memory:\n{o}"
    );
    let (code, o, err) = run_verify(&out);
    assert_eq!(code, 0, "imgtool verify of the full capture: {o}{err}");
    assert_eq!(read(&out, None, ADDR, 4096), pattern()[..4096]);
    std::fs::remove_file(&out).unwrap();
    t.running()
        .unwrap_or_else(|e| panic!("after the full capture: {e}"));

    // And a second one, warm, since the kill points must fall inside a run.
    let started = Instant::now();
    let (code, o, err) = capture(t.pid(), &out, &["--codec", "zstd:1"]);
    let full = full.min(started.elapsed());
    assert_eq!(code, 0, "{o}{err}");
    std::fs::remove_file(&out).unwrap();
    t.running()
        .unwrap_or_else(|e| panic!("after the second full capture: {e}"));
    let full_ms = full.as_millis() as u64;
    let points = 8u64;
    let (mut survived, mut killed, mut finished, mut complete, mut tmps) = (0, 0, 0, 0, 0);
    for i in 0..points {
        let delay = Duration::from_millis(full_ms * i / (points - 1));
        let pid = t.pid().to_string();
        let args = ["capture", "--pid", &pid, "-o", s(&out), "--codec", "zstd:1"];
        match run_killed_after(&args, delay) {
            Some(st) => {
                assert!(st.success(), "capture failed on its own after {delay:?}");
                finished += 1;
            }
            None => killed += 1,
        }
        // Nothing under a final name unless it is complete and intact.
        let names = finals(d.path(), &mut tmps);
        assert!(names.iter().all(|p| *p == out), "stray files: {names:?}");
        if out.exists() {
            let r = memimg::verify_path(
                &out,
                None,
                &VerifyOptions {
                    decode: true,
                    progress: None,
                },
            );
            assert!(
                r.is_intact(),
                "after a kill at {delay:?}, {} is not intact: {:?} {:?}",
                out.display(),
                r.fatal,
                r.problems
            );
            let (code, o, err) = run_verify(&out);
            assert_eq!(code, 0, "imgtool verify after {delay:?}: {o}{err}");
            complete += 1;
            std::fs::remove_file(&out).unwrap();
        }
        // The child runs on: not stopped, not traced.
        t.running()
            .unwrap_or_else(|e| panic!("after a kill at {delay:?}: the child is left {e}"));
        survived += 1;
    }
    eprintln!(
        "{TEST}: full capture of 256 MiB took {full_ms} ms; {survived}/{points} kill points \
         survived; {killed} runs killed mid-way ({tmps} left a temporary file), {finished} \
         finished first; {complete} complete images found"
    );
    assert!(
        killed >= points / 2,
        "too few runs were killed mid-way ({killed} of {points})"
    );
}

fn run_verify(p: &Path) -> (i32, String, String) {
    run(&["verify", s(p)])
}

#[test]
fn errors_no_such_pid_and_existing_output() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("x.mimg");
    // A pid that does not exist: a reaped child's, or a high one.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let mut pid = gone.id();
    if Path::new(&format!("/proc/{pid}")).exists() {
        pid = 4_194_000;
    }
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let (code, o, err) = capture(pid, &out, &[]);
    assert_eq!(code, 2, "{o}{err}");
    assert!(err.starts_with("imgtool: "), "{err}");
    assert!(
        err.contains(&pid.to_string()),
        "the message does not name the pid: {err}"
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        0,
        "files were left"
    );

    // An existing output is refused without --force and left as it was.
    let t = Target::spawn("pattern", 0);
    std::fs::write(&out, b"keep me").unwrap();
    let (code, o, err) = capture(t.pid(), &out, &[]);
    assert_eq!(code, 2, "{o}{err}");
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    // With --force it is replaced by a complete image.
    let (code, o, err) = capture(t.pid(), &out, &["--force"]);
    if code == 2 && err.contains("ermission") {
        skip(
            concat!(module_path!(), "::errors_no_such_pid_and_existing_output"),
            &format!("the --force half: ptrace is not permitted here: {err}"),
        );
        return;
    }
    assert_eq!(code, 0, "{o}{err}");
    assert_eq!(read(&out, None, ADDR, 64), pattern()[..64]);
}

/// `capture --json` says how many bytes went to the disk with O_DIRECT:
/// whole MiB, at most the file (an 8 MiB child stays below the kernel's
/// writeback threshold, so none here; capture/tests/it/live.rs has the
/// O_DIRECT path itself).
#[test]
fn capture_json_reports_direct_io_bytes() {
    let t = Target::spawn("big", 8);
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("big.mimg");
    let Some((text, _)) = capture_with_or_skip(
        &t,
        &img,
        &["--codec", "none", "--json"],
        concat!(module_path!(), "::capture_json_reports_direct_io_bytes"),
    ) else {
        return;
    };
    let doc = json(&text);
    let direct = doc["direct_io_bytes"].as_u64().expect("direct_io_bytes");
    let size = doc["file_size"].as_u64().expect("file_size");
    assert!(size >= 6 << 20, "{doc}");
    assert!(direct.is_multiple_of(1 << 20), "{doc}");
    assert!(direct <= size, "{doc}");
}
