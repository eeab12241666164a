//! Load order (spec.md, *Load order*): relayout by a profile, the
//! load-order record, the layout rule in layout order, and the profile file.
//!
//! Every hostile image here is built with every checksum fixed up, so each
//! case reaches the rule it breaks.

use memimg::raw::*;
use memimg::{
    relayout, verify_bytes, ErrorKind, Features, Image, Key, Profile, Status, VerifyOptions,
};
use memimg_tests::forge::Forge;
use memimg_tests::{parts_of, small_images, write_golden, GOLDEN_KEY};

fn open(bytes: &[u8], key: Option<&Key>) -> Image {
    Image::from_bytes(bytes.to_vec(), key).unwrap()
}

/// A profile of `img`: its last chunk, then chunk 0, then every third.
fn profile_of(img: &Image) -> Profile {
    let n = img.chunk_locs().len() as u64;
    let mut chunks = vec![n - 1];
    if n > 1 {
        chunks.push(0);
    }
    chunks.extend((2..n - 1).step_by(3));
    Profile {
        image_id: img.header().image_id,
        chunks,
    }
}

fn optimize(bytes: &[u8], key: Option<&Key>, p: &Profile) -> Vec<u8> {
    relayout(&open(bytes, key), p, Vec::new()).unwrap().0
}

/// Every region's content, read through `read_at`.
fn content(img: &Image) -> Vec<(u64, Vec<u8>)> {
    img.regions()
        .unwrap()
        .iter()
        .filter(|r| r.has_data())
        .map(|r| {
            let mut b = vec![0u8; r.info.len as usize];
            img.read_at(r.info.start, &mut b).unwrap();
            (r.info.start, b)
        })
        .collect()
}

fn decode_verify(bytes: Vec<u8>, key: Option<&Key>) -> memimg::Report {
    verify_bytes(
        bytes,
        key,
        &VerifyOptions {
            decode: true,
            progress: None,
        },
    )
}

