//! Where benchmark subscribers record what they receive: counts, and the latency from
//! the moment an event was handed to the transport (kept per sequence number, which the
//! payload carries) to the moment the subscriber got it.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::Notify;

/// Shared by the publishers (which stamp payloads) and the subscribers (which record).
pub(crate) struct Collector {
    base: Instant,
    expected: u64,
    delivered: AtomicU64,
    lost: AtomicU64,
    /// Send time of each event (nanoseconds since `base`), by sequence number.
    sent: Vec<AtomicU64>,
    /// Latencies in nanoseconds, one list per subscriber (so subscribers do not contend).
    latencies: Vec<Mutex<Vec<u64>>>,
    done: Notify,
}

impl Collector {
    /// A collector expecting `events` deliveries to each of `subscribers`.
    pub(crate) fn new(subscribers: usize, events: u64) -> Self {
        let per_sub = usize::try_from(events).unwrap_or(usize::MAX).min(1 << 24);
        Self {
            base: Instant::now(),
            expected: events * subscribers as u64,
            delivered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            sent: (0..events).map(|_| AtomicU64::new(0)).collect(),
            latencies: (0..subscribers)
                .map(|_| Mutex::new(Vec::with_capacity(per_sub)))
                .collect(),
            done: Notify::new(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A payload of about `pad.len() + 20` bytes carrying `seq`.
    pub(crate) fn payload(seq: u64, pad: &str) -> Value {
        json!({"seq": seq, "pad": pad})
    }

    /// Notes that the events numbered `seqs` are being sent now.
    pub(crate) fn stamp(&self, seqs: std::ops::Range<u64>) {
        let now = self.now_ns();
        for seq in seqs {
            if let Some(slot) = usize::try_from(seq).ok().and_then(|i| self.sent.get(i)) {
                slot.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Records one delivery of `payload` to subscriber `sub`.
    pub(crate) fn record(&self, sub: usize, payload: &Value) {
        let seq = payload["seq"]
            .as_u64()
            .and_then(|s| usize::try_from(s).ok());
        let sent = seq
            .and_then(|i| self.sent.get(i))
            .map_or(0, |slot| slot.load(Ordering::Relaxed));
        let latency = self.now_ns().saturating_sub(sent);
        if let Some(list) = self.latencies.get(sub) {
            list.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(latency);
        }
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
    /// whether everything arrived in time.
    pub(crate) async fn wait(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.done.notified();
            if self.delivered() + self.lost() >= self.expected {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Every recorded latency, sorted, in nanoseconds.
    pub(crate) fn sorted_latencies(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .latencies
            .iter()
            .flat_map(|l| l.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect();
        all.sort_unstable();
        all
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
        assert_eq!(c.sorted_latencies().len(), 2);
    }
}
