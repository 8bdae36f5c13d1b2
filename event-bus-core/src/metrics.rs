//! Bus metrics: counters, gauges and a latency histogram, with a Prometheus rendering.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use serde::Serialize;

/// Upper bounds (in microseconds) of the latency histogram buckets; a last, unbounded
/// bucket holds the rest.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// The latency histogram samples one queued event in this many per subscription: the
/// 1st, the 17th, the 33rd, … event queued for it. Only sampled events read the clock
/// (when queued and when their handler call ends), which keeps clock reads off most
/// events' path; the outcome counters count every call.
pub const LATENCY_SAMPLE_EVERY: u64 = 16;

/// Live metrics of one bus, updated by the dispatcher and the backend. Cheap to update
/// from many tasks (relaxed atomics). Read it with [`Metrics::snapshot`].
///
/// Handler outcomes and latencies are kept per subscription, by that subscription's
/// worker alone, so the hot path never bounces a shared cache line between cores; a
/// snapshot adds them up.
#[derive(Default)]
pub struct Metrics {
    published: AtomicU64,
    publish_failed: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    auto_unsubscribed: AtomicU64,
    reconnects: AtomicU64,
    malformed: AtomicU64,
    subscriptions: AtomicI64,
    buffered: AtomicI64,
    buffered_bytes: AtomicI64,
    /// Outcomes of subscriptions whose worker has finished.
    retired: HandlerStats,
    /// Live subscriptions' own statistics, by subscription sequence number.
    sources: Mutex<BTreeMap<u64, Arc<dyn StatsSource>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// Something that adds its live numbers to a snapshot: one per subscription.
pub(crate) trait StatsSource: Send + Sync {
    /// The subscription's handler statistics.
    fn stats(&self) -> &HandlerStats;
    /// Events waiting in the subscription's queue.
    fn queue_depth(&self) -> u64;
}

/// Handler outcomes of one subscription, written only by its worker.
#[derive(Default)]
pub(crate) struct HandlerStats {
    delivered: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    panicked: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    paused: AtomicU64,
    in_flight: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
}

/// Which handler outcome to count.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    Delivered,
    Failed,
    TimedOut,
    Panicked,
}

/// Adds `n` to a counter that has a single writer: a plain load and store, no locked
/// read-modify-write. Readers see a value that is at most one update behind.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

impl HandlerStats {
    /// Marks a handler call as running (`true`) or finished. Single writer: the worker.
    pub(crate) fn set_in_flight(&self, running: bool) {
        self.in_flight.store(u64::from(running), Relaxed);
    }

    /// Counts a retry about to be made. Single writer: the worker.
    pub(crate) fn record_retry(&self) {
        bump(&self.retried, 1);
    }

    /// Counts an event sent to its dead-letter topic. Single writer: the worker.
    pub(crate) fn record_dead_letter(&self) {
        bump(&self.dead_lettered, 1);
    }

    /// Counts a pause after repeated failures. Single writer: the worker.
    pub(crate) fn record_pause(&self) {
        bump(&self.paused, 1);
    }

    /// Counts one finished call and, for a sampled event, its latency. Single writer:
    /// the worker.
    pub(crate) fn record(&self, outcome: Outcome, latency: Option<Duration>) {
        let counter = match outcome {
            Outcome::Delivered => &self.delivered,
            Outcome::Failed => &self.failed,
            Outcome::TimedOut => &self.timed_out,
            Outcome::Panicked => &self.panicked,
        };
        bump(counter, 1);
        let Some(latency) = latency else {
            return;
        };
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        bump(&self.latency_buckets[bucket], 1);
        bump(&self.latency_sum_us, us);
    }

    /// Adds these statistics into `into` with atomic adds (many writers).
    fn fold_into(&self, into: &Self) {
        let pairs = [
            (&self.delivered, &into.delivered),
            (&self.failed, &into.failed),
            (&self.timed_out, &into.timed_out),
            (&self.panicked, &into.panicked),
            (&self.retried, &into.retried),
            (&self.dead_lettered, &into.dead_lettered),
            (&self.paused, &into.paused),
            (&self.latency_sum_us, &into.latency_sum_us),
        ];
        for (from, to) in pairs {
            to.fetch_add(from.load(Relaxed), Relaxed);
        }
        for (from, to) in self.latency_buckets.iter().zip(&into.latency_buckets) {
            to.fetch_add(from.load(Relaxed), Relaxed);
        }
    }

