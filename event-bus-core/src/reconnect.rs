//! Reconnect backoff shared by the network backends.
//!
//! Attempts back off exponentially so a server that keeps failing them is not hammered,
//! but a server that comes back is not slept through: while waiting, [`Backoff::wait`]
//! checks every [`PROBE_INTERVAL`] whether the server accepts TCP connections again
//! (a cheap connect, no handshake) and ends the wait as soon as one that refused
//! connections accepts them.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

/// How often a waiting reconnect probes whether the server is back.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);

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

    /// Waits [`next_delay`](Self::next_delay), or less when the server comes back.
    ///
    /// `probe` tells whether the server accepts connections now (see [`tcp_probe`]).
    /// It runs once at the start: a server that accepts connections already failed the
    /// last attempt for another reason (authentication, a full server, a broken
    /// handshake), so the whole delay is slept and `probe` is not called again.
    /// Otherwise it runs every [`PROBE_INTERVAL`], and the wait ends at the first
    /// probe that succeeds. The backoff then starts over from its base delay: a server
    /// that has just come back may refuse the next attempt while it is still starting
    /// (PostgreSQL's "the database system is starting up", Redis's `LOADING`), and
    /// that must not cost the whole grown delay.
    pub async fn wait<F, Fut>(&mut self, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + self.next_delay();
        if probe().await {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        loop {
            let next = deadline.min(Instant::now() + PROBE_INTERVAL);
            tokio::time::sleep_until(next).await;
            if next >= deadline {
                return;
            }
            if probe().await {
                self.reset();
                return;
            }
        }
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

/// Whether any of `addresses` (host, port) accepts a TCP connection within
/// [`PROBE_INTERVAL`]. The connection is closed at once, without a handshake. With no
/// address (e.g. a Unix socket), `false`: waits then take their whole delay.
pub async fn tcp_probe(addresses: &[(String, u16)]) -> bool {
    for (host, port) in addresses {
        let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
        if let Ok(Ok(_)) = tokio::time::timeout(PROBE_INTERVAL, connect).await {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    };

    use super::*;

    /// A probe of a simulated server, counting its calls.
    fn probe(
        up: &Arc<AtomicBool>,
        calls: &Arc<AtomicU32>,
    ) -> impl FnMut() -> std::future::Ready<bool> {
        let (up, calls) = (up.clone(), calls.clone());
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(up.load(Ordering::SeqCst))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_comes_back_ends_the_wait_within_one_probe_interval() {
        let (up, calls) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let mut backoff = Backoff::new(Duration::from_secs(30));
        for _ in 0..10 {
            backoff.next_delay(); // grown to the 30 s cap
        }
        let started = Instant::now();
        let server = up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            server.store(true, Ordering::SeqCst);
        });
        backoff.wait(probe(&up, &calls)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited <= Duration::from_secs(3) + PROBE_INTERVAL,
            "{waited:?}"
        );
        // The server may still refuse the next attempt while it starts: the wait after
        // that is short again, not the grown delay.
        let started = Instant::now();
        backoff.wait(probe(&up, &calls)).await;
        assert!(
            started.elapsed() <= Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_is_up_gets_the_whole_delay_and_one_probe() {
        let (up, calls) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU32::new(0)));
        let mut backoff = Backoff::new(Duration::from_secs(5));
        let mut previous = Duration::ZERO;
        for attempt in 0..8 {
            let started = Instant::now();
            backoff.wait(probe(&up, &calls)).await;
            let waited = started.elapsed();
            // 100 ms doubling to 5 s, minus at most a quarter of jitter.
            let full = Duration::from_millis(100 << attempt).min(Duration::from_secs(5));
            assert!(
                waited <= full && waited >= full * 3 / 4,
                "{attempt}: {waited:?}"
            );
            if full < Duration::from_secs(5) {
                assert!(
                    waited > previous,
                    "{attempt}: {waited:?} after {previous:?}"
                );
            }
            previous = waited;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 8);
        backoff.reset();
        assert_eq!(backoff.attempts(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_stays_down_waits_the_whole_delay() {
        let (up, calls) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
        );
        let mut backoff = Backoff::new(Duration::from_secs(1));
        for _ in 0..5 {
            backoff.next_delay();
        }
        let started = Instant::now();
        backoff.wait(probe(&up, &calls)).await;
        assert!(started.elapsed() >= Duration::from_millis(750));
        // About one probe per interval: cheap, and bounded.
        let probes = calls.load(Ordering::SeqCst);
        assert!((15..=21).contains(&probes), "{probes}");
    }
}
