//! Files that hold process memory or keys are created with mode 0600 even
//! under umask 000, and an in-place rewrite keeps the original's mode.
//!
//! `recompress -o`, `reencrypt -o` and `capture` create their files through
//! memimg's `AtomicFile`, which creates them with the default mode (0666 less
//! the umask) until the format-keys change lands; their test is ignored
//! until then.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use memimg::Codec;

use crate::common::*;

/// Runs imgtool with `args` under umask 000; returns (exit code, stderr).
fn run_umask_000(args: &[&str]) -> (i32, String) {
    let o = Command::new("bash")
        .args([
            "-c",
            "umask 000 && exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_imgtool"),
        ])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_export_and_import_create_0600_under_umask_000() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("a.mimg");
    write_image(&img, Codec::Zstd(1), None);
    let key = d.path().join("new.key");
    let core = d.path().join("a.core");
    let back = d.path().join("back.mimg");
    // A core readable by all (as gcore leaves one under a 022 umask): the
    // image imported from it is still the owner's only.
    let (code, out) = run_umask_000(&["keygen", "-o", s(&key)]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(mode(&key), 0o600, "keygen");
    let (code, out) = run_umask_000(&["export-core", s(&img), "-o", s(&core)]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(mode(&core), 0o600, "export-core");
    std::fs::set_permissions(&core, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = run_umask_000(&["import-core", s(&core), "-o", s(&back)]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(mode(&back), 0o600, "import-core");
}

#[test]
fn in_place_rewrites_keep_the_mode() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("a.mimg");
    let (kf, key) = key_file(d.path(), "k", 2);
    let (nk, _) = key_file(d.path(), "nk", 3);
    for m in [0o600, 0o640, 0o644] {
        write_image(&img, Codec::Zstd(1), Some(key.clone()));
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(m)).unwrap();
        let (code, out) = run_umask_000(&[
            "recompress",
            "--in-place",
            "--codec",
            "none",
            "--key-file",
            s(&kf),
            s(&img),
        ]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(mode(&img), m, "recompress --in-place of a {m:o} image");
        let (code, out) = run_umask_000(&[
            "reencrypt",
            "--in-place",
            "--full",
            "--key-file",
            s(&kf),
            "--new-key-file",
            s(&nk),
            s(&img),
        ]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            mode(&img),
            m,
            "reencrypt --in-place --full of a {m:o} image"
        );
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn rewrites_to_new_files_and_captures_create_0600_under_umask_000() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("a.mimg");
    let (kf, key) = key_file(d.path(), "k", 2);
    write_image(&img, Codec::Zstd(1), Some(key));
    let r = d.path().join("r.mimg");
    let (code, out) = run_umask_000(&[
        "recompress",
        "--codec",
        "none",
        "--key-file",
        s(&kf),
        "-o",
        s(&r),
        s(&img),
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(mode(&r), 0o600, "recompress -o");
    let p = d.path().join("p.mimg");
    let (code, out) = run_umask_000(&[
        "reencrypt",
        "--decrypt",
        "--key-file",
        s(&kf),
        "-o",
        s(&p),
        s(&img),
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(mode(&p), 0o600, "reencrypt --decrypt -o");
    let child = crate::sleeper::Sleeper::spawn(None);
    let c = d.path().join("c.mimg");
    let (code, out) = run_umask_000(&["capture", "--pid", &child.pid().to_string(), "-o", s(&c)]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(mode(&c), 0o600, "capture");
}
