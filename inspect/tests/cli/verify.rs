use memimg::{Codec, Image};

use crate::common::*;

#[test]
fn intact_plain() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("app.mimg");
    let stats = write_image(&p, Codec::Zstd(1), None);
    let (code, out, _) = run(&["verify", s(&p)]);
    assert_eq!(code, 0);
    golden("verify_intact", &normalise(&out, d.path(), &[&p]));
    let (code, out, _) = run(&["verify", "--json", s(&p)]);
    assert_eq!(code, 0);
    let j = json(&out);
    assert_eq!(j["status"], "intact");
    assert_eq!(j["problems"].as_array().unwrap().len(), 0);
    assert_eq!(j["chunks_checked"], stats.chunks);
    assert_eq!(j["chunks_decoded"], 0);
    assert_eq!(j["bytes_checked"], stats.stored_bytes);
    assert_eq!(j["unlocked"], true);
    assert_eq!(j["deep"], false);
    assert!(j["error"].is_null());
    let (code, out, _) = run(&["verify", "--json", "--deep", s(&p)]);
    assert_eq!(code, 0);
    let j = json(&out);
    assert_eq!(j["chunks_decoded"], stats.chunks);
    assert_eq!(j["deep"], true);
}

#[test]
fn damage_reports_every_problem_with_location() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("app.mimg");
    write_image(&p, Codec::Zstd(1), None);
    let img = Image::open(&p).unwrap();
    let locs = img.chunk_locs().to_vec();
    drop(img);
    let mut bytes = std::fs::read(&p).unwrap();
    for n in [1usize, 3] {
        bytes[(locs[n].offset + 10) as usize] ^= 0x40;
    }
    std::fs::write(&p, &bytes).unwrap();
    let (code, out, _) = run(&["verify", s(&p)]);
    assert_eq!(code, 1, "{out}");
    golden("verify_damaged", &normalise(&out, d.path(), &[&p]));
    let (code, out, _) = run(&["verify", "--json", s(&p)]);
    assert_eq!(code, 1);
    let j = json(&out);
    assert_eq!(j["status"], "damaged");
    let probs = j["problems"].as_array().unwrap();
    assert_eq!(probs.len(), 2, "{probs:?}");
    for (prob, n) in probs.iter().zip([1usize, 3]) {
        assert_eq!(prob["kind"], "Checksum");
        assert_eq!(prob["chunk"], n as u64);
        assert_eq!(prob["offset"], format!("{:#x}", locs[n].offset));
        assert!(
            prob["region"].is_u64() && prob["addr"].is_string(),
            "{prob}"
        );
        assert!(prob["message"].as_str().unwrap().contains("checksum"));
    }
    // A truncated image is damage too.
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let (code, out, _) = run(&["verify", s(&p)]);
    assert_eq!(code, 1, "{out}");
}

#[test]
fn keys_and_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("enc.mimg");
    let (kf, key) = key_file(d.path(), "k", 1);
    let (wrong, _) = key_file(d.path(), "w", 2);
    let stats = write_image(&p, Codec::Zstd(1), Some(key));
    // Without a key: stored bytes only, the index cannot be read.
    let (code, out, _) = run(&["verify", "--json", s(&p)]);
    assert_eq!(code, 0);
    let j = json(&out);
    assert_eq!(j["unlocked"], false);
    assert_eq!(j["chunks_checked"], stats.chunks);
    // With the key: every chunk decoded.
    let (code, out, _) = run(&["verify", "--json", "--key-file", s(&kf), s(&p)]);
    assert_eq!(code, 0);
    let j = json(&out);
    assert_eq!(j["chunks_decoded"], stats.chunks);
    assert_eq!(j["unlocked"], true);
    // The key by file descriptor.
    let f = std::fs::File::open(&kf).unwrap();
    let o = bin()
        .args(["verify", "--key-fd", "0", s(&p)])
        .stdin(f)
        .output()
        .unwrap();
    assert_success(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("chunks checked and decoded"));
    // A wrong key is exit 2 with its own message, never damage.
    let (code, out, err) = run(&["verify", "--key-file", s(&wrong), s(&p)]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("the key does not open this image"), "{err}");
    assert!(!err.to_lowercase().contains("damage"));
    let (code, out, _) = run(&["verify", "--json", "--key-file", s(&wrong), s(&p)]);
    assert_eq!(code, 2);
    let j = json(&out);
    assert_eq!(j["status"], "unchecked");
    assert_eq!(j["wrong_key"], true);
    assert_eq!(j["error"], "the key does not open this image");
    assert_eq!(j["problems"].as_array().unwrap().len(), 0);
    // --deep without the key cannot be done.
    let (code, _, err) = run(&["verify", "--deep", s(&p)]);
    assert_eq!(code, 2);
    assert!(err.contains("no key"), "{err}");
    // Not an image.
    let (code, _, err) = run(&["verify", s(&kf)]);
    assert_eq!(code, 2);
    assert!(err.contains("unable to check"), "{err}");
}

