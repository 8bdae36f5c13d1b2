//! Counters of the durable mode, next to the dispatcher's (which counts `retried` and
//! `dead_lettered` for every backend).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters; see [`JetStreamMetrics`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) acked: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) lost: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> JetStreamMetrics {
        JetStreamMetrics {
            acked: self.acked.load(Relaxed),
            redelivered: self.redelivered.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            lost: self.lost.load(Relaxed),
        }
    }
}

/// Counters of the durable mode of one bus (`NatsEventBus::jetstream_metrics`). Retries
/// and dead letters are in the bus [`MetricsSnapshot`](event_bus_core::MetricsSnapshot)
/// (`retried`, `dead_lettered`), as on every backend; the lag of each group is in
/// [`NatsGroupInfo`](crate::jetstream::NatsGroupInfo).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JetStreamMetrics {
    /// Events acknowledged after their handler succeeded.
    pub acked: u64,
    /// Deliveries with a server delivery count above 1 that this bus did not schedule
    /// as a retry: the lease of an earlier delivery ran out (a member died, stalled or
    /// lost its connection before acknowledging). Each is a possible duplicate.
    pub redelivered: u64,
    /// Events acknowledged unseen: their topic does not match the subscription's
    /// pattern, they were redriven for another group, or they are malformed (also in
    /// `malformed`).
    pub skipped: u64,
    /// Events the retention caps (`jetstream.max_age_seconds`, `max_bytes`,
    /// `max_msgs`) removed before a group of this bus acknowledged them (an upper bound
    /// when the group's filter does not cover every subject), and large events whose
    /// parts were removed before they were read. Each loss is also logged as an error.
    pub lost: u64,
}
