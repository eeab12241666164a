use memimg::{Codec, ExtentKind, Image};

use crate::common::*;

fn codecs(p: &std::path::Path, key: Option<&memimg::Key>) -> Vec<memimg::ChunkCodec> {
    let img = Image::open_with_key(p, key).unwrap();
    img.extents()
        .unwrap()
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| e.codec)
        .collect()
}

#[test]
fn to_new_file_and_in_place() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.mimg");
    write_image(&a, Codec::None, None);
    let heap = read(&a, None, HEAP, 64 * PS as usize);
    let z = d.path().join("z.mimg");
    let (code, out, err) = run(&["recompress", "--codec", "zstd:5", "-o", s(&z), s(&a)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("recompressed with zstd:5"), "{out}");
    assert!(codecs(&z, None).contains(&memimg::ChunkCodec::Zstd));
    assert!(std::fs::metadata(&z).unwrap().len() < std::fs::metadata(&a).unwrap().len());
    assert_eq!(read(&z, None, HEAP, 64 * PS as usize), heap);
    // -o refuses an existing file without --force, and the image itself.
    let (code, _, err) = run(&["recompress", "--codec", "none", "-o", s(&z), s(&a)]);
    assert_eq!(code, 2);
    assert!(err.contains("--force"), "{err}");
    let (code, _, err) = run(&["recompress", "--codec", "none", "-o", s(&a), s(&a)]);
    assert_eq!(code, 2);
    assert!(err.contains("--in-place"), "{err}");
    assert_eq!(
        run(&[
            "recompress",
            "--codec",
            "none",
            "--force",
            "-o",
            s(&z),
            s(&a)
        ])
        .0,
        0
    );
    assert!(codecs(&z, None)
        .iter()
        .all(|c| *c == memimg::ChunkCodec::None));
    // In place, keeping the permissions.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, _, err) = run(&["recompress", "--codec", "zstd", "--in-place", s(&a)]);
    assert_eq!(code, 0, "{err}");
    assert!(codecs(&a, None).contains(&memimg::ChunkCodec::Zstd));
    assert_eq!(
        std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert_eq!(read(&a, None, HEAP, 64 * PS as usize), heap);
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !names.iter().any(|n| n.to_string_lossy().contains(".tmp-")),
        "{names:?}"
    );
    // Bad arguments.
    let (code, _, err) = run(&["recompress", "--codec", "lz4", "--in-place", s(&a)]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown codec"), "{err}");
    let (code, _, _) = run(&["recompress", "--codec", "none", s(&a)]);
    assert_eq!(code, 2, "-o or --in-place is required");
}

#[test]
fn encrypted_keeps_its_key() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.mimg");
    let (kf, key) = key_file(d.path(), "k", 9);
    write_image(&a, Codec::Zstd(1), Some(key.clone()));
    let heap = read(&a, Some(&key), HEAP, 64 * PS as usize);
    let (code, _, err) = run(&["recompress", "--codec", "none", "--in-place", s(&a)]);
    assert_eq!(code, 2);
    assert!(err.contains("is encrypted"), "{err}");
    let (code, _, err) = run(&[
        "recompress",
        "--codec",
        "none",
        "--in-place",
        "--key-file",
        s(&kf),
        s(&a),
    ]);
    assert_eq!(code, 0, "{err}");
    let img = Image::open(&a).unwrap();
    assert!(img.is_encrypted());
    assert_eq!(read(&a, Some(&key), HEAP, 64 * PS as usize), heap);
    assert!(codecs(&a, Some(&key))
        .iter()
        .all(|c| *c == memimg::ChunkCodec::None));
}

/// Sets read-only-compatible feature `bit` in a plain image's header, as a
/// newer writer would, and fixes the header checksum.
fn set_ro_compat_bit(p: &std::path::Path, bit: u32) {
    let mut b = std::fs::read(p).unwrap();
    b[0x18..0x20].copy_from_slice(&(1u64 << bit).to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&b[..PS as usize - 8]);
    b[PS as usize - 8..PS as usize].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(p, b).unwrap();
}

/// An image with a read-only-compatible feature this build does not know
/// may be read and rewritten to a new file, but not rewritten in place.
#[test]
fn in_place_refuses_unknown_ro_compat_features() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.mimg");
    let (kf, _) = key_file(d.path(), "k", 1);
    write_image(&a, Codec::None, None);
    set_ro_compat_bit(&a, 5);
    let before = std::fs::read(&a).unwrap();
    for args in [
        &["recompress", "--codec", "zstd", "--in-place", s(&a)][..],
        &["reencrypt", "--in-place", "--new-key-file", s(&kf), s(&a)][..],
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("read-only-compatible feature bit 5"), "{err}");
        assert!(err.contains("give -o"), "{err}");
        assert_eq!(std::fs::read(&a).unwrap(), before);
    }
    let z = d.path().join("z.mimg");
    let (code, _, err) = run(&["recompress", "--codec", "zstd", "-o", s(&z), s(&a)]);
    assert_eq!(code, 0, "{err}");
}

/// New files that hold memory are created 0600 whatever the umask allows
/// (the test runs under the usual 022): recompress -o, decrypt -o,
/// export-core.
#[test]
fn new_outputs_are_0600() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.mimg");
    let (kf, k) = key_file(d.path(), "k", 1);
    write_image(&a, Codec::None, Some(k));
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let z = d.path().join("z.mimg");
    let p = d.path().join("p.mimg");
    let c = d.path().join("c.core");
    for args in [
        &[
            "recompress",
            "--codec",
            "zstd",
            "--key-file",
            s(&kf),
            "-o",
            s(&z),
            s(&a),
        ][..],
        &[
            "reencrypt",
            "--decrypt",
            "--key-file",
            s(&kf),
            "-o",
            s(&p),
            s(&a),
        ][..],
        &["export-core", "--key-file", s(&kf), "-o", s(&c), s(&a)][..],
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    assert_eq!(
        [mode(&z), mode(&p), mode(&c)],
        [0o600; 3],
        "recompress -o, decrypt -o, export-core"
    );
}
