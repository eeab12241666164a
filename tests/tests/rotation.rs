//! Key rotation cut off by a power cut (spec.md, *Finding the active
//! trailer*). A rotation appends a trailer, syncs, then zeroes the superseded
//! one and syncs; a power cut may persist one page of a write and not the
//! other. These tests write those torn states directly, with the trailer
//! straddling a 4096-byte page boundary, and check that each leaves a
//! readable image under the key in force, which verify reports as an
//! unfinished rotation and a new rotation cleans up.

use memimg::{
    rewrap_in_place, verify_bytes, verify_path, ErrorKind, Image, Key, Note, Status, VerifyOptions,
    WriterOptions,
};
use memimg_tests::write_golden;

const PAGE: usize = 4096;
const TL: usize = 256;

/// An encrypted image under `key` whose length is `residue` modulo 4096 (a
/// note pads the index to get there).
fn image_with_len_residue(key: &Key, residue: usize) -> Vec<u8> {
    let opts = |pad: usize| {
        WriterOptions::new().key(key.clone()).notes(vec![Note {
            name: "pad".into(),
            data: vec![0x5a; pad],
        }])
    };
    let base = write_golden(opts(0)).unwrap().len();
    let pad = (residue + PAGE - base % PAGE) % PAGE;
    let bytes = write_golden(opts(pad)).unwrap();
    assert_eq!(bytes.len() % PAGE, residue);
    bytes
}

/// The file after a complete rotation from `k1` to `k2` of `a`.
fn rotated(a: &[u8], k1: &Key, k2: &Key) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.img");
    std::fs::write(&p, a).unwrap();
    rewrap_in_place(&p, k1, k2).unwrap();
    std::fs::read(&p).unwrap()
}

/// Verify's problems on `bytes` with `key` (none fatal).
fn problems(bytes: &[u8], key: &Key) -> Vec<String> {
    let r = verify_bytes(bytes.to_vec(), Some(key), &VerifyOptions::default());
    assert!(r.fatal.is_none(), "{:?}", r.fatal);
    r.problems.iter().map(ToString::to_string).collect()
}

/// Rotating `bytes` from `from` to `to` finishes what was cut off: the
/// result verifies intact, every chunk decoded.
fn rotation_cleans_up(bytes: &[u8], from: &Key, to: &Key) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("torn.img");
    std::fs::write(&p, bytes).unwrap();
    rewrap_in_place(&p, from, to).unwrap();
    let r = verify_path(
        &p,
        Some(to),
        &VerifyOptions {
            decode: true,
            progress: None,
        },
    );
    assert!(r.is_intact(), "{:?} {:?}", r.fatal, r.problems);
    let img = Image::open_with_key(&p, Some(to)).unwrap();
    assert_eq!(img.trailer().superseded, 0);
    assert_eq!(img.trailer().partly_zeroed, 0);
}

#[test]
fn a_torn_append_leaves_the_previous_key_in_force() {
    let (k1, k2, k3) = (Key::raw([1; 32]), Key::raw([2; 32]), Key::raw([3; 32]));
    // The new trailer goes at a = 100 bytes before a page boundary.
    let a = image_with_len_residue(&k1, PAGE - 100);
    let b = rotated(&a, &k1, &k2);
    let new = &b[a.len()..];
    assert_eq!(new.len(), TL);
    let torn: Vec<(&str, Vec<u8>)> = vec![
        (
            "first page landed",
            [&new[..100], &[0u8; TL - 100][..]].concat(),
        ),
        (
            "second page landed",
            [&[0u8; 100][..], &new[100..]].concat(),
        ),
        ("length only", vec![0u8; TL]),
        ("first page, length to the page end", new[..100].to_vec()),
    ];
    for (what, tail) in torn {
        let file = [&a[..], &tail[..]].concat();
        let img = Image::from_bytes(file.clone(), Some(&k1))
            .unwrap_or_else(|e| panic!("{what}: the old key no longer opens it: {e}"));
        assert_eq!(img.trailer().generation, 0, "{what}");
        assert_eq!(img.trailer().unfinished_tail, tail.len() as u64, "{what}");
        assert_eq!(
            Image::from_bytes(file.clone(), Some(&k2))
                .unwrap_err()
                .kind(),
            ErrorKind::WrongKey,
            "{what}"
        );
        let p = problems(&file, &k1);
        assert_eq!(p.len(), 1, "{what}: {p:?}");
        assert!(p[0].contains("key rotation was cut off"), "{what}: {p:?}");
        rotation_cleans_up(&file, &k1, &k3);
    }

    // The append complete, the zeroing not begun: the new key is in force.
    let mut c = a.clone();
    c.extend_from_slice(new);
    let img = Image::from_bytes(c.clone(), Some(&k2)).unwrap();
    assert_eq!(img.trailer().generation, 1);
    assert_eq!(img.trailer().superseded, 1);
    // A complete newest trailer damaged in place is damage: the reader does
    // not fall back to the previous generation, which is still there.
    for byte in [0, 50, 150, 255] {
        let mut d = c.clone();
        d[a.len() + byte] ^= 0x40;
        for k in [&k1, &k2] {
            let e = Image::from_bytes(d.clone(), Some(k)).unwrap_err();
            assert!(e.is_damage(), "byte {byte}: {e}");
            assert_eq!(
                e.location().offset,
                Some(a.len() as u64),
                "byte {byte}: {e}"
            );
        }
        let r = verify_bytes(d, Some(&k1), &VerifyOptions::default());
        assert_eq!(r.status(), Status::Damaged, "byte {byte}");
    }
}

