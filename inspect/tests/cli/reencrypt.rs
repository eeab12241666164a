use memimg::{Codec, ErrorKind, Image};

use crate::common::*;

fn opens(p: &std::path::Path, key: Option<&memimg::Key>) -> Result<Image, ErrorKind> {
    Image::open_with_key(p, key).map_err(|e| e.kind())
}

#[test]
fn rotate_encrypt_decrypt_full() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.mimg");
    let (k1f, k1) = key_file(d.path(), "k1", 1);
    let (k2f, k2) = key_file(d.path(), "k2", 2);
    write_image(&a, Codec::Zstd(1), None);
    let heap = read(&a, None, HEAP, 64 * PS as usize);
    // Encrypt a plain image (no old key).
    let (code, out, err) = run(&[
        "reencrypt",
        "--in-place",
        "--new-key-file",
        s(&k1f),
        "--json",
        s(&a),
    ]);
    assert_eq!(code, 0, "{err}");
    let j = json(&out);
    assert_eq!(j["mode"], "full");
    assert_eq!(j["encrypted"], true);
    assert_eq!(j["file_size"], std::fs::metadata(&a).unwrap().len());
    assert_eq!(read(&a, Some(&k1), HEAP, 64 * PS as usize), heap);
    // Rotate in place: generation 1, only the key slot written.
    let (code, out, err) = run(&[
        "reencrypt",
        "--in-place",
        "--key-file",
        s(&k1f),
        "--new-key-file",
        s(&k2f),
        "--json",
        s(&a),
    ]);
    assert_eq!(code, 0, "{err}");
    let j = json(&out);
    assert_eq!(j["mode"], "rewrap");
    assert_eq!(j["key_generation"], 1);
    assert_eq!(j["bytes_written"], 512);
    assert_eq!(opens(&a, Some(&k1)).unwrap_err(), ErrorKind::WrongKey);
    assert_eq!(read(&a, Some(&k2), HEAP, 64 * PS as usize), heap);
    // The wrong old key: exit 2, the image untouched.
    let before = std::fs::read(&a).unwrap();
    let (code, _, err) = run(&[
        "reencrypt",
        "--in-place",
        "--key-file",
        s(&k1f),
        "--new-key-file",
        s(&k2f),
        s(&a),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("the key does not open this image"), "{err}");
    assert_eq!(std::fs::read(&a).unwrap(), before);
    // Rotate to a copy, with a passphrase.
    let pf = pass_file(d.path(), "pass", "hunter2");
    let c = d.path().join("c.mimg");
    let (code, out, err) = run(&[
        "reencrypt",
        "-o",
        s(&c),
        "--key-file",
        s(&k2f),
        "--new-passphrase-file",
        s(&pf),
        s(&a),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("key slot rewrapped (generation 2"), "{out}");
    assert_eq!(
        std::fs::read(&a).unwrap(),
        before,
        "-o leaves the original alone"
    );
    let pk = memimg::Key::passphrase("hunter2");
    assert_eq!(read(&c, Some(&pk), HEAP, 64 * PS as usize), heap);
    // Full: a fresh data key, every chunk rewritten.
    let f = d.path().join("f.mimg");
    let (code, out, err) = run(&[
        "reencrypt",
        "--full",
        "-o",
        s(&f),
        "--key-file",
        s(&k2f),
        "--new-key-file",
        s(&k1f),
        "--json",
        s(&a),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["mode"], "full");
    assert_eq!(json(&out)["key_generation"], 0);
    assert_eq!(read(&f, Some(&k1), HEAP, 64 * PS as usize), heap);
    assert_ne!(
        Image::open(&f).unwrap().header().image_id,
        Image::open(&a).unwrap().header().image_id
    );
    // Decrypt.
    let p = d.path().join("p.mimg");
    let (code, out, err) = run(&[
        "reencrypt",
        "--decrypt",
        "-o",
        s(&p),
        "--key-file",
        s(&k2f),
        s(&a),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("plain"), "{out}");
    assert!(!Image::open(&p).unwrap().is_encrypted());
    assert_eq!(read(&p, None, HEAP, 64 * PS as usize), heap);
    let (code, _, err) = run(&["reencrypt", "--decrypt", "--in-place", s(&p)]);
    assert_eq!(code, 2);
    assert!(err.contains("not encrypted"), "{err}");
    // The new key is required.
    let (code, _, err) = run(&["reencrypt", "--in-place", "--key-file", s(&k2f), s(&a)]);
    assert_eq!(code, 2);
    assert!(err.contains("--new-key-file"), "{err}");
    drop(k2);
}

/// Bytes this thread has passed to write(2), from /proc/thread-self/io.
fn thread_wchar() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn rotate_in_process(img: &std::path::Path, old: &std::path::Path, new: &std::path::Path) -> u64 {
    use clap::Parser;
    let cli = imgtool::cli::Cli::try_parse_from([
        "imgtool",
        "reencrypt",
        "--in-place",
        "--key-file",
        s(old),
        "--new-key-file",
        s(new),
        s(img),
    ])
    .unwrap();
    let mut sink = Vec::new();
    let before = thread_wchar();
    imgtool::run(&cli.command, &mut sink).unwrap();
    thread_wchar() - before
}

/// A rotation without --full writes kilobytes whatever the image size: the
/// bytes written by the process (counted by the kernel) and the file's
/// growth are the same for 1 MiB and 64 MiB, and the data is untouched.
#[test]
fn rotation_writes_kilobytes_not_the_data() {
    let d = tempfile::tempdir().unwrap();
    let (k1f, k1) = key_file(d.path(), "k1", 1);
    let (k2f, _) = key_file(d.path(), "k2", 2);
    let mut written = Vec::new();
    for mib in [1usize, 64] {
        let p = d.path().join(format!("{mib}.mimg"));
        write_big(&p, mib, Codec::None, Some(k1.clone()));
        let before = std::fs::read(&p).unwrap();
        let t = Image::open(&p).unwrap().trailer().clone();
        let w = rotate_in_process(&p, &k1f, &k2f);
        let after = std::fs::read(&p).unwrap();
        assert_eq!(after.len(), before.len() + 256, "one trailer appended");
        let keep = (t.index_offset + t.index_len) as usize;
        assert!(
            after[..keep] == before[..keep],
            "chunks and index untouched"
        );
        assert!(w <= 4096, "{mib} MiB image: {w} bytes written");
        written.push(w);
        // And back: the rotation works the other way too.
        assert!(rotate_in_process(&p, &k2f, &k1f) <= 4096);
    }
    assert_eq!(
        written[0], written[1],
        "bytes written do not depend on the image size"
    );
}

fn tmp_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp-")
        })
        .count()
}