#[test]
fn relayout_keeps_content_id_and_chunks_and_puts_the_profile_first() {
    for (name, bytes, key) in small_images().unwrap() {
        let src = open(&bytes, key.as_ref());
        let p = profile_of(&src);
        let out = optimize(&bytes, key.as_ref(), &p);
        let img = open(&out, key.as_ref());
        assert_eq!(img.header().image_id, src.header().image_id, "{name}");
        assert!(img.has_load_order(), "{name}");
        assert_eq!(img.header().version, (1, 1), "{name}");
        assert_eq!(img.load_order().unwrap().unwrap(), &p.chunks[..], "{name}");
        assert_eq!(content(&img), content(&src), "{name}: content differs");
        // Chunk numbers, lengths and checksums are the source's: only the
        // offsets moved.
        let (a, b) = (src.chunk_locs(), img.chunk_locs());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(
                (x.stored_len, x.stored_checksum),
                (y.stored_len, y.stored_checksum)
            );
        }
        assert_eq!(src.extents().unwrap(), img.extents().unwrap(), "{name}");
        // Layout order: the profile's chunks first, then the rest by number.
        let lo = img.layout_order();
        assert_eq!(&lo[..p.chunks.len()], &p.chunks[..], "{name}");
        let rest: Vec<u64> = (0..a.len() as u64)
            .filter(|c| !p.chunks.contains(c))
            .collect();
        assert_eq!(&lo[p.chunks.len()..], &rest[..], "{name}");
        // The working set is one range, from the data start (P, or right
        // after the index, which a plain image gets first by default) to
        // the end of the last profile chunk, and holds exactly the
        // profile's chunks.
        let ws = img.working_set_range().unwrap().unwrap();
        let ds = img.header().data_start();
        if key.is_some() {
            assert_eq!((ds, img.header().index_first), (4096, None), "{name}");
        } else {
            assert_eq!(ds, 4096 + img.trailer().index_len, "{name}");
            assert_eq!(img.trailer().index_offset, 4096, "{name}");
        }
        assert!(
            ws.start == ds || ws.start == ds.div_ceil(4096) * 4096,
            "{name}: {ws:?} from {ds:#x}"
        );
        for (i, c) in b.iter().enumerate() {
            let inside = c.offset >= ws.start && c.offset + u64::from(c.stored_len) <= ws.end;
            assert_eq!(inside, p.chunks.contains(&(i as u64)), "{name}: chunk {i}");
        }
        let r = decode_verify(out.clone(), key.as_ref());
        assert_eq!(r.status(), Status::Intact, "{name}: {:?}", r.problems);
        // Encrypted: the same key opens it, the index is sealed with a fresh
        // non-zero salt, and two relayouts take different salts.
        if key.is_some() {
            assert_ne!(img.index_nonce_salt(), 0, "{name}");
            let again = open(&optimize(&bytes, key.as_ref(), &p), key.as_ref());
            assert_ne!(again.index_nonce_salt(), img.index_nonce_salt(), "{name}");
            // Without a key: the layout is checked by offset, and the
            // profile is known to exist but not readable.
            let locked = open(&out, None);
            assert!(locked.has_load_order());
            assert_eq!(
                locked.load_order().unwrap_err().kind(),
                ErrorKind::KeyRequired
            );
            assert_eq!(locked.layout_order(), lo);
            let r = verify_bytes(out.clone(), None, &VerifyOptions::default());
            assert_eq!(
                r.status(),
                Status::Intact,
                "{name} locked: {:?}",
                r.problems
            );
        } else {
            assert_eq!(img.index_nonce_salt(), 0, "{name}");
        }
        // Relaying out an optimized image by another profile replaces the
        // record (one record, never two).
        let p2 = Profile {
            image_id: p.image_id,
            chunks: vec![1],
        };
        let twice = open(&optimize(&out, key.as_ref(), &p2), key.as_ref());
        assert_eq!(twice.load_order().unwrap().unwrap(), &[1], "{name}");
        assert_eq!(content(&twice), content(&src), "{name}");
    }
}

/// A reader that ignores profiles: the spec's chunk map alone, read by a
/// builder written from spec.md without the crate's reader (`Forge`), finds
/// every chunk's bytes, identical to the source's.
#[test]
fn a_reader_that_ignores_the_profile_finds_every_chunk() {
    for (name, bytes, key) in small_images().unwrap() {
        if key.is_some() {
            continue; // Forge takes apart plain images.
        }
        let src = open(&bytes, None);
        let out = optimize(&bytes, None, &profile_of(&src));
        let (a, b) = (Forge::disassemble(&bytes), Forge::disassemble(&out));
        assert_eq!(a.chunks, b.chunks, "{name}");
        assert_eq!(a.extents, b.extents, "{name}");
        assert_eq!(a.regions, b.regions, "{name}");
        assert_ne!(a.meta, b.meta, "{name}: the record is in the meta");
    }
}

#[test]
fn a_profile_for_another_image_is_refused() {
    let key = Key::raw(GOLDEN_KEY);
    let a = write_golden(memimg::WriterOptions::new().key(key.clone())).unwrap();
    let b = write_golden(memimg::WriterOptions::new().key(key.clone())).unwrap();
    let (ia, ib) = (open(&a, Some(&key)), open(&b, Some(&key)));
    let p = profile_of(&ia);
    let e = relayout(&ib, &p, Vec::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongImage, "{e}");
    assert_eq!(p.check_for(&ib).unwrap_err().kind(), ErrorKind::WrongImage);
    // It applies to an optimized copy of its own image (same id).
    let out = optimize(&a, Some(&key), &p);
    p.check_for(&open(&out, Some(&key))).unwrap();
    // Past the chunk count, and repeated: refused.
    let n = ia.chunk_locs().len() as u64;
    for bad in [vec![n], vec![0, 1, 0], vec![]] {
        let q = Profile {
            image_id: p.image_id,
            chunks: bad.clone(),
        };
        assert!(relayout(&ia, &q, Vec::new()).is_err(), "{bad:?}");
    }
    // A locked source cannot be relaid out (the index must be resealed).
    let locked = open(&a, None);
    assert_eq!(
        relayout(&locked, &p, Vec::new()).unwrap_err().kind(),
        ErrorKind::KeyRequired
    );
}

