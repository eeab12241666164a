//! `imgtool completions` and `imgtool man`, both from the clap definition.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

/// Prints the completion script for `args.shell`.
///
/// # Errors
/// When writing fails.
pub fn completions(args: &CompletionsArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "imgtool", out);
    Ok(super::code(crate::EXIT_OK))
}

/// Prints the man page in roff.
///
/// # Errors
/// When writing fails.
pub fn man(out: &mut dyn Write) -> Result<ExitCode> {
    let man = clap_mangen::Man::new(Cli::command());
    man.render(out)?;
    Ok(super::code(crate::EXIT_OK))
}
