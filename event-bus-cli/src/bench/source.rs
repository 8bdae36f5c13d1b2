//! What a benchmark publisher sends: its share of the events, built batch by batch as
//! they are sent (so the harness's memory does not grow with `--events`), optionally
//! paced to `--rate`.
//!
//! Pacing sleeps until a batch is due when that is at least [`SPIN_BELOW`] away, and
//! yields in a loop for the rest (the runtime's timer has a 1 ms resolution, which
//! would otherwise send events in bursts). The raw transport is paced the same way.

use std::{ops::Range, sync::Arc, time::Duration};

use multibus::{Event, EventType};
use tokio::time::Instant;

use super::Collector;

/// How close to a batch's due time pacing stops sleeping and starts yielding.
const SPIN_BELOW: Duration = Duration::from_millis(2);

/// One publisher's events, in batches.
pub(crate) struct Source {
    seqs: Range<u64>,
    batch: u64,
    topic: Arc<str>,
    pad: Arc<str>,
    pacing: Option<Pacing>,
}

/// Batch `n` events into the share is due at `start + n * interval`.
struct Pacing {
    start: Instant,
    interval: Duration,
    sent: u32,
}

impl Source {
    /// `seqs` in batches of `batch` events on `topic`, at `rate` events/s if given.
    pub(crate) fn new(
        seqs: Range<u64>,
        batch: usize,
        topic: &str,
        pad: Arc<str>,
        rate: Option<f64>,
    ) -> Self {
        let pacing = rate.map(|rate| Pacing {
            start: Instant::now(),
            interval: Duration::from_secs_f64(1.0 / rate),
            sent: 0,
        });
        Self {
            seqs,
            batch: batch.max(1) as u64,
            topic: topic.into(),
            pad,
            pacing,
        }
    }

    /// The next batch and the sequence numbers it carries, once it is due; `None` at
    /// the end.
    pub(crate) async fn next(&mut self) -> Option<(Range<u64>, Vec<Event>)> {
        if self.seqs.is_empty() {
            return None;
        }
        let end = (self.seqs.start + self.batch).min(self.seqs.end);
        let seqs = self.seqs.start..end;
        self.seqs.start = end;
        if let Some(pacing) = &mut self.pacing {
            pacing.wait().await;
            pacing.sent = pacing.sent.saturating_add((seqs.end - seqs.start) as u32);
        }
        let events = seqs
            .clone()
            .map(|seq| {
                let payload = Collector::payload(seq, &self.pad);
                Event::new(EventType::Created, &*self.topic, payload)
            })
            .collect();
        Some((seqs, events))
    }
}

impl Pacing {
    async fn wait(&self) {
        let due = self.start + self.interval * self.sent;
        loop {
            let now = Instant::now();
            if now >= due {
                return;
            }
            if due - now >= SPIN_BELOW {
                tokio::time::sleep_until(due - SPIN_BELOW / 2).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_cover_the_share_in_order() {
        let mut source = Source::new(10..15, 2, "t", "x".into(), None);
        let mut seen = Vec::new();
        while let Some((seqs, events)) = source.next().await {
            assert_eq!(seqs.clone().count(), events.len());
            seen.push(seqs);
        }
        assert_eq!(seen, [10..12, 12..14, 14..15]);
    }

    #[tokio::test]
    async fn a_rate_spreads_the_batches_over_time() {
        let start = Instant::now();
        let mut source = Source::new(0..100, 10, "t", "x".into(), Some(1000.0));
        while source.next().await.is_some() {}
        // 10 batches of 10 events at 1000 events/s: the last is due at 90 ms.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(89), "{took:?}");
    }
}
