//! The skip protocol, shared by the CLI and elfcore test binaries (included
//! with `#[path]`, since they are separate binaries).
//!
//! A test that cannot run here (no gdb, no gcore, no ptrace, no kernel core
//! dumps) calls [`skip`] and returns. It must not pass silently:
//!
//! - with `MEMIMG_REQUIRE_ALL` set and non-empty (CI, where everything is
//!   installed), the skip is a failure: [`skip`] panics with `would skip: WHY`;
//! - otherwise it appends `TEST\tWHY` to the file named by `MEMIMG_SKIP_LOG`
//!   (scripts/test.sh counts those lines as skipped, not passed, and lists
//!   them) and prints `skipped: WHY` to stderr.

use std::io::Write;

/// Records that `test` cannot run here, for `why`; the caller then returns.
///
/// # Panics
/// When `MEMIMG_REQUIRE_ALL` is set: on CI nothing may skip.
pub fn skip(test: &str, why: &str) {
    let why = why.replace(['\n', '\t'], " ");
    if std::env::var_os("MEMIMG_REQUIRE_ALL").is_some_and(|v| !v.is_empty()) {
        panic!("would skip: {why}");
    }
    if let Some(log) = std::env::var_os("MEMIMG_SKIP_LOG").filter(|v| !v.is_empty()) {
        let line = format!("{test}\t{why}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("cannot record the skip of {test} in MEMIMG_SKIP_LOG: {e}");
        }
    }
    eprintln!("skipped: {why}");
}
