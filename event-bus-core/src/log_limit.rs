//! Bounding what untrusted input can make a bus write to its log.
//!
//! A network bus logs a warning for each malformed message it receives, and such a
//! message may come from anyone who can publish on its channels. Two tools keep that
//! from flooding the log, while the `malformed` counter stays exact:
//!
//! * [`Excerpt`] shows at most [`EXCERPT_BYTES`] bytes of an untrusted text (cut at a
//!   character boundary), followed by `…` and the text's full length.
//! * [`LogLimiter`] lets the first [`LogLimiter::BURST`] warnings of each
//!   [`LogLimiter::WINDOW`] through and suppresses the rest; the first warning logged
//!   after suppressed ones carries their count (`suppressed=N`).
//!
//! ```
//! use event_bus_core::log_limit::{Excerpt, LogLimiter};
//! let limiter = LogLimiter::default();
//! let hostile = "x".repeat(65_536);
//! for _ in 0..1000 {
//!     if let Some(suppressed) = limiter.check() {
//!         tracing::warn!(reason = %Excerpt(&hostile), suppressed, "malformed message skipped");
//!     }
//! }
//! assert_eq!(Excerpt(&hostile).to_string().len(), 200 + "… (65536 bytes)".len());
//! ```

use std::{fmt, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// Most bytes of an untrusted text an [`Excerpt`] shows.
pub const EXCERPT_BYTES: usize = 200;

/// Displays at most [`EXCERPT_BYTES`] bytes of a text, cut at a character boundary;
/// a longer text is followed by `… (N bytes)` with its full length.
#[derive(Clone, Copy, Debug)]
pub struct Excerpt<'a>(pub &'a str);

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if text.len() <= EXCERPT_BYTES {
            return f.write_str(text);
        }
        let mut end = EXCERPT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}… ({} bytes)", &text[..end], text.len())
    }
}

/// Limits how often one kind of warning is logged; see the [module docs](self).
/// Shared by reference between tasks; cheap to check.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u64,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    window_start: Option<Instant>,
    logged_in_window: u64,
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(Self::BURST, Self::WINDOW)
    }
}

impl LogLimiter {
    /// Warnings let through per window by [`default`](Self::default): `10`.
    pub const BURST: u64 = 10;
    /// The window of [`default`](Self::default): 60 seconds.
    pub const WINDOW: Duration = Duration::from_secs(60);

    /// A limiter letting `burst` warnings through per `window`.
    pub fn new(burst: u64, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::default(),
        }
    }

    /// Called once per occurrence: `Some(suppressed)` if this one is to be logged
    /// (with the number of occurrences suppressed since the last one logged), `None`
    /// if it is to be suppressed.
    pub fn check(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let expired = state
            .window_start
            .is_none_or(|start| now.duration_since(start) >= self.window);
        if expired {
            state.window_start = Some(now);
            state.logged_in_window = 0;
        }
        if state.logged_in_window >= self.burst {
            state.suppressed += 1;
            return None;
        }
        state.logged_in_window += 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_bounded_and_cut_at_char_boundaries() {
        assert_eq!(Excerpt("short").to_string(), "short");
        let exact = "a".repeat(EXCERPT_BYTES);
        assert_eq!(Excerpt(&exact).to_string(), exact);
        // With a one-byte lead, byte 200 falls inside a two-byte 'é'.
        let text = format!("a{}", "é".repeat(200));
        let shown = Excerpt(&text).to_string();
        assert!(shown.starts_with(&text[..EXCERPT_BYTES - 1]), "{shown}");
        assert!(
            shown.ends_with(&format!("… ({} bytes)", text.len())),
            "{shown}"
        );
        assert!(shown.len() <= EXCERPT_BYTES + 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_per_window_then_a_count_of_the_suppressed() {
        let limiter = LogLimiter::new(3, Duration::from_secs(10));
        let logged: Vec<_> = (0..1000).filter_map(|_| limiter.check()).collect();
        assert_eq!(logged, [0, 0, 0]);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(limiter.check(), Some(997));
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(limiter.check(), Some(1));
    }
}
