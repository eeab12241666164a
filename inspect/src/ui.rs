//! Terminal concerns: colour and progress bars, both only on a terminal.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static COLOR: AtomicBool = AtomicBool::new(false);

/// Turns colour on or off for the output of this process. The binary turns it
/// on when stdout is a terminal; by default it is off.
pub fn set_color(on: bool) {
    COLOR.store(on, Ordering::Relaxed);
}

/// `text` in bold green (good news) when colour is on.
pub fn good(text: &str) -> String {
    paint(text, "1;32")
}

/// `text` in bold red (bad news) when colour is on.
pub fn bad(text: &str) -> String {
    paint(text, "1;31")
}

/// `text` in bold when colour is on.
pub fn bold(text: &str) -> String {
    paint(text, "1")
}

fn paint(text: &str, sgr: &str) -> String {
    if COLOR.load(Ordering::Relaxed) {
        format!("\x1b[{sgr}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// A progress bar of `total` bytes on stderr, or a hidden one when stderr is
/// not a terminal (so scripts and tests see nothing).
pub fn progress(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}
