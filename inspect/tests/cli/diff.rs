use memimg::{Codec, Image, Writer};

use crate::common::*;

#[test]
fn identical_to_recompressed_and_reencrypted_copies() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.mimg");
    write_image(&a, Codec::Zstd(1), None);
    let (kf, _) = key_file(d.path(), "k", 3);
    let r = d.path().join("raw.mimg");
    let e = d.path().join("enc.mimg");
    assert_eq!(
        run(&["recompress", "--codec", "none", "-o", s(&r), s(&a)]).0,
        0
    );
    assert_eq!(
        run(&["reencrypt", "--new-key-file", s(&kf), "-o", s(&e), s(&a)]).0,
        0
    );
    let (code, out, err) = run(&["diff", s(&a), s(&r)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("identical\n"), "{out}");
    let (code, out, _) = run(&["diff", "--json", "--key-file-b", s(&kf), s(&a), s(&e)]);
    assert_eq!(code, 0, "{out}");
    let j = json(&out);
    assert_eq!(j["identical"], true);
    assert_eq!(j["pages_differ"], 0);
    assert_eq!(j["changed"].as_array().unwrap().len(), 0);
    // Same chunking: everything is skipped by checksum, nothing decoded.
    assert_eq!(j["bytes_decoded"], 0);
    assert!(j["bytes_skipped_by_checksum"].as_u64().unwrap() > 0);
    // The encrypted copy needs its key.
    let (code, _, err) = run(&["diff", s(&a), s(&e)]);
    assert_eq!(code, 2);
    assert!(err.contains("is encrypted"), "{err}");
}

#[test]
fn one_changed_page_is_reported_exactly() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.mimg");
    let b = d.path().join("b.mimg");
    write_image(&a, Codec::Zstd(1), None);
    // The same image but one heap page changed.
    let src = Image::open(&a).unwrap();
    let out = std::fs::File::create(&b).unwrap();
    let mut w = Writer::new(
        out,
        memimg::options_from(&src)
            .unwrap()
            .page_size(4096)
            .chunk_size(64 * 1024),
    )
    .unwrap();
    let changed = HEAP + 37 * PS;
    for r in src.regions().unwrap() {
        if !r.has_data() {
            w.add_empty_region(r.info.clone()).unwrap();
            continue;
        }
        w.begin_region(r.info.clone()).unwrap();
        for e in src.region_extents(r).unwrap() {
            match e.kind {
                memimg::ExtentKind::Zero => w.push_zero(e.len(4096)).unwrap(),
                memimg::ExtentKind::Absent => w.push_absent(e.len(4096)).unwrap(),
                memimg::ExtentKind::InParent => unreachable!("a full image"),
                memimg::ExtentKind::Data => {
                    let mut buf = vec![0u8; e.len(4096) as usize];
                    src.decode_extent(e, &mut buf).unwrap();
                    if (e.addr..e.end(4096)).contains(&changed) {
                        buf[(changed - e.addr) as usize + 100] ^= 1;
                    }
                    w.push_data(&buf).unwrap();
                }
            }
        }
        w.end_region().unwrap();
    }
    w.finish().unwrap();
    let (code, out, _) = run(&["diff", s(&a), s(&b)]);
    assert_eq!(code, 1, "{out}");
    golden("diff_one_page", &normalise(&out, d.path(), &[&a, &b]));
    let (code, out, _) = run(&["diff", "--json", s(&a), s(&b)]);
    assert_eq!(code, 1);
    let j = json(&out);
    assert_eq!(j["identical"], false);
    assert_eq!(j["pages_differ"], 1);
    assert_eq!(j["bytes_differ"], PS);
    let ch = j["changed"].as_array().unwrap();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0]["name"], "[heap]");
    assert_eq!(ch[0]["changes"].as_array().unwrap().len(), 0);
    let ranges = ch[0]["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 1);
    assert_eq!(ranges[0]["start"], format!("{changed:#014x}"));
    assert_eq!(ranges[0]["end"], format!("{:#014x}", changed + PS));
    assert_eq!(ranges[0]["pages"], 1);
    assert_eq!(ranges[0]["bytes"], PS);
    // Only the chunk holding the page was decoded.
    assert_eq!(j["bytes_decoded"], 64 * 1024);
}

