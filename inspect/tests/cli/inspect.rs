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
    assert_eq!(j["version"], "1.1");
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

/// Names that would drive a terminal, split a row, or are not UTF-8.
const HOSTILE: [&[u8]; 4] = [
    b"evil\x1b[2J\x1b]0;pwned\x07",
    b"two\nlines",
    b"bad\xff\xfe",
    "rtl\u{202e}gpj.exe".as_bytes(),
];
const HOSTILE_SHOWN: [&str; 4] = [
    "evil\\x1b[2J\\x1b]0;pwned\\x07",
    "two\\nlines",
    "bad\\xff\\xfe",
    "rtl\\u{202e}gpj.exe",
];

/// An image whose region names and header records hold escape sequences,
/// newlines and bytes that are not UTF-8.
fn hostile_image(path: &std::path::Path, key: Option<memimg::Key>) {
    let o = opts(Codec::None, key)
        .producer("prod\x1b[31mred")
        .validation(b"tag\x1b\xff".to_vec(), b"v".to_vec())
        .process(Some(memimg::ProcessFacts {
            pid: Some(1),
            comm: b"co\x1bmm\n".to_vec(),
            cmdline: b"arg\x1b[1m\0two\nlines\0".to_vec(),
            exe: b"/bin/\xffx\x1b".to_vec(),
            build_id: vec![1],
            kernel_release: b"6.1\x1b[K".to_vec(),
        }));
    let mut w = memimg::Writer::new(std::fs::File::create(path).unwrap(), o).unwrap();
    for (i, name) in HOSTILE.iter().enumerate() {
        w.add_region(
            memimg::RegionInfo::new(0x10_0000 * (i as u64 + 1), PS).name(name.to_vec()),
            &bytes(i as u64, PS as usize, 10),
        )
        .unwrap();
    }
    w.finish().unwrap();
}

/// True when `out` holds nothing a terminal would act on: no control byte
/// but the newline, no DEL, only UTF-8, no bidirectional override.
fn terminal_safe(out: &[u8]) -> bool {
    let text = std::str::from_utf8(out);
    !out.iter().any(|&b| (b < 0x20 && b != b'\n') || b == 0x7f)
        && text.is_ok_and(|t| !t.contains('\u{202e}') && !t.contains('\u{9b}'))
}

#[test]
fn names_and_header_records_are_escaped_and_json_is_exact() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("hostile.mimg");
    hostile_image(&p, None);
    let o = bin().args(["inspect", "--chunks", s(&p)]).output().unwrap();
    assert_success(&o);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(terminal_safe(&o.stdout), "{out}");
    for shown in HOSTILE_SHOWN {
        assert!(out.contains(shown), "{shown} is not in:\n{out}");
    }
    for shown in [
        "prod\\x1b[31mred",
        "tag \"tag\\x1b\\xff\"",
        "comm \"co\\x1bmm\\n\"",
        "exe /bin/\\xffx\\x1b",
        "arg\\x1b[1m two\\nlines",
        "6.1\\x1b[K",
    ] {
        assert!(out.contains(shown), "{shown} is not in:\n{out}");
    }
    // One table row per region: a newline in a name does not split it.
    let rows = out.lines().filter(|l| l.contains("0x0000")).count();
    assert_eq!(rows, 2 * HOSTILE.len(), "{out}");

    // JSON keeps the exact bytes: strings when UTF-8, hex beside them when not.
    let (code, text, _) = run(&["inspect", "--json", s(&p)]);
    assert_eq!(code, 0);
    let j = json(&text);
    let regions = j["regions"].as_array().unwrap();
    assert_eq!(regions[0]["name"], "evil\x1b[2J\x1b]0;pwned\x07");
    assert!(regions[0].get("name_hex").is_none());
    assert_eq!(regions[1]["name"], "two\nlines");
    assert_eq!(regions[2]["name_hex"], "626164fffe");
    assert_eq!(regions[3]["name"], "rtl\u{202e}gpj.exe");
    assert_eq!(j["producer"], "prod\x1b[31mred");
    assert_eq!(j["validation"]["tag_hex"], memimg::hex(b"tag\x1b\xff"));
    assert_eq!(j["process"]["comm"], "co\x1bmm\n");
    assert_eq!(j["process"]["hex"]["exe"], memimg::hex(b"/bin/\xffx\x1b"));
    assert!(j["process"]["hex"].get("comm").is_none());
    assert_eq!(j["process"]["cmdline"][1], "two\nlines");

    // The header of an encrypted image is in clear: escaped without a key.
    let e = d.path().join("enc.mimg");
    let (_, key) = key_file(d.path(), "k", 1);
    hostile_image(&e, Some(key));
    let o = bin().args(["inspect", s(&e)]).output().unwrap();
    assert_success(&o);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(terminal_safe(&o.stdout), "{out}");
    assert!(
        out.contains("comm \"co\\x1bmm\\n\"") && out.contains("prod\\x1b[31mred"),
        "{out}"
    );

    // diff prints the names escaped too.
    let plain = d.path().join("plain.mimg");
    write_image(&plain, Codec::None, None);
    let o = bin().args(["diff", s(&p), s(&plain)]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(terminal_safe(&o.stdout), "{out}");
    for shown in HOSTILE_SHOWN {
        assert!(out.contains(shown), "{shown} is not in:\n{out}");
    }
    let (_, text, _) = run(&["diff", "--json", s(&p), s(&plain)]);
    let j = json(&text);
    assert_eq!(j["only_in_a"][2]["name_hex"], "626164fffe");
}
