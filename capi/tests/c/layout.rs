//! The restore path's code layout (`layout/hot.ld`, linked in by
//! `capi/build.rs`): the functions a first `memimg_restore()` runs lie
//! together in a `.text.memimg_hot` section, in `libmemimg.so` and in a C
//! program linked with `libmemimg.a`; and the script still names the code
//! this build has (it goes stale when the restore path changes:
//! `capi/layout/regen.sh` writes it again). A stale script, or one made
//! with another toolchain, only costs speed: a pattern that matches nothing
//! places nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// `[start, end)` of a section of an ELF file, from `readelf -SW`.
fn section(file: &Path, name: &str) -> Option<(u64, u64)> {
    let o = Command::new("readelf").arg("-SW").arg(file).output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines().find_map(|l| {
        // "[15] .text.memimg_hot PROGBITS 000000000005fb20 05eb20 04bd4c 00 AX 0 0 16"
        let l = l.trim_start().strip_prefix('[')?;
        let f: Vec<&str> = l.split_once(']')?.1.split_whitespace().collect();
        if f.first() != Some(&name) {
            return None;
        }
        let addr = u64::from_str_radix(f.get(2)?, 16).ok()?;
        let size = u64::from_str_radix(f.get(4)?, 16).ok()?;
        Some((addr, addr + size))
    })
}

/// The defined function symbols of an ELF file and their addresses, from
/// `nm`.
fn functions(file: &Path) -> Vec<(u64, String)> {
    let o = Command::new("nm")
        .arg("--defined-only")
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "nm {} failed", file.display());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && (f[1] == "t" || f[1] == "T"))
                .then(|| Some((u64::from_str_radix(f[0], 16).ok()?, f[2].to_string())))?
        })
        .collect()
}

/// Whether `name` matches `pattern`, whose only wildcard is `*`.
fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The function-name patterns of `layout/hot.ld`: `P` of each
/// `*(.text.P .text.unlikely.P)`.
fn patterns() -> Vec<String> {
    let script = std::fs::read_to_string(crate_dir().join("layout/hot.ld")).unwrap();
    script
        .lines()
        .filter_map(|l| {
            let p = l.trim().strip_prefix("*(.text.")?;
            Some(p.split_whitespace().next()?.to_string())
        })
        .collect()
}

/// True when the tools these checks read ELF files with are here, else a
/// skip of `test`.
fn binutils_or_skip(test: &str) -> bool {
    let ok = ["readelf", "nm"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        skip(test, "readelf or nm (binutils) is not installed");
    }
    ok
}

/// Checks that `memimg_restore` lies in `.text.memimg_hot` of `file`.
fn assert_restore_in_hot_section(file: &Path) {
    let (start, end) = section(file, ".text.memimg_hot").unwrap_or_else(|| {
        panic!(
            "{} has no .text.memimg_hot section: was it linked with capi/layout/hot.ld?",
            file.display()
        )
    });
    assert!(
        end - start >= 4096,
        "the hot section is {} bytes",
        end - start
    );
    let fns = functions(file);
    let (addr, _) = fns
        .iter()
        .find(|(_, n)| n == "memimg_restore")
        .expect("memimg_restore is not defined");
    assert!(
        (start..end).contains(addr),
        "memimg_restore at {addr:#x} is outside the hot section {start:#x}..{end:#x}"
    );
}

#[test]
fn shared_library_has_the_restore_path_first() {
    let test = "shared_library_has_the_restore_path_first";
    if hot_layout().is_none() {
        skip(
            test,
            "MEMIMG_DEFAULT_LAYOUT is set: the library has rustc's layout",
        );
        return;
    }
    if !binutils_or_skip(test) {
        return;
    }
    let lib = lib_dir().join("libmemimg.so");
    assert_restore_in_hot_section(&lib);

    // The script names this build's code: every C entry point it lists,
    // and most of the functions of this workspace and its dependencies
    // (pinned by Cargo.lock). Not all: this is the test profile's build,
    // which inlines a little differently from the release one traced. The
    // standard library's functions (v0 symbols, and std, core and alloc
    // paths) are only counted: their names follow the toolchain, which
    // may not be the one the script was made with.
    let fns = functions(&lib);
    let pats = patterns();
    let matches = |p: &String| fns.iter().any(|(_, n)| glob(p, n));
    for p in pats.iter().filter(|p| p.starts_with("memimg_")) {
        assert!(
            matches(p),
            "layout/hot.ld names {p}, which libmemimg.so does not define: run capi/layout/regen.sh"
        );
    }
    let toolchain = |p: &&String| {
        ["_R", "_ZN3std", "_ZN4core", "_ZN5alloc"]
            .iter()
            .any(|prefix| p.starts_with(prefix))
    };
    let (std_pats, own): (Vec<&String>, Vec<&String>) = pats.iter().partition(toolchain);
    let missing: Vec<&&String> = own.iter().filter(|p| !matches(p)).collect();
    let matched = own.len() - missing.len();
    eprintln!(
        "{matched} of {} patterns of layout/hot.ld for this workspace's code match a function; \
         {} of {} for the standard library's",
        own.len(),
        std_pats.iter().filter(|p| matches(p)).count(),
        std_pats.len()
    );
    assert!(
        !own.is_empty() && matched * 10 >= own.len() * 8,
        "only {matched} of {} patterns of layout/hot.ld match a function of libmemimg.so \
         (the restore path changed?): run capi/layout/regen.sh. Unmatched: {missing:?}",
        own.len()
    );
}

#[test]
fn static_program_has_the_restore_path_first_and_restores() {
    let test = "static_program_has_the_restore_path_first_and_restores";
    let Some(cc) = cc_or_skip(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("restore_once");
    compile(
        cc,
        &[crate_dir().join("layout/restore_once.c")],
        &exe,
        Link::Static,
        &[],
    );
    if hot_layout().is_none() {
        skip(
            test,
            "MEMIMG_DEFAULT_LAYOUT is set: the program has the linker's layout",
        );
    } else if binutils_or_skip(test) {
        assert_restore_in_hot_section(&exe);
    }

    // The program regen.sh traces persists and restores with each strategy.
    let mut cmd = Command::new(&exe);
    cmd.arg("persist").arg(dir.path());
    assert_ok("restore_once persist", &run(cmd, Duration::from_secs(120)));
    let mut strategies = vec![("mmap", "raw.img"), ("eager", "zstd.img")];
    match memimg_capture::lazy_unavailable() {
        None => strategies.push(("lazy", "zstd.img")),
        Some(why) => skip(test, &format!("no lazy restore here: {why}")),
    }
    for (strategy, img) in strategies {
        let mut cmd = Command::new(&exe);
        cmd.arg("restore").arg(strategy).arg(dir.path().join(img));
        assert_ok(
            &format!("restore_once restore {strategy}"),
            &run(cmd, Duration::from_secs(120)),
        );
    }
}

#[test]
fn glob_matches_as_ld_does_for_star() {
    assert!(glob("_ZN6memimg4read17h*", "_ZN6memimg4read17h0123E"));
    assert!(glob("a*b*c", "aXXbYYc"));
    assert!(glob("memimg_restore", "memimg_restore"));
    assert!(!glob("memimg_restore", "memimg_restored_free"));
    assert!(!glob("a*b", "ab_"));
    assert!(glob("a*b", "ab"));
    assert!(!glob("ab*b", "ab"));
}
