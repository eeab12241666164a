use memimg::{Codec, Image, Profile};

use crate::common::*;

/// A profile of the image at `p`: its last chunk, chunk 0, then every
/// other one.
fn profile_of(p: &std::path::Path, key: Option<&memimg::Key>) -> Profile {
    let img = Image::open_with_key(p, key).unwrap();
    let n = img.chunk_locs().len() as u64;
    let mut chunks = vec![n - 1, 0];
    chunks.extend((1..n - 1).step_by(2));
    Profile {
        image_id: img.header().image_id,
        chunks,
    }
}

#[test]
fn optimized_image_is_identical_in_content_and_shows_its_profile() {
    let d = tempfile::tempdir().unwrap();
    let (kf, key) = key_file(d.path(), "k", 7);
    // A plain image gets its index first unless asked (spec.md, *Index
    // first*); an encrypted one keeps it at the end.
    for (name, key, at_end) in [
        ("plain", None, false),
        ("plain-index-at-end", None, true),
        ("encrypted", Some(key), false),
    ] {
        let a = d.path().join(format!("{name}.mimg"));
        write_image(&a, Codec::Zstd(1), key.clone());
        let p = profile_of(&a, key.as_ref());
        let pf = d.path().join(format!("{name}.profile"));
        p.write(&pf).unwrap();
        let o = d.path().join(format!("{name}-opt.mimg"));
        let kargs: Vec<&str> = if key.is_some() {
            vec!["--key-file", s(&kf)]
        } else {
            vec![]
        };
        let mut args = vec!["optimize", "--profile", s(&pf), "-o", s(&o)];
        args.extend(&kargs);
        if at_end {
            args.push("--index-at-end");
        }
        args.push(s(&a));
        let index_first = key.is_none() && !at_end;
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains("laid out by the profile"), "{out}");
        assert_eq!(
            out.contains("the header, the index and the working set"),
            index_first,
            "{name}: {out}"
        );
        // Identical in content, verifies, keeps its id.
        let mut diff = vec!["diff"];
        diff.extend(&kargs);
        diff.extend([s(&a), s(&o)]);
        let (code, out, err) = run(&diff);
        assert_eq!(code, 0, "{name}: diff: {out}{err}");
        let mut verify = vec!["verify", "--deep"];
        verify.extend(&kargs);
        verify.push(s(&o));
        let (code, out, err) = run(&verify);
        assert_eq!(code, 0, "{name}: verify: {out}{err}");
        let (ia, io) = (
            Image::open_with_key(&a, key.as_ref()).unwrap(),
            Image::open_with_key(&o, key.as_ref()).unwrap(),
        );
        assert_eq!(ia.header().image_id, io.header().image_id);
        // inspect: the text line and the JSON.
        let mut insp = vec!["inspect"];
        insp.extend(&kargs);
        insp.push(s(&o));
        let (code, out, _) = run(&insp);
        assert_eq!(code, 0);
        let line = out
            .lines()
            .find(|l| l.starts_with("load order"))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            line.contains(&format!("{} chunks first", p.chunks.len())),
            "{line}"
        );
        assert_eq!(
            out.lines().any(|l| l.starts_with("index           first")),
            index_first,
            "{name}: {out}"
        );
        insp.insert(1, "--json");
        let (_, out, _) = run(&insp);
        let j = json(&out);
        let lo = &j["load_order"];
        assert_eq!(lo["chunks"], p.chunks.len() as u64, "{out}");
        let ws = io.working_set_range().unwrap().unwrap();
        assert_eq!(lo["bytes"], ws.end - ws.start);
        assert_eq!(lo["offset"], format!("{:#x}", ws.start));
        let ix = &j["index_first"];
        if index_first {
            let rec = io.header().index_first.unwrap();
            assert_eq!(ix["index_len"], rec.index_len, "{out}");
            assert_eq!(ix["front_bytes"], ws.end, "{out}");
            assert_eq!(io.trailer().index_offset, 4096);
            assert!(ws.start >= 4096 + rec.index_len);
        } else {
            assert!(ix.is_null(), "{name}: {out}");
            assert_eq!(lo["offset"], "0x1000");
        }
        assert_eq!(
            lo["order"].as_array().unwrap().len(),
            p.chunks.len(),
            "{out}"
        );
        // The original shows no profile.
        let (_, out, _) = run(&["inspect", "--json", s(&a)]
            .iter()
            .chain(&kargs)
            .copied()
            .collect::<Vec<_>>());
        assert!(json(&out)["load_order"].is_null(), "{out}");
        let (_, out, _) = run(&["inspect", s(&a)]
            .iter()
            .chain(&kargs)
            .copied()
            .collect::<Vec<_>>());
        assert!(!out.contains("load order"), "{out}");
        if key.is_some() {
            // Without the key: the image says it has a profile, not what.
            let (code, out, _) = run(&["inspect", s(&o)]);
            assert_eq!(code, 0);
            assert!(
                out.contains("load order      yes (the profile is encrypted"),
                "{out}"
            );
            let (_, out, _) = run(&["inspect", "--json", s(&o)]);
            let j = json(&out);
            assert!(j["load_order"]["chunks"].is_null() && j["load_order"].is_object());
        }
    }
}

