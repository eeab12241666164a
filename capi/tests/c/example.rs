//! The C example (`examples/arena.c`), built against the header and the
//! shared library, persists a small arena and restores it with each
//! strategy, in child processes of its own.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

#[test]
fn example_restores_with_every_strategy() {
    let test = "example_restores_with_every_strategy";
    let Some(cc) = cc_or_skip(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("arena");
    compile(
        cc,
        &[crate_dir().join("examples/arena.c")],
        &exe,
        Link::Shared,
        &[],
    );
    let n = 20_000;
    let mut cmd = Command::new(&exe);
    cmd.env("ARENA_N", n.to_string());
    let o = run(cmd, Duration::from_secs(300));
    assert_ok("the C example", &o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("built a hash map of {n} strings")),
        "{out}"
    );
    assert!(out.contains("persisted with codec none:"), "{out}");
    assert!(out.contains("persisted with codec zstd:1:"), "{out}");
    // strategy used, image, restore ms, walk ms, faults, nodes checked.
    let row = |strategy: &str, image: &str| -> Option<Vec<String>> {
        out.lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|f| f.len() == 6 && f[0] == strategy && f[1] == image)
    };
    // Auto picks mmap for the raw image.
    for (strategy, image) in [("mmap", "raw"), ("eager", "zstd:1"), ("auto=mmap", "raw")] {
        let r = row(strategy, image).unwrap_or_else(|| panic!("no {strategy} row:\n{out}"));
        assert_eq!(r[5], n.to_string(), "{out}");
    }
    match memimg_capture::lazy_unavailable() {
        None => {
            let r = row("lazy", "zstd:1").unwrap_or_else(|| panic!("no lazy row:\n{out}"));
            assert_eq!(r[5], n.to_string(), "{out}");
            // No assertion on the faults: the child prefetches at once, and
            // a small arena can be filled before the walk touches it
            // (errors.c checks that a fault is served).
            r[4].parse::<u64>().unwrap();
            assert!(
                out.contains(&format!("4 of 4 restores walked and checked all {n} nodes")),
                "{out}"
            );
        }
        Some(why) => {
            assert!(
                out.lines()
                    .any(|l| l.starts_with("lazy ") && l.contains("unavailable here")),
                "{out}"
            );
            skip(&format!("{test} (lazy)"), &why);
        }
    }
}
