//! A file truncated by another process while a command reads it gives a typed
//! error (or, when the command was done with the bytes, success), never a
//! signal. Images used to be mapped, and a truncation under a running
//! verify, cat, export-core or recompress killed it with SIGBUS.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use memimg::Codec;

use crate::common::*;

/// Runs of each command, each with the truncation at another moment.
const RUNS: u32 = 20;

/// Runs `args` `RUNS` times on a fresh copy of `pristine` at `img`, and
/// truncates `img` from this process while it runs: at moments spread over
/// the time one whole run takes, to lengths from zero to most of the file.
/// No run may die of a signal; a failing run must print a typed message:
/// `imgtool: …` on stderr (exit 2), or a damage report on stdout (exit 1).
fn truncate_while_running(name: &str, args: &[&str], img: &Path, pristine: &Path, out: &Path) {
    let len = std::fs::metadata(pristine).unwrap().len();
    let reset = || {
        std::fs::copy(pristine, img).unwrap();
        let _ = std::fs::remove_file(out);
    };
    // The fastest of three whole runs: on a loaded machine one slow
    // calibration run would put most truncations after the command ended.
    let mut whole = std::time::Duration::MAX;
    for _ in 0..3 {
        reset();
        let t0 = Instant::now();
        let o = bin().args(args).stdout(Stdio::null()).output().unwrap();
        whole = whole.min(t0.elapsed());
        assert_success(&o);
    }
    let (mut ok, mut typed) = (0, 0);
    let mut sample = String::new();
    let mut bad = Vec::new();
    for k in 0..RUNS {
        reset();
        // From nothing left to all but the trailer's page.
        let cut = match k % 5 {
            0 => 0,
            1 => PS,
            2 => len / 3,
            3 => len / 2,
            _ => len - PS,
        };
        // Spread over the first three quarters of a run.
        let delay = whole * 3 * k / (4 * RUNS);
        let child = bin()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        std::fs::OpenOptions::new()
            .write(true)
            .open(img)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let o = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        let what = format!("{name}, cut to {cut} after {delay:?}");
        match (o.status.signal(), o.status.code()) {
            (Some(sig), _) => bad.push(format!("{what}: killed by signal {sig}")),
            (None, Some(0)) => ok += 1,
            (None, Some(1)) if stdout.contains("DAMAGED") => {
                typed += 1;
                sample = stdout.lines().nth(1).unwrap_or_default().to_string();
            }
            (None, Some(2)) if stderr.starts_with("imgtool: ") && !stderr.contains("panicked") => {
                typed += 1;
                sample = stderr.lines().next().unwrap_or_default().to_string();
            }
            (None, code) => bad.push(format!(
                "{what}: exit {code:?}, stdout {:?}, stderr {stderr:?}",
                stdout.chars().take(300).collect::<String>()
            )),
        }
    }
    eprintln!(
        "{name}: one run takes {whole:?}; {RUNS} truncated runs: {ok} succeeded, {typed} typed errors, {} bad; for example: {sample}",
        bad.len()
    );
    assert!(bad.is_empty(), "{name}:\n{}", bad.join("\n"));
    assert!(
        typed >= RUNS as usize / 5,
        "{name}: only {typed} of {RUNS} runs met the truncation; the image is too small to cut runs mid-way"
    );
}

#[test]
fn truncation_under_a_running_command_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.mimg");
    let img = dir.path().join("img.mimg");
    let out = dir.path().join("out");
    // 48 MiB of content, stored raw: every command reads every chunk.
    write_big(&pristine, 48, Codec::None, None);
    let i = s(&img);
    let o = s(&out);
    let addr = format!("{:#x}", 0x1000_0000u64);
    let cases: [(&str, Vec<&str>); 5] = [
        ("verify", vec!["verify", i]),
        ("verify --deep", vec!["verify", "--deep", i]),
        ("cat", vec!["cat", "--addr", &addr, "--len", "48M", i]),
        ("export-core", vec!["export-core", "-o", o, i]),
        (
            "recompress",
            vec!["recompress", "--codec", "zstd", "-o", o, i],
        ),
    ];
    for (name, args) in &cases {
        truncate_while_running(name, args, &img, &pristine, &out);
    }
}

/// The same through the library: reads from an image whose file shrank
/// after it was opened fail with `Truncated` at the offset of the read.
#[test]
fn library_reads_after_a_truncation_are_truncated_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.mimg");
    write_big(&p, 4, Codec::None, None);
    let img = memimg::Image::open(&p).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(2 * PS)
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let e = img.read_at(0x1000_0000 + (3 << 20), &mut buf).unwrap_err();
    assert_eq!(e.kind(), memimg::ErrorKind::Truncated, "{e}");
    assert!(e.location().offset.is_some(), "{e}");
    assert!(
        e.to_string().contains("the file is now 8192 bytes long"),
        "{e}"
    );
    let r = img.verify(&memimg::VerifyOptions::default());
    assert!(!r.is_intact());
    assert!(
        r.problems
            .iter()
            .all(|p| p.kind == memimg::ErrorKind::Truncated && p.location.chunk.is_some()),
        "{:?}",
        r.problems
    );
}
