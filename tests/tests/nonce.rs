//! No (key, nonce) pair is ever used twice: across writing images, recompressing,
//! full re-encryption and key rotation.

use std::collections::HashSet;

use memimg::{options_from, rewrap_in_place, transcode, Codec, Image, Key, WriterOptions};
use memimg_tests::write_golden;

#[test]
fn no_key_nonce_pair_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = Key::raw([1; 32]);
    let k2 = Key::raw([2; 32]);
    let mut seen: HashSet<(u128, Vec<u8>)> = HashSet::new();
    let mut total = 0usize;
    let mut add = |img: &Image, key: &Key, seen: &mut HashSet<(u128, Vec<u8>)>| {
        for pair in img.nonce_audit(key).unwrap() {
            total += 1;
            assert!(
                seen.insert(pair.clone()),
                "a (key, nonce) pair repeats: {pair:?}"
            );
        }
    };
    // Two images written under the same KEK.
    let a = write_golden(WriterOptions::new().key(k1.clone())).unwrap();
    let b = write_golden(WriterOptions::new().key(k1.clone())).unwrap();
    let ia = Image::from_bytes(a.clone(), Some(&k1)).unwrap();
    add(&ia, &k1, &mut seen);
    add(&Image::from_bytes(b, Some(&k1)).unwrap(), &k1, &mut seen);
    // Recompress, and full re-encryption under the same and another KEK.
    for (codec, key) in [
        (Codec::None, &k1),
        (Codec::Zstd(5), &k1),
        (Codec::Zstd(1), &k2),
    ] {
        let opts = options_from(&ia).unwrap().codec(codec).key(key.clone());
        let (out, _) = transcode(&ia, Vec::new(), opts, &|_| {}).unwrap();
        add(&Image::from_bytes(out, Some(key)).unwrap(), key, &mut seen);
    }
    // Key rotation in place, twice, back to the first KEK.
    let p = dir.path().join("a.img");
    std::fs::write(&p, &a).unwrap();
    rewrap_in_place(&p, &k1, &k2).unwrap();
    add(
        &Image::open_with_key(&p, Some(&k2)).unwrap(),
        &k2,
        &mut Default::default(),
    );
    let img = Image::open_with_key(&p, Some(&k2)).unwrap();
    let slot = img.nonce_audit(&k2).unwrap().pop().unwrap();
    assert!(seen.insert(slot), "the rewrapped key slot reuses a nonce");
    rewrap_in_place(&p, &k2, &k1).unwrap();
    let img = Image::open_with_key(&p, Some(&k1)).unwrap();
    let slot = img.nonce_audit(&k1).unwrap().pop().unwrap();
    assert!(seen.insert(slot), "the rewrapped key slot reuses a nonce");
    // The old key no longer opens the file, and the superseded slots are zeroed.
    assert_eq!(
        Image::open_with_key(&p, Some(&k2)).unwrap_err().kind(),
        memimg::ErrorKind::WrongKey
    );
    assert_eq!(img.trailer().generation, 2);
    assert_eq!(img.trailer().superseded, 0);
    println!("nonce audit: {total} chunk/index pairs and 2 rewraps, no repeats");
}
