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

#[test]
fn header_works_from_cpp() {
    let test = "header_works_from_cpp";
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if !Command::new(&cxx)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        skip(test, "no C++ compiler (c++, or $CXX) is installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("cpp");
    let lib = lib_dir();
    let o = Command::new(&cxx)
        .args(["-std=c++11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("tests/c/cpp.cc"))
        .arg(format!("-L{}", lib.display()))
        .arg("-lmemimg")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert_ok("compiling cpp.cc", &o);
    let o = run(Command::new(&exe), Duration::from_secs(60));
    assert_ok("cpp.cc", &o);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n");
}
