//! Page digests (format 1.1, compatible feature `PAGE_DIGESTS`; spec.md,
//! *Page digests*): what the record holds, what a child written against a
//! parent with digests stores, what rewrites keep, how damage is reported,
//! and the golden images that freeze the record.

use std::ops::Range;

use memimg::{
    page_digests_of, relayout, transcode, verify_bytes, Chain, ChainOptions, Codec, ErrorKind,
    ExtentKind, Features, Image, Profile, VerifyOptions, WriterOptions,
};
use memimg_tests::forge::Forge;
use memimg_tests::{write_golden, GOLDEN_REGIONS};
use xxhash_rust::xxh3::xxh3_64;

use crate::golden::{dir, gen_page, gen_region, golden_1_1_options, write_asked, write_gen};

fn decode() -> VerifyOptions<'static> {
    VerifyOptions {
        decode: true,
        progress: None,
    }
}

/// Every data extent's digests are the `xxh3_64` of its pages, read back.
fn assert_digests_match(img: &Image, what: &str) {
    assert!(img.has_page_digests(), "{what}");
    for e in img.extents().unwrap() {
        let got = img.page_digests(e.chunk).unwrap();
        if e.kind != ExtentKind::Data {
            continue;
        }
        let mut pages = vec![0u8; e.page_count as usize * 4096];
        img.read_at(e.addr, &mut pages).unwrap();
        let want: Vec<u64> = pages.chunks(4096).map(xxh3_64).collect();
        assert_eq!(got.unwrap(), want.as_slice(), "{what}: chunk {}", e.chunk);
    }
}

#[test]
fn the_record_holds_each_stored_pages_digest_and_rewrites_keep_it() {
    for codec in [Codec::None, Codec::Zstd(3)] {
        let opts = WriterOptions::new()
            .workers(2)
            .codec(codec)
            .page_digests(true);
        let img = Image::from_bytes(write_golden(opts).unwrap(), None).unwrap();
        let what = format!("{codec:?}");
        assert_digests_match(&img, &what);
        assert_eq!(
            img.header().features.compat & Features::PAGE_DIGESTS,
            Features::PAGE_DIGESTS
        );
        // Compatible: no incompatible bit of 1.1 is set for it.
        assert_eq!(img.header().features.incompat & Features::V1_1_INCOMPAT, 0);
        // Recompressed: computed again for the new chunks.
        let (bytes, _) = transcode(
            &img,
            Vec::new(),
            memimg::options_from(&img).unwrap().codec(Codec::Zstd(1)),
            &|_| {},
        )
        .unwrap();
        let re = Image::from_bytes(bytes, None).unwrap();
        assert_digests_match(&re, &format!("{what}, recompressed"));
        // Laid out by a profile: chunk numbers keep their digests.
        let p = Profile {
            image_id: img.header().image_id,
            chunks: vec![3, 0],
        };
        let (bytes, _) = relayout(&img, &p, Vec::new()).unwrap();
        let laid = Image::from_bytes(bytes, None).unwrap();
        assert_digests_match(&laid, &format!("{what}, relaid out"));
        assert!(verify_bytes(laid.file_bytes().unwrap().to_vec(), None, &decode()).is_intact());
    }
    // Off by default: no bit, no record.
    let img = Image::from_bytes(write_golden(WriterOptions::new()).unwrap(), None).unwrap();
    assert!(!img.has_page_digests());
    assert_eq!(img.page_digests(0).unwrap(), None);
}

