//! Counters of the durable mode, next to the dispatcher's (which counts `retried` and
//! `dead_lettered` for every backend).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters; see [`StreamMetrics`].
#[derive(Debug, Default)]
pub(crate) struct StreamStats {
    pub(crate) acked: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) lost: AtomicU64,
}

impl StreamStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StreamMetrics {
        StreamMetrics {
            acked: self.acked.load(Relaxed),
            reclaimed: self.reclaimed.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            lost: self.lost.load(Relaxed),
        }
    }
}

/// Counters of the durable mode of one bus (`RedisEventBus::stream_metrics`). Retries
/// and dead letters are in the bus [`MetricsSnapshot`](event_bus_core::MetricsSnapshot)
/// (`retried`, `dead_lettered`), as on every backend; the lag of each group is in
/// [`GroupInfo`](crate::GroupInfo).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamMetrics {
    /// Entries acknowledged after their handler succeeded.
    pub acked: u64,
    /// Entries taken over after their lease expired (from a dead consumer, or this
    /// one after a retry backoff or a restart).
    pub reclaimed: u64,
    /// Entries acknowledged unseen: their topic does not match the subscription's
    /// pattern, they were redriven for another group, or they are malformed (also in
    /// `malformed`).
    pub skipped: u64,
    /// Entries a group still needed that were trimmed (by the `streams.max_len` cap or
    /// by hand) before they were handled. Each is also logged as an error.
    pub lost: u64,
}
