//! No (key, nonce) pair is ever used twice: across writing images, recompressing,
//! full re-encryption, relayout (load order) and key rotation.
//!
//! The pairs are those the sealing code records as it seals (memimg's
//! `nonce-audit` feature: `memimg::audit`), not ones recomputed from the same
//! nonce function, so a writer that sealed twice with one nonce, or reused a
//! data key, would be caught. This binary holds this one test, so no other
//! test seals while it records.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashSet;

use memimg::{
    audit, options_from, rebase, relayout, rewrap_in_place, transcode, Chain, Codec, Image, Key,
    Profile, WriterOptions,
};
use memimg_tests::{golden_page, write_golden, GOLDEN_REGIONS};

/// A child of `parent` (the golden layout, every fifth page changed),
/// encrypted under `key`.
fn write_child_of(parent: &Chain, key: &Key) -> Vec<u8> {
    let opts = WriterOptions::new()
        .page_size(4096)
        .chunk_size(4 * 4096)
        .key(key.clone())
        .parent_of(parent.image())
        .unwrap();
    let mut w = memimg::Writer::new(Vec::new(), opts).unwrap();
    for &(start, pages, kind, name, data) in GOLDEN_REGIONS {
        let info = memimg::RegionInfo::new(start, (pages * 4096) as u64)
            .kind(kind)
            .name(name);
        if !data {
            w.add_empty_region(info).unwrap();
            continue;
        }
        let mut buf = vec![0u8; pages * 4096];
        for (i, p) in buf.chunks_mut(4096).enumerate() {
            golden_page(start + (i * 4096) as u64, p);
            if i % 5 == 2 {
                p[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            }
        }
        w.add_region_against(info, &buf, parent).unwrap();
    }
    w.finish().unwrap().0
}

/// The pairs an image should have used: one per chunk and one for the index
/// under its data key, and its key slot's wrap under the KEK.
fn expected(img: &Image, key: &Key) -> Vec<(u128, Vec<u8>)> {
    img.nonce_audit(key).unwrap()
}

#[test]
fn no_key_nonce_pair_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = Key::raw([1; 32]);
    let k2 = Key::raw([2; 32]);
    audit::start();
    // What each step should have sealed: the test then checks that the
    // record holds exactly these, and none twice.
    let mut want: Vec<(u128, Vec<u8>)> = Vec::new();

    // Two images written under the same KEK.
    let a = write_golden(WriterOptions::new().key(k1.clone())).unwrap();
    let b = write_golden(WriterOptions::new().key(k1.clone())).unwrap();
    let ia = Image::from_bytes(a.clone(), Some(&k1)).unwrap();
    want.extend(expected(&ia, &k1));
    want.extend(expected(&Image::from_bytes(b, Some(&k1)).unwrap(), &k1));
    // Recompress, and full re-encryption under the same and another KEK.
    for (codec, key) in [
        (Codec::None, &k1),
        (Codec::Zstd(5), &k1),
        (Codec::Zstd(1), &k2),
    ] {
        let opts = options_from(&ia).unwrap().codec(codec).key(key.clone());
        let (out, _) = transcode(&ia, Vec::new(), opts, &|_| {}).unwrap();
        want.extend(expected(&Image::from_bytes(out, Some(key)).unwrap(), key));
    }
    // Two relayouts of the same image (load order): each seals one new
    // index under the source's data key, with its own salt, and nothing
    // else (chunks and key slot are copied).
    for chunks in [vec![3, 0], vec![3, 0]] {
        let p = Profile {
            image_id: ia.header().image_id,
            chunks,
        };
        let (out, _) = relayout(&ia, &p, Vec::new()).unwrap();
        let pairs = expected(&Image::from_bytes(out, Some(&k1)).unwrap(), &k1);
        want.push(pairs[pairs.len() - 2].clone());
    }
    // Key rotation in place, twice, back to the first KEK: each seals one new
    // key slot and nothing else.
    let p = dir.path().join("a.img");
    std::fs::write(&p, &a).unwrap();
    rewrap_in_place(&p, &k1, &k2).unwrap();
    let img = Image::open_with_key(&p, Some(&k2)).unwrap();
    want.push(expected(&img, &k2).pop().unwrap());
    rewrap_in_place(&p, &k2, &k1).unwrap();
    let img = Image::open_with_key(&p, Some(&k1)).unwrap();
    want.push(expected(&img, &k1).pop().unwrap());
    // A child of `ia` (only its changed pages sealed), rebased twice onto a
    // recompressed copy of its parent: each rebase seals only a new index
    // under the child's data key, with a fresh index nonce salt, so the two
    // rebased copies (made from the same source) never share an index nonce.
    let parent = Chain::single(Image::from_bytes(a.clone(), Some(&k1)).unwrap());
    let child = write_child_of(&parent, &k1);
    let ic = Image::from_bytes(child.clone(), Some(&k1)).unwrap();
    want.extend(expected(&ic, &k1));
    let opts = options_from(&ia)
        .unwrap()
        .codec(Codec::Zstd(2))
        .key(k1.clone());
    let (copy, _) = transcode(&ia, Vec::new(), opts, &|_| {}).unwrap();
    let copy = Image::from_bytes(copy, Some(&k1)).unwrap();
    want.extend(expected(&copy, &k1));
    let copy = Chain::single(copy);
    let mut salts = vec![ic.index_nonce_salt()];
    for _ in 0..2 {
        let old = Chain::from_links(
            Image::from_bytes(child.clone(), Some(&k1)).unwrap(),
            vec![Image::from_bytes(a.clone(), Some(&k1)).unwrap()],
        )
        .unwrap();
        let (out, _) = rebase(&old, &copy, None, Vec::new()).unwrap();
        let rebased = Image::from_bytes(out, Some(&k1)).unwrap();
        salts.push(rebased.index_nonce_salt());
        let mut pairs = expected(&rebased, &k1);
        pairs.pop(); // the key slot, as stored: not sealed again
        want.push(pairs.pop().unwrap()); // the index, sealed again
    }
    salts.sort_unstable();
    salts.dedup();
    assert_eq!(salts.len(), 3, "index nonce salts repeat: {salts:?}");
    let recorded = audit::stop();

    let mut seen = HashSet::new();
    for pair in &recorded {
        assert!(
            seen.insert(pair.clone()),
            "a (key, nonce) pair was used twice: {pair:?}"
        );
    }
    // Everything each image should have used was used, and nothing else.
    let want: HashSet<_> = want.into_iter().collect();
    assert_eq!(
        seen, want,
        "the pairs recorded when sealing differ from those the images hold"
    );
    assert!(!want.is_empty());
    // The old key no longer opens the file, and the superseded slots are zeroed.
    assert_eq!(
        Image::open_with_key(&p, Some(&k2)).unwrap_err().kind(),
        memimg::ErrorKind::WrongKey
    );
    assert_eq!(img.trailer().generation, 2);
    assert_eq!(img.trailer().superseded, 0);
    println!(
        "nonce audit: {} pairs recorded while sealing (9 images, 2 relayouts, 2 rotations, 2 rebases), none twice",
        recorded.len()
    );
}