/// A child written against a parent with page digests stores exactly the
/// pages that changed, even where a chunk holds both; against the same
/// parent without digests, whole chunks whose checksum differs.
#[test]
fn a_child_against_digests_stores_exactly_the_changed_pages() {
    let t = tempfile::tempdir().unwrap();
    let mut stored = Vec::new();
    for digests in [true, false] {
        let base = write_gen(
            0,
            None,
            WriterOptions::new()
                .codec(Codec::Zstd(3))
                .page_digests(digests),
        );
        let bp = t.path().join(format!("base-{digests}.img"));
        std::fs::write(&bp, &base).unwrap();
        let parent = Chain::open(&bp, None, &ChainOptions::default()).unwrap();
        let child = write_gen(
            1,
            Some((&parent, "base.img")),
            WriterOptions::new()
                .codec(Codec::None)
                .page_digests(digests),
        );
        let cp = t.path().join(format!("child-{digests}.img"));
        std::fs::write(&cp, &child).unwrap();
        let opts = ChainOptions {
            parents: vec![bp.clone()],
            ..ChainOptions::default()
        };
        let chain = Chain::open(&cp, None, &opts).unwrap();
        let img = chain.image();
        let mut changed = 0;
        let mut own = 0;
        for &(start, pages, _, _, data) in GOLDEN_REGIONS {
            if !data {
                continue;
            }
            let mut got = vec![0u8; pages * 4096];
            chain.read_at(start, &mut got).unwrap();
            assert_eq!(got, gen_region(1, start, pages), "digests {digests}");
            for i in 0..pages {
                let addr = start + (i * 4096) as u64;
                let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
                gen_page(0, addr, &mut a);
                gen_page(1, addr, &mut b);
                let mine = img.extent_at(addr).unwrap().unwrap().kind == ExtentKind::Data;
                own += usize::from(mine);
                if a != b {
                    changed += 1;
                    assert!(mine, "digests {digests}: changed page {addr:#x} not stored");
                } else if digests {
                    assert!(!mine, "an unchanged page {addr:#x} stored");
                }
            }
        }
        assert!(changed > 0);
        if digests {
            assert_eq!(own, changed);
            assert_digests_match(img, "child");
        }
        stored.push(own);
        let report = memimg::verify_chain_path(&cp, None, &opts, &decode());
        assert!(report.is_intact(), "{:?}", report.problems);
    }
    // Without digests the child holds more: the unchanged pages of every
    // chunk with a changed page.
    assert!(stored[1] > stored[0], "{stored:?}");
}

/// `same_digests` (digests the caller computed, as a capture does while it
/// reads) answers what `same_pages` answers from the bytes: each page equal,
/// a changed digest names its page, and pages outside the extent are
/// refused.
#[test]
fn same_digests_answers_as_same_pages() {
    let img = Image::from_bytes(with_digests(), None).unwrap();
    let mut seen = 0;
    for e in img.extents().unwrap() {
        if e.kind != ExtentKind::Data || e.page_count < 2 {
            continue;
        }
        seen += 1;
        let mut pages = vec![0u8; e.page_count as usize * 4096];
        img.read_at(e.addr, &mut pages).unwrap();
        let mut digests: Vec<u64> = page_digests_of(&pages, 4096).collect();
        let all = img.same_pages(e, e.addr, &pages).unwrap().unwrap();
        assert!(all.iter().all(|&x| x));
        assert_eq!(img.same_digests(e, e.addr, &digests).unwrap().unwrap(), all);
        // The second page changed: only it differs, both ways.
        digests[1] ^= 1;
        pages[4096] ^= 1;
        let one = img.same_digests(e, e.addr, &digests).unwrap().unwrap();
        assert_eq!(one, img.same_pages(e, e.addr, &pages).unwrap().unwrap());
        assert_eq!(one.iter().filter(|&&x| !x).count(), 1);
        assert!(!one[1]);
        // From the second page on, and past the extent's end.
        let tail = img
            .same_digests(e, e.addr + 4096, &digests[1..])
            .unwrap()
            .unwrap();
        assert_eq!(tail, one[1..]);
        let past = img.same_digests(e, e.addr + 4096, &digests);
        assert_eq!(past.unwrap_err().kind(), ErrorKind::InvalidInput);
    }
    assert!(seen > 0, "no extent of two pages or more");
}

