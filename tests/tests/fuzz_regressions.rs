//! Replays the fuzz regression inputs (fuzz/regressions/TARGET/NAME) under a
//! stable `cargo test`, through the same functions the fuzz targets call.
//! Each input's name says what went wrong; see fuzz/regressions/README.md.

use std::collections::BTreeSet;
use std::path::PathBuf;

use memimg_tests::fuzz;

/// Every fuzz target whose inputs this test replays.
const TARGETS: &[&str] = &[
    "open",
    "open_encrypted",
    "header",
    "trailer",
    "index",
    "roundtrip",
    "elf_core",
    "structured",
];

/// The (target, input) pairs that fuzz/regressions/README.md's table lists.
fn listed(readme: &str) -> BTreeSet<(String, String)> {
    readme
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let target = cells.get(1)?;
            let input = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            TARGETS
                .contains(target)
                .then(|| ((*target).to_string(), input.to_string()))
        })
        .collect()
}

#[test]
fn fuzz_regression_inputs_replay() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let header = fuzz::template_header();
    let mut replayed = BTreeSet::new();
    let dirs = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir());
    for dir in dirs {
        let target = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            TARGETS.contains(&target.as_str()),
            "{}: no such fuzz target here; add it to TARGETS and the match below",
            dir.display()
        );
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            match target.as_str() {
                "open" => fuzz::open(&data),
                "open_encrypted" => fuzz::open_encrypted(&data),
                "header" => fuzz::header(&data),
                "trailer" => fuzz::trailer(&header, &data),
                "index" => fuzz::index(&header, &data),
                "roundtrip" => fuzz::roundtrip(&data),
                "elf_core" => fuzz::elf_core(&data),
                "structured" => fuzz::structured(&data),
                t => unreachable!("{t}"),
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            replayed.insert((target.clone(), name));
        }
    }
    // Every input replayed is a row of the README's table, and every row
    // was replayed: a moved folder, or an input checked in without saying
    // what it found, fails here instead of replaying nothing.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let want = listed(&readme);
    assert!(!want.is_empty(), "the README lists no input");
    assert_eq!(replayed, want, "inputs on disk vs. the README's table");
    // The seeds replay too, so the targets' bodies are exercised here even
    // before any crash has been found.
    let seeds = fuzz::seeds();
    assert_eq!(
        seeds.len(),
        10,
        "two plain, two encrypted and one incremental (1.1) seed images, one plain and one encrypted with page digests, and two plain (the index first and at the end) and one encrypted laid out in load order"
    );
    for (_, bytes) in &seeds {
        fuzz::open(bytes);
        fuzz::open_encrypted(bytes);
    }
    fuzz::roundtrip(&[0, 1, 1, 1, 2, 3, 5, 3, 2, 7, 1, 0, 3, 9, 9]);
    // The structured target's incremental image (flags 0x40: a parent record
    // of depth 3, hint "abc", one region of absent (so in-parent), data and
    // zero pages), with no mutation, opens, reads back and verifies; then
    // with mutations of the new fields.
    let mut child = vec![0x40];
    child.extend_from_slice(&[7; 24]);
    child.extend_from_slice(&[2, 3, 0, 1, 2]);
    child.extend_from_slice(&[0, 0, 5, 0, 1, 1, 2, 3, 0, 0]);
    fuzz::structured(&child);
    for mutation in [[6, 0, 3], [16, 3, 9], [19, 24, 32], [19, 25, 3], [23, 1, 4]] {
        let mut m = child.clone();
        m.extend_from_slice(&mutation);
        fuzz::structured(&m);
    }
    // Format 1.1's other features (flags 0x80, then a byte of them): an
    // encrypted image (0x10) with a bound key slot, an index nonce salt and
    // a load-order profile (7), one region "abc" of five pages (data, data,
    // zero, absent, data: three chunks), no note, and a profile of two
    // chunks (2, then 0); then a plain one with the profile alone (4). Each
    // with no mutation opens, reads back, verifies and reads as described;
    // then with mutations of the load-order record, the layout, the slot's
    // binding and stored fields, and the index nonce salt. Each again with
    // page digests (8: the body's page-digests record before the profile).
    for (flags, v11) in [(0x90u8, 7u8), (0x80, 4), (0x90, 7 | 8), (0x80, 4 | 8)] {
        let mut desc = vec![flags, v11];
        if v11 & 2 != 0 {
            desc.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        }
        desc.extend_from_slice(&[0, 0, 5, 3, b'a', b'b', b'c', 2, 3, 0, 1, 6, 0, 1, 2, 0]);
        fuzz::structured(&desc);
        for mutation in [
            &[24, 0, 0, 0][..],
            &[24, 1, 0, 1],
            &[24, 2, 3],
            &[24, 3, 9],
            &[24, 4],
            &[25, 0, 0, 1],
            &[25, 1],
            &[25, 2, 1],
            &[26, 0, 3, 1],
            &[26, 1, 4, 8],
            &[26, 2],
            &[26, 3, 0, 1],
            &[27, 0, 2],
            &[27, 1, 4],
            &[27, 5, 17],
            &[16, 4, 3],
        ] {
            let mut m = desc.clone();
            m.extend_from_slice(mutation);
            fuzz::structured(&m);
        }
    }
    println!(
        "replayed {} regression inputs and {} seed images",
        replayed.len(),
        seeds.len()
    );
}
