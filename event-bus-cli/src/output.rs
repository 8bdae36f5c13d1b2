//! Lines for the person at the terminal, on stderr: notices, which `-q/--quiet` hides,
//! and warnings, which it does not. Results (events, reports) go to stdout.

use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Hides notices from now on (`-q/--quiet`).
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `-q/--quiet` was given.
pub(crate) fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Prints a progress or status line on stderr, unless quiet.
pub(crate) fn notice(line: impl std::fmt::Display) {
    if !is_quiet() {
        eprintln!("{line}");
    }
}

/// Prints `warning: <line>` on stderr, quiet or not.
pub(crate) fn warning(line: impl std::fmt::Display) {
    eprintln!("warning: {line}");
}
