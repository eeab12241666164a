//! Hostile images built from parts (memimg_tests::forge) with every checksum
//! right, so that each one reaches the rule it breaks. Each used to be read
//! without complaint, or with a wrong message.

use memimg::{options_from, transcode, verify_bytes, ErrorKind, Image, Key, Status, VerifyOptions};
use memimg_tests::{Forge, ForgeKey, Page};

const KEY: ForgeKey = ForgeKey {
    kek: [0x11; 32],
    dek: [0x22; 32],
    wrap_nonce: [0x33; 24],
};

fn deep() -> VerifyOptions<'static> {
    VerifyOptions {
        decode: true,
        progress: None,
    }
}

/// A page zstd shrinks, and one it cannot.
fn text() -> Page {
    let mut v = b"hostile images ".repeat(274);
    v.truncate(4096);
    Page::Data(v)
}

fn noise(seed: u64) -> Page {
    let mut x = seed | 1;
    Page::Data(
        (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect(),
    )
}

/// The problems verify reports, as "Kind: message" lines.
fn problems(bytes: Vec<u8>, key: Option<&Key>, opts: &VerifyOptions<'_>) -> Vec<String> {
    let r = verify_bytes(bytes, key, opts);
    assert!(r.fatal.is_none(), "{:?}", r.fatal);
    r.problems
        .iter()
        .map(|p| format!("{:?}: {p}", p.kind))
        .collect()
}

/// A trailer whose recorded offset is wrong used to be reported as
/// "checksum mismatch (stored X, hashes to X)", with the same value twice.
#[test]
fn a_trailer_at_the_wrong_offset_says_so() {
    let mut f = Forge::new(4096, 4096, None);
    f.push_region(0x10000, b"r", &[noise(1)], 1, false);
    let bytes = f.assemble_with(&mut |a| a.trailer.trailer_offset += 8);
    let e = Image::from_bytes(bytes, None).unwrap_err();
    let s = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{s}");
    assert!(s.contains("records its offset as"), "{s}");
    assert!(!s.contains("checksum"), "{s}");
}

/// Non-zero padding in front of a raw chunk used to be caught by verify only:
/// read_at, cat, export-core read the chunk, and a recompress copied the
/// image into one that verified.
#[test]
fn non_zero_padding_before_a_raw_chunk_fails_every_reader() {
    let mut f = Forge::new(4096, 4096, None);
    // Chunk 0 is compressed (so it ends off a page boundary), chunk 1 raw.
    f.push_region(0x10000, b"r", &[text(), noise(2)], 1, true);
    let mut bytes = f.assemble();
    let img = Image::from_bytes(bytes.clone(), None).unwrap();
    let c = img.chunk_locs().to_vec();
    let pad = (c[0].offset + u64::from(c[0].stored_len)) as usize..c[1].offset as usize;
    assert!(pad.len() > 100, "{pad:?}");
    bytes[pad.start + 100] = 0x5a;

    let img = Image::from_bytes(bytes.clone(), None).unwrap();
    let mut page = vec![0u8; 4096];
    img.read_at(0x10000, &mut page).unwrap();
    let e = img.read_at(0x11000, &mut page).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NonZeroPadding, "{e}");
    assert_eq!(e.location().offset, Some(pad.start as u64 + 100), "{e}");
    assert_eq!(e.location().chunk, Some(1), "{e}");
    assert_eq!(e.location().addr, Some(0x11000), "{e}");
    let ext = img.extents().unwrap()[1];
    let e = img.decode_extent(&ext, &mut page).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NonZeroPadding, "{e}");
    let e = transcode(
        &img,
        Vec::new(),
        options_from(&img).unwrap().workers(0),
        &|_| {},
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NonZeroPadding, "transcode: {e}");
    for opts in [VerifyOptions::default(), deep()] {
        let p = problems(bytes.clone(), None, &opts);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("NonZeroPadding"), "{p:?}");
    }
}

