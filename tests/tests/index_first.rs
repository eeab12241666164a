//! The index first (spec.md, *Index first*, 1.1 `INDEX_FIRST`): what a
//! relayout writes, what a reader opening from the front reads and trusts,
//! and the damage each kind of reader finds. Every hostile image here has
//! its header checksum (and, where the trailer is changed, the trailer
//! checksum) fixed, so each case reaches the rule it breaks.

use std::sync::Arc;

use memimg::{
    relayout, relayout_with, verify_bytes, ErrorKind, Image, Profile, ReadAt, RelayoutOptions,
    Status, VerifyOptions,
};
use memimg_tests::small_images;
use xxhash_rust::xxh3::xxh3_64;

const P: usize = 4096;

/// `bytes` as a store read by ranges, as object storage is.
struct Store(Vec<u8>);

impl ReadAt for Store {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o + buf.len()))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fn at(bytes: &[u8]) -> Arc<Store> {
    Arc::new(Store(bytes.to_vec()))
}

/// The plain small image laid out by a profile (its index first, as a
/// relayout writes a plain image by default), and the source.
fn index_first_image() -> (Vec<u8>, Vec<u8>) {
    let (_, src, _) = small_images().unwrap().remove(1); // compressed, plain
    let img = Image::from_bytes(src.clone(), None).unwrap();
    let n = img.chunk_locs().len() as u64;
    let p = Profile {
        image_id: img.header().image_id,
        chunks: vec![n - 1, 0],
    };
    let (out, st) = relayout(&img, &p, Vec::new()).unwrap();
    assert!(st.index_first);
    (out, src)
}

fn fix_header(b: &mut [u8]) {
    let sum = xxh3_64(&b[..P - 8]);
    b[P - 8..P].copy_from_slice(&sum.to_le_bytes());
}

fn fix_trailer(b: &mut [u8]) {
    let t = b.len() - 256;
    let sum = xxh3_64(&b[t..t + 248]);
    b[t + 248..].copy_from_slice(&sum.to_le_bytes());
}

/// Offset of the value of header record `ty` (after its type and length).
fn record(b: &[u8], ty: u16) -> usize {
    let meta_len = u32::from_le_bytes(b[0x58..0x5c].try_into().unwrap()) as usize;
    let mut o = 0x80;
    while o < 0x80 + meta_len {
        let t = u16::from_le_bytes([b[o], b[o + 1]]);
        let len = usize::from(u16::from_le_bytes([b[o + 2], b[o + 3]]));
        if t == ty {
            return o + 4;
        }
        o += 4 + len;
    }
    panic!("no header record {ty}");
}

fn content(img: &Image) -> Vec<Vec<u8>> {
    img.regions()
        .unwrap()
        .iter()
        .filter(|r| !img.region_extents(r).unwrap().is_empty())
        .map(|r| {
            let mut b = vec![0u8; r.info.len as usize];
            img.read_at(r.info.start, &mut b).unwrap();
            b
        })
        .collect()
}

#[test]
fn a_relayout_puts_the_index_first_and_both_readers_read_it() {
    let (out, src) = index_first_image();
    let src = Image::from_bytes(src, None).unwrap();
    for (how, img) in [
        ("whole", Image::from_bytes(out.clone(), None).unwrap()),
        ("front", Image::from_read_at(at(&out), None).unwrap()),
        (
            "whole, by ranges",
            Image::from_read_at_whole(at(&out), None).unwrap(),
        ),
    ] {
        let h = img.header();
        assert_ne!(
            h.features.incompat & memimg::Features::INDEX_FIRST,
            0,
            "{how}"
        );
        let rec = h.index_first.expect("the index record");
        let t = img.trailer();
        assert_eq!(t.read, how != "front", "{how}");
        assert_eq!(
            (t.index_offset, t.index_len, t.index_checksum),
            (P as u64, rec.index_len, rec.index_checksum),
            "{how}"
        );
        assert_eq!(t.offset, out.len() as u64 - 256, "{how}");
        assert_eq!(
            xxh3_64(&out[P..P + rec.index_len as usize]),
            rec.index_checksum
        );
        assert_eq!(content(&img), content(&src), "{how}");
    }
    let r = verify_bytes(
        out.clone(),
        None,
        &VerifyOptions {
            decode: true,
            progress: None,
        },
    );
    assert_eq!(r.status(), Status::Intact, "{:?}", r.problems);
    // Asked to keep the index at the end: the layout of a 1.1 load order.
    let img = Image::from_bytes(out, None).unwrap();
    let p = Profile {
        image_id: img.header().image_id,
        chunks: vec![1],
    };
    let (back, st) = relayout_with(
        &img,
        &p,
        &RelayoutOptions { index_first: false },
        Vec::new(),
    )
    .unwrap();
    assert!(!st.index_first);
    let back = Image::from_bytes(back, None).unwrap();
    assert_eq!(back.header().index_first, None);
    assert_eq!(
        back.header().features.incompat & memimg::Features::INDEX_FIRST,
        0
    );
    assert_eq!(content(&back), content(&src));
}