#[test]
fn a_torn_zeroing_leaves_the_new_key_in_force() {
    let (k1, k2, k3) = (Key::raw([1; 32]), Key::raw([2; 32]), Key::raw([3; 32]));
    // The old trailer ends 100 bytes after a page boundary.
    let a = image_with_len_residue(&k1, 100);
    let b = rotated(&a, &k1, &k2);
    let (o, cut) = (a.len() - TL, a.len() - 100);
    assert!(
        b[o..a.len()].iter().all(|&x| x == 0),
        "zeroed by the rotation"
    );
    for (what, range) in [
        ("first page kept", o..cut),
        ("second page kept", cut..a.len()),
    ] {
        let mut file = b.clone();
        file[range.clone()].copy_from_slice(&a[range]);
        let img = Image::from_bytes(file.clone(), Some(&k2))
            .unwrap_or_else(|e| panic!("{what}: the new key does not open it: {e}"));
        assert_eq!(img.trailer().generation, 1, "{what}");
        assert_eq!(img.trailer().partly_zeroed, 1, "{what}");
        assert_eq!(img.trailer().superseded, 0, "{what}");
        assert_eq!(
            Image::from_bytes(file.clone(), Some(&k1))
                .unwrap_err()
                .kind(),
            ErrorKind::WrongKey,
            "{what}"
        );
        let p = problems(&file, &k2);
        assert_eq!(p.len(), 1, "{what}: {p:?}");
        assert!(p[0].contains("partly zeroed"), "{what}: {p:?}");
        rotation_cleans_up(&file, &k2, &k3);
    }
    // Garbage in the same place, not a torn trailer, is still refused.
    let mut file = b.clone();
    file[o..cut].fill(0x77);
    let e = Image::from_bytes(file, Some(&k2)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
}

#[test]
fn rewrap_writes_kilobytes_and_survives_a_torn_append() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = Key::raw([1; 32]);
    let k2 = Key::raw([2; 32]);
    let a = write_golden(WriterOptions::new().key(k1.clone())).unwrap();
    let p = dir.path().join("a.img");
    std::fs::write(&p, &a).unwrap();
    let st = rewrap_in_place(&p, &k1, &k2).unwrap();
    assert_eq!(
        st.bytes_written, 512,
        "one new trailer and one zeroed trailer"
    );
    assert_eq!(std::fs::metadata(&p).unwrap().len(), a.len() as u64 + 256);
    // A torn append (half a trailer) leaves the previous key in force.
    let mut torn = std::fs::read(&p).unwrap();
    torn.extend_from_slice(&[0xAB; 100]);
    let img = Image::from_bytes(torn.clone(), Some(&k2)).unwrap();
    assert_eq!(img.trailer().unfinished_tail, 100);
    let r = memimg::verify_bytes(torn.clone(), Some(&k2), &memimg::VerifyOptions::default());
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    // An append that reached the file size but not its data (all zeros).
    let mut zeros = std::fs::read(&p).unwrap();
    zeros.extend_from_slice(&[0; 256]);
    Image::from_bytes(zeros, Some(&k2)).unwrap();
    // A complete but damaged newest trailer is damage, not a silent rollback.
    let mut dmg = std::fs::read(&p).unwrap();
    let n = dmg.len();
    dmg[n - 100] ^= 1;
    assert!(Image::from_bytes(dmg, Some(&k1)).is_err());
    // Rewrapping the torn file removes the torn bytes first.
    std::fs::write(&p, &torn).unwrap();
    rewrap_in_place(&p, &k2, &k1).unwrap();
    let r = memimg::verify_path(
        &p,
        Some(&k1),
        &memimg::VerifyOptions {
            decode: true,
            progress: None,
        },
    );
    assert!(r.is_intact(), "{:?}", r.problems);
}
