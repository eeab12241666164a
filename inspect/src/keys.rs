//! Keys: from a key file, a passphrase file or an inherited file descriptor,
//! never from argv. Every buffer that holds key bytes is zeroized; the
//! [`memimg::Key`] zeroizes itself.
//!
//! # Security
//!
//! Key input is read with a bound and never hangs on what is not a file:
//!
//! - A key (`--key-file`, `--key-fd`) is exactly 32 bytes: at most 33 are
//!   read, so `--key-file /dev/zero` fails at once instead of reading for ever.
//! - A passphrase file holds at most [`MAX_PASSPHRASE`] bytes.
//! - Files are opened with `O_NONBLOCK`, so a FIFO with no writer never
//!   blocks the open, and then checked: a regular file or a pipe is read
//!   (`--passphrase-file <(pass show app)` is a pipe); a terminal, a device,
//!   a socket or a directory is refused. A pipe with no writer reads as
//!   empty, and is refused as such.
//!
//! `--key-fd N` reads descriptor 0 itself, through the standard input handle.
//! For any other N it opens `/proc/self/fd/N`, which names the same pipe (or
//! the same file, read from its start): Rust offers no safe way to adopt an
//! inherited descriptor number (`FromRawFd` and `BorrowedFd::borrow_raw` are
//! `unsafe`, and imgtool has no `unsafe` code), so this is the least bad
//! choice. It needs `/proc`, and a socket cannot be reopened that way.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use memimg::Key;
use zeroize::Zeroizing;

use crate::cli::{KeyArgs, KeyArgsB, NewKeyArgs};

/// Bytes of a raw key.
pub const KEY_LEN: usize = 32;

/// Longest passphrase read from a file: enough for any passphrase, small
/// enough that a wrong path (a whole image, a device) is refused at once.
pub const MAX_PASSPHRASE: usize = 4096;

/// How long to wait between reads of a pipe whose writer has not written yet.
const PIPE_POLL: Duration = Duration::from_millis(20);

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
    /// When the file or descriptor cannot be read, is not a regular file or a
    /// pipe, holds more than a key, or holds no valid key.
    pub fn load(&self) -> Result<Key> {
        match self {
            KeySource::File(p) => {
                let what = format!("key file {}", p.display());
                let bytes = read_bounded(&mut open_input(p, &what)?, KEY_LEN, &what)?;
                raw_key(&bytes, &what)
            }
            KeySource::Passphrase(p) => {
                let what = format!("passphrase file {}", p.display());
                let bytes = read_bounded(&mut open_input(p, &what)?, MAX_PASSPHRASE, &what)?;
                passphrase(bytes, &what)
            }
            KeySource::Fd(fd) => {
                let what = format!("key descriptor {fd}");
                let bytes = read_fd(*fd, &what)?;
                raw_key(&bytes, &what)
            }
        }
    }
}

/// A raw key from exactly [`KEY_LEN`] bytes.
fn raw_key(bytes: &[u8], what: &str) -> Result<Key> {
    if bytes.len() != KEY_LEN {
        bail!(
            "{what} holds {} bytes: a key is exactly {KEY_LEN} bytes",
            bytes.len()
        );
    }
    Key::from_key_bytes(bytes).map_err(|e| anyhow!("{what}: {}", e.message()))
}

/// A passphrase from the bytes of a file: one trailing newline (LF or CRLF)
/// is dropped. The bytes move into the key without a copy.
fn passphrase(mut bytes: Zeroizing<Vec<u8>>, what: &str) -> Result<Key> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        bail!("{what} is empty");
    }
    Ok(Key::passphrase(std::mem::take(&mut *bytes)))
}

/// Opens `path` for reading without blocking on a FIFO, and checks that it is
/// a regular file or a pipe.
fn open_input(path: &Path, what: &str) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {what}"))?;
    let ty = f
        .metadata()
        .with_context(|| format!("reading the type of {what}"))?
        .file_type();
    check_type(ty, what)?;
    Ok(f)
}

/// Refuses what is neither a regular file nor a pipe: reading a device or a
/// terminal could last for ever or wait for a person.
fn check_type(ty: std::fs::FileType, what: &str) -> Result<()> {
    if ty.is_file() || ty.is_fifo() {
        return Ok(());
    }
    let kind = if ty.is_dir() {
        "a directory"
    } else if ty.is_char_device() {
        "a character device (a terminal, /dev/zero …)"
    } else if ty.is_block_device() {
        "a block device"
    } else if ty.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    bail!("{what} is {kind}: give a regular file or a pipe")
}

/// Reads at most `max` bytes (one more is tried, to tell that there are more)
/// into a buffer allocated once at full size, so that no copy is left behind
/// by growth, and zeroized on drop.
///
/// A pipe opened without blocking is waited for while it has a writer and
/// holds nothing yet; one without a writer reads as its end. A writer that
/// keeps the pipe open is not waited for once a whole input is there: 32
/// bytes for a key, a line for a passphrase.
fn read_bounded(r: &mut dyn Read, max: usize, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; max + 1]);
    let mut n = 0;
    while n <= max {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let whole = if max == KEY_LEN {
                    n == KEY_LEN
                } else {
                    buf[..n].ends_with(b"\n")
                };
                if whole {
                    break;
                }
                std::thread::sleep(PIPE_POLL);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {what}"))),
        }
    }
    if n > max {
        bail!("{what} holds more than {max} bytes: that is not a key");
    }
    buf.truncate(n);
    Ok(buf)
}

/// Reads a key from inherited descriptor `fd`, with a bound.
fn read_fd(fd: u32, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    match fd {
        0 => {
            // The descriptor itself: a duplicate of standard input shares its
            // open file description (and offset).
            use std::os::fd::AsFd;
            let stdin = std::io::stdin();
            let owned = stdin
                .as_fd()
                .try_clone_to_owned()
                .with_context(|| format!("reading {what} (standard input)"))?;
            let mut f = File::from(owned);
            let ty = f
                .metadata()
                .with_context(|| format!("reading the type of {what}"))?
                .file_type();
            check_type(ty, what)?;
            read_bounded(&mut f, KEY_LEN, what)
        }
        1 | 2 => bail!("{what} is standard output or error: pass the key on another descriptor"),
        _ => {
            let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
            let mut f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .map_err(|e| match e.kind() {
                    ErrorKind::NotFound => anyhow!("{what} is not open"),
                    _ => anyhow::Error::new(e).context(format!("opening {what}")),
                })?;
            let ty = f
                .metadata()
                .with_context(|| format!("reading the type of {what}"))?
                .file_type();
            check_type(ty, what)?;
            read_bounded(&mut f, KEY_LEN, what)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, [7u8; 32]).unwrap();
        assert!(KeySource::File(p.clone()).load().is_ok());
        std::fs::write(&p, [7u8; 33]).unwrap();
        let e = KeySource::File(p.clone()).load().unwrap_err().to_string();
        assert!(e.contains("more than 32 bytes"), "{e}");
        std::fs::write(&p, [7u8; 31]).unwrap();
        let e = KeySource::File(p.clone()).load().unwrap_err().to_string();
        assert!(e.contains("holds 31 bytes"), "{e}");
        std::fs::write(&p, "pass\r\n").unwrap();
        assert!(KeySource::Passphrase(p.clone()).load().is_ok());
        std::fs::write(&p, "\n").unwrap();
        let e = KeySource::Passphrase(p.clone())
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(&p, vec![b'a'; MAX_PASSPHRASE + 1]).unwrap();
        let e = KeySource::Passphrase(p).load().unwrap_err().to_string();
        assert!(e.contains("more than 4096 bytes"), "{e}");
    }
}
