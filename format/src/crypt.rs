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

impl Argon2Params {
    /// Memory × passes, in KiB × passes: the work one derivation costs.
    fn work(&self) -> u64 {
        u64::from(self.m_cost) * u64::from(self.t_cost)
    }

    /// True when a key slot may hold these parameters at all (spec.md, *Key
    /// slot*): memory from 8 × lanes to [`SLOT_MAX_M_COST`], 1 to 64 passes,
    /// 1 to 16 lanes.
    fn well_formed(&self) -> bool {
        self.m_cost <= SLOT_MAX_M_COST
            && (1..=64).contains(&self.t_cost)
            && (1..=16).contains(&self.p_cost)
            && u64::from(self.m_cost) >= 8 * u64::from(self.p_cost)
    }

    /// True when deriving a key with these parameters stays within the cost
    /// bound: at most [`MAX_ARGON2_M_COST`] of memory and [`MAX_ARGON2_WORK`]
    /// of memory × passes.
    pub fn within_cost_bound(&self) -> bool {
        self.m_cost <= MAX_ARGON2_M_COST && self.work() <= MAX_ARGON2_WORK
    }

    /// Checks that an image written with these parameters can be opened: the
    /// format allows them and they are within the cost bound.
    ///
    /// # Errors
    /// `InvalidInput`, naming the parameters and the limit they break.
    pub fn check(&self) -> Result<()> {
        if !self.well_formed() {
            return Err(Error::plain(
                ErrorKind::InvalidInput,
                format!(
                    "Argon2id parameters {self} are outside the format's ranges (memory from 8 KiB per lane to {SLOT_MAX_M_COST} KiB, 1 to 64 passes, 1 to 16 lanes)"
                ),
            ));
        }
        if !self.within_cost_bound() {
            return Err(Error::plain(
                ErrorKind::InvalidInput,
                format!("Argon2id parameters {self} {}", cost_bound_text()),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Argon2Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "m={} KiB, t={}, p={}",
            self.m_cost, self.t_cost, self.p_cost
        )
    }
}

/// Largest Argon2id memory, in KiB, that a key slot may ask of a reader:
/// 256 MiB (spec.md, *Key slot*, cost bound). Four times the default, and
/// within reach of a small machine; a reader refuses a slot beyond it before
/// allocating anything, and no writer here produces one.
pub const MAX_ARGON2_M_COST: u32 = 256 << 10;

/// Largest Argon2id work, memory × passes in KiB × passes, that a key slot may
/// ask of a reader: 1 GiB × 1 pass, or 256 MiB × 4 passes, or 64 MiB × 16
/// passes. About one second here (RFC 9106's second recommended setting, the
/// default, is 64 MiB × 3 passes); see spec.md, *Key slot*.
pub const MAX_ARGON2_WORK: u64 = 1 << 20;

/// Largest Argon2id memory the format lets a key slot name at all (1 GiB); a
/// slot beyond it is malformed, a slot between the cost bound and it is only
/// refused (`Unsupported`).
const SLOT_MAX_M_COST: u32 = 1 << 20;

/// How the cost bound reads in messages.
fn cost_bound_text() -> String {
    format!(
        "ask for more than this reader spends on a passphrase (at most {MAX_ARGON2_M_COST} KiB of memory and {MAX_ARGON2_WORK} KiB × passes; spec.md, Key slot)"
    )
}

/// Longest passphrase file: 4 KiB, enough for any passphrase, small enough
/// that a wrong path (an image, a device) is refused at once.
pub const MAX_PASSPHRASE_FILE_LEN: u64 = 4096;

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
            Kdf::Argon2id(p) => write!(f, "argon2id ({p})"),
        }
    }
}

impl Key {
    /// A raw 32-byte key.
    ///
    /// The array is moved in, so the caller's copy is gone from its binding;
    /// one that came from a buffer is better passed to [`Key::from_key_bytes`],
    /// which copies it straight into zeroized storage.
    pub fn raw(bytes: [u8; 32]) -> Key {
        Key {
            kind: KeyKind::Raw(Zeroizing::new(bytes)),
        }
    }

