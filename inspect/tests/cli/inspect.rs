use memimg::{Codec, Image};

use crate::common::*;

#[test]
fn table_output_matches_golden() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("app.mimg");
    write_image(&img, Codec::Zstd(1), None);
    let (code, out, err) = run(&["inspect", s(&img)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    golden("inspect", &normalise(&out, d.path(), &[&img]));
    let (code, out, _) = run(&["inspect", "--regions", "--chunks", s(&img)]);
    assert_eq!(code, 0);
    assert!(!out.contains("image id"), "--regions leaves the header out");
    golden("inspect_chunks", &normalise(&out, d.path(), &[&img]));
}

#[test]
fn encrypted_without_key_shows_header_only() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("enc.mimg");
    let (kf, key) = key_file(d.path(), "k", 7);
    write_image(&img, Codec::Zstd(1), Some(key));
    let (code, out, _) = run(&["inspect", s(&img)]);
    assert_eq!(code, 0);
    golden("inspect_locked", &normalise(&out, d.path(), &[&img]));
    assert!(!out.contains("[heap]"));
    let (code, out, _) = run(&["inspect", "--key-file", s(&kf), s(&img)]);
    assert_eq!(code, 0);
    assert!(
        out.contains("[heap]") && out.contains("total: 4 regions"),
        "{out}"
    );
    let (wk, _) = key_file(d.path(), "wrong", 8);
    let (code, _, err) = run(&["inspect", "--key-file", s(&wk), s(&img)]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("imgtool: ") && err.contains("the key does not open this image"),
        "{err}"
    );
}

#[test]
fn json_fields() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("app.mimg");
    let stats = write_image(&p, Codec::Zstd(1), None);
    let img = Image::open(&p).unwrap();
    let (code, out, _) = run(&["inspect", "--json", "--chunks", s(&p)]);
    assert_eq!(code, 0);
    let j = json(&out);
    assert_eq!(j["version"], "1.0");
    let feats: Vec<&str> = j["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        feats.contains(&"zstd") && feats.contains(&"process-facts"),
        "{feats:?}"
    );
    assert_eq!(j["page_size"], 4096);
    assert_eq!(j["chunk_size"], 65536);
    assert_eq!(j["image_id"], img.header().image_id_hex());
    assert_eq!(
        j["created"],
        imgtool::fmt::rfc3339(img.header().created_secs, img.header().created_nanos)
    );
    assert!(j["created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(j["producer"], "imgtool-tests 1");
    assert_eq!(j["machine"]["arch"], "x86_64");
    assert_eq!(j["machine"]["e_machine"], 62);
    assert_eq!(j["machine"]["endian"], "little");
    assert_eq!(j["machine"]["pointer_bytes"], 8);
    assert_eq!(j["validation"]["tag"], "test-tag");
    assert_eq!(j["validation"]["size"], 15);
    assert_eq!(j["process"]["pid"], 4242);
    assert_eq!(j["process"]["comm"], "testproc");
    assert_eq!(j["process"]["cmdline"][1], "--serve");
    assert_eq!(j["process"]["build_id"], "abcdef01");
    assert_eq!(j["encryption"]["cipher"], "none");
    assert_eq!(j["encryption"]["kdf"], "none");
    assert_eq!(j["key_generation"], 0);
    assert_eq!(j["file_size"], std::fs::metadata(&p).unwrap().len());
    assert_eq!(j["unlocked"], true);
    let regions = j["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 4);
    let heap = &regions[1];
    assert_eq!(heap["start"], "0x000000600000");
    assert_eq!(heap["end"], "0x000000640000");
    assert_eq!(heap["size"], 64 * PS);
    assert_eq!(heap["perms"], "rw-p");
    assert_eq!(heap["kind"], "heap");
    assert_eq!(heap["name"], "[heap]");
    assert_eq!(heap["zero_pages"], 8);
    assert_eq!(heap["data_bytes"], 56 * PS);
    // Stored bytes of the heap: the sum of its chunks, from the library.
    let r = &img.regions().unwrap()[1];
    let stored: u64 = img
        .region_extents(r)
        .unwrap()
        .iter()
        .filter(|e| e.kind == memimg::ExtentKind::Data)
        .map(|e| u64::from(img.chunk_locs()[e.chunk as usize].stored_len))
        .sum();
    assert_eq!(heap["stored_bytes"], stored);
    let ratio = heap["ratio"].as_f64().unwrap();
    assert!(
        (ratio - (56 * PS) as f64 / stored as f64).abs() < 0.01,
        "{ratio}"
    );
    assert_eq!(regions[0]["perms"], "r-xp");
    assert_eq!(regions[2]["name"], "[vvar]");
    assert_eq!(regions[2]["absent_pages"], 2);
    assert_eq!(regions[2]["chunks"], 0);
    assert_eq!(regions[3]["absent_pages"], 16);
    assert_eq!(regions[3]["zero_pages"], 8);
    let t = &j["totals"];
    assert_eq!(t["regions"], 4);
    assert_eq!(t["chunks"], stats.chunks);
    assert_eq!(t["data_bytes"], stats.data_bytes);
    assert_eq!(t["stored_bytes"], stats.stored_bytes);
    assert_eq!(t["zero_pages"], stats.zero_pages);
    assert_eq!(t["absent_pages"], stats.absent_pages + 2);
    let chunks = j["chunks"].as_array().unwrap();
    assert_eq!(chunks.len() as u64, stats.chunks);
    let c0 = img.chunk_locs()[0];
    assert_eq!(chunks[0]["index"], 0);
    assert_eq!(chunks[0]["addr"], "0x000000400000");
    assert_eq!(chunks[0]["raw_len"], 16 * PS);
    assert_eq!(chunks[0]["stored_len"], c0.stored_len);
    assert_eq!(chunks[0]["offset"], format!("{:#x}", c0.offset));
    assert!(["zstd", "none"].contains(&chunks[0]["codec"].as_str().unwrap()));
    // Without --chunks there is no chunk list.
    let (_, out, _) = run(&["inspect", "--json", s(&p)]);
    assert!(json(&out).get("chunks").is_none());
}

#[test]
fn json_of_locked_image() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("enc.mimg");
    let pf = pass_file(d.path(), "pass", "correct horse");
    write_image(
        &p,
        Codec::None,
        Some(
            memimg::Key::passphrase_with_params(
                "correct horse",
                memimg::Argon2Params {
                    m_cost: 256,
                    t_cost: 1,
                    p_cost: 1,
                },
            )
            .unwrap(),
        ),
    );
    let (code, out, _) = run(&["inspect", "--json", s(&p)]);
    assert_eq!(code, 0);
    let j = json(&out);
    assert_eq!(j["unlocked"], false);
    assert!(j["regions"].is_null() && j["totals"].is_null());
    assert_eq!(j["encryption"]["cipher"], "chacha20-poly1305");
    assert_eq!(j["encryption"]["kdf"], "argon2id");
    assert_eq!(j["encryption"]["argon2"], serde_json::json!([256, 1, 1]));
    assert!(j["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "encrypted"));
    let (code, out, err) = run(&["inspect", "--json", "--passphrase-file", s(&pf), s(&p)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["regions"].as_array().unwrap().len(), 4);
}

#[test]
fn not_an_image_is_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x");
    std::fs::write(&p, b"hello, this is not an image at all").unwrap();
    let (code, out, err) = run(&["inspect", s(&p)]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.starts_with("imgtool: opening "), "{err}");
    let (code, _, err) = run(&["inspect", s(&d.path().join("missing"))]);
    assert_eq!(code, 2);
    assert!(err.contains("missing"), "{err}");
}