/// Flips one byte of the file at `off`.
fn flip(p: &std::path::Path, off: u64) {
    let mut b = std::fs::read(p).unwrap();
    b[off as usize] ^= 0x40;
    std::fs::write(p, &b).unwrap();
}

/// Where to damage an image: a byte of chunk 1, and a byte of the index body
/// (past the index head and the chunk map).
fn damage_points(p: &std::path::Path, key: Option<&memimg::Key>) -> (u64, u64) {
    let img = Image::open_with_key(p, key).unwrap();
    let chunk = img.chunk_locs()[1].offset + 10;
    let t = img.trailer();
    let body = t.index_offset + 64 + 24 * img.chunk_locs().len() as u64;
    assert!(body + 40 < t.index_offset + t.index_len);
    (chunk, body + 40)
}

/// Damaged plain and encrypted images, a chunk byte or an index byte flipped:
/// every mode (plain, --deep, --key-file, --json) reports the damage it found
/// with exit 1, and never the false "encrypted and no key was given", nor
/// "index encrypted" for a plain image.
#[test]
fn damage_is_reported_in_every_mode() {
    let d = tempfile::tempdir().unwrap();
    let (kf, key) = key_file(d.path(), "k", 6);
    for (enc, what) in [
        (false, "chunk"),
        (false, "index"),
        (true, "chunk"),
        (true, "index"),
    ] {
        let p = d.path().join(format!("{enc}-{what}.mimg"));
        let k = enc.then(|| key.clone());
        write_image(&p, Codec::Zstd(1), k.clone());
        let (chunk, index) = damage_points(&p, k.as_ref());
        flip(&p, if what == "chunk" { chunk } else { index });
        let tag = format!(
            "{} image, {what} byte flipped",
            if enc { "encrypted" } else { "plain" }
        );
        let mut modes: Vec<Vec<&str>> = vec![vec![], vec!["--deep"]];
        if enc {
            modes.push(vec!["--key-file", s(&kf)]);
            modes.push(vec!["--deep", "--key-file", s(&kf)]);
        }
        for mode in &modes {
            let mut args = vec!["verify"];
            args.extend(mode);
            args.push(s(&p));
            let (code, out, err) = run(&args);
            assert_eq!(code, 1, "{tag}, {mode:?}: exit {code}\n{out}{err}");
            assert!(out.contains("DAMAGED"), "{tag}, {mode:?}:\n{out}");
            let want = if what == "chunk" {
                "stored checksum mismatch"
            } else {
                "index"
            };
            assert!(
                out.contains(want),
                "{tag}, {mode:?}: the real problem is not printed:\n{out}"
            );
            assert!(
                !(out.clone() + &err).contains("no key was given"),
                "{tag}, {mode:?}:\n{out}{err}"
            );
            if !enc || what == "index" || mode.contains(&"--key-file") {
                assert!(!out.contains("index encrypted"), "{tag}, {mode:?}:\n{out}");
            }
            if what == "index" {
                assert!(out.contains("index unreadable"), "{tag}, {mode:?}:\n{out}");
            }
            // The same in JSON: damaged, with no error text.
            args.insert(1, "--json");
            let (code, out, _) = run(&args);
            assert_eq!(code, 1, "{tag}, --json {mode:?}:\n{out}");
            let j = json(&out);
            assert_eq!(j["status"], "damaged", "{tag}, --json {mode:?}:\n{out}");
            assert!(
                j["error"].is_null(),
                "{tag}, --json {mode:?}: {}",
                j["error"]
            );
            assert!(!j["problems"].as_array().unwrap().is_empty());
            let index = j["index"].as_str().unwrap();
            match (what, enc && !mode.contains(&"--key-file")) {
                ("index", _) => assert_eq!(index, "unreadable", "{tag}, {mode:?}"),
                (_, true) => assert_eq!(index, "encrypted", "{tag}, {mode:?}"),
                (_, false) => assert_eq!(index, "checked", "{tag}, {mode:?}"),
            }
        }
    }
}

/// An intact plain image never says "index encrypted"; an encrypted one
/// opened without a key says so, and --deep without a key is unable to check.
#[test]
fn index_line_tells_locked_from_checked() {
    let d = tempfile::tempdir().unwrap();
    let (_, key) = key_file(d.path(), "k", 6);
    let p = d.path().join("p.mimg");
    let e = d.path().join("e.mimg");
    write_image(&p, Codec::None, None);
    write_image(&e, Codec::None, Some(key));
    let (code, out, _) = run(&["verify", "--deep", s(&p)]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("index checked") && !out.contains("encrypted"),
        "{out}"
    );
    let (code, out, _) = run(&["verify", s(&e)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("index encrypted"), "{out}");
    let (code, out, err) = run(&["verify", "--deep", s(&e)]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("encrypted and no key was given"), "{err}");
    let (code, out, _) = run(&["verify", "--deep", "--json", s(&e)]);
    assert_eq!(code, 2, "{out}");
    let j = json(&out);
    assert_eq!(j["status"], "unchecked");
    assert_eq!(j["index"], "encrypted");
    assert!(j["error"].as_str().unwrap().contains("no key was given"));
}
