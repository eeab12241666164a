//! Finding the compiler and the library, compiling and running C programs,
//! and the skip protocol.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The skip protocol: a test that cannot run here says so. Where
/// everything is required (`MEMIMG_REQUIRE_ALL`, set by CI) it fails
/// instead; otherwise it logs `test<TAB>why` to `MEMIMG_SKIP_LOG` (which
/// scripts/test.sh counts as skipped) and the test returns.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("MEMIMG_REQUIRE_ALL").is_some_and(|v| !v.is_empty()) {
        panic!("would skip: {why}");
    }
    if let Some(log) = std::env::var_os("MEMIMG_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}\t{why}");
        }
    }
    eprintln!("skipped: {why}");
}

/// The C compiler: `$CC`, else `cc`, when it runs.
pub fn cc() -> Option<&'static str> {
    static CC: OnceLock<Option<String>> = OnceLock::new();
    CC.get_or_init(|| {
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        Command::new(&cc)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| cc)
    })
    .as_deref()
}

/// The compiler, or a skip of `test` and `None`.
pub fn cc_or_skip(test: &str) -> Option<&'static str> {
    let cc = cc();
    if cc.is_none() {
        skip(test, "no C compiler (cc, or $CC) is installed");
    }
    cc
}

/// `capi/`.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo put `libmemimg.so` and `libmemimg.a` for this build: beside
/// this test binary (`target/PROFILE/deps`).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    assert!(
        deps.join("libmemimg.so").exists() && deps.join("libmemimg.a").exists(),
        "libmemimg.so and libmemimg.a are not in {}: cargo builds them with this test",
        deps.display()
    );
    deps
}

/// The linker script that places the restore path first
/// (`layout/hot.ld`), when `capi/build.rs` linked `libmemimg.so` with it
/// (not with `MEMIMG_DEFAULT_LAYOUT` set, nor off Linux): the build script
/// passes its decision in `MEMIMG_HOT_LD`.
pub fn hot_layout() -> Option<PathBuf> {
    let script = env!("MEMIMG_HOT_LD");
    (!script.is_empty()).then(|| PathBuf::from(script))
}

/// How to link a C program with the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Against `libmemimg.so`, found through an rpath.
    Shared,
    /// Against `libmemimg.a` and the system libraries Rust's std needs.
    Static,
}

/// Compiles `sources` into `out` with warnings as errors, against the
/// checked-in header. Panics with the compiler's output on failure.
pub fn compile(cc: &str, sources: &[PathBuf], out: &Path, link: Link, extra: &[&str]) {
    let lib = lib_dir();
    let mut c = Command::new(cc);
    c.args([
        "-std=c11",
        "-g",
        "-O1",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-unused-parameter",
    ])
    .arg("-I")
    .arg(crate_dir().join("include"))
    .args(extra)
    .args(sources)
    .arg("-o")
    .arg(out);
    match link {
        Link::Shared => {
            c.arg(format!("-L{}", lib.display()))
                .arg("-lmemimg")
                .arg(format!("-Wl,-rpath,{}", lib.display()));
        }
        Link::Static => {
            // `--gc-sections` drops the archive's code the program does not
            // call, as rustc's own link of an executable does (the archive
            // is built with one section per function); then what
            // `rustc --print native-static-libs` lists for a staticlib on
            // Linux.
            c.arg("-Wl,--gc-sections");
            // The restore path first, as in libmemimg.so (capi/build.rs).
            if let Some(script) = hot_layout() {
                c.arg(format!("-Wl,-T,{}", script.display()));
            }
            c.arg(lib.join("libmemimg.a")).args([
                "-lgcc_s",
                "-lutil",
                "-lrt",
                "-lpthread",
                "-lm",
                "-ldl",
                "-lc",
            ]);
        }
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "compiling {sources:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// True when `cc` can build and run a program with
/// `-fsanitize=address,undefined`.
pub fn sanitizers_work(cc: &str) -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("t.c");
        std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
        let exe = dir.path().join("t");
        Command::new(cc)
            .args(["-fsanitize=address,undefined"])
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .output()
            .is_ok_and(|o| o.status.success())
            && Command::new(&exe)
                .output()
                .is_ok_and(|o| o.status.success())
    })
}

/// True when valgrind runs.
pub fn valgrind_works() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `cmd`, killing it after `limit`; its output, or a panic naming
/// the command when it timed out.
pub fn run(mut cmd: Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    // Cargo puts target/PROFILE first in LD_LIBRARY_PATH, which the loader
    // searches before the rpath: a libmemimg.so uplifted there by an
    // earlier `cargo build` would be loaded instead of this build's.
    let mut child = cmd
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let out = t_out.join().unwrap();
            let err = t_err.join().unwrap();
            panic!(
                "{what} did not finish in {limit:?}:\n{}{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Panics with everything the program printed unless it exited 0.
pub fn assert_ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