    fn add_to(&self, s: &mut MetricsSnapshot) {
        let load = |a: &AtomicU64| a.load(Relaxed);
        s.delivered += load(&self.delivered);
        s.failed += load(&self.failed);
        s.timed_out += load(&self.timed_out);
        s.panicked += load(&self.panicked);
        s.retried += load(&self.retried);
        s.dead_lettered += load(&self.dead_lettered);
        s.paused += load(&self.paused);
        s.in_flight += load(&self.in_flight);
        s.latency.sum_us += load(&self.latency_sum_us);
        for (count, bucket) in s.latency.counts.iter_mut().zip(&self.latency_buckets) {
            *count += load(bucket);
        }
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $method:ident => $field:ident;)*) => {
        impl Metrics {
            $($(#[$doc])* pub fn $method(&self, n: u64) { self.$field.fetch_add(n, Relaxed); })*
        }
    };
}

counters! {
    /// Counts events accepted by this bus's `publish`.
    add_published => published;
    /// Counts events a publish failed to send (each event of a failed batch).
    add_publish_failed => publish_failed;
    /// Counts events handed to the dispatcher (published locally or received from the server).
    add_received => received;
    /// Counts events discarded after they were received or queued (overflow policy,
    /// full receive buffer, cancel, close deadline).
    add_dropped => dropped;
    /// Counts publishes refused by the `reject` overflow policy.
    add_rejected => rejected;
    /// Counts subscriptions cancelled after too many consecutive failures.
    add_auto_unsubscribed => auto_unsubscribed;
    /// Counts reconnects of a network backend.
    add_reconnects => reconnects;
    /// Counts malformed messages received from the wire.
    add_malformed => malformed;
}

impl Metrics {
    /// Adds `messages` and `bytes` (negative to remove) to the receive-buffer gauges: what
    /// a network backend has read off its connection and not yet handed to the
    /// dispatcher.
    pub fn add_buffered(&self, messages: i64, bytes: i64) {
        self.buffered.fetch_add(messages, Relaxed);
        self.buffered_bytes.fetch_add(bytes, Relaxed);
    }

    /// Adds `delta` to the live-subscriptions gauge.
    pub(crate) fn add_subscriptions(&self, delta: i64) {
        self.subscriptions.fetch_add(delta, Relaxed);
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<dyn StatsSource>>> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts counting a subscription's own statistics under `key`.
    pub(crate) fn attach(&self, key: u64, source: Arc<dyn StatsSource>) {
        self.sources().insert(key, source);
    }

    /// Stops reading subscription `key` live and keeps its totals.
    pub(crate) fn detach(&self, key: u64) {
        let mut sources = self.sources();
        if let Some(source) = sources.remove(&key) {
            source.stats().fold_into(&self.retired);
        }
    }

    /// The `published` counter alone, without building a snapshot.
    pub fn published(&self) -> u64 {
        self.published.load(Relaxed)
    }

    /// A copy of every value. Each value is read atomically; values of subscriptions
    /// being updated at the same moment may be one event apart.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Relaxed);
        let mut s = MetricsSnapshot {
            published: load(&self.published),
            publish_failed: load(&self.publish_failed),
            received: load(&self.received),
            dropped: load(&self.dropped),
            rejected: load(&self.rejected),
            auto_unsubscribed: load(&self.auto_unsubscribed),
            reconnects: load(&self.reconnects),
            malformed: load(&self.malformed),
            subscriptions: self.subscriptions.load(Relaxed).max(0).unsigned_abs(),
            buffered: self.buffered.load(Relaxed).max(0).unsigned_abs(),
            buffered_bytes: self.buffered_bytes.load(Relaxed).max(0).unsigned_abs(),
            latency: LatencyHistogram {
                bucket_bounds_us: LATENCY_BUCKETS_US.to_vec(),
                counts: vec![0; LATENCY_BUCKETS_US.len() + 1],
                sum_us: 0,
            },
            ..MetricsSnapshot::default()
        };
        let sources = self.sources();
        self.retired.add_to(&mut s);
        for source in sources.values() {
            source.stats().add_to(&mut s);
            s.queue_depth += source.queue_depth();
        }
        s
    }
}

/// Delivery latency distribution: time from an event entering a subscription's queue
/// until its handler call finished (or a stream reader took it), for one event in
/// [`LATENCY_SAMPLE_EVERY`] per subscription: its count is the number of samples, not
/// of calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencyHistogram {
    /// Upper bounds of the buckets, in microseconds (a last bucket is unbounded).
    pub bucket_bounds_us: Vec<u64>,
    /// Observations per bucket (one more entry than `bucket_bounds_us`).
    pub counts: Vec<u64>,
    /// Sum of all observations, in microseconds.
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Upper bound of the bucket holding quantile `q` (0.0–1.0); `None` without data or
    /// when it falls in the unbounded bucket.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return self
                    .bucket_bounds_us
                    .get(i)
                    .map(|&us| Duration::from_micros(us));
            }
        }
        None
    }
}