/// An encrypted chunk shorter than its 16-byte tag used to pass a verify
/// without decoding (with or without the key).
#[test]
fn an_encrypted_chunk_shorter_than_its_tag_fails_plain_verify() {
    let mut f = Forge::new(4096, 4096, Some(KEY));
    f.push_region(0x10000, b"r", &[text()], 1, true);
    f.seal_chunks = false;
    f.chunks[0] = vec![9; 10];
    let bytes = f.assemble();
    let key = Key::raw(KEY.kek);
    for k in [None, Some(&key)] {
        let p = problems(bytes.clone(), k, &VerifyOptions::default());
        assert_eq!(p.len(), 1, "key {}: {p:?}", k.is_some());
        assert!(
            p[0].starts_with("Malformed") && p[0].contains("shorter than its 16-byte tag"),
            "{p:?}"
        );
    }
    let e = Image::from_bytes(bytes, None).unwrap_err();
    assert_eq!(e.location().chunk, Some(0), "{e}");
}

/// A chunk larger than the chunk size (plus the tag) allows is refused from
/// the chunk map, before anything reads it.
#[test]
fn a_chunk_larger_than_the_chunk_size_is_refused() {
    let mut f = Forge::new(4096, 4096, None);
    f.push_region(0x10000, b"r", &[text()], 1, true);
    f.chunks[0] = vec![1; 4097];
    let e = Image::from_bytes(f.assemble(), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(e.message().contains("more than the chunk size"), "{e}");
}

/// Two header records of one unknown type used to be accepted, although each
/// type may appear once.
#[test]
fn a_repeated_unknown_header_record_is_refused() {
    let mut f = Forge::new(4096, 4096, None);
    f.push_region(0x10000, b"r", &[noise(3)], 1, false);
    let tlv = [[99u8, 0, 2, 0, 0xaa, 0xbb], [99, 0, 2, 0, 0xcc, 0xdd]].concat();
    f.header[0x58..0x5c].copy_from_slice(&(tlv.len() as u32).to_le_bytes());
    f.header[0x80..0x80 + tlv.len()].copy_from_slice(&tlv);
    let bytes = f.assemble();
    let e = Image::from_bytes(bytes.clone(), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert_eq!(e.location().offset, Some(0x86), "{e}");
    assert!(e.message().contains("type 99 appears twice"), "{e}");
    // One record of an unknown type is fine.
    f.header[0x58..0x5c].copy_from_slice(&6u32.to_le_bytes());
    f.header[0x86..0x8c].fill(0);
    Image::from_bytes(f.assemble(), None).unwrap();
}

/// A chunk holding two zstd frames used to decode to both, concatenated.
#[test]
fn a_chunk_of_two_zstd_frames_is_refused() {
    let mut f = Forge::new(4096, 4096, None);
    f.push_region(0x10000, b"r", &[text()], 1, true);
    let Page::Data(page) = text() else {
        unreachable!()
    };
    let mut two = zstd::bulk::compress(&page[..2048], 1).unwrap();
    two.extend(zstd::bulk::compress(&page[2048..4096], 1).unwrap());
    f.chunks[0] = two;
    let bytes = f.assemble();
    let img = Image::from_bytes(bytes.clone(), None).unwrap();
    let e = img.read_at(0x10000, &mut [0u8; 16]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(e.message().contains("more than one zstd frame"), "{e}");
    let p = problems(bytes, None, &deep());
    assert!(
        p.len() == 1 && p[0].contains("more than one zstd frame"),
        "{p:?}"
    );
}

/// A string table longer than the names it holds is refused: names are
/// packed, and nothing else lives there.
#[test]
fn a_string_table_with_bytes_no_name_uses_is_refused() {
    let mut f = Forge::new(4096, 4096, None);
    f.push_region(0x10000, b"heap", &[noise(4)], 1, false);
    f.strings.extend_from_slice(b"extra");
    let e = Image::from_bytes(f.assemble(), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(
        e.message()
            .contains("the string table holds 9 bytes but the region names use 4"),
        "{e}"
    );
    // Two regions, the second naming the first's bytes.
    let mut f = Forge::new(4096, 4096, None);
    f.push_region(0x10000, b"heap", &[noise(4)], 1, false);
    f.push_region(0x20000, b"", &[], 1, false);
    f.regions[1].name_len = 4;
    let e = Image::from_bytes(f.assemble(), None).unwrap_err();
    assert_eq!(e.location().region, Some(1), "{e}");
    assert_eq!(Status::Damaged, {
        let mut f2 = f.clone();
        f2.regions[1].name_off = 4;
        f2.strings.extend_from_slice(b"heap");
        // Packed again: this one is fine.
        Image::from_bytes(f2.assemble(), None).unwrap();
        verify_bytes(f.assemble(), None, &VerifyOptions::default()).status()
    });
}
