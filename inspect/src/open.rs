//! Opening images with an optional key, with messages that name the file
//! once.

use std::path::Path;

use anyhow::{bail, Result};
use memimg::{ErrorKind, Image, Key};

/// The message for a key that does not open an image. It is never damage.
pub const WRONG_KEY: &str = "the key does not open this image";

/// Opens `path`, unlocking it with `key` when it is encrypted.
///
/// # Security
/// A key given for a plain image is refused, never ignored: a user who gives
/// a key expects an encrypted image, and a plain file in its place may be a
/// substitute (anyone can write a plain image; only the key holder can write
/// one that the key opens).
///
/// # Errors
/// When the file is not a readable image, when a key is given and the image
/// is plain, when `key` does not open it (the message says so and never
/// calls it damage), and, with `need_unlock`, when it is encrypted and no key
/// was given.
pub fn open(path: &Path, key: Option<&Key>, need_unlock: bool) -> Result<Image> {
    let img = Image::open(path).map_err(|e| lib_error(e, path, "opening"))?;
    if !img.is_encrypted() {
        if key.is_some() {
            return Err(not_encrypted(path));
        }
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

/// The error for a key given for a plain image.
pub fn not_encrypted(path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is not encrypted, but a key was given: refusing to read it as if the key had \
         opened it (a plain file may have replaced an encrypted image); leave the key out \
         to read a plain image",
        path.display()
    )
}

fn open_with(path: &Path, key: &Key) -> Result<Image> {
    match Image::open_with_key(path, Some(key)) {
        Ok(img) => Ok(img),
        Err(e) if e.kind() == ErrorKind::WrongKey => Err(wrong_key(path, &e)),
        Err(e) if e.kind() == ErrorKind::NotEncrypted => Err(not_encrypted(path)),
        Err(e) => Err(lib_error(e, path, "opening")),
    }
}

/// A library error about `path`, with "`doing` PATH" in front unless the
/// library's message already names the path (its I/O errors do: `opening
/// PATH: No such file or directory`), so that each context appears once.
pub fn lib_error(e: memimg::Error, path: &Path, doing: &str) -> anyhow::Error {
    let shown = path.display().to_string();
    if e.to_string().contains(&shown) {
        anyhow::Error::new(e)
    } else {
        anyhow::Error::new(e).context(format!("{doing} {shown}"))
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