/// Images with different regions, attributes and zero-versus-data pages.
#[test]
fn regions_attributes_and_zero_pages() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.mimg");
    let b = d.path().join("b.mimg");
    let heap = heap_bytes();
    let mut heap_b = heap.clone();
    heap_b[21 * PS as usize] = 9; // a zero page gains data
    heap_b[30 * PS as usize..31 * PS as usize].fill(0); // a data page becomes zero
    {
        let mut w = Writer::new(
            std::fs::File::create(&a).unwrap(),
            opts(Codec::Zstd(1), None),
        )
        .unwrap();
        w.add_region(
            memimg::RegionInfo::new(CODE, 4 * PS).name("lib"),
            &bytes(1, 4 * PS as usize, 10),
        )
        .unwrap();
        w.add_region(memimg::RegionInfo::new(HEAP, 64 * PS).name("[heap]"), &heap)
            .unwrap();
        w.add_region(
            memimg::RegionInfo::new(STACK, 2 * PS).name("gone"),
            &bytes(5, 2 * PS as usize, 10),
        )
        .unwrap();
        w.finish().unwrap();
    }
    {
        // chunk size differs: extents do not align and everything is decoded.
        let o = opts(Codec::None, None).chunk_size(16 * 1024);
        let mut w = Writer::new(std::fs::File::create(&b).unwrap(), o).unwrap();
        w.add_region(
            memimg::RegionInfo::new(CODE, 4 * PS)
                .name("lib")
                .prot(memimg::Prot(memimg::Prot::READ)),
            &bytes(1, 4 * PS as usize, 10),
        )
        .unwrap();
        w.add_region(
            memimg::RegionInfo::new(HEAP, 64 * PS).name("[heap]"),
            &heap_b,
        )
        .unwrap();
        w.add_region(
            memimg::RegionInfo::new(VVAR, 2 * PS).name("new"),
            &bytes(6, 2 * PS as usize, 10),
        )
        .unwrap();
        w.finish().unwrap();
    }
    let (code, out, _) = run(&["diff", "--json", s(&a), s(&b)]);
    assert_eq!(code, 1, "{out}");
    let j = json(&out);
    assert_eq!(j["only_in_a"][0]["name"], "gone");
    assert_eq!(j["only_in_b"][0]["name"], "new");
    let ch = j["changed"].as_array().unwrap();
    assert_eq!(ch.len(), 2, "{ch:?}");
    assert_eq!(ch[0]["name"], "lib");
    assert_eq!(ch[0]["changes"][0]["field"], "perms");
    assert_eq!(ch[0]["changes"][0]["a"], "rw-p");
    assert_eq!(ch[0]["changes"][0]["b"], "r--p");
    assert_eq!(ch[0]["pages"], 0);
    assert_eq!(ch[1]["name"], "[heap]");
    assert_eq!(ch[1]["pages"], 2);
    let ranges = ch[1]["ranges"].as_array().unwrap();
    assert_eq!(ranges[0]["start"], format!("{:#014x}", HEAP + 21 * PS));
    assert_eq!(ranges[1]["start"], format!("{:#014x}", HEAP + 30 * PS));
    assert_eq!(j["pages_differ"], 2);
    // A diff of an image with itself decodes nothing.
    let (code, out, _) = run(&["diff", "--json", s(&b), s(&b)]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["bytes_decoded"], 0);
    // Errors are exit 2.
    let (code, _, err) = run(&["diff", s(&a), s(&d.path().join("nope"))]);
    assert_eq!(code, 2);
    assert!(err.starts_with("imgtool: "), "{err}");
}

/// Stored offset and length of chunk `n`.
fn chunk_at(p: &std::path::Path, key: Option<&memimg::Key>, n: usize) -> (usize, usize) {
    let img = Image::open_with_key(p, key).unwrap();
    let c = img.chunk_locs()[n];
    (c.offset as usize, c.stored_len as usize)
}

/// Two chunks of the same stored length (raw, encrypted chunks of one
/// heap extent each).
fn same_len_chunks(p: &std::path::Path, key: Option<&memimg::Key>) -> (usize, usize) {
    let img = Image::open_with_key(p, key).unwrap();
    let locs = img.chunk_locs();
    for i in 0..locs.len() {
        for j in i + 1..locs.len() {
            if locs[i].stored_len == locs[j].stored_len {
                return (i, j);
            }
        }
    }
    panic!("no two chunks of the same stored length");
}

