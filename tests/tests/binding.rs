//! The key slot bound to its image (format 1.1, `SLOT_BOUND`; spec.md, *Key
//! slot*): a slot copied from another image under the same key-encryption
//! key is tampering, reported at the slot; a wrong key is a wrong key;
//! edited KDF parameters are a wrong key too, as the spec says. 1.0 images
//! keep their unbound slot, through key rotation.

use std::path::PathBuf;

use memimg::raw::{self, TrailerRaw, TRAILER_LEN};
use memimg::{
    rewrap_in_place, verify_bytes, verify_path, Argon2Params, ErrorKind, Features, Image, Key,
    Status, VerifyOptions, WriterOptions,
};
use memimg_tests::{forge::trailer_bytes, write_golden, write_small};

fn deep() -> VerifyOptions<'static> {
    VerifyOptions {
        decode: true,
        progress: None,
    }
}

/// The active trailer of a freshly written image (the last 256 bytes).
fn trailer(bytes: &[u8]) -> TrailerRaw {
    raw::from_bytes(&bytes[bytes.len() - TRAILER_LEN..]).unwrap()
}

/// Replaces the last trailer with `t`, its checksum recomputed.
fn set_trailer(bytes: &mut [u8], t: &TrailerRaw) {
    let n = bytes.len();
    bytes[n - TRAILER_LEN..].copy_from_slice(&trailer_bytes(t));
}

fn golden(name: &str) -> PathBuf {
    crate::golden::dir().join(name)
}

fn small_passphrase_key(pass: &str) -> Key {
    Key::passphrase_with_params(
        pass,
        Argon2Params {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        },
    )
    .unwrap()
}

/// A 1.1 writer binds the slot of every encrypted image it writes: the
/// feature is set, the version is 1.1, and the slot holds a KEK check.
#[test]
fn new_encrypted_images_are_bound() {
    let key = Key::raw([5; 32]);
    let bytes = write_small(WriterOptions::new().workers(0).key(key.clone())).unwrap();
    let img = Image::from_bytes(bytes.clone(), Some(&key)).unwrap();
    assert_eq!(img.header().version, (1, 1));
    assert!(img.header().is_slot_bound());
    assert_ne!(img.header().features.incompat & Features::SLOT_BOUND, 0);
    assert_ne!(trailer(&bytes).key_slot.kek_check, [0; 16]);
    // A plain image sets no 1.1 bit: 1.0 readers read it.
    let plain = write_small(WriterOptions::new().workers(0)).unwrap();
    let img = Image::from_bytes(plain, None).unwrap();
    assert_eq!(img.header().version, (1, 1));
    assert_eq!(img.header().features.incompat & Features::V1_1_INCOMPAT, 0);
}

/// The slot of image B, written under the same key file as image A, put in
/// A's trailer with the checksum fixed: in 1.0 it unwrapped B's data key
/// and failed later as an index that does not authenticate; now the slot
/// itself fails, as tampering at its offset, never as a wrong key. A wrong
/// key stays a wrong key.
#[test]
fn a_slot_copied_from_another_image_is_tampering_at_the_slot() {
    for key in [Key::raw([5; 32]), small_passphrase_key("same passphrase")] {
        let opts = || WriterOptions::new().workers(0).key(key.clone());
        let mut a = write_small(opts()).unwrap();
        let b = write_small(opts()).unwrap();
        let mut t = trailer(&a);
        let slot_at = t.trailer_offset + 64;
        t.key_slot = trailer(&b).key_slot;
        set_trailer(&mut a, &t);
        let e = Image::from_bytes(a.clone(), Some(&key)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Authentication, "{key:?}: {e}");
        assert_eq!(e.location().offset, Some(slot_at), "{e}");
        assert!(
            e.to_string()
                .contains("copied from another image or altered"),
            "{e}"
        );
        let r = verify_bytes(a.clone(), Some(&key), &deep());
        assert_eq!(r.status(), Status::Damaged, "{:?}", r.fatal);
        assert!(
            r.problems
                .iter()
                .any(|p| p.kind == ErrorKind::Authentication && p.location.offset == Some(slot_at)),
            "{:?}",
            r.problems
        );
        // Without a key it still opens and verifies: the copy is only seen
        // by a reader that derives the KEK.
        assert!(verify_bytes(a.clone(), None, &deep()).is_intact());
        // A wrong key is a wrong key, on the tampered image and the intact one.
        let wrong = match key.raw_bytes() {
            Some(_) => Key::raw([6; 32]),
            None => small_passphrase_key("another passphrase"),
        };
        for bytes in [a, b] {
            let e = Image::from_bytes(bytes, Some(&wrong)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::WrongKey, "{e}");
            assert!(
                e.to_string().contains("the key does not open this image"),
                "{e}"
            );
        }
    }
}

