//! Encryption: data keys, key slots, and the chunk and index AEAD.
//!
//! See spec.md, *Encryption*. The data key (DEK) is random per image; the key
//! slot wraps it under a key-encryption key (KEK) from a key file or from
//! Argon2id of a passphrase. All key material lives in [`Zeroizing`] buffers.

use std::path::Path;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Location, Result};
use crate::raw::{KeySlotRaw, TAG_LEN};

/// Argon2id cost parameters for a passphrase.
///
/// By default 64 MiB of memory, 3 passes and 1 lane (RFC 9106's second
/// recommended setting, with one lane because the crate computes lanes serially).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Argon2Params {
            m_cost: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

/// Largest Argon2id memory a reader accepts from a file (1 GiB), so that a
/// hostile key slot cannot make the reader allocate without bound.
pub const MAX_ARGON2_M_COST: u32 = 1 << 20;

/// A key-encryption key, as the user gives it: a 32-byte key, or a passphrase.
///
/// Key material is zeroized when the value is dropped.
#[derive(Clone)]
pub struct Key {
    kind: KeyKind,
}

#[derive(Clone)]
enum KeyKind {
    Raw(Zeroizing<[u8; 32]>),
    Passphrase {
        pass: Zeroizing<Vec<u8>>,
        params: Argon2Params,
    },
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            KeyKind::Raw(_) => f.write_str("Key::Raw(..)"),
            KeyKind::Passphrase { params, .. } => write!(f, "Key::Passphrase(.., {params:?})"),
        }
    }
}

/// The KDF named by a key slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// The KEK is a 32-byte key file.
    RawKey,
    /// The KEK is Argon2id of a passphrase.
    Argon2id(Argon2Params),
}

impl std::fmt::Display for Kdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kdf::RawKey => f.write_str("key file"),
            Kdf::Argon2id(p) => write!(
                f,
                "argon2id (m={} KiB, t={}, p={})",
                p.m_cost, p.t_cost, p.p_cost
            ),
        }
    }
}

impl Key {
    /// A raw 32-byte key.
    pub fn raw(bytes: [u8; 32]) -> Key {
        Key {
            kind: KeyKind::Raw(Zeroizing::new(bytes)),
        }
    }

    /// A passphrase, with the default Argon2id parameters for new key slots.
    pub fn passphrase(pass: impl Into<Vec<u8>>) -> Key {
        Key::passphrase_with_params(pass, Argon2Params::default())
    }

    /// A passphrase with the given Argon2id parameters for new key slots (an
    /// existing slot's own parameters are always used to open it).
    pub fn passphrase_with_params(pass: impl Into<Vec<u8>>, params: Argon2Params) -> Key {
        Key {
            kind: KeyKind::Passphrase {
                pass: Zeroizing::new(pass.into()),
                params,
            },
        }
    }

    /// A fresh random raw key.
    ///
    /// # Errors
    /// When the system has no randomness to give.
    pub fn generate() -> Result<Key> {
        let mut k = Zeroizing::new([0u8; 32]);
        fill_random(&mut k[..])?;
        Ok(Key {
            kind: KeyKind::Raw(k),
        })
    }

    /// The raw key bytes, if this is a raw key (to write a key file).
    pub fn raw_bytes(&self) -> Option<&[u8; 32]> {
        match &self.kind {
            KeyKind::Raw(k) => Some(k),
            KeyKind::Passphrase { .. } => None,
        }
    }

    /// Reads a key file: exactly 32 bytes.
    ///
    /// # Errors
    /// When the file cannot be read or is not 32 bytes long.
    pub fn from_key_file(path: &Path) -> Result<Key> {
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| Error::io(format!("reading key file {}", path.display()), e))?,
        );
        Key::from_key_bytes(&bytes).map_err(|e| {
            Error::plain(
                ErrorKind::InvalidInput,
                format!("key file {}: {}", path.display(), e.message()),
            )
        })
    }

    /// A raw key from 32 bytes.
    ///
    /// # Errors
    /// When `bytes` is not 32 bytes long.
    pub fn from_key_bytes(bytes: &[u8]) -> Result<Key> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::plain(
                ErrorKind::InvalidInput,
                format!("a key is 32 bytes, this one is {}", bytes.len()),
            )
        })?;
        let key = Key::raw(arr);
        let mut arr = arr;
        zeroize::Zeroize::zeroize(&mut arr);
        Ok(key)
    }

    /// Reads a passphrase file; one trailing newline is not part of the passphrase.
    ///
    /// # Errors
    /// When the file cannot be read or is empty.
    pub fn from_passphrase_file(path: &Path) -> Result<Key> {
        let mut bytes =
            Zeroizing::new(std::fs::read(path).map_err(|e| {
                Error::io(format!("reading passphrase file {}", path.display()), e)
            })?);
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            return Err(Error::plain(
                ErrorKind::InvalidInput,
                format!("passphrase file {} is empty", path.display()),
            ));
        }
        Ok(Key::passphrase(bytes.to_vec()))
    }

    /// Derives the KEK for a slot with `kdf` and `salt`.
    fn derive(&self, kdf: &Kdf, salt: &[u8; 16]) -> Result<Zeroizing<[u8; 32]>> {
        match (&self.kind, kdf) {
            (KeyKind::Raw(k), Kdf::RawKey) => Ok(k.clone()),
            (KeyKind::Passphrase { pass, .. }, Kdf::Argon2id(p)) => {
                let params = argon2::Params::new(p.m_cost, p.t_cost, p.p_cost, Some(32))
                    .map_err(|e| {
                        Error::plain(ErrorKind::Malformed, format!("argon2 parameters: {e}"))
                    })?;
                let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
                let mut out = Zeroizing::new([0u8; 32]);
                a.hash_password_into(pass, salt, &mut out[..])
                    .map_err(|e| Error::plain(ErrorKind::InvalidInput, format!("argon2: {e}")))?;
                Ok(out)
            }
            (KeyKind::Raw(_), Kdf::Argon2id(_)) => Err(Error::plain(
                ErrorKind::WrongKey,
                "the key does not open this image: it is protected by a passphrase, and a key file was given",
            )),
            (KeyKind::Passphrase { .. }, Kdf::RawKey) => Err(Error::plain(
                ErrorKind::WrongKey,
                "the key does not open this image: it is protected by a key file, and a passphrase was given",
            )),
        }
    }
}

