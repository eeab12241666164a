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
