//! The `imgtool` binary: parses arguments, runs one subcommand, maps errors
//! to exit codes. Everything else lives in the library.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let code = match run() {
        Ok(code) => code,
        Err(err) if imgtool::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "imgtool: {}", imgtool::error_text(&err));
            ExitCode::from(imgtool::EXIT_ERROR)
        }
    };
    // What was fetched from object storage, for scripts and the benchmark.
    if std::env::var_os("IMGTOOL_REMOTE_STATS").is_some_and(|v| !v.is_empty()) {
        if let Some(line) = imgtool::remote_stats() {
            let _ = writeln!(std::io::stderr(), "imgtool: {line}");
        }
    }
    code
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = imgtool::cli::Cli::parse();
    imgtool::ui::set_color(std::io::stdout().is_terminal());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let code = imgtool::run(&cli.command, &mut out)?;
    out.flush()?;
    Ok(code)
}