#[test]
fn in_place_under_the_lock_and_refusals_leave_the_image_alone() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.mimg");
    write_image(&a, Codec::None, None);
    let orig = std::fs::read(&a).unwrap();
    let copy = d.path().join("orig.mimg");
    std::fs::write(&copy, &orig).unwrap();
    let pf = d.path().join("p.profile");
    profile_of(&a, None).write(&pf).unwrap();

    // A profile recorded on another image.
    let b = d.path().join("b.mimg");
    write_image(&b, Codec::None, None);
    let other = d.path().join("other.profile");
    profile_of(&b, None).write(&other).unwrap();
    let (code, _, err) = run(&["optimize", "--profile", s(&other), "--in-place", s(&a)]);
    assert_eq!(code, 2);
    assert!(err.contains("recorded on image"), "{err}");
    // A damaged profile file.
    let mut bad = std::fs::read(&pf).unwrap();
    bad[44] ^= 4;
    let badf = d.path().join("bad.profile");
    std::fs::write(&badf, &bad).unwrap();
    let (code, _, err) = run(&["optimize", "--profile", s(&badf), "--in-place", s(&a)]);
    assert_eq!(code, 2);
    assert!(err.contains("checksum"), "{err}");
    // While another process holds the image's lock.
    let held = memimg::atomic::ImageLock::acquire(&a, false).unwrap();
    let (code, _, err) = run(&["optimize", "--profile", s(&pf), "--in-place", s(&a)]);
    assert_eq!(code, 2);
    assert!(err.contains("being changed in place"), "{err}");
    drop(held);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        orig,
        "a refusal changed the image"
    );

    let (code, _, err) = run(&["optimize", "--profile", s(&pf), "--in-place", s(&a)]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read(&a).unwrap(), orig);
    let (code, out, _) = run(&["diff", s(&copy), s(&a)]);
    assert_eq!(code, 0, "{out}");
    assert!(Image::open(&a).unwrap().has_load_order());
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(left.is_empty());
}

/// A recompress or a re-encrypting reencrypt writes a new image (new id,
/// its own chunks): the source's load order is carried over by address, and
/// the index stays first where it can.
#[test]
fn rewrites_of_an_optimized_image_keep_its_load_order() {
    let d = tempfile::tempdir().unwrap();
    let (kf, key) = key_file(d.path(), "k", 7);
    let a = d.path().join("a.mimg");
    write_image(&a, Codec::Zstd(1), None);
    let p = profile_of(&a, None);
    let pf = d.path().join("a.profile");
    p.write(&pf).unwrap();
    let o = d.path().join("opt.mimg");
    let (code, _, err) = run(&["optimize", "--profile", s(&pf), "-o", s(&o), s(&a)]);
    assert_eq!(code, 0, "{err}");
    let src = Image::open(&o).unwrap();
    let src_order = src.load_order().unwrap().unwrap().to_vec();
    let src_chunks = src.chunk_locs().len();

    // The address ranges of a load order's chunks, in order.
    let ranges = |img: &Image| -> Vec<(u64, u64)> {
        let ps = img.header().page_size;
        let by_chunk: std::collections::HashMap<u64, (u64, u64)> = img
            .extents()
            .unwrap()
            .iter()
            .filter(|e| e.kind == memimg::ExtentKind::Data)
            .map(|e| (e.chunk, (e.addr, e.end(ps))))
            .collect();
        let order = img.load_order().unwrap().unwrap();
        order.iter().map(|c| by_chunk[c]).collect()
    };

    let r = d.path().join("opt-none.mimg");
    let (code, out, err) = run(&["recompress", "--codec", "none", "-o", s(&r), s(&o)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("recompressed with none"), "{out}");
    assert!(!err.contains("warning"), "{err}");
    let img = Image::open(&r).unwrap();
    assert_ne!(img.header().image_id, src.header().image_id);
    assert!(img.has_load_order());
    assert!(img.header().index_first.is_some(), "the index stays first");
    // The same chunking (same content and chunk size): the same order, by
    // number and by address.
    assert_eq!(img.chunk_locs().len(), src_chunks);
    assert_eq!(img.load_order().unwrap().unwrap(), &src_order[..]);
    assert_eq!(ranges(&img), ranges(&src));
    let (code, out, err) = run(&["diff", s(&o), s(&r)]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["verify", "--deep", s(&r)]);
    assert_eq!(code, 0, "{out}{err}");

    // Encrypted: the order comes along, sealed in the index at the end.
    let e = d.path().join("opt-enc.mimg");
    let (code, _, err) = run(&["reencrypt", "--new-key-file", s(&kf), "-o", s(&e), s(&o)]);
    assert_eq!(code, 0, "{err}");
    let img = Image::open_with_key(&e, Some(&key)).unwrap();
    assert!(img.has_load_order());
    assert!(img.header().index_first.is_none());
    assert_eq!(ranges(&img), ranges(&src));
    let (code, out, err) = run(&["diff", "--key-file-b", s(&kf), s(&o), s(&e)]);
    assert_eq!(code, 0, "{out}{err}");

    // An image without an order gets none.
    let plain = d.path().join("plain-none.mimg");
    let (code, _, err) = run(&["recompress", "--codec", "none", "-o", s(&plain), s(&a)]);
    assert_eq!(code, 0, "{err}");
    assert!(!Image::open(&plain).unwrap().has_load_order());
}
