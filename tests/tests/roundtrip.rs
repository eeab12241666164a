//! Property tests: whatever regions, contents and options, the image reads
//! back byte-identical, through read_at and through region iteration.

use memimg::{
    verify_bytes, Argon2Params, Codec, ExtentKind, Image, Key, RegionInfo, RegionKind,
    VerifyOptions, Writer, WriterOptions,
};
use memimg_tests::{fill_page, PageKind};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Piece {
    Data(Vec<PageKind>),
    Zero(usize),
    Absent(usize),
}

#[derive(Debug, Clone)]
struct RegionSpec {
    gap_pages: u64,
    pieces: Vec<Piece>,
    empty: bool,
    kind: RegionKind,
}

fn page_kind() -> impl Strategy<Value = PageKind> {
    prop_oneof![
        Just(PageKind::Zero),
        Just(PageKind::Random),
        Just(PageKind::Heap),
        Just(PageKind::Text)
    ]
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => prop::collection::vec(page_kind(), 1..12).prop_map(Piece::Data),
        1 => (1usize..4).prop_map(Piece::Zero),
        1 => (1usize..4).prop_map(Piece::Absent),
    ]
}

fn region() -> impl Strategy<Value = RegionSpec> {
    (
        0u64..5,
        prop::collection::vec(piece(), 1..4),
        prop::bool::weighted(0.15),
        prop_oneof![
            Just(RegionKind::Heap),
            Just(RegionKind::Stack),
            Just(RegionKind::Anonymous),
            Just(RegionKind::FileBacked)
        ],
    )
        .prop_map(|(gap_pages, pieces, empty, kind)| RegionSpec {
            gap_pages,
            pieces,
            empty,
            kind,
        })
}

#[derive(Debug, Clone)]
struct Opts {
    page_size: u32,
    chunk_pages: u32,
    codec: Codec,
    key: u8,
    workers: usize,
}

fn opts() -> impl Strategy<Value = Opts> {
    (
        prop_oneof![4 => Just(4096u32), 1 => Just(16384u32), 1 => Just(65536u32)],
        1u32..9,
        prop_oneof![
            Just(Codec::None),
            Just(Codec::Zstd(1)),
            Just(Codec::Zstd(3)),
            Just(Codec::Zstd(-1)),
            Just(Codec::Zstd(9))
        ],
        0u8..3,
        0usize..4,
    )
        .prop_map(|(page_size, chunk_pages, codec, key, workers)| Opts {
            page_size,
            chunk_pages,
            codec,
            key,
            workers,
        })
}

fn key_for(k: u8) -> Option<Key> {
    match k {
        0 => None,
        1 => Some(Key::raw([7; 32])),
        _ => Some(
            Key::passphrase_with_params(
                "correct horse",
                Argon2Params {
                    m_cost: 64,
                    t_cost: 1,
                    p_cost: 1,
                },
            )
            .unwrap(),
        ),
    }
}

/// Expected state of each page: Some(bytes) for data or zero, None for absent.
type Expect = Vec<(RegionInfo, Vec<Option<Vec<u8>>>, bool)>;

fn build(regions: &[RegionSpec], o: &Opts, seed: u64) -> (Vec<u8>, Expect) {
    let ps = o.page_size as usize;
    let opts = WriterOptions::new()
        .page_size(o.page_size)
        .chunk_size(o.chunk_pages * o.page_size)
        .codec(o.codec)
        .workers(o.workers)
        .key_opt(key_for(o.key));
    let mut w = Writer::new(Vec::new(), opts).unwrap();
    let mut addr = 0x10_0000u64 * u64::from(o.page_size / 4096);
    let mut expect = Vec::new();
    for (ri, r) in regions.iter().enumerate() {
        addr += r.gap_pages * ps as u64;
        let pages: usize = r
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Data(v) => v.len(),
                Piece::Zero(n) | Piece::Absent(n) => *n,
            })
            .sum();
        let info = RegionInfo::new(addr, (pages * ps) as u64)
            .kind(r.kind)
            .name(format!("region-{ri}"));
        if r.empty {
            w.add_empty_region(info.clone()).unwrap();
            expect.push((info, Vec::new(), false));
            addr += (pages * ps) as u64;
            continue;
        }
        w.begin_region(info.clone()).unwrap();
        let mut pe = Vec::new();
        for (pi, p) in r.pieces.iter().enumerate() {
            match p {
                Piece::Data(kinds) => {
                    let mut buf = vec![0u8; kinds.len() * ps];
                    for (k, kind) in kinds.iter().enumerate() {
                        fill_page(
                            &mut buf[k * ps..(k + 1) * ps],
                            *kind,
                            seed ^ (ri * 1000 + pi * 50 + k) as u64,
                        );
                        pe.push(Some(buf[k * ps..(k + 1) * ps].to_vec()));
                    }
                    w.push_data(&buf).unwrap();
                }
                Piece::Zero(n) => {
                    w.push_zero((n * ps) as u64).unwrap();
                    pe.extend(std::iter::repeat_n(Some(vec![0u8; ps]), *n));
                }
                Piece::Absent(n) => {
                    w.push_absent((n * ps) as u64).unwrap();
                    pe.extend(std::iter::repeat_n(None, *n));
                }
            }
        }
        w.end_region().unwrap();
        expect.push((info, pe, true));
        addr += (pages * ps) as u64;
    }
    (w.finish().unwrap().0, expect)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn reads_back_identical(regions in prop::collection::vec(region(), 1..5), o in opts(), seed in any::<u64>()) {
        let (bytes, expect) = build(&regions, &o, seed);
        let key = key_for(o.key);
        let img = Image::from_bytes(bytes.clone(), key.as_ref()).unwrap();
        let ps = o.page_size as usize;
        let got = img.regions().unwrap();
        prop_assert_eq!(got.len(), expect.len());
        for (r, (info, pages, has_data)) in got.iter().zip(&expect) {
            prop_assert_eq!(&r.info, info);
            prop_assert_eq!(r.has_data(), *has_data);
            // Through read_at, page by page and in one piece where all present.
            let mut whole = Vec::new();
            for (i, want) in pages.iter().enumerate() {
                let mut buf = vec![0u8; ps];
                let res = img.read_at(info.start + (i * ps) as u64, &mut buf);
                match want {
                    Some(w) => { res.unwrap(); prop_assert_eq!(&buf, w); whole.extend_from_slice(w); }
                    None => prop_assert_eq!(res.unwrap_err().kind(), memimg::ErrorKind::NotCaptured),
                }
            }
            if *has_data && pages.iter().all(Option::is_some) {
                let mut buf = vec![0u8; info.len as usize];
                img.read_at(info.start, &mut buf).unwrap();
                prop_assert_eq!(buf, whole);
            }
            // Through region iteration.
            let mut at = 0usize;
            for e in img.region_extents(r).unwrap() {
                let n = e.len(o.page_size) as usize / ps;
                let mut buf = vec![0u8; n * ps];
                match e.kind {
                    ExtentKind::Absent => prop_assert!(pages[at..at + n].iter().all(Option::is_none)),
                    _ => {
                        img.decode_extent(e, &mut buf).unwrap();
                        for k in 0..n {
                            prop_assert_eq!(Some(&buf[k * ps..(k + 1) * ps]), pages[at + k].as_deref());
                        }
                    }
                }
                at += n;
            }
            prop_assert_eq!(at, pages.len());
        }
        let report = verify_bytes(bytes, key.as_ref(), &VerifyOptions { decode: true, progress: None });
        prop_assert!(report.is_intact(), "{:?}", report.problems);
    }
}

