//! Replays the fuzz regression inputs (fuzz/regressions/TARGET/NAME) under a
//! stable `cargo test`, through the same functions the fuzz targets call.
//! Each input's name says what went wrong; see fuzz/regressions/README.md.

use std::path::PathBuf;

use memimg_tests::fuzz;

#[test]
fn fuzz_regression_inputs_replay() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let header = fuzz::template_header();
    let mut n = 0;
    for target in [
        "open",
        "open_encrypted",
        "header",
        "trailer",
        "index",
        "roundtrip",
        "elf_core",
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            match target {
                "open" => fuzz::open(&data),
                "open_encrypted" => fuzz::open_encrypted(&data),
                "header" => fuzz::header(&data),
                "trailer" => fuzz::trailer(&header, &data),
                "index" => fuzz::index(&header, &data),
                "roundtrip" => fuzz::roundtrip(&data),
                _ => fuzz::elf_core(&data),
            }
            n += 1;
        }
    }
    // The seeds replay too, so the targets' bodies are exercised here even
    // before any crash has been found.
    for (_, bytes) in fuzz::seeds() {
        fuzz::open(&bytes);
        fuzz::open_encrypted(&bytes);
        n += 2;
    }
    fuzz::roundtrip(&[0, 1, 1, 1, 2, 3, 5, 3, 2, 7, 1, 0, 3, 9, 9]);
    println!("replayed {n} inputs");
}