const BUSY: &str = "is being changed in place by another process";

/// A key rotation started while an in-place recompress runs fails at once
/// and says why, and the image ends under the key the recompress kept.
/// Without the lock the rotation would succeed and then be undone by the
/// rename of the recompressed file: exit 0 for a key that does not open it.
#[test]
fn rotation_during_in_place_recompress_fails_clearly() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("big.mimg");
    let (k0f, k0) = key_file(d.path(), "k0", 1);
    let (k1f, k1) = key_file(d.path(), "k1", 2);
    write_big(&p, 64, Codec::Zstd(1), Some(k0.clone()));
    let mut child = bin()
        .args([
            "recompress",
            "--in-place",
            "--codec",
            "zstd:3",
            "--key-file",
        ])
        .args([s(&k0f), s(&p)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The temporary file exists from after the lock is taken until the
    // rename: the recompress is under way.
    let t = std::time::Instant::now();
    while tmp_files(d.path()) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the recompress ended before it was seen running"
        );
        assert!(t.elapsed().as_secs() < 120, "no temporary file appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let (code, _, err) = run(&[
        "reencrypt",
        "--in-place",
        "--key-file",
        s(&k0f),
        "--new-key-file",
        s(&k1f),
        s(&p),
    ]);
    let still_running = child.try_wait().unwrap().is_none();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(still_running, "the rotation did not overlap the recompress");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(BUSY), "{err}");
    assert_eq!(err.matches(s(&p)).count(), 1, "{err}");
    assert!(opens(&p, Some(&k0)).is_ok());
    assert_eq!(opens(&p, Some(&k1)).unwrap_err(), ErrorKind::WrongKey);
    let (code, _, err) = run(&["verify", "--deep", "--key-file", s(&k0f), s(&p)]);
    assert_eq!(code, 0, "{err}");
}

/// While another process holds the image's lock (here the test, as an
/// in-place change would), every in-place change and the rotation to a copy
/// fail at once, exit 2 naming the reason, and leave the image alone; once
/// it is released they work.
#[test]
fn in_place_changes_fail_while_the_lock_is_held() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a.mimg");
    let c = d.path().join("c.mimg");
    let (k0f, k0) = key_file(d.path(), "k0", 1);
    let (k1f, k1) = key_file(d.path(), "k1", 2);
    write_image(&p, Codec::Zstd(1), Some(k0.clone()));
    let before = std::fs::read(&p).unwrap();
    let held = memimg::atomic::ImageLock::acquire(&p, false).unwrap();
    let k = ["--key-file", s(&k0f)];
    let nk = ["--new-key-file", s(&k1f)];
    let attempts: Vec<Vec<&str>> = vec![
        [
            &["recompress", "--in-place", "--codec", "none"][..],
            &k,
            &[s(&p)],
        ]
        .concat(),
        [&["reencrypt", "--in-place"][..], &k, &nk, &[s(&p)]].concat(),
        [
            &["reencrypt", "--in-place", "--full"][..],
            &k,
            &nk,
            &[s(&p)],
        ]
        .concat(),
        [&["reencrypt", "--in-place", "--decrypt"][..], &k, &[s(&p)]].concat(),
        [&["reencrypt", "-o", s(&c)][..], &k, &nk, &[s(&p)]].concat(),
    ];
    for args in &attempts {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(BUSY), "{args:?}: {err}");
        assert_eq!(std::fs::read(&p).unwrap(), before, "{args:?}");
        assert!(!c.exists());
        assert_eq!(tmp_files(d.path()), 0, "{args:?}");
    }
    drop(held);
    let (code, _, err) = run(&attempts[1]);
    assert_eq!(code, 0, "{err}");
    assert!(opens(&p, Some(&k1)).is_ok());
}