/// An altered wrap (nonce or wrapped key), the KEK check left right: the
/// slot fails authentication. An altered KEK check: the key looks wrong,
/// since that is what a KEK check that does not match means.
#[test]
fn altered_slot_fields() {
    let key = Key::raw([5; 32]);
    let a = write_small(WriterOptions::new().workers(0).key(key.clone())).unwrap();
    let t0 = trailer(&a);
    type Edit = Box<dyn Fn(&mut TrailerRaw)>;
    let cases: Vec<(&str, Edit, ErrorKind)> = vec![
        (
            "wrap nonce",
            Box::new(|t| t.key_slot.wrap_nonce[0] ^= 1),
            ErrorKind::Authentication,
        ),
        (
            "wrapped key",
            Box::new(|t| t.key_slot.wrapped_dek[40] ^= 1),
            ErrorKind::Authentication,
        ),
        (
            "image id of the trailer and header",
            Box::new(|_| {}),
            ErrorKind::Authentication,
        ),
        (
            "kek check",
            Box::new(|t| t.key_slot.kek_check[7] ^= 1),
            ErrorKind::WrongKey,
        ),
    ];
    for (what, edit, want) in cases {
        let mut d = a.clone();
        let mut t = t0.clone();
        edit(&mut t);
        if what.starts_with("image id") {
            // The same slot in an image whose id (header and trailer) is
            // another, both checksums fixed: the slot is bound to the old id.
            t.image_id[0] ^= 1;
            d[0x30] ^= 1;
            memimg_tests::fix_header_checksum(&mut d);
        }
        set_trailer(&mut d, &t);
        let e = Image::from_bytes(d, Some(&key)).unwrap_err();
        assert_eq!(e.kind(), want, "{what}: {e}");
    }
}

