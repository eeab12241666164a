//! `abi.c`, built against the checked-in header, checks the structure
//! sizes and the function table of the library it runs with.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn abi(test: &str, link: Link) {
    let Some(cc) = cc_or_skip(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("abi");
    compile(cc, &[crate_dir().join("tests/c/abi.c")], &exe, link, &[]);
    let o = run(Command::new(&exe), Duration::from_secs(60));
    assert_ok("abi.c", &o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(" checks, 0 failures"), "{out}");
}

#[test]
fn abi_shared_library_agrees_with_the_header() {
    abi("abi_shared_library_agrees_with_the_header", Link::Shared);
}

#[test]
fn abi_static_library_agrees_with_the_header() {
    abi("abi_static_library_agrees_with_the_header", Link::Static);
}
