//! Where benchmark subscribers record what they receive: counts, and the latency from
//! the moment an event was handed to the transport (kept per sequence number, which the
//! payload carries) to the moment the subscriber got it.
//!
//! Memory is fixed, whatever the number of events: send times live in a ring of
//! [`STAMPS`] slots (an event's slot is reused [`STAMPS`] events later, so latencies are
//! exact while fewer events than that are in flight), latencies in a [`Histogram`].

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::histogram::Histogram;

/// Send-time slots (8 bytes each).
const STAMPS: usize = 1 << 20;

/// Shared by the publishers (which stamp payloads) and the subscribers (which record).
pub(crate) struct Collector {
    base: Instant,
    expected: u64,
    delivered: AtomicU64,
    lost: AtomicU64,
    /// Send time of each event in flight (nanoseconds since `base`), by sequence number
    /// modulo [`STAMPS`].
    sent: Box<[AtomicU64]>,
    /// Publish-to-handler latencies in nanoseconds.
    pub(crate) latencies: Histogram,
    /// Resident memory of the process when the last delivery arrived, in bytes.
    rss: AtomicU64,
    done: Notify,
}

impl Collector {
    /// A collector expecting `events` deliveries to each of `subscribers`.
    pub(crate) fn new(subscribers: usize, events: u64) -> Self {
        let slots = usize::try_from(events).unwrap_or(STAMPS).min(STAMPS);
        Self {
            base: Instant::now(),
            expected: events * subscribers as u64,
            delivered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            sent: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            latencies: Histogram::default(),
            rss: AtomicU64::new(0),
            done: Notify::new(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn slot(&self, seq: u64) -> Option<&AtomicU64> {
        let len = self.sent.len() as u64;
        (len > 0).then(|| &self.sent[(seq % len) as usize])
    }

    /// A payload of about `pad.len() + 20` bytes carrying `seq`.
    pub(crate) fn payload(seq: u64, pad: &str) -> Value {
        json!({"seq": seq, "pad": pad})
    }

    /// Notes that the events numbered `seqs` are being sent now.
    pub(crate) fn stamp(&self, seqs: std::ops::Range<u64>) {
        let now = self.now_ns();
        for seq in seqs {
            if let Some(slot) = self.slot(seq) {
                slot.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Records one delivery of `payload` (to any subscriber).
    pub(crate) fn record(&self, _sub: usize, payload: &Value) {
        let sent = payload["seq"]
            .as_u64()
            .and_then(|seq| self.slot(seq))
            .map_or(0, |slot| slot.load(Ordering::Relaxed));
        self.latencies.record(self.now_ns().saturating_sub(sent));
        self.account(&self.delivered, 1);
    }

    /// Records `n` deliveries the transport reported lost (a lagging receiver).
    pub(crate) fn lose(&self, n: u64) {
        self.account(&self.lost, n);
    }

    fn account(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::AcqRel);
        if self.delivered() + self.lost() >= self.expected {
            self.done.notify_one();
        }
    }

    /// Deliveries so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    /// Deliveries the transport reported lost.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Acquire)
    }

    /// Deliveries expected in all.
    pub(crate) fn expected(&self) -> u64 {
        self.expected
    }

    /// Waits until every expected delivery is accounted for or `timeout` passes; returns
    /// whether everything arrived in time. Notes the process's resident memory then.
    pub(crate) async fn wait(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let arrived = loop {
            let notified = self.done.notified();
            if self.delivered() + self.lost() >= self.expected {
                break true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break false;
            }
        };
        self.rss.store(memory().resident, Ordering::Relaxed);
        arrived
    }

    /// Resident memory when [`wait`](Self::wait) returned, in bytes (0 if unknown).
    pub(crate) fn rss(&self) -> u64 {
        self.rss.load(Ordering::Relaxed)
    }
}

/// The process's memory, in bytes (0 where `/proc` is not available).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Memory {
    /// Resident now (`VmRSS`).
    pub(crate) resident: u64,
    /// Peak resident since the process started (`VmHWM`).
    pub(crate) peak: u64,
}

/// Reads [`Memory`] from `/proc/self/status`.
pub(crate) fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    Memory {
        resident: field("VmRSS:"),
        peak: field("VmHWM:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_deliveries_and_losses() {
        let c = Collector::new(2, 2);
        let p = Collector::payload(1, "xx");
        c.stamp(0..2);
        c.record(0, &p);
        c.record(1, &p);
        assert!(!c.wait(Duration::from_millis(10)).await);
        c.lose(2);
        assert!(c.wait(Duration::from_secs(5)).await);
        assert_eq!(c.latencies.len(), 2);
    }

    #[test]
    fn memory_is_fixed_whatever_the_event_count() {
        let small = Collector::new(1, 10).sent.len();
        let huge = Collector::new(1, 2_000_000).sent.len();
        assert_eq!((small, huge), (10, STAMPS));
        if cfg!(target_os = "linux") {
            let m = memory();
            assert!(m.resident > 0 && m.peak >= m.resident, "{m:?}");
        }
    }
}
