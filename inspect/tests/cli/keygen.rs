use std::os::unix::fs::PermissionsExt;

use memimg::Codec;

use crate::common::*;

#[test]
fn new_key_mode_0600_never_overwrites() {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("a.key");
    let (code, out, err) = run(&["keygen", "-o", s(&k)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("32-byte key"));
    let meta = std::fs::metadata(&k).unwrap();
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let first = std::fs::read(&k).unwrap();
    let (code, _, err) = run(&["keygen", "-o", s(&k)]);
    assert_eq!(code, 2);
    assert!(err.contains("never replaced"), "{err}");
    assert_eq!(std::fs::read(&k).unwrap(), first);
    let k2 = d.path().join("b.key");
    assert_eq!(run(&["keygen", "-o", s(&k2)]).0, 0);
    assert_ne!(std::fs::read(&k2).unwrap(), first, "keys are random");
    // The key works.
    let p = d.path().join("a.mimg");
    write_image(&p, Codec::None, None);
    assert_eq!(
        run(&["reencrypt", "--in-place", "--new-key-file", s(&k), s(&p)]).0,
        0
    );
    assert_eq!(run(&["verify", "--key-file", s(&k), s(&p)]).0, 0);
    assert_eq!(run(&["verify", "--key-file", s(&k2), s(&p)]).0, 2);
}

/// A key file that cannot be written whole is removed: here the file size
/// limit is 0, so the write of the 32 bytes fails after the file was created.
#[test]
fn a_partial_key_file_is_removed() {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("k");
    let o = std::process::Command::new("bash")
        .args([
            "-c",
            "trap '' XFSZ && ulimit -f 0 && exec \"$0\" keygen -o \"$1\"",
            env!("CARGO_BIN_EXE_imgtool"),
            s(&k),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("partial key file was removed"), "{err}");
    assert!(!k.exists(), "{err}");
}