/// The value of the body's page-digests record.
fn record(meta: &[u8]) -> Range<usize> {
    let mut at = 0;
    while at + 8 <= meta.len() {
        let ty = u16::from_le_bytes([meta[at], meta[at + 1]]);
        let len = u32::from_le_bytes(meta[at + 4..at + 8].try_into().unwrap()) as usize;
        if ty == 3 {
            return at + 8..at + 8 + len;
        }
        at += 8 + len;
    }
    panic!("no page-digests record")
}

fn with_digests() -> Vec<u8> {
    write_golden(
        WriterOptions::new()
            .workers(0)
            .codec(Codec::Zstd(3))
            .page_digests(true),
    )
    .unwrap()
}

/// A digest that does not match its page (every checksum around it fixed)
/// opens, reads right, and `verify` names the chunk and the page.
#[test]
fn a_wrong_digest_is_damage_that_verify_names() {
    let mut f = Forge::disassemble(&with_digests());
    let r = record(&f.meta);
    // The third digest of the record: the third stored page in chunk order.
    f.meta[r.start + 16] ^= 1;
    let bytes = f.assemble();
    let img = Image::from_bytes(bytes.clone(), None).unwrap();
    let mut data: Vec<_> = img
        .extents()
        .unwrap()
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .copied()
        .collect();
    data.sort_by_key(|e| e.chunk);
    let mut left = 2;
    let (chunk, addr) = data
        .iter()
        .find_map(|e| {
            if left < e.page_count {
                Some((e.chunk, e.addr + u64::from(left) * 4096))
            } else {
                left -= e.page_count;
                None
            }
        })
        .unwrap();
    let mut page = vec![0u8; 4096];
    img.read_at(addr, &mut page).unwrap();
    let report = verify_bytes(bytes.clone(), None, &decode());
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let p = &report.problems[0];
    assert_eq!(p.kind, ErrorKind::Checksum);
    assert_eq!(p.location.chunk, Some(chunk));
    assert_eq!(p.location.addr, Some(addr), "{p}");
    assert!(p.message.contains("page digest mismatch"), "{p}");
    // Without decoding, verify does not look at the pages.
    let quick = verify_bytes(bytes, None, &VerifyOptions::default());
    assert!(quick.is_intact(), "{:?}", quick.problems);
}

#[test]
fn a_malformed_record_is_refused_with_where() {
    let good = Forge::disassemble(&with_digests());
    let r = record(&good.meta);
    let open = |f: &Forge| Image::from_bytes(f.assemble(), None);
    // One digest short.
    let mut f = good.clone();
    f.meta.truncate(r.end - 8);
    f.meta[r.start - 4..r.start].copy_from_slice(&((r.len() - 8) as u32).to_le_bytes());
    let e = open(&f).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(e.to_string().contains("page-digests record of"), "{e}");
    assert!(e.location().offset.is_some(), "{e}");
    // Two records.
    let mut f = good.clone();
    let rec = f.meta[r.start - 8..r.end].to_vec();
    f.meta.extend_from_slice(&rec);
    let e = open(&f).unwrap_err();
    assert!(
        e.to_string().contains("a second page-digests record"),
        "{e}"
    );
    // The bit without the record.
    let mut f = good.clone();
    f.meta.drain(r.start - 8..r.end);
    let e = open(&f).unwrap_err();
    assert!(
        e.to_string().contains("holds no page-digests record"),
        "{e}"
    );
    // The record without the bit: a record of unknown type, ignored (as a
    // 1.0 reader ignores it), and the image reads as before.
    let mut f = good.clone();
    f.clear_compat(Features::PAGE_DIGESTS);
    let img = open(&f).unwrap();
    assert!(!img.has_page_digests());
    assert_eq!(img.page_digests(0).unwrap(), None);
    assert!(verify_bytes(img.file_bytes().unwrap().to_vec(), None, &decode()).is_intact());
}

