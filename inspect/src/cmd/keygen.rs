//! `imgtool keygen`: a new random 32-byte key file, mode 0600, never over
//! an existing file.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
        .with_context(|| {
            format!(
                "creating key file {} (an existing file is never replaced)",
                path.display()
            )
        })?;
    f.write_all(&key[..])
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing key file {}", path.display()))?;
    writeln!(
        out,
        "{}: new 32-byte key written (mode 0600)",
        path.display()
    )?;
    Ok(super::code(crate::EXIT_OK))
}
