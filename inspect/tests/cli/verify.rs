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