/// A copy of a bus's metrics at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Events accepted by this bus's `publish`.
    pub published: u64,
    /// Events a publish failed to send (see [`Error::Publish`](crate::Error::Publish)).
    pub publish_failed: u64,
    /// Events handed to the dispatcher (published locally, or received from the server).
    pub received: u64,
    /// Handler calls that succeeded.
    pub delivered: u64,
    /// Handler calls that returned an error.
    pub failed: u64,
    /// Handler calls cancelled by the handler timeout.
    pub timed_out: u64,
    /// Handler calls that panicked.
    pub panicked: u64,
    /// Failed handler calls that were tried again (each retry counts once).
    pub retried: u64,
    /// Events sent to a dead-letter topic after their last attempt failed.
    pub dead_lettered: u64,
    /// Pauses of subscriptions after repeated failures (`on_max_failures = "pause"`).
    pub paused: u64,
    /// Received or queued events discarded (overflow policy, full receive buffer,
    /// cancel, close deadline).
    pub dropped: u64,
    /// Publishes refused by the `reject` overflow policy.
    pub rejected: u64,
    /// Subscriptions cancelled after too many consecutive failures.
    pub auto_unsubscribed: u64,
    /// Reconnects of a network backend.
    pub reconnects: u64,
    /// Malformed messages received from the wire.
    pub malformed: u64,
    /// Events waiting in subscription queues.
    pub queue_depth: u64,
    /// Live subscriptions.
    pub subscriptions: u64,
    /// Received messages waiting for the dispatcher in a network backend's receive
    /// buffer.
    pub buffered: u64,
    /// Bytes of the messages counted in `buffered`.
    pub buffered_bytes: u64,
    /// Handler calls running now.
    pub in_flight: u64,
    /// Delivery latency distribution.
    pub latency: LatencyHistogram,
}

