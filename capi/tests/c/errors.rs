//! `errors.c`: every function with NULL and invalid arguments, a wrong
//! key, a damaged image, a missing file and an address in use; built with
//! ASan and UBSan where the compiler has them, and run under valgrind where
//! it is installed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// Runs the built `errors` program (through `wrapper`, if any) in a fresh
/// scratch directory and checks that every check passed.
fn run_errors(exe: &Path, wrapper: &[&str], env: &[(&str, &str)], limit: Duration) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((w, args)) => {
            let mut c = Command::new(w);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.arg(scratch.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = run(cmd, limit);
    assert_ok("errors.c", &o);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains(" checks, 0 failures"), "{out}");
    out + &String::from_utf8_lossy(&o.stderr)
}

/// `MEMIMG_CTEST_NO_LAZY` for this machine, when lazy restore cannot run.
fn lazy_env(test: &str) -> Vec<(&'static str, String)> {
    match memimg_capture::lazy_unavailable() {
        Some(why) => {
            skip(&format!("{test} (lazy restores)"), &why);
            vec![("MEMIMG_CTEST_NO_LAZY", why)]
        }
        None => Vec::new(),
    }
}

#[test]
fn errors_under_sanitizers() {
    let test = "errors_under_sanitizers";
    let Some(cc) = cc_or_skip(test) else { return };
    if !sanitizers_work(cc) {
        skip(
            test,
            &format!("{cc} cannot build with -fsanitize=address,undefined here"),
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("errors");
    compile(
        cc,
        &[crate_dir().join("tests/c/errors.c")],
        &exe,
        Link::Shared,
        &[
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
        ],
    );
    let env = lazy_env(test);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut all = env.clone();
    // Leaks in the library show too: ASan's LeakSanitizer sees every malloc,
    // Rust's included (Rust uses the system allocator).
    all.push((
        "ASAN_OPTIONS",
        "detect_leaks=1:abort_on_error=0:exitcode=99",
    ));
    all.push(("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1"));
    let out = run_errors(&exe, &[], &all, Duration::from_secs(300));
    assert!(!out.contains("ERROR: AddressSanitizer"), "{out}");
    assert!(!out.contains("ERROR: LeakSanitizer"), "{out}");
    assert!(!out.contains("runtime error:"), "{out}");
}

#[test]
fn errors_under_valgrind() {
    let test = "errors_under_valgrind";
    let Some(cc) = cc_or_skip(test) else { return };
    if !valgrind_works() {
        skip(test, "valgrind is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("errors");
    compile(
        cc,
        &[crate_dir().join("tests/c/errors.c")],
        &exe,
        Link::Shared,
        &[],
    );
    let out = run_errors(
        &exe,
        &[
            "valgrind",
            "--quiet",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
            "--error-exitcode=99",
        ],
        // Valgrind runs one thread at a time, so the thread a userfaultfd
        // fault stops would hold up the handler thread that serves it: the
        // lazy restores run under the sanitizers only.
        &[("MEMIMG_CTEST_NO_LAZY", "valgrind runs one thread at a time")],
        Duration::from_secs(900),
    );
    assert!(!out.contains("definitely lost"), "{out}");
}