/// Fills `buf` from the system's randomness.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf).map_err(|e| {
        Error::io(
            "reading system randomness",
            std::io::Error::other(e.to_string()),
        )
    })
}

/// The data key of one image, with its cipher ready.
pub(crate) struct DataKey {
    bytes: Zeroizing<[u8; 32]>,
    cipher: ChaCha20Poly1305,
}

impl Clone for DataKey {
    fn clone(&self) -> Self {
        DataKey::from_bytes(&self.bytes)
    }
}

impl DataKey {
    pub(crate) fn generate() -> Result<DataKey> {
        let mut b = Zeroizing::new([0u8; 32]);
        fill_random(&mut b[..])?;
        Ok(DataKey::from_bytes(&b))
    }

    fn from_bytes(b: &[u8; 32]) -> DataKey {
        DataKey {
            bytes: Zeroizing::new(*b),
            cipher: ChaCha20Poly1305::new(b.into()),
        }
    }

    /// A fingerprint of the key (not the key): used to audit nonce uniqueness.
    #[cfg(any(test, feature = "nonce-audit"))]
    pub(crate) fn fingerprint(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(&self.bytes[..])
    }

    /// Encrypts `buf` in place and appends the tag.
    pub(crate) fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        #[cfg(feature = "nonce-audit")]
        crate::audit::record(self.fingerprint(), nonce);
        let tag = self
            .cipher
            .encrypt_in_place_detached(nonce.into(), aad, buf)
            .map_err(|_| Error::plain(ErrorKind::InvalidInput, "chunk too large to encrypt"))?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Checks and decrypts `ct_and_tag` in place; returns the plaintext length.
    pub(crate) fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<usize, ()> {
        if buf.len() < TAG_LEN {
            return Err(());
        }
        let n = buf.len() - TAG_LEN;
        let (ct, tag) = buf.split_at_mut(n);
        let tag = Tag::clone_from_slice(tag);
        self.cipher
            .decrypt_in_place_detached(nonce.into(), aad, ct, &tag)
            .map_err(|_| ())?;
        Ok(n)
    }
}

/// The nonce of chunk `i`.
pub(crate) fn chunk_nonce(i: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&i.to_le_bytes());
    n
}

/// The nonce of the index body.
pub(crate) const INDEX_NONCE: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];

/// The associated data of chunk `i`.
pub(crate) fn chunk_aad(
    image_id: &[u8; 16],
    i: u64,
    addr: u64,
    page_count: u32,
    region: u32,
) -> [u8; 48] {
    let mut a = [0u8; 48];
    a[..8].copy_from_slice(b"MIMGCHNK");
    a[8..24].copy_from_slice(image_id);
    a[24..32].copy_from_slice(&i.to_le_bytes());
    a[32..40].copy_from_slice(&addr.to_le_bytes());
    a[40..44].copy_from_slice(&page_count.to_le_bytes());
    a[44..48].copy_from_slice(&region.to_le_bytes());
    a
}

const SLOT_AAD: &[u8] = b"memimg key slot v1";

/// The KDF a key slot names.
///
/// # Errors
/// When the slot's KDF or Argon2id parameters are not allowed.
pub(crate) fn slot_kdf(slot: &KeySlotRaw, loc: Location) -> Result<Kdf> {
    match slot.kdf {
        1 => {
            if slot.m_cost != 0 || slot.t_cost != 0 || slot.p_cost != 0 || slot.salt != [0; 16] {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    loc,
                    "key slot: a key-file slot has non-zero Argon2id fields",
                ));
            }
            Ok(Kdf::RawKey)
        }
        2 => {
            let p = Argon2Params {
                m_cost: slot.m_cost,
                t_cost: slot.t_cost,
                p_cost: slot.p_cost,
            };
            if p.m_cost > MAX_ARGON2_M_COST
                || !(1..=64).contains(&p.t_cost)
                || !(1..=16).contains(&p.p_cost)
                || p.m_cost < 8 * p.p_cost
            {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    loc,
                    format!(
                        "key slot: Argon2id parameters m={} KiB, t={}, p={} are outside the allowed range",
                        p.m_cost, p.t_cost, p.p_cost
                    ),
                ));
            }
            Ok(Kdf::Argon2id(p))
        }
        k => Err(Error::new(
            ErrorKind::Malformed,
            loc,
            format!("key slot: unknown KDF {k}"),
        )),
    }
}