/// Edited Argon2id parameters (the trailer checksum fixed) derive another
/// KEK, so the KEK check does not match: reported as a key that does not
/// open the image, with the reason it may be (spec.md, *Key slot*); never
/// opened, never called damage. A KDF edited into one the fields do not
/// allow is malformed.
#[test]
fn edited_kdf_parameters_read_as_a_wrong_key() {
    let key = small_passphrase_key("pw");
    let a = write_small(WriterOptions::new().workers(0).key(key.clone())).unwrap();
    Image::from_bytes(a.clone(), Some(&key)).unwrap();
    type Edit = fn(&mut TrailerRaw);
    let edits: [(&str, Edit); 4] = [
        ("m_cost", |t| t.key_slot.m_cost += 8),
        ("t_cost", |t| t.key_slot.t_cost += 1),
        ("p_cost", |t| t.key_slot.p_cost += 1),
        ("salt", |t| t.key_slot.salt[3] ^= 0x10),
    ];
    for (what, edit) in edits {
        let mut d = a.clone();
        let mut t = trailer(&d);
        edit(&mut t);
        set_trailer(&mut d, &t);
        let e = Image::from_bytes(d.clone(), Some(&key)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongKey, "{what}: {e}");
        assert!(
            e.message().contains("altered Argon2id parameters"),
            "{what}: {e}"
        );
        assert!(!e.is_damage());
    }
    let mut d = a;
    let mut t = trailer(&d);
    t.key_slot.kdf = 1;
    set_trailer(&mut d, &t);
    let e = Image::from_bytes(d, Some(&key)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
}

/// Rotation keeps the header, and so the binding: a bound image stays
/// bound (a new KEK check under the new key), and a slot copied into it
/// from another image is still refused.
#[test]
fn rotation_of_a_bound_image_keeps_it_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (Key::raw([1; 32]), Key::raw([2; 32]));
    let p = dir.path().join("a.img");
    std::fs::write(
        &p,
        write_small(WriterOptions::new().workers(0).key(k1.clone())).unwrap(),
    )
    .unwrap();
    let before = trailer(&std::fs::read(&p).unwrap()).key_slot;
    rewrap_in_place(&p, &k1, &k2).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let img = Image::from_bytes(bytes.clone(), Some(&k2)).unwrap();
    assert!(img.header().is_slot_bound());
    let after = trailer(&bytes).key_slot;
    assert_ne!(after.kek_check, [0; 16]);
    assert_ne!(
        after.kek_check, before.kek_check,
        "the check is of the new KEK"
    );
    assert!(verify_path(&p, Some(&k2), &deep()).is_intact());
    // Another image's slot under k2 in its place: tampering.
    let other = write_small(WriterOptions::new().workers(0).key(k2.clone())).unwrap();
    let mut d = bytes;
    let mut t = trailer(&d);
    t.key_slot = trailer(&other).key_slot;
    set_trailer(&mut d, &t);
    let e = Image::from_bytes(d, Some(&k2)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
}

/// The 1.0 golden encrypted image opens with its v1 slot, and a rotation by
/// this (1.1) code keeps it a 1.0 image: the header byte for byte, the
/// slot unbound (v1 associated data, no KEK check), readable by 1.0 readers.
#[test]
fn a_v1_image_opens_and_rotates_as_v1() {
    let dir = tempfile::tempdir().unwrap();
    let src = golden("v1-encrypted.img");
    let key = Key::from_key_file(&golden("v1-encrypted.key")).unwrap();
    let img = Image::open_with_key(&src, Some(&key)).unwrap();
    assert_eq!(img.header().version, (1, 0));
    assert!(!img.header().is_slot_bound());
    let p: PathBuf = dir.path().join("v1.img");
    std::fs::copy(&src, &p).unwrap();
    let k2 = Key::raw([0x42; 32]);
    rewrap_in_place(&p, &key, &k2).unwrap();
    let orig = std::fs::read(&src).unwrap();
    let rotated = std::fs::read(&p).unwrap();
    assert_eq!(rotated[..4096], orig[..4096], "the header is unchanged");
    let t = trailer(&rotated);
    assert_eq!(t.generation, 1);
    assert_eq!(t.key_slot.kek_check, [0; 16], "a v1 slot has no KEK check");
    let img = Image::open_with_key(&p, Some(&k2)).unwrap();
    assert_eq!(img.header().version, (1, 0));
    assert!(!img.header().is_slot_bound());
    assert_eq!(
        Image::open_with_key(&p, Some(&key)).unwrap_err().kind(),
        ErrorKind::WrongKey
    );
    assert!(verify_path(&p, Some(&k2), &deep()).is_intact());
    // A v1 slot whose reserved KEK-check bytes are not zero is damage.
    let mut d = rotated;
    let mut t = trailer(&d);
    t.key_slot.kek_check[0] = 1;
    set_trailer(&mut d, &t);
    let e = Image::from_bytes(d, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NonZeroPadding, "{e}");
}

/// `SLOT_BOUND` belongs to encrypted images: set on a plain one (the header
/// checksum fixed), it is damage, whatever else the image holds.
#[test]
fn slot_bound_without_encryption_is_malformed() {
    let mut d = write_golden(WriterOptions::new().workers(0)).unwrap();
    d[0x10] |= 1 << 2;
    memimg_tests::fix_header_checksum(&mut d);
    let e = Image::from_bytes(d, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(e.message().contains("slot-bound"), "{e}");
}

/// The index nonce salt (1.1) belongs to encrypted images with a 1.1
/// feature: in a plain image, or in a 1.0 encrypted one (where the bytes
/// were reserved), a non-zero salt is damage at index offset 32; in a bound
/// image it is part of the index's associated data, so an edited salt fails
/// authentication.
#[test]
fn index_nonce_salt_rules() {
    let set_salt = |bytes: &mut Vec<u8>| {
        let mut t = trailer(bytes);
        let io = t.index_offset as usize;
        bytes[io + 32] = 9;
        let end = bytes.len() - TRAILER_LEN;
        t.index_checksum = xxhash_rust::xxh3::xxh3_64(&bytes[io..end]);
        set_trailer(bytes, &t);
        t.index_offset + 32
    };
    let mut plain = write_small(WriterOptions::new().workers(0)).unwrap();
    let at = set_salt(&mut plain);
    let e = Image::from_bytes(plain, None).unwrap_err();
    assert_eq!(
        (e.kind(), e.location().offset),
        (ErrorKind::NonZeroPadding, Some(at)),
        "{e}"
    );
    let mut v1 = std::fs::read(golden("v1-encrypted.img")).unwrap();
    let at = set_salt(&mut v1);
    let e = Image::from_bytes(v1, None).unwrap_err();
    assert_eq!(
        (e.kind(), e.location().offset),
        (ErrorKind::NonZeroPadding, Some(at)),
        "{e}"
    );
    let key = Key::raw([5; 32]);
    let mut bound = write_small(WriterOptions::new().workers(0).key(key.clone())).unwrap();
    set_salt(&mut bound);
    let img = Image::from_bytes(bound.clone(), None).unwrap();
    assert_eq!(img.index_nonce_salt(), 9);
    let e = Image::from_bytes(bound, Some(&key)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
}
