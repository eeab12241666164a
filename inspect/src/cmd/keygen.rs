//! `imgtool keygen`: a new random 32-byte key file, mode 0600 from its
//! creation, never over an existing file, synced with its directory, and
//! removed again when any step fails.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use zeroize::Zeroizing;

use crate::cli::KeygenArgs;

/// Writes a new key to `args.output`.
///
/// # Errors
/// When the file exists, cannot be created, or the system has no randomness.
pub fn keygen(args: &KeygenArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let path = &args.output;
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut key[..]).map_err(|e| anyhow!("reading system randomness: {e}"))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow!(
                "{} exists: an existing key file is never replaced",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("creating key file {}", path.display())),
        })?;
    // A key file is complete and durable, or it is not there: on any error
    // after the file was created, it is removed.
    let done = f
        .write_all(&key[..])
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing key file {}", path.display()))
        .and_then(|()| {
            memimg::atomic::sync_dir(&parent_dir(path))
                .map_err(|e| anyhow!("{e}"))
                .context("making the new key file durable")
        });
    if let Err(e) = done {
        drop(f);
        let _ = std::fs::remove_file(path);
        let _ = memimg::atomic::sync_dir(&parent_dir(path));
        return Err(anyhow!("{e:#} (the partial key file was removed)"));
    }
    writeln!(
        out,
        "{}: new 32-byte key written (mode 0600)",
        path.display()
    )?;
    Ok(super::code(crate::EXIT_OK))
}

/// The directory holding `path` (`.` for a bare name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