/// diff must not answer "identical" on bytes it never read: swapped and
/// replayed chunks of an encrypted image, and a chunk of a plain image whose
/// content changed while its index entry kept the old checksum, make it fail
/// (exit 2, naming the image and chunk). --index-only still skips them, and
/// says so.
#[test]
fn identical_never_rests_on_bytes_not_read() {
    let d = tempfile::tempdir().unwrap();
    let (kf, key) = key_file(d.path(), "k", 3);
    let a = d.path().join("a.mimg");
    write_image(&a, Codec::None, Some(key.clone()));
    let pristine = std::fs::read(&a).unwrap();

    // Swapped: two chunks of the same length trade places.
    let (i, j) = same_len_chunks(&a, Some(&key));
    let (oi, n) = chunk_at(&a, Some(&key), i);
    let (oj, _) = chunk_at(&a, Some(&key), j);
    let mut swapped = pristine.clone();
    swapped[oi..oi + n].copy_from_slice(&pristine[oj..oj + n]);
    swapped[oj..oj + n].copy_from_slice(&pristine[oi..oi + n]);
    let b = d.path().join("swapped.mimg");
    std::fs::write(&b, &swapped).unwrap();
    // verify with the key catches it; diff must too.
    assert_eq!(run(&["verify", "--key-file", s(&kf), s(&b)]).0, 1);
    let (code, out, err) = run(&["diff", "--key-file", s(&kf), s(&a), s(&b)]);
    assert_eq!(code, 2, "swapped chunks: {out}{err}");
    assert!(
        err.contains(s(&b)) && err.contains(&format!("chunk {i}")),
        "{err}"
    );

    // Replayed: chunk 0 of another image of the same content and key.
    let c = d.path().join("other.mimg");
    write_image(&c, Codec::None, Some(key.clone()));
    let other = std::fs::read(&c).unwrap();
    let (o0, n0) = chunk_at(&a, Some(&key), 0);
    let (c0, m0) = chunk_at(&c, Some(&key), 0);
    assert_eq!(n0, m0);
    let mut replayed = pristine.clone();
    replayed[o0..o0 + n0].copy_from_slice(&other[c0..c0 + m0]);
    std::fs::write(&b, &replayed).unwrap();
    assert_eq!(run(&["verify", "--key-file", s(&kf), s(&b)]).0, 1);
    let (code, out, err) = run(&["diff", "--key-file", s(&kf), s(&a), s(&b)]);
    assert_eq!(code, 2, "replayed chunk: {out}{err}");
    assert!(err.contains("chunk 0"), "{err}");
    // And with the damaged image as A.
    let (code, _, err) = run(&["diff", "--key-file", s(&kf), s(&b), s(&a)]);
    assert_eq!(code, 2, "{err}");

    // Plain: a chunk's content changed, its index entry unchanged.
    let p = d.path().join("p.mimg");
    write_image(&p, Codec::Zstd(1), None);
    let q = d.path().join("q.mimg");
    let mut bytes = std::fs::read(&p).unwrap();
    let (o1, _) = chunk_at(&p, None, 1);
    bytes[o1 + 7] ^= 0x10;
    std::fs::write(&q, &bytes).unwrap();
    let (code, out, err) = run(&["diff", s(&p), s(&q)]);
    assert_eq!(code, 2, "changed chunk: {out}{err}");
    assert!(
        err.contains("stored checksum mismatch") && err.contains("chunk 1"),
        "{err}"
    );
    let (code, out, err) = run(&["diff", "--json", s(&p), s(&q)]);
    assert_eq!(code, 2, "{out}{err}");

    // --index-only trusts the index, and says so.
    let (code, out, err) = run(&["diff", "--index-only", s(&p), s(&q)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("identical by the index only"), "{out}");
    assert!(out.contains("stored bytes not read"), "{out}");
    let (code, out, _) = run(&["diff", "--index-only", "--json", s(&p), s(&q)]);
    assert_eq!(code, 0, "{out}");
    let j = json(&out);
    assert_eq!(j["index_only"], true);
    assert_eq!(j["chunks_checked"], 0);
    assert!(j["chunks_not_read"].as_u64().unwrap() > 0, "{out}");

    // Intact copies: every skipped chunk of both sides was read and checked.
    let (code, out, _) = run(&["diff", "--json", s(&p), s(&p)]);
    assert_eq!(code, 0, "{out}");
    let j = json(&out);
    let chunks = Image::open(&p).unwrap().chunk_locs().len() as u64;
    assert_eq!(j["index_only"], false);
    assert_eq!(j["chunks_checked"], 2 * chunks, "{out}");
    assert_eq!(j["chunks_not_read"], 0);
    assert!(j["stored_bytes_checked"].as_u64().unwrap() > 0);
}

/// A key given for a plain image is refused by diff, including A's key
/// reused for B; --plain-b opens B without it.
#[test]
fn keys_for_plain_images_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let (kf, key) = key_file(d.path(), "k", 3);
    let e = d.path().join("e.mimg");
    let p = d.path().join("p.mimg");
    write_image(&e, Codec::Zstd(1), Some(key));
    write_image(&p, Codec::Zstd(1), None);
    let (code, _, err) = run(&["diff", "--key-file", s(&kf), s(&p), s(&e)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("is not encrypted, but a key was given"),
        "{err}"
    );
    let (code, _, err) = run(&["diff", "--key-file", s(&kf), s(&e), s(&p)]);
    assert_eq!(code, 2);
    assert!(err.contains("--plain-b"), "{err}");
    let (code, out, err) = run(&["diff", "--key-file", s(&kf), "--plain-b", s(&e), s(&p)]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["diff", "--key-file-b", s(&kf), s(&p), s(&e)]);
    assert_eq!(code, 0, "{out}{err}");
}
