//! Reconnect backoff shared by the network backends.

use std::time::Duration;

/// Exponential backoff with jitter: 100 ms, 200 ms, 400 ms, … capped at `max`
/// (`dispatcher.consumer_error_sleep_seconds`). [`reset`](Self::reset) after a
/// successful reconnect.
///
/// ```
/// use std::time::Duration;
/// use event_bus_core::reconnect::Backoff;
/// let mut b = Backoff::new(Duration::from_secs(1));
/// assert!(b.next_delay() <= Duration::from_millis(100));
/// for _ in 0..20 { assert!(b.next_delay() <= Duration::from_secs(1)); }
/// ```
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Backoff starting at 100 ms (or `max` if smaller), doubling up to `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            base: Duration::from_millis(100).min(max),
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt: the capped exponential value, minus up to a
    /// quarter of random jitter so that many clients do not reconnect in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let capped = exp.min(self.max);
        let jitter = capped.mul_f64(f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 1024.0);
        capped - jitter
    }

    /// Number of delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over from the base delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}
