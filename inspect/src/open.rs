//! Opening images with an optional key, with messages that name the file.

use std::path::Path;

use anyhow::{bail, Context, Result};
use memimg::{ErrorKind, Image, Key};

/// The message for a key that does not open an image. It is never damage.
pub const WRONG_KEY: &str = "the key does not open this image";

/// Opens `path`, unlocking it with `key` when it is encrypted. A key given
/// for a plain image is not needed and is ignored.
///
/// # Errors
/// When the file is not a readable image, when `key` does not open it (the
/// message says so and never calls it damage), and, with `need_unlock`, when it
/// is encrypted and no key was given.
pub fn open(path: &Path, key: Option<&Key>, need_unlock: bool) -> Result<Image> {
    let img = Image::open(path).with_context(|| format!("opening {}", path.display()))?;
    if !img.is_encrypted() {
        return Ok(img);
    }
    match key {
        Some(k) => open_with(path, k),
        None if need_unlock => bail!(
            "{} is encrypted: give its key with --key-file, --passphrase-file or --key-fd",
            path.display()
        ),
        None => Ok(img),
    }
}

fn open_with(path: &Path, key: &Key) -> Result<Image> {
    match Image::open_with_key(path, Some(key)) {
        Ok(img) => Ok(img),
        Err(e) if e.kind() == ErrorKind::WrongKey => Err(wrong_key(path, &e)),
        Err(e) => Err(anyhow::Error::new(e).context(format!("opening {}", path.display()))),
    }
}

/// The error for a wrong key, keeping the library's reason when it gives one
/// (a passphrase given for a key-file image, …).
pub fn wrong_key(path: &Path, e: &memimg::Error) -> anyhow::Error {
    let why = e
        .message()
        .strip_prefix(WRONG_KEY)
        .map(|rest| rest.trim_start_matches(':').trim())
        .unwrap_or("");
    if why.is_empty() {
        anyhow::anyhow!("{}: {WRONG_KEY}", path.display())
    } else {
        anyhow::anyhow!("{}: {WRONG_KEY}: {why}", path.display())
    }
}
