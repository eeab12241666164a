//! Keys: from a key file, a passphrase file or an inherited file descriptor,
//! never from argv. Every buffer that holds key bytes is zeroized; the
//! [`memimg::Key`] zeroizes itself.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memimg::Key;
use zeroize::Zeroizing;

use crate::cli::{KeyArgs, KeyArgsB, NewKeyArgs};

/// Longest key material read from a descriptor or passphrase file: enough for
/// any passphrase, small enough that a wrong path (a whole image) is refused.
const MAX_KEY_INPUT: u64 = 4096;

/// Where one key comes from, after clap has made sure there is at most one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A 32-byte key file.
    File(PathBuf),
    /// A passphrase file (one trailing newline is not part of the passphrase).
    Passphrase(PathBuf),
    /// A 32-byte key read from an inherited file descriptor.
    Fd(u32),
}

impl KeySource {
    fn pick(file: &Option<PathBuf>, pass: &Option<PathBuf>, fd: Option<u32>) -> Option<Self> {
        file.clone()
            .map(KeySource::File)
            .or_else(|| pass.clone().map(KeySource::Passphrase))
            .or(fd.map(KeySource::Fd))
    }

    /// Reads the key.
    ///
    /// # Errors
    /// When the file or descriptor cannot be read or holds no valid key.
    pub fn load(&self) -> Result<Key> {
        match self {
            KeySource::File(p) => Ok(Key::from_key_file(p)?),
            KeySource::Passphrase(p) => {
                check_small(p, "passphrase file")?;
                Ok(Key::from_passphrase_file(p)?)
            }
            KeySource::Fd(fd) => {
                let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
                let bytes = read_small(&path)
                    .with_context(|| format!("reading the key from file descriptor {fd}"))?;
                Key::from_key_bytes(&bytes)
                    .with_context(|| format!("the key from file descriptor {fd}"))
            }
        }
    }
}

fn check_small(path: &Path, what: &str) -> Result<()> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {what} {}", path.display()))?
        .len();
    if len > MAX_KEY_INPUT {
        bail!(
            "{what} {} holds {len} bytes: that is not a key",
            path.display()
        );
    }
    Ok(())
}

/// Reads at most [`MAX_KEY_INPUT`] bytes into a buffer zeroized on drop. The
/// buffer is allocated once at full size, so no copy is left behind by growth.
fn read_small(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let f = File::open(path)?;
    let cap = usize::try_from(MAX_KEY_INPUT).unwrap_or(4096);
    let mut buf = Zeroizing::new(vec![0u8; cap + 1]);
    let mut n = 0;
    let mut r = f.take(MAX_KEY_INPUT + 1);
    loop {
        let k = r.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
        if n > cap {
            bail!("more than {MAX_KEY_INPUT} bytes: that is not a key");
        }
    }
    buf.truncate(n);
    Ok(buf)
}

impl KeyArgs {
    /// Where the key comes from, if one was given.
    pub fn source(&self) -> Option<KeySource> {
        KeySource::pick(&self.key_file, &self.passphrase_file, self.key_fd)
    }

    /// Loads the key, if one was given.
    ///
    /// # Errors
    /// As [`KeySource::load`].
    pub fn load(&self) -> Result<Option<Key>> {
        self.source().map(|s| s.load()).transpose()
    }
}

impl KeyArgsB {
    /// Where the second key comes from, if one was given.
    pub fn source(&self) -> Option<KeySource> {
        KeySource::pick(&self.key_file_b, &self.passphrase_file_b, self.key_fd_b)
    }
}

/// The new key of a reencrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewKey {
    /// Encrypt under this key.
    Key(KeySource),
    /// Write a plain image.
    Decrypt,
}

impl NewKeyArgs {
    /// The new key, or `Decrypt`; `None` when neither was given.
    pub fn source(&self) -> Option<NewKey> {
        if self.decrypt {
            return Some(NewKey::Decrypt);
        }
        KeySource::pick(
            &self.new_key_file,
            &self.new_passphrase_file,
            self.new_key_fd,
        )
        .map(NewKey::Key)
    }
}