/// Every bit of the header, index and trailer of an optimized encrypted
/// image flipped, and a sample of the chunk data: verify (with the key,
/// decoding) reports damage with a location every time.
#[test]
fn every_flip_of_an_optimized_encrypted_image_is_detected() {
    let (_, bytes, key) = small_images()
        .unwrap()
        .into_iter()
        .find(|(n, _, _)| *n == "compressed+encrypted")
        .unwrap();
    let key = key.unwrap();
    let out = optimize(&bytes, Some(&key), &profile_of(&open(&bytes, Some(&key))));
    let (h, data, idx, tr) = parts_of(&out);
    let mut bits: Vec<usize> = (h.start * 8..h.end * 8).collect();
    bits.extend(idx.start * 8..idx.end * 8);
    bits.extend(tr.start * 8..tr.end * 8);
    bits.extend((data.start..data.end).step_by(5).map(|b| b * 8 + b % 8));
    let mut missed = Vec::new();
    for &bit in &bits {
        let mut d = out.clone();
        d[bit / 8] ^= 1 << (bit % 8);
        let r = decode_verify(d, Some(&key));
        match r.status() {
            Status::Damaged => assert!(
                r.problems
                    .iter()
                    .all(|p| p.location.offset.is_some() || p.location.chunk.is_some()),
                "bit {bit}: a problem without a location: {:?}",
                r.problems
            ),
            Status::Unchecked => {
                let e = r.fatal.unwrap();
                if !(e.kind() == ErrorKind::NotAnImage && bit / 8 < 8) {
                    missed.push(format!("bit {bit}: unchecked: {e}"));
                }
            }
            Status::Intact => missed.push(format!("bit {bit}: intact")),
        }
    }
    println!(
        "bit flips, optimized compressed+encrypted: {} tried, {} missed",
        bits.len(),
        missed.len()
    );
    assert!(missed.is_empty(), "{missed:#?}");
}

/// A plain image taken apart, with `LOAD_ORDER` set in its header and `meta`
/// as its body meta; every checksum fixed.
fn forged(meta: Vec<u8>, bit: bool) -> Vec<u8> {
    let bytes = small_images().unwrap().remove(0).1;
    let mut f = Forge::disassemble(&bytes);
    let mut fixed: HeaderFixed = from_bytes(&f.header).unwrap();
    if bit {
        fixed.incompat |= Features::LOAD_ORDER;
    }
    fixed.version_minor = 1;
    f.header[..HEADER_FIXED_LEN].copy_from_slice(&to_bytes(&fixed));
    f.meta = meta;
    f.assemble()
}

fn record(nums: &[u64]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&2u16.to_le_bytes());
    r.extend_from_slice(&0u16.to_le_bytes());
    r.extend_from_slice(&((nums.len() * 8) as u32).to_le_bytes());
    for n in nums {
        r.extend_from_slice(&n.to_le_bytes());
    }
    r
}

