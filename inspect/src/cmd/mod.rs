//! One module per subcommand. Each exposes one function that takes its raw
//! arguments and a `&mut dyn Write` and returns the exit code.

pub mod capture;
pub mod cat;
pub mod chain;
pub mod completions;
pub mod cp;
pub mod diff;
pub mod export_core;
pub mod import_core;
pub mod inspect;
pub mod keygen;
pub mod optimize;
pub mod recompress;
pub mod reencrypt;
mod rewrite;
pub mod verify;

use std::process::ExitCode;

use anyhow::{anyhow, Result};
use memimg::Codec;

/// The exit code `n` (0, 1 or 2).
pub(crate) fn code(n: u8) -> ExitCode {
    ExitCode::from(n)
}

/// Parses a `--codec` value (`none`, `zstd`, `zstd:LEVEL`), naming the option
/// in the error.
pub(crate) fn parse_codec(text: &str) -> Result<Codec> {
    text.parse().map_err(|e: String| anyhow!("--codec: {e}"))
}
