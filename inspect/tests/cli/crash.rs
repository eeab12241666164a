//! Killing an in-place rewrite at any moment leaves the original intact.

use std::path::Path;
use std::time::Duration;

use memimg::{Codec, Key, VerifyOptions};

use crate::common::*;

/// Runs `args` on a copy of `pristine` at `img` and SIGKILLs it after each
/// delay; after every kill the image at `img` must verify intact (decoding
/// every chunk), have the pristine content, and no file but temporaries may
/// have appeared beside it.
fn kill_at_moments(dir: &Path, img: &Path, pristine: &Path, key: Option<&Key>, args: &[&str]) {
    let mut finished = 0;
    let mut killed = 0;
    for delay_ms in [0u64, 5, 20, 50, 100, 200, 400, 800] {
        std::fs::copy(pristine, img).unwrap();
        match run_killed_after(args, Duration::from_millis(delay_ms)) {
            Some(_) => finished += 1,
            None => killed += 1,
        }
        let r = memimg::verify_path(
            img,
            key,
            &VerifyOptions {
                decode: true,
                progress: None,
            },
        );
        assert!(
            r.is_intact(),
            "after {delay_ms} ms: {:?} {:?}",
            r.fatal,
            r.problems
        );
        // Same content as before.
        let (code, out, err) = match key {
            Some(_) => run(&["diff", "--key-file", s(&dir.join("k")), s(pristine), s(img)]),
            None => run(&["diff", s(pristine), s(img)]),
        };
        assert_eq!(code, 0, "after {delay_ms} ms: {out}{err}");
        // Nothing under another name but the temporary files of killed runs.
        for e in std::fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                ["img", "pristine", "k"].contains(&name.as_str()) || name.starts_with(".img.tmp-"),
                "stray file {name} after {delay_ms} ms"
            );
            if name.starts_with(".img.tmp-") {
                std::fs::remove_file(dir.join(&name)).unwrap();
            }
        }
    }
    eprintln!("{args:?}: {killed} runs killed, {finished} finished before the kill");
    assert!(
        killed >= 3,
        "the image was too small to kill the rewrite mid-way ({killed} kills)"
    );
}

#[test]
fn sigkill_in_place_recompress() {
    let d = tempfile::tempdir().unwrap();
    let pristine = d.path().join("pristine");
    let img = d.path().join("img");
    write_big(&pristine, 48, Codec::None, None);
    kill_at_moments(
        d.path(),
        &img,
        &pristine,
        None,
        &["recompress", "--in-place", "--codec", "zstd:3", s(&img)],
    );
}

#[test]
fn sigkill_in_place_reencrypt_full() {
    let d = tempfile::tempdir().unwrap();
    let pristine = d.path().join("pristine");
    let img = d.path().join("img");
    let (kf, key) = key_file(d.path(), "k", 5);
    write_big(&pristine, 48, Codec::Zstd(1), Some(key.clone()));
    kill_at_moments(
        d.path(),
        &img,
        &pristine,
        Some(&key),
        &[
            "reencrypt",
            "--in-place",
            "--full",
            "--key-file",
            s(&kf),
            "--new-key-file",
            s(&kf),
            s(&img),
        ],
    );
}