/// Unwraps the DEK from a slot with `key`.
pub(crate) fn unwrap_slot(slot: &KeySlotRaw, key: &Key, loc: Location) -> Result<DataKey> {
    let kdf = slot_kdf(slot, loc)?;
    let kek = key.derive(&kdf, &slot.salt)?;
    let cipher = XChaCha20Poly1305::new((&*kek).into());
    let mut buf = Zeroizing::new(slot.wrapped_dek);
    let (ct, tag) = buf.split_at_mut(32);
    let tag = Tag::clone_from_slice(tag);
    cipher
        .decrypt_in_place_detached(XNonce::from_slice(&slot.wrap_nonce), SLOT_AAD, ct, &tag)
        .map_err(|_| Error::plain(ErrorKind::WrongKey, "the key does not open this image"))?;
    let mut dek = Zeroizing::new([0u8; 32]);
    dek.copy_from_slice(ct);
    Ok(DataKey::from_bytes(&dek))
}

/// Wraps `dek` under `key` into a fresh slot (fresh salt and nonce).
pub(crate) fn wrap_slot(dek: &DataKey, key: &Key) -> Result<KeySlotRaw> {
    let mut slot = KeySlotRaw::default();
    let kdf = match &key.kind {
        KeyKind::Raw(_) => {
            slot.kdf = 1;
            Kdf::RawKey
        }
        KeyKind::Passphrase { params, .. } => {
            slot.kdf = 2;
            slot.m_cost = params.m_cost;
            slot.t_cost = params.t_cost;
            slot.p_cost = params.p_cost;
            fill_random(&mut slot.salt)?;
            Kdf::Argon2id(*params)
        }
    };
    let kek = key.derive(&kdf, &slot.salt)?;
    fill_random(&mut slot.wrap_nonce)?;
    #[cfg(feature = "nonce-audit")]
    crate::audit::record(xxhash_rust::xxh3::xxh3_128(&kek[..]), &slot.wrap_nonce);
    let cipher = XChaCha20Poly1305::new((&*kek).into());
    let mut buf = Zeroizing::new(*dek.bytes);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&slot.wrap_nonce), SLOT_AAD, &mut buf[..])
        .map_err(|_| Error::plain(ErrorKind::InvalidInput, "key wrap failed"))?;
    slot.wrapped_dek[..32].copy_from_slice(&buf[..]);
    slot.wrapped_dek[32..].copy_from_slice(&tag);
    Ok(slot)
}

/// A fingerprint of the KEK that `key` derives for `slot`, to audit nonce reuse.
#[cfg(feature = "nonce-audit")]
pub(crate) fn kek_fingerprint(slot: &KeySlotRaw, key: &Key) -> Result<u128> {
    let kdf = slot_kdf(slot, Location::default())?;
    let kek = key.derive(&kdf, &slot.salt)?;
    Ok(xxhash_rust::xxh3::xxh3_128(&kek[..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_wrong_key() {
        let dek = DataKey::generate().unwrap();
        let k = Key::generate().unwrap();
        let slot = wrap_slot(&dek, &k).unwrap();
        let back = unwrap_slot(&slot, &k, Location::default()).unwrap();
        assert_eq!(back.fingerprint(), dek.fingerprint());
        let other = Key::generate().unwrap();
        let e = unwrap_slot(&slot, &other, Location::default())
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::WrongKey);
        let p = Key::passphrase_with_params(
            "hunter2",
            Argon2Params {
                m_cost: 64,
                t_cost: 1,
                p_cost: 1,
            },
        );
        let slot = wrap_slot(&dek, &p).unwrap();
        assert_eq!(
            unwrap_slot(&slot, &p, Location::default())
                .unwrap()
                .fingerprint(),
            dek.fingerprint()
        );
        let wrong = Key::passphrase("hunter3");
        assert_eq!(
            unwrap_slot(&slot, &wrong, Location::default())
                .err()
                .unwrap()
                .kind(),
            ErrorKind::WrongKey
        );
    }

    #[test]
    fn seal_open() {
        let dek = DataKey::generate().unwrap();
        let mut buf = b"hello".to_vec();
        dek.seal(&chunk_nonce(3), b"aad", &mut buf).unwrap();
        assert_eq!(buf.len(), 5 + TAG_LEN);
        let mut c = buf.clone();
        assert_eq!(dek.open(&chunk_nonce(3), b"aad", &mut c), Ok(5));
        assert_eq!(&c[..5], b"hello");
        let mut c = buf.clone();
        assert!(dek.open(&chunk_nonce(4), b"aad", &mut c).is_err());
    }
}