#[test]
fn hostile_load_order_records_give_typed_errors() {
    let n = {
        let b = small_images().unwrap().remove(0).1;
        open(&b, None).chunk_locs().len() as u64
    };
    assert!(n >= 3);
    // The forge lays chunks out by number, so a profile that starts with
    // chunk 0, 1 ... in order matches the layout.
    let ok = open(&forged(record(&[0, 1]), true), None);
    assert_eq!(ok.load_order().unwrap().unwrap(), &[0, 1]);
    // Without the bit, a type 2 record is a record of unknown type (1.0).
    let ignored = open(&forged(record(&[5, 5, 99]), false), None);
    assert!(ignored.load_order().unwrap().is_none());

    let mut cut = record(&[0]);
    cut[4..8].copy_from_slice(&12u32.to_le_bytes());
    cut.extend_from_slice(&[0; 4]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no record", Vec::new(), "no load-order record"),
        (
            "two records",
            [record(&[0]), record(&[0])].concat(),
            "second load-order record",
        ),
        ("empty", record(&[]), "load-order record of 0 bytes"),
        ("not whole numbers", cut, "load-order record of 12 bytes"),
        (
            "more than the chunks",
            record(&(0..=n).collect::<Vec<_>>()),
            "the image has",
        ),
        ("out of range", record(&[0, n]), "past the chunk map"),
        ("huge", record(&[u64::MAX]), "past the chunk map"),
        ("twice", record(&[0, 1, 0]), "a second time"),
        // A valid record the layout does not follow: chunk 2 is not first.
        ("layout", record(&[2, 0]), "the layout puts it at"),
    ];
    for (what, meta, says) in cases {
        let bytes = forged(meta, true);
        let e = Image::from_bytes(bytes.clone(), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed, "{what}: {e}");
        assert!(e.location().offset.is_some(), "{what}: {e}");
        assert!(e.to_string().contains(says), "{what}: {e}");
        // Verify says damaged too, with a location.
        let r = verify_bytes(bytes, None, &VerifyOptions::default());
        assert_eq!(r.status(), Status::Damaged, "{what}");
    }
}

/// Without the key, the layout of an optimized encrypted image is checked by
/// offset: chunks that overlap, or leave a gap, are refused even with every
/// checksum fixed.
#[test]
fn a_locked_reader_checks_the_layout_by_offset() {
    let (_, bytes, key) = small_images().unwrap().remove(2);
    let key = key.unwrap();
    let out = optimize(&bytes, Some(&key), &profile_of(&open(&bytes, Some(&key))));
    let (_, _, idx, tr) = parts_of(&out);
    for delta in [1i64, -1] {
        let mut d = out.clone();
        // Chunk 0's entry (second in layout order): move it by one byte.
        let at = idx.start + INDEX_HEAD_LEN;
        let off = u64::from_le_bytes(d[at..at + 8].try_into().unwrap());
        d[at..at + 8].copy_from_slice(&off.wrapping_add_signed(delta).to_le_bytes());
        // Fix the entry's stored checksum, the index checksum and the
        // trailer's checksum.
        let len = u32::from_le_bytes(d[at + 8..at + 12].try_into().unwrap()) as usize;
        let o = off.wrapping_add_signed(delta) as usize;
        let s = xxhash_rust::xxh3::xxh3_64(&d[o..o + len]);
        d[at + 16..at + 24].copy_from_slice(&s.to_le_bytes());
        let mut t: TrailerRaw = from_bytes(&d[tr.clone()]).unwrap();
        t.index_checksum = xxhash_rust::xxh3::xxh3_64(&d[idx.clone()]);
        d[tr.clone()].copy_from_slice(&memimg_tests::forge::trailer_bytes(&t));
        let e = Image::from_bytes(d, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed, "{delta}: {e}");
        assert!(e.to_string().contains("layout"), "{delta}: {e}");
    }
}

/// A damaged profile file is refused before anything is written; a profile
/// whose numbers were edited (checksum fixed) is refused by the image.
#[test]
fn damaged_profile_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes, _) = small_images().unwrap().remove(0);
    let img = open(&bytes, None);
    let p = profile_of(&img);
    let path = dir.path().join("p.profile");
    p.write(&path).unwrap();
    assert_eq!(Profile::read(&path).unwrap(), p);
    let mut b = std::fs::read(&path).unwrap();
    b[41] ^= 1;
    std::fs::write(&path, &b).unwrap();
    assert_eq!(
        Profile::read(&path).unwrap_err().kind(),
        ErrorKind::Checksum
    );
    // Not a regular file.
    assert_eq!(
        Profile::read(std::path::Path::new("/dev/zero"))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
}