    /// A passphrase, with the default Argon2id parameters for new key slots
    /// ([`Argon2Params::default`]: 64 MiB, 3 passes, 1 lane).
    pub fn passphrase(pass: impl Into<Vec<u8>>) -> Key {
        Key {
            kind: KeyKind::Passphrase {
                pass: Zeroizing::new(pass.into()),
                params: Argon2Params::default(),
            },
        }
    }

    /// A passphrase with the given Argon2id parameters for new key slots (an
    /// existing slot's own parameters are always used to open it).
    ///
    /// # Errors
    /// `InvalidInput` when the format does not allow `params`, or when they
    /// are beyond the cost bound ([`MAX_ARGON2_M_COST`], [`MAX_ARGON2_WORK`]):
    /// a reader would refuse the image written with them.
    pub fn passphrase_with_params(pass: impl Into<Vec<u8>>, params: Argon2Params) -> Result<Key> {
        params.check()?;
        Ok(Key {
            kind: KeyKind::Passphrase {
                pass: Zeroizing::new(pass.into()),
                params,
            },
        })
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

    /// Reads a key file: a regular file of exactly 32 bytes.
    ///
    /// # Errors
    /// When the file cannot be read, is not a regular file (a device, a FIFO,
    /// a directory: refused before any read, so `/dev/zero` or a FIFO with no
    /// writer neither reads for ever nor hangs), or is not 32 bytes long.
    pub fn from_key_file(path: &Path) -> Result<Key> {
        let bytes = read_secret_file(path, "key file", 32)?;
        Key::from_key_bytes(&bytes).map_err(|e| {
            Error::plain(
                ErrorKind::InvalidInput,
                format!("key file {}: {}", path.display(), e.message()),
            )
        })
    }

    /// A raw key from 32 bytes, copied straight into zeroized storage (no
    /// other copy is made; `bytes` stays the caller's to zeroize).
    ///
    /// # Errors
    /// When `bytes` is not 32 bytes long.
    pub fn from_key_bytes(bytes: &[u8]) -> Result<Key> {
        let mut k = Zeroizing::new([0u8; 32]);
        if bytes.len() != k.len() {
            return Err(Error::plain(
                ErrorKind::InvalidInput,
                format!("a key is 32 bytes, this one is {}", bytes.len()),
            ));
        }
        k.copy_from_slice(bytes);
        Ok(Key {
            kind: KeyKind::Raw(k),
        })
    }

    /// Reads a passphrase file: a regular file of at most
    /// [`MAX_PASSPHRASE_FILE_LEN`] bytes; one trailing newline (LF or CRLF) is
    /// not part of the passphrase. The passphrase gets the default Argon2id
    /// parameters for new key slots.
    ///
    /// # Errors
    /// When the file cannot be read, is not a regular file (refused before
    /// any read), is longer than the bound, or is empty.
    pub fn from_passphrase_file(path: &Path) -> Result<Key> {
        let mut bytes = read_secret_file(path, "passphrase file", MAX_PASSPHRASE_FILE_LEN)?;
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
        // The key takes the buffer itself: no copy of the passphrase is left
        // behind (the Zeroizing wrapper is emptied, not dropped with it).
        let pass = std::mem::take(&mut *bytes);
        Ok(Key::passphrase(pass))
    }

    /// Derives the KEK for a slot with `kdf` and `salt`.
    ///
    /// An Argon2id derivation beyond the cost bound is refused
    /// (`Unsupported`) before anything is allocated; the Argon2 memory is
    /// allocated fallibly (an allocation failure is an error, not an abort)
    /// and zeroized after use.
    fn derive(&self, kdf: &Kdf, salt: &[u8; 16]) -> Result<Zeroizing<[u8; 32]>> {
        match (&self.kind, kdf) {
            (KeyKind::Raw(k), Kdf::RawKey) => Ok(k.clone()),
            (KeyKind::Passphrase { pass, .. }, Kdf::Argon2id(p)) => argon2id(pass, p, salt),
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

/// Argon2id of `pass` with `p` and `salt`, 32 bytes out.
fn argon2id(pass: &[u8], p: &Argon2Params, salt: &[u8; 16]) -> Result<Zeroizing<[u8; 32]>> {
    check_cost(p)?;
    let params = argon2::Params::new(p.m_cost, p.t_cost, p.p_cost, Some(32))
        .map_err(|e| Error::plain(ErrorKind::Malformed, format!("argon2 parameters: {e}")))?;
    let blocks = params.block_count();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut memory: Zeroizing<Vec<argon2::Block>> = Zeroizing::new(Vec::new());
    memory.try_reserve_exact(blocks).map_err(|_| {
        Error::io(
            format!("allocating {} KiB for Argon2id", p.m_cost),
            std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        )
    })?;
    memory.resize(blocks, argon2::Block::default());
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into_with_memory(pass, salt, &mut out[..], &mut memory[..])
        .map_err(|e| Error::plain(ErrorKind::InvalidInput, format!("argon2: {e}")))?;
    Ok(out)
}

/// Refuses Argon2id parameters beyond the cost bound: `Unsupported`, as a
/// slot this reader will not spend the work on is not damage.
fn check_cost(p: &Argon2Params) -> Result<()> {
    if p.within_cost_bound() {
        Ok(())
    } else {
        Err(Error::plain(
            ErrorKind::Unsupported,
            format!("key slot: Argon2id parameters {p} {}", cost_bound_text()),
        ))
    }
}

/// Reads a small secret file into zeroized memory: `path` must be a regular
/// file of at most `max` bytes. It is opened non-blocking, so a FIFO with no
/// writer cannot hang the open, and its type is checked on the open
/// descriptor before anything is read; the read itself is bounded too, in
/// case the file grows meanwhile. The buffer is allocated once at full size,
/// so no copy is left behind by growth.
fn read_secret_file(path: &Path, what: &str, max: u64) -> Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

    let ctx = || format!("reading {what} {}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Error::io(ctx(), e))?;
    let meta = file.metadata().map_err(|e| Error::io(ctx(), e))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(Error::plain(
            ErrorKind::InvalidInput,
            format!(
                "{what} {} is {kind}: a {what} must be a regular file",
                path.display()
            ),
        ));
    }
    let too_long = |len: &dyn std::fmt::Display| {
        Error::plain(
            ErrorKind::InvalidInput,
            format!(
                "{what} {} holds {len} bytes, more than the {max} a {what} may hold",
                path.display()
            ),
        )
    };
    if meta.len() > max {
        return Err(too_long(&meta.len()));
    }
    let cap = usize::try_from(max).unwrap_or(usize::MAX - 1) + 1;
    let mut buf = Zeroizing::new(vec![0u8; cap]);
    let mut r = file.take(max + 1);
    let mut n = 0;
    loop {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(ctx(), e)),
        }
        if n == cap {
            return Err(too_long(&format!("more than {max}")));
        }
    }
    buf.truncate(n);
    Ok(buf)
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

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
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

    /// The key is copied straight into zeroized storage and into the cipher,
    /// which zeroizes its own copy when dropped.
    fn from_bytes(b: &[u8; 32]) -> DataKey {
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(b);
        DataKey {
            bytes,
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

    /// Checks and decrypts `stored` (ciphertext and tag) into a buffer that is
    /// zeroized when dropped, so decrypted chunks and index bodies leave no
    /// plaintext behind in freed memory. An owned `stored` is decrypted in
    /// place, with no copy; a borrowed one is copied once.
    ///
    /// # Errors
    /// `()` when `stored` is shorter than a tag or fails authentication (the
    /// buffer, then still ciphertext, is zeroized all the same).
    #[allow(dead_code)] // The reader (format-reader) adopts it for chunks and the index body.
    pub(crate) fn open_owned(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        stored: std::borrow::Cow<'_, [u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, ()> {
        let mut buf = Zeroizing::new(stored.into_owned());
        let n = self.open(nonce, aad, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
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

/// The nonce of the index body sealed with `salt` (spec.md, *Nonces and
/// associated data*): the salt as u64 LE, then `01 00 00 00`. Salt 0 gives
/// the 1.0 index nonce; chunk nonces end in `00 00 00 00`, so the two never
/// meet.
pub(crate) fn index_nonce(salt: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&salt.to_le_bytes());
    n[8] = 1;
    n
}

/// A fresh index nonce salt for an index sealed again under an existing
/// data key (a relayout, a rebase): random and non-zero, since 0 is the
/// salt of the first index sealed under every data key. A counter would not
/// do: two copies made from one source would both take 1.
///
/// # Errors
/// When the system has no randomness to give.
pub(crate) fn fresh_index_salt() -> Result<u64> {
    loop {
        let mut b = [0u8; 8];
        fill_random(&mut b)?;
        let salt = u64::from_le_bytes(b);
        if salt != 0 {
            return Ok(salt);
        }
    }
}

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

/// The associated data of a key slot's wrap (spec.md, *Key slot*).
///
/// Unbound (`bound_to` is `None`, every 1.0 image): the constant
/// `"memimg key slot v1"`. Bound to the image with id `bound_to`
/// (`SLOT_BOUND`): `"memimg key slot v2"` ‖ image id ‖ the slot's first 32
/// bytes as stored (kdf, reserved, m_cost, t_cost, p_cost, salt) ‖
/// `kek_check`, 82 bytes. So a slot copied from another image, or one whose
/// KDF fields were edited, fails to unwrap.
fn slot_aad(slot: &KeySlotRaw, bound_to: Option<&[u8; 16]>) -> Vec<u8> {
    let Some(id) = bound_to else {
        return b"memimg key slot v1".to_vec();
    };
    let mut a = Vec::with_capacity(82);
    a.extend_from_slice(b"memimg key slot v2");
    a.extend_from_slice(id);
    let bytes = crate::raw::to_bytes(slot);
    a.extend_from_slice(bytes.get(..32).unwrap_or(&[0; 32]));
    a.extend_from_slice(&slot.kek_check);
    a
}

/// The message the KEK check hashes (spec.md, *Key slot*).
const KEK_CHECK_MESSAGE: &[u8] = b"memimg kek check v2";

/// `kek_check` = BLAKE2b-128(key = KEK, message = "memimg kek check v2"),
/// BLAKE2b in keyed mode with a 16-byte output (RFC 7693).
fn kek_check(kek: &[u8; 32]) -> [u8; 16] {
    use blake2::digest::{consts::U16, Mac};
    // A 32-byte key is within BLAKE2b's 64, so this cannot fail; were it to,
    // the all-zero check would only make every key look wrong.
    let Ok(mut mac) = <blake2::Blake2bMac<U16> as Mac>::new_from_slice(kek) else {
        return [0; 16];
    };
    mac.update(KEK_CHECK_MESSAGE);
    mac.finalize().into_bytes().into()
}

/// True when `kek` matches a slot's `kek_check`, compared in constant time.
fn kek_check_matches(kek: &[u8; 32], check: &[u8; 16]) -> bool {
    use blake2::digest::{consts::U16, Mac};
    let Ok(mut mac) = <blake2::Blake2bMac<U16> as Mac>::new_from_slice(kek) else {
        return false;
    };
    mac.update(KEK_CHECK_MESSAGE);
    mac.verify_slice(check).is_ok()
}

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
            if !p.well_formed() {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    loc,
                    format!("key slot: Argon2id parameters {p} are outside the allowed range"),
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

/// Unwraps the DEK from a slot with `key`. `bound_to` is the image id when
/// the slot is bound to its image (`SLOT_BOUND`), `None` for a 1.0 slot.
///
/// # Errors
/// `Malformed` for a slot the format does not allow; `Unsupported` (at `loc`)
/// for Argon2id parameters beyond the cost bound, before any allocation;
/// `WrongKey` when `key` does not unwrap the data key: for a bound slot, when
/// the KEK check does not match (a wrong key, or altered KDF parameters,
/// which cannot be told apart); `Authentication` (at `loc`) when a bound
/// slot's KEK check matches but the wrap does not authenticate: the slot was
/// copied from another image or altered.
pub(crate) fn unwrap_slot(
    slot: &KeySlotRaw,
    key: &Key,
    bound_to: Option<&[u8; 16]>,
    loc: Location,
) -> Result<DataKey> {
    let kdf = slot_kdf(slot, loc)?;
    if let Kdf::Argon2id(p) = &kdf {
        check_cost(p).map_err(|e| e.with_location(loc))?;
    }
    let kek = key.derive(&kdf, &slot.salt)?;
    let wrong = || {
        let msg = match kdf {
            Kdf::Argon2id(_) if bound_to.is_some() => "the key does not open this image (a wrong passphrase, or altered Argon2id parameters in its key slot: the two cannot be told apart)",
            _ => "the key does not open this image",
        };
        Error::plain(ErrorKind::WrongKey, msg)
    };
    if bound_to.is_some() && !kek_check_matches(&kek, &slot.kek_check) {
        return Err(wrong());
    }
    let cipher = XChaCha20Poly1305::new((&*kek).into());
    let mut buf = Zeroizing::new(slot.wrapped_dek);
    let (ct, tag) = buf.split_at_mut(32);
    let tag = Tag::clone_from_slice(tag);
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(&slot.wrap_nonce),
            &slot_aad(slot, bound_to),
            ct,
            &tag,
        )
        .map_err(|_| match bound_to {
            Some(_) => Error::new(
                ErrorKind::Authentication,
                loc,
                "key slot fails authentication although the key is right (its KEK check matches): the slot was copied from another image or altered",
            ),
            None => wrong(),
        })?;
    let dek: &[u8; 32] = (&*ct)
        .try_into()
        .map_err(|_| Error::plain(ErrorKind::Malformed, "key slot: wrapped key length"))?;
    Ok(DataKey::from_bytes(dek))
}

/// Wraps `dek` under `key` into a fresh slot (fresh salt and nonce), bound
/// to the image with id `bound_to` (`SLOT_BOUND`: the slot gets its KEK
/// check and the v2 associated data), or unbound, as in 1.0, when `None`.
///
/// # Errors
/// `Unsupported` when a passphrase's parameters are beyond the cost bound
/// (which [`Key::passphrase_with_params`] already refuses), so that no image
/// is written that a reader would refuse; no randomness.
pub(crate) fn wrap_slot(
    dek: &DataKey,
    key: &Key,
    bound_to: Option<&[u8; 16]>,
) -> Result<KeySlotRaw> {
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
    if bound_to.is_some() {
        slot.kek_check = kek_check(&kek);
    }
    fill_random(&mut slot.wrap_nonce)?;
    #[cfg(feature = "nonce-audit")]
    crate::audit::record(xxhash_rust::xxh3::xxh3_128(&kek[..]), &slot.wrap_nonce);
    let cipher = XChaCha20Poly1305::new((&*kek).into());
    let mut buf = dek.bytes.clone();
    let tag = cipher
        .encrypt_in_place_detached(
            XNonce::from_slice(&slot.wrap_nonce),
            &slot_aad(&slot, bound_to),
            &mut buf[..],
        )
        .map_err(|_| Error::plain(ErrorKind::InvalidInput, "key wrap failed"))?;
    slot.wrapped_dek[..32].copy_from_slice(&buf[..]);
    slot.wrapped_dek[32..].copy_from_slice(&tag);
    Ok(slot)
}

/// A fingerprint of the KEK that `key` derives for `slot`, to audit nonce reuse.
#[cfg(feature = "nonce-audit")]
pub(crate) fn kek_fingerprint(slot: &KeySlotRaw, key: &Key) -> Result<u128> {
    let kdf = slot_kdf(slot, Location::default())?;
    if let Kdf::Argon2id(p) = &kdf {
        check_cost(p)?;
    }
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
        let slot = wrap_slot(&dek, &k, None).unwrap();
        let back = unwrap_slot(&slot, &k, None, Location::default()).unwrap();
        assert_eq!(back.fingerprint(), dek.fingerprint());
        let other = Key::generate().unwrap();
        let e = unwrap_slot(&slot, &other, None, Location::default())
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
        )
        .unwrap();
        let slot = wrap_slot(&dek, &p, None).unwrap();
        assert_eq!(
            unwrap_slot(&slot, &p, None, Location::default())
                .unwrap()
                .fingerprint(),
            dek.fingerprint()
        );
        let wrong = Key::passphrase("hunter3");
        assert_eq!(
            unwrap_slot(&slot, &wrong, None, Location::default())
                .err()
                .unwrap()
                .kind(),
            ErrorKind::WrongKey
        );
    }

    /// The KEK check is keyed BLAKE2b-128 of the constant (RFC 7693): this
    /// value is Python's `hashlib.blake2b(b"memimg kek check v2",
    /// key=bytes(range(32)), digest_size=16)`, an implementation apart.
    #[test]
    fn kek_check_is_keyed_blake2b_128() {
        let mut kek = [0u8; 32];
        for (b, i) in kek.iter_mut().zip(0u8..) {
            *b = i;
        }
        assert_eq!(
            crate::model::hex(&kek_check(&kek)),
            "8b9133e3c496ec3d6d8e3579925ff853"
        );
        assert!(kek_check_matches(&kek, &kek_check(&kek)));
        kek[0] ^= 1;
        assert!(!kek_check_matches(&kek, &kek_check(&[0; 32])));
    }

    /// A bound slot: the right key unwraps; a wrong key is WrongKey (its KEK
    /// check differs); the slot under another image id, or with its wrap
    /// altered, is Authentication at the slot (the KEK check matches); an
    /// unbound reading of a bound slot, or a bound reading of an unbound
    /// one, does not open it.
    #[test]
    fn bound_slot_tells_a_wrong_key_from_a_copied_slot() {
        let dek = DataKey::generate().unwrap();
        let k = Key::generate().unwrap();
        let (id, other_id) = ([7u8; 16], [8u8; 16]);
        let loc = Location::at(0x4321);
        let slot = wrap_slot(&dek, &k, Some(&id)).unwrap();
        assert_ne!(slot.kek_check, [0; 16]);
        let back = unwrap_slot(&slot, &k, Some(&id), loc).unwrap();
        assert_eq!(back.fingerprint(), dek.fingerprint());
        let e = unwrap_slot(&slot, &Key::generate().unwrap(), Some(&id), loc).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongKey, "{e}");
        let e = unwrap_slot(&slot, &k, Some(&other_id), loc).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
        assert_eq!(e.location(), loc);
        assert!(e.message().contains("copied from another image"), "{e}");
        let mut altered = slot.clone();
        altered.wrapped_dek[3] ^= 1;
        let e = unwrap_slot(&altered, &k, Some(&id), loc).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
        // v1 and v2 associated data differ.
        assert!(unwrap_slot(&slot, &k, None, loc).is_err());
        let v1 = wrap_slot(&dek, &k, None).unwrap();
        assert_eq!(v1.kek_check, [0; 16]);
        assert!(unwrap_slot(&v1, &k, Some(&id), loc).is_err());
        // Edited Argon2id parameters derive another KEK: a wrong key, as
        // spec.md says, never an open.
        let p = Key::passphrase_with_params("pw", params(64, 1, 1)).unwrap();
        let mut slot = wrap_slot(&dek, &p, Some(&id)).unwrap();
        unwrap_slot(&slot, &p, Some(&id), loc).unwrap();
        slot.t_cost = 2;
        let e = unwrap_slot(&slot, &p, Some(&id), loc).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongKey, "{e}");
        assert!(e.message().contains("altered Argon2id parameters"), "{e}");
    }

    #[test]
    fn index_nonces_never_meet_chunk_nonces() {
        assert_eq!(index_nonce(0), [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        let n = index_nonce(0x0102_0304_0506_0708);
        assert_eq!(n, [8, 7, 6, 5, 4, 3, 2, 1, 1, 0, 0, 0]);
        assert_ne!(n[8..], chunk_nonce(u64::MAX)[8..]);
        for _ in 0..100 {
            assert_ne!(fresh_index_salt().unwrap(), 0);
        }
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

    fn params(m_cost: u32, t_cost: u32, p_cost: u32) -> Argon2Params {
        Argon2Params {
            m_cost,
            t_cost,
            p_cost,
        }
    }

    /// A slot as a writer would make it, with any parameters (the public
    /// constructors refuse those beyond the bound).
    fn slot_with(p: Argon2Params) -> KeySlotRaw {
        let mut slot = wrap_slot(
            &DataKey::generate().unwrap(),
            &Key::passphrase_with_params("pw", params(8, 1, 1)).unwrap(),
            None,
        )
        .unwrap();
        slot.m_cost = p.m_cost;
        slot.t_cost = p.t_cost;
        slot.p_cost = p.p_cost;
        slot
    }

    #[test]
    fn cost_bound_edges() {
        let mib = 1024;
        // The default and the corners of the bound are allowed...
        for ok in [
            Argon2Params::default(),
            params(256 * mib, 4, 1),
            params(64 * mib, 16, 16),
            params(16 * mib, 64, 1),
            params(8, 1, 1),
        ] {
            assert!(ok.within_cost_bound(), "{ok}");
            ok.check().unwrap();
        }
        // ...one step beyond either limit is not, nor the old maximum.
        for (bad, why) in [
            (params(256 * mib + 1, 1, 1), "memory"),
            (params(256 * mib, 5, 1), "work"),
            (params(64 * mib, 17, 1), "work"),
            (params(1024 * mib, 64, 1), "both"),
        ] {
            assert!(!bad.within_cost_bound(), "{bad} ({why})");
            let e = bad.check().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.message().contains(&bad.to_string()), "{e}");
            let e = Key::passphrase_with_params("pw", bad).unwrap_err();
            assert!(e.message().contains("262144 KiB"), "{e}");
        }
        // Outside the format's ranges: refused when writing, malformed when read.
        let e = params(8, 65, 1).check().unwrap_err();
        assert!(e.message().contains("outside the format"), "{e}");
        let e = slot_kdf(&slot_with(params(8, 65, 1)), Location::at(64)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed);
    }

    /// A slot at the format's old maximum (1 GiB, 64 passes: a minute of work)
    /// is refused at once, as unsupported, naming its parameters, the bound
    /// and where the slot is. Before the bound it took 60-70 s and 1 GiB.
    #[test]
    fn slot_beyond_the_bound_is_refused_before_any_work() {
        let loc = Location::at(0x1234);
        for p in [params(1 << 20, 64, 1), params(256 << 10, 5, 1)] {
            let slot = slot_with(p);
            // It is well formed: the image opens without a key.
            assert_eq!(slot_kdf(&slot, loc).unwrap(), Kdf::Argon2id(p));
            let t = std::time::Instant::now();
            let e = unwrap_slot(&slot, &Key::passphrase("wrong"), None, loc).unwrap_err();
            let took = t.elapsed();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert_eq!(e.location(), loc);
            let msg = e.to_string();
            for part in [&p.to_string()[..], "262144 KiB", "1048576 KiB × passes"] {
                assert!(msg.contains(part), "{msg} lacks {part}");
            }
            // A tenth of the smallest of these derivations (256 MiB x 5).
            assert!(took.as_millis() < 100, "took {took:?}: work was done");
            #[cfg(feature = "nonce-audit")]
            {
                let e = kek_fingerprint(&slot, &Key::passphrase("wrong")).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Unsupported);
            }
        }
    }

    /// No image is written with a slot this reader would refuse, even from a
    /// key built without the public checks.
    #[test]
    fn writing_beyond_the_bound_is_refused() {
        let k = Key {
            kind: KeyKind::Passphrase {
                pass: Zeroizing::new(b"pw".to_vec()),
                params: params(1 << 20, 64, 1),
            },
        };
        let t = std::time::Instant::now();
        let e = wrap_slot(&DataKey::generate().unwrap(), &k, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(t.elapsed().as_millis() < 100);
    }

    fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Runs `f` on a thread and fails (instead of hanging the suite) when it
    /// does not return within 10 s.
    fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading the key file hung")
    }

    #[test]
    fn key_files_are_regular_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let good = file_with(d.path(), "k", &[7; 32]);
        assert_eq!(
            Key::from_key_file(&good).unwrap().raw_bytes(),
            Some(&[7; 32])
        );
        for (len, want) in [(31usize, "this one is 31"), (33, "holds 33 bytes")] {
            let p = file_with(d.path(), "bad", &vec![7; len]);
            let e = Key::from_key_file(&p).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.message().contains(want), "{e}");
        }
        // Devices, FIFOs and directories are refused before any read: these
        // read for ever (/dev/zero) or hang in open (a FIFO with no writer).
        let fifo = d.path().join("fifo");
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        for (p, kind) in [
            (std::path::PathBuf::from("/dev/zero"), "a character device"),
            (fifo, "a FIFO"),
            (d.path().to_path_buf(), "a directory"),
        ] {
            for pass in [false, true] {
                let p2 = p.clone();
                let e = within_10s(move || {
                    if pass {
                        Key::from_passphrase_file(&p2).unwrap_err()
                    } else {
                        Key::from_key_file(&p2).unwrap_err()
                    }
                });
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
                assert!(e.message().contains(kind), "{e}");
                assert!(e.message().contains("must be a regular file"), "{e}");
            }
        }
        let e = Key::from_key_file(&d.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.to_string().matches("missing").count(), 1, "{e}");
    }