#[test]
fn an_encrypted_image_keeps_its_index_at_the_end() {
    let (_, src, key) = small_images().unwrap().remove(3);
    let img = Image::from_bytes(src, key.as_ref()).unwrap();
    let p = Profile {
        image_id: img.header().image_id,
        chunks: vec![0],
    };
    let (out, st) = relayout(&img, &p, Vec::new()).unwrap();
    assert!(!st.index_first);
    let img = Image::from_bytes(out.clone(), key.as_ref()).unwrap();
    assert_eq!(img.header().index_first, None);
    // INDEX_FIRST set in an encrypted header is damage.
    let mut b = out;
    b[0x10] |= 1 << 5;
    fix_header(&mut b);
    for e in [
        Image::from_bytes(b.clone(), None).unwrap_err(),
        Image::from_read_at(at(&b), None).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
        assert!(e.to_string().contains("index-first"), "{e}");
    }
}

#[test]
fn a_trailer_that_disagrees_with_the_index_record_is_damage_where_it_is_read() {
    let (out, _) = index_first_image();
    let mut b = out.clone();
    let t = b.len() - 256;
    b[t + 32] ^= 1; // the trailer's index_checksum
    fix_trailer(&mut b);
    let e = Image::from_bytes(b.clone(), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert_eq!(e.location().offset, Some(t as u64 + 16), "{e}");
    assert!(e.to_string().contains("index record"), "{e}");
    // Opened from its front, the trailer is not read: the record, which
    // the header checksum covers, is what the index is checked against,
    // and every byte read is right.
    let img = Image::from_read_at(at(&b), None).unwrap();
    assert!(!img.trailer().read);
    let good = Image::from_bytes(out, None).unwrap();
    assert_eq!(content(&img), content(&good));
    // verify reads the trailer, and says what is wrong and where (the
    // remote verify too: remote/tests/it/verify.rs).
    let r = verify_bytes(b, None, &VerifyOptions::default());
    assert_eq!(r.status(), Status::Damaged);
    assert!(
        r.problems
            .iter()
            .any(|p| p.location.offset == Some(t as u64 + 16)),
        "{:?}",
        r.problems
    );
}

#[test]
fn a_wrong_index_record_fails_the_index_checksum_from_the_front() {
    let (out, _) = index_first_image();
    let mut b = out;
    let v = record(&b, 34);
    b[v + 8] ^= 1; // the record's index_checksum
    fix_header(&mut b);
    let e = Image::from_read_at(at(&b), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checksum, "{e}");
    assert_eq!(e.location().offset, Some(P as u64), "{e}");
    assert!(e.to_string().contains("header's index record"), "{e}");
    // Reading the trailer: the disagreement is named first.
    let e = Image::from_bytes(b, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    // A record of the wrong length, and no record at all.
    let (out, _) = index_first_image();
    let mut b = out.clone();
    let v = record(&b, 34);
    b[v - 2] = 15; // len 15
    fix_header(&mut b);
    let e = Image::from_read_at(at(&b), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    let mut b = out;
    b[v - 4] = 99; // another type: the image has no index record
    fix_header(&mut b);
    for e in [
        Image::from_read_at(at(&b), None).unwrap_err(),
        Image::from_bytes(b.clone(), None).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
        assert!(e.to_string().contains("no index record"), "{e}");
    }
}

#[test]
fn a_front_open_finds_a_store_of_the_wrong_length() {
    let (out, _) = index_first_image();
    // Bytes appended (a whole block, or one), and one byte cut: the
    // trailer is not where the data ends.
    let mut longer = out.clone();
    longer.extend_from_slice(&[0u8; 256]);
    let mut one_more = out.clone();
    one_more.push(0);
    let shorter = out[..out.len() - 1].to_vec();
    for (what, b) in [
        ("a block appended", longer),
        ("a byte appended", one_more),
        ("a byte cut", shorter),
    ] {
        let e = Image::from_read_at(at(&b), None).unwrap_err();
        assert!(e.is_damage(), "{what}: {e}");
        assert!(e.location().offset.is_some(), "{what}: {e}");
    }
    // Read whole, bytes after the trailer (which a rotation might leave in
    // an encrypted image) are damage too: a plain image is never rotated.
    let mut tail = out.clone();
    tail.extend_from_slice(&[1u8; 100]);
    let e = Image::from_bytes(tail, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert_eq!(e.location().offset, Some(out.len() as u64), "{e}");
    // Cut before the data start: truncated.
    let e = Image::from_read_at(at(&out[..P + 100]), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Truncated, "{e}");
}

#[test]
fn index_first_set_on_an_image_with_its_index_at_the_end_is_damage() {
    let (_, src) = index_first_image();
    let img = Image::from_bytes(src.clone(), None).unwrap();
    let t = img.trailer().clone();
    drop(img);
    // A record that names the real index's length and checksum: the
    // trailer puts it elsewhere, and from the front the bytes at P are not
    // that index.
    let mut b = src;
    let meta_len = u32::from_le_bytes(b[0x58..0x5c].try_into().unwrap()) as usize;
    let o = 0x80 + meta_len;
    b[o..o + 2].copy_from_slice(&34u16.to_le_bytes());
    b[o + 2..o + 4].copy_from_slice(&16u16.to_le_bytes());
    b[o + 4..o + 12].copy_from_slice(&t.index_len.to_le_bytes());
    b[o + 12..o + 20].copy_from_slice(&t.index_checksum.to_le_bytes());
    b[0x58..0x5c].copy_from_slice(&((meta_len + 20) as u32).to_le_bytes());
    b[0x10] |= 1 << 5;
    fix_header(&mut b);
    for e in [
        Image::from_bytes(b.clone(), None).unwrap_err(),
        Image::from_read_at(at(&b), None).unwrap_err(),
    ] {
        assert!(e.is_damage(), "{e}");
    }
}