// ---------------------------------------------------------------------------
// Golden images with page digests (1.1, `PAGE_DIGESTS`), in tests/golden/:
// - `v1.1-digests-parent.img` (zstd:3): generation 0 of the golden content,
//   with page digests;
// - `v1.1-digests-child.img` (codec none): generation 1, its child (hint
//   `v1.1-digests-parent.img`), written against its digests, so it holds
//   exactly the changed pages, with digests of its own.
// ---------------------------------------------------------------------------

const PARENT: &str = "v1.1-digests-parent";
const CHILD: &str = "v1.1-digests-child";

/// Not a test: writes the golden images with page digests, when asked.
#[test]
#[ignore = "writes the golden images: MEMIMG_WRITE_GOLDEN_DIGESTS=1 cargo test -p memimg-tests --test main write_digests_golden -- --ignored"]
fn write_digests_golden_when_asked() {
    if !write_asked("MEMIMG_WRITE_GOLDEN_DIGESTS") {
        return;
    }
    let base = || golden_1_1_options().page_digests(true);
    let pp = dir().join(format!("{PARENT}.img"));
    std::fs::write(&pp, write_gen(0, None, base().codec(Codec::Zstd(3)))).unwrap();
    let parent = Chain::open(&pp, None, &ChainOptions::default()).unwrap();
    let hint = format!("{PARENT}.img");
    std::fs::write(
        dir().join(format!("{CHILD}.img")),
        write_gen(1, Some((&parent, &hint)), base().codec(Codec::None)),
    )
    .unwrap();
}

#[test]
fn golden_digest_images_still_read() {
    for (name, gen) in [(PARENT, 0), (CHILD, 1)] {
        let path = dir().join(format!("{name}.img"));
        let chain = Chain::open(&path, None, &ChainOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(chain.is_complete(), "{name}");
        let img = chain.image();
        let h = img.header();
        assert_eq!(h.version, (1, 1), "{name}");
        assert_eq!(h.producer, "memimg golden v1.1");
        assert_eq!(
            h.features.compat & Features::PAGE_DIGESTS,
            Features::PAGE_DIGESTS
        );
        let parent_bit = if gen > 0 { Features::PARENT } else { 0 };
        assert_eq!(
            h.features.incompat & Features::V1_1_INCOMPAT,
            parent_bit,
            "{name}"
        );
        assert_digests_match(img, name);
        for &(start, pages, _, rname, data) in GOLDEN_REGIONS {
            if !data {
                continue;
            }
            let mut got = vec![0u8; pages * 4096];
            chain.read_at(start, &mut got).unwrap();
            assert_eq!(got, gen_region(gen, start, pages), "{name}: {rname}");
            if gen > 0 {
                // The child holds exactly the changed pages.
                for i in 0..pages {
                    let addr = start + (i * 4096) as u64;
                    let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
                    gen_page(gen - 1, addr, &mut a);
                    gen_page(gen, addr, &mut b);
                    let mine = img.extent_at(addr).unwrap().unwrap().kind == ExtentKind::Data;
                    assert_eq!(mine, a != b, "{name}: page {addr:#x}");
                }
            }
        }
        // The digests of the frozen bytes: the first page of the heap.
        if gen == 0 {
            let mut page = vec![0u8; 4096];
            gen_page(0, 0x0060_1000, &mut page);
            let e = img.extent_at(0x0060_1000).unwrap().unwrap();
            let i = ((0x0060_1000 - e.addr) / 4096) as usize;
            assert_eq!(
                img.page_digests(e.chunk).unwrap().unwrap()[i],
                page_digests_of(&page, 4096).next().unwrap()
            );
        }
        let report = memimg::verify_chain_path(&path, None, &ChainOptions::default(), &decode());
        assert!(report.is_intact(), "{name}: {:?}", report.problems);
    }
}