    #[test]
    fn passphrase_files_are_bounded() {
        let d = tempfile::tempdir().unwrap();
        let p = file_with(d.path(), "p", b"hunter2\r\n");
        let k = Key::from_passphrase_file(&p).unwrap();
        assert!(matches!(&k.kind, KeyKind::Passphrase { pass, .. } if &pass[..] == b"hunter2"));
        let max = usize::try_from(MAX_PASSPHRASE_FILE_LEN).unwrap();
        let p = file_with(d.path(), "p", &vec![b'x'; max]);
        Key::from_passphrase_file(&p).unwrap();
        let p = file_with(d.path(), "p", &vec![b'x'; max + 1]);
        let e = Key::from_passphrase_file(&p).unwrap_err();
        assert!(e.message().contains("more than the 4096"), "{e}");
        let p = file_with(d.path(), "p", b"\n");
        let e = Key::from_passphrase_file(&p).unwrap_err();
        assert!(e.message().contains("is empty"), "{e}");
    }

    #[test]
    fn open_owned_decrypts_into_a_zeroizing_buffer() {
        let dek = DataKey::generate().unwrap();
        let mut buf = b"plaintext".to_vec();
        dek.seal(&chunk_nonce(1), b"a", &mut buf).unwrap();
        let out = dek
            .open_owned(&chunk_nonce(1), b"a", std::borrow::Cow::Borrowed(&buf))
            .unwrap();
        assert_eq!(&out[..], b"plaintext");
        let out = dek
            .open_owned(&chunk_nonce(1), b"a", std::borrow::Cow::Owned(buf.clone()))
            .unwrap();
        assert_eq!(&out[..], b"plaintext");
        assert!(dek
            .open_owned(&chunk_nonce(2), b"a", std::borrow::Cow::Owned(buf))
            .is_err());
    }
}
