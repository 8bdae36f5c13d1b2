//! Bus metrics: counters, gauges and a latency histogram, with a Prometheus rendering.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use serde::Serialize;

/// Upper bounds (in microseconds) of the latency histogram buckets; a last, unbounded
/// bucket holds the rest.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// Live metrics of one bus, updated by the dispatcher and the backend. Cheap to update
/// from many tasks (relaxed atomics). Read it with [`Metrics::snapshot`].
#[derive(Debug, Default)]
pub struct Metrics {
    published: AtomicU64,
    received: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    panicked: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    auto_unsubscribed: AtomicU64,
    reconnects: AtomicU64,
    malformed: AtomicU64,
    queue_depth: AtomicI64,
    subscriptions: AtomicI64,
    in_flight: AtomicI64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
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
    /// Counts events handed to the dispatcher (published locally or received from the server).
    add_received => received;
    /// Counts handler calls that returned `Ok`.
    add_delivered => delivered;
    /// Counts handler calls that returned `Err`.
    add_failed => failed;
    /// Counts handler calls cancelled by the handler timeout.
    add_timed_out => timed_out;
    /// Counts handler calls that panicked.
    add_panicked => panicked;
    /// Counts queued events discarded (overflow policy, cancel, close deadline).
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
    /// Adds `delta` to the queued-events gauge.
    pub fn add_queue_depth(&self, delta: i64) {
        self.queue_depth.fetch_add(delta, Relaxed);
    }

    /// Adds `delta` to the live-subscriptions gauge.
    pub fn add_subscriptions(&self, delta: i64) {
        self.subscriptions.fetch_add(delta, Relaxed);
    }

    /// Adds `delta` to the running-handler-calls gauge.
    pub fn add_in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Relaxed);
    }

    /// Records one delivery latency (queued until the handler finished).
    pub fn record_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        self.latency_buckets[bucket].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// A consistent-enough copy of every value (each value is read atomically).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Relaxed);
        let gauge = |a: &AtomicI64| a.load(Relaxed).max(0).unsigned_abs();
        MetricsSnapshot {
            published: load(&self.published),
            received: load(&self.received),
            delivered: load(&self.delivered),
            failed: load(&self.failed),
            timed_out: load(&self.timed_out),
            panicked: load(&self.panicked),
            dropped: load(&self.dropped),
            rejected: load(&self.rejected),
            auto_unsubscribed: load(&self.auto_unsubscribed),
            reconnects: load(&self.reconnects),
            malformed: load(&self.malformed),
            queue_depth: gauge(&self.queue_depth),
            subscriptions: gauge(&self.subscriptions),
            in_flight: gauge(&self.in_flight),
            latency: LatencyHistogram {
                bucket_bounds_us: LATENCY_BUCKETS_US.to_vec(),
                counts: self.latency_buckets.iter().map(load).collect(),
                sum_us: load(&self.latency_sum_us),
            },
        }
    }
}

/// Delivery latency distribution: time from an event entering a subscription's queue
/// until its handler call finished.
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
    /// Queued events discarded (overflow policy, cancel, close deadline).
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
            ("dropped", self.dropped, "Queued events discarded."),
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
        for _ in 0..90 {
            m.record_latency(Duration::from_micros(40));
        }
        for _ in 0..10 {
            m.record_latency(Duration::from_millis(3));
        }
        let s = m.snapshot();
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
    fn default_snapshot_renders_empty_histogram() {
        let text = MetricsSnapshot::default().to_prometheus("x");
        assert!(text.contains("event_bus_delivery_latency_seconds_count{backend=\"x\"} 0"));
    }
}
