//! Progress bars on stderr for the long steps; hidden when stderr is not a terminal (a log
//! file, a pipe, the journal), where they would only add noise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

fn visible() -> bool {
    std::io::stderr().is_terminal()
}

/// A bar of `len` steps labelled `message`.
pub fn bar(len: u64, message: &'static str) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(message);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:<44} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A spinner for a step whose length is not known in advance.
pub fn spinner(message: &'static str) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner().with_message(message);
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}
