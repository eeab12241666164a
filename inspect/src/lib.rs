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
pub use cmd::cp::cp;
pub use cmd::diff::diff;
pub use cmd::export_core::export_core;
pub use cmd::import_core::import_core;
pub use cmd::inspect::inspect;
pub use cmd::keygen::keygen;
pub use cmd::optimize::optimize;
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
        C::Optimize(a) => optimize(a, out),
        C::Cat(a) => cat(a, out),
        C::ExportCore(a) => export_core(a, out),
        C::ImportCore(a) => import_core(a, out),
        C::Cp(a) => cp(a, out),
        C::Keygen(a) => keygen(a, out),
        C::Completions(a) => cmd::completions::completions(a, out),
        C::Man(_) => cmd::completions::man(out),
        C::Flatten(a) => cmd::chain::flatten(a, out),
        C::Rebase(a) => cmd::chain::rebase(a, out),
    }
}

/// What this process asked of object storage, for `IMGTOOL_REMOTE_STATS`:
/// `None` when nothing was asked.
pub fn remote_stats() -> Option<String> {
    let s = memimg_remote::global_stats();
    (s.head_requests + s.get_requests > 0).then(|| {
        format!(
            "remote: {} HEAD and {} GET requests, {} bytes fetched, {} cache hits",
            s.head_requests, s.get_requests, s.bytes_fetched, s.cache_hits
        )
    })
}

/// The message of `err` for the user: every layer of context once, and
/// nothing that could drive a terminal.
///
/// Layers are joined with `: ` as anyhow's `{:#}` does, except that a layer
/// already printed by the one above it is left out. memimg's I/O errors print
/// their context and their OS error and also return the OS error as their
/// source; anyhow would print it twice (`opening x: No such file or directory
/// (os error 2): No such file or directory (os error 2)`). Likewise a context
/// that the error below it starts with is dropped. The text is then escaped
/// with [`fmt::escape_str`], since messages quote names read from files.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for layer in err.chain() {
        let text = layer.to_string();
        if let Some(last) = parts.last() {
            if last.contains(&text) {
                continue;
            }
            if text.starts_with(last.as_str()) {
                parts.pop();
            }
        }
        parts.push(text);
    }
    fmt::escape_str(&parts.join(": "))
}

/// True when `err` is, at its root, a broken pipe: the reader went away
/// (`imgtool cat … | head`), which is not worth a message.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
