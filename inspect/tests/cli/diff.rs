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
