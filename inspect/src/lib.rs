//! # imgtool: the command-line tool for memimg images
//!
//! Each subcommand is a library function that writes its output to a
//! `&mut dyn Write` and returns the exit code, so tests compare the output with
//! golden files and the binary stays thin. The raw clap arguments live in
//! [`cli`]; each command module turns them into a validated plan first.
//!
//! Exit codes: 0 ok, intact or identical; 1 damage or differences found;
//! 2 error or unable to check.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::io::Write;
use std::process::ExitCode;

pub mod cli;
pub mod cmd;
pub mod elfcore;
pub mod fmt;
pub mod keys;
pub mod open;
pub mod ui;

pub use cmd::capture::capture;
pub use cmd::cat::cat;
pub use cmd::diff::diff;
pub use cmd::export_core::export_core;
pub use cmd::import_core::import_core;
pub use cmd::inspect::inspect;
pub use cmd::keygen::keygen;
pub use cmd::recompress::recompress;
pub use cmd::reencrypt::reencrypt;
pub use cmd::verify::verify;

/// Exit code 0: intact, identical, done.
pub const EXIT_OK: u8 = 0;
/// Exit code 1: damage or differences found.
pub const EXIT_FOUND: u8 = 1;
/// Exit code 2: an error, or the image could not be checked.
pub const EXIT_ERROR: u8 = 2;

/// Runs one subcommand, writing its output to `out`.
///
/// # Errors
/// Whatever the subcommand reports; the binary prints it and exits 2.
pub fn run(command: &cli::Command, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    use cli::Command as C;
    match command {
        C::Capture(a) => capture(a, out),
        C::Inspect(a) => inspect(a, out),
        C::Verify(a) => verify(a, out),
        C::Diff(a) => diff(a, out),
        C::Recompress(a) => recompress(a, out),
        C::Reencrypt(a) => reencrypt(a, out),
        C::Cat(a) => cat(a, out),
        C::ExportCore(a) => export_core(a, out),
        C::ImportCore(a) => import_core(a, out),
        C::Keygen(a) => keygen(a, out),
        C::Completions(a) => cmd::completions::completions(a, out),
        C::Man(_) => cmd::completions::man(out),
    }
}

/// True when `err` is, at its root, a broken pipe: the reader went away
/// (`imgtool cat … | head`), which is not worth a message.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