impl MetricsSnapshot {
    /// Renders the snapshot in the Prometheus text exposition format, every metric
    /// named `event_bus_*` and labelled with `backend`.
    ///
    /// ```
    /// let text = event_bus_core::MetricsSnapshot::default().to_prometheus("memory");
    /// assert!(text.contains("event_bus_delivered_total{backend=\"memory\"} 0"));
    /// assert!(text.contains("event_bus_delivery_latency_seconds_count{backend=\"memory\"} 0"));
    /// ```
    pub fn to_prometheus(&self, backend: &str) -> String {
        let mut out = String::new();
        let counters = [
            ("published", self.published, "Events accepted by publish."),
            (
                "publish_failed",
                self.publish_failed,
                "Events a publish failed to send.",
            ),
            (
                "received",
                self.received,
                "Events handed to the dispatcher.",
            ),
            ("delivered", self.delivered, "Handler calls that succeeded."),
            (
                "failed",
                self.failed,
                "Handler calls that returned an error.",
            ),
            (
                "timed_out",
                self.timed_out,
                "Handler calls cancelled by the timeout.",
            ),
            ("panicked", self.panicked, "Handler calls that panicked."),
            ("retried", self.retried, "Failed handler calls tried again."),
            (
                "dead_lettered",
                self.dead_lettered,
                "Events sent to a dead-letter topic.",
            ),
            (
                "paused",
                self.paused,
                "Subscription pauses after repeated failures.",
            ),
            (
                "dropped",
                self.dropped,
                "Received or queued events discarded.",
            ),
            (
                "rejected",
                self.rejected,
                "Publishes refused by the reject policy.",
            ),
            (
                "auto_unsubscribed",
                self.auto_unsubscribed,
                "Subscriptions cancelled after repeated failures.",
            ),
            ("reconnects", self.reconnects, "Reconnects to the server."),
            (
                "malformed",
                self.malformed,
                "Malformed messages from the wire.",
            ),
        ];
        for (name, value, help) in counters {
            let _ = writeln!(out, "# HELP event_bus_{name}_total {help}");
            let _ = writeln!(out, "# TYPE event_bus_{name}_total counter");
            let _ = writeln!(
                out,
                "event_bus_{name}_total{{backend=\"{backend}\"}} {value}"
            );
        }
        let gauges = [
            (
                "queue_depth",
                self.queue_depth,
                "Events waiting in subscription queues.",
            ),
            ("subscriptions", self.subscriptions, "Live subscriptions."),
            (
                "buffered",
                self.buffered,
                "Received messages waiting in the receive buffer.",
            ),
            (
                "buffered_bytes",
                self.buffered_bytes,
                "Bytes of the messages in the receive buffer.",
            ),
            ("in_flight", self.in_flight, "Handler calls running now."),
        ];
        for (name, value, help) in gauges {
            let _ = writeln!(out, "# HELP event_bus_{name} {help}");
            let _ = writeln!(out, "# TYPE event_bus_{name} gauge");
            let _ = writeln!(out, "event_bus_{name}{{backend=\"{backend}\"}} {value}");
        }
        let name = "event_bus_delivery_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from queueing to handler completion."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.latency.counts.iter().enumerate() {
            cumulative += count;
            let le = self
                .latency
                .bucket_bounds_us
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| (*us as f64 / 1e6).to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{backend=\"{backend}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.latency.sum_us as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{backend=\"{backend}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{backend=\"{backend}\"}} {cumulative}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let m = Metrics::default();
        let stats = HandlerStats::default();
        for _ in 0..90 {
            stats.record(Outcome::Delivered, Some(Duration::from_micros(40)));
        }
        for _ in 0..10 {
            stats.record(Outcome::Failed, Some(Duration::from_millis(3)));
        }
        stats.fold_into(&m.retired);
        let s = m.snapshot();
        assert_eq!((s.delivered, s.failed), (90, 10));
        assert_eq!(s.latency.count(), 100);
        assert_eq!(
            s.latency.quantile_upper_bound(0.5),
            Some(Duration::from_micros(50))
        );
        assert_eq!(
            s.latency.quantile_upper_bound(0.99),
            Some(Duration::from_millis(5))
        );
        let text = s.to_prometheus("memory");
        assert!(text.contains("le=\"+Inf\"} 100"), "{text}");
        assert!(text.contains("le=\"0.00005\"} 90"), "{text}");
    }

    #[test]
    fn failed_publishes_and_the_receive_buffer_are_rendered() {
        let m = Metrics::default();
        m.add_publish_failed(3);
        m.add_buffered(2, 300);
        m.add_buffered(-1, -100);
        let s = m.snapshot();
        assert_eq!(
            (s.publish_failed, s.buffered, s.buffered_bytes),
            (3, 1, 200)
        );
        let text = s.to_prometheus("redis");
        for line in [
            "event_bus_publish_failed_total{backend=\"redis\"} 3",
            "# TYPE event_bus_buffered gauge",
            "event_bus_buffered{backend=\"redis\"} 1",
            "event_bus_buffered_bytes{backend=\"redis\"} 200",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

    #[test]
    fn default_snapshot_renders_empty_histogram() {
        let text = MetricsSnapshot::default().to_prometheus("x");
        assert!(text.contains("event_bus_delivery_latency_seconds_count{backend=\"x\"} 0"));
    }
}