#[test]
fn raw_chunks_are_page_aligned_and_mappable() {
    let ps = 4096usize;
    let mut buf = vec![0u8; 40 * ps];
    for (i, p) in buf.chunks_mut(ps).enumerate() {
        fill_page(
            p,
            if i % 3 == 0 {
                PageKind::Random
            } else {
                PageKind::Heap
            },
            i as u64,
        );
    }
    let opts = WriterOptions::new()
        .page_size(4096)
        .codec(Codec::None)
        .chunk_size(8 * 4096);
    let mut w = Writer::new(Vec::new(), opts).unwrap();
    w.add_region(RegionInfo::new(0x40_0000, buf.len() as u64), &buf)
        .unwrap();
    let (bytes, _) = w.finish().unwrap();
    let img = Image::from_bytes(bytes.clone(), None).unwrap();
    for e in img.extents().unwrap() {
        let off = img.raw_file_offset(e).expect("a raw chunk is mappable") as usize;
        assert_eq!(off % ps, 0);
        let start = (e.addr - 0x40_0000) as usize;
        assert_eq!(
            &bytes[off..off + e.len(4096) as usize],
            &buf[start..start + e.len(4096) as usize]
        );
    }
}

#[test]
fn writer_refuses_bad_input() {
    let w = Writer::new(Vec::new(), WriterOptions::new().page_size(8192));
    assert!(w.is_err());
    let w = Writer::new(
        Vec::new(),
        WriterOptions::new().page_size(4096).chunk_size(6000),
    );
    assert!(w.is_err());
    let w = Writer::new(
        Vec::new(),
        WriterOptions::new()
            .page_size(4096)
            .validation("t", vec![1u8; 5000]),
    );
    assert!(w.is_err());
    let mut w = Writer::new(Vec::new(), WriterOptions::new().page_size(4096)).unwrap();
    assert!(w
        .add_region(RegionInfo::new(0x1001, 4096), &[0u8; 4096])
        .is_err());
    w.add_region(RegionInfo::new(0x10000, 4096), &[1u8; 4096])
        .unwrap();
    assert!(
        w.add_region(RegionInfo::new(0x8000, 4096), &[1u8; 4096])
            .is_err(),
        "out of order"
    );
    w.begin_region(RegionInfo::new(0x20000, 8192)).unwrap();
    w.push_data(&[2u8; 4096]).unwrap();
    assert!(w.end_region().is_err(), "half covered");
    w.push_zero(4096).unwrap();
    w.end_region().unwrap();
    w.finish().unwrap();
}

#[test]
fn reads_through_read_seek_and_from_path() {
    let bytes = memimg_tests::write_golden(WriterOptions::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    std::fs::write(&p, &bytes).unwrap();
    let a = Image::open(&p).unwrap();
    let b = Image::from_reader(std::fs::File::open(&p).unwrap(), None).unwrap();
    let mut x = vec![0u8; 4096 * 23];
    let mut y = vec![0u8; 4096 * 23];
    a.read_at(0x60_0000, &mut x).unwrap();
    b.read_at(0x60_0000, &mut y).unwrap();
    assert_eq!(x, y);
    let mut z = vec![0u8; 4096 * 23];
    for (i, p) in z.chunks_mut(4096).enumerate() {
        memimg_tests::golden_page(0x60_0000 + (i * 4096) as u64, p);
    }
    assert_eq!(x, z);
}
