//! A priority queue that is FIFO among equal priorities.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::{durable::DurableDelivery, event::Event, priority::Priority};

/// A queued event and, if its latency is sampled, when it was queued.
pub(crate) struct Entry {
    pub(crate) event: Event,
    pub(crate) enqueued: Option<Instant>,
    /// For an event fetched by a durable backend: how to settle it on the server.
    pub(crate) durable: Option<Box<DurableDelivery>>,
    seq: u64,
}

/// One FIFO bucket per priority value in use, kept sorted (most urgent first); the most
/// urgent non-empty bucket is served first. Buckets stay allocated once used (at most
/// 256), so a queue that keeps emptying and refilling does not allocate. Most
/// subscriptions see one or a few priorities, so a short sorted list searched from the
/// front costs less per event than a tree.
#[derive(Default)]
pub(crate) struct PriorityQueue {
    buckets: Vec<(Priority, VecDeque<Entry>)>,
    len: usize,
    next_seq: u64,
}

impl PriorityQueue {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the next event pushed is a latency sample
    /// ([`LATENCY_SAMPLE_EVERY`](crate::metrics::LATENCY_SAMPLE_EVERY)): only then does
    /// it need the time it was queued.
    pub(crate) fn samples_next(&self) -> bool {
        self.next_seq % crate::metrics::LATENCY_SAMPLE_EVERY == 0
    }

    #[inline]
    pub(crate) fn push(&mut self, event: Event, enqueued: Option<Instant>) {
        self.push_entry(event, enqueued, None);
    }

    #[inline]
    pub(crate) fn push_entry(
        &mut self,
        event: Event,
        enqueued: Option<Instant>,
        durable: Option<Box<DurableDelivery>>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.len += 1;
        let priority = event.priority;
        let entry = Entry {
            event,
            enqueued,
            durable,
            seq,
        };
        // Most queues hold one priority: try the least urgent bucket first.
        if let Some((p, bucket)) = self.buckets.last_mut() {
            if *p == priority {
                bucket.push_back(entry);
                return;
            }
        }
        match self.buckets.iter().position(|(p, _)| *p >= priority) {
            Some(i) if self.buckets[i].0 == priority => self.buckets[i].1.push_back(entry),
            at => {
                let at = at.unwrap_or(self.buckets.len());
                self.buckets.insert(at, (priority, VecDeque::from([entry])));
            }
        }
    }

    /// The most urgent event, oldest first among equals.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Entry> {
        let entry = self.buckets.iter_mut().find_map(|(_, b)| b.pop_front())?;
        self.len -= 1;
        Some(entry)
    }

    /// The event queued first, whatever its priority.
    pub(crate) fn pop_oldest(&mut self) -> Option<Entry> {
        let bucket = self
            .buckets
            .iter_mut()
            .map(|(_, b)| b)
            .filter(|b| !b.is_empty())
            .min_by_key(|b| b.front().map_or(u64::MAX, |e| e.seq))?;
        let entry = bucket.pop_front()?;
        self.len -= 1;
        Some(entry)
    }

    /// The least urgent priority present.
    pub(crate) fn least_urgent(&self) -> Option<Priority> {
        self.buckets
            .iter()
            .rev()
            .find(|(_, b)| !b.is_empty())
            .map(|(p, _)| *p)
    }

    /// The newest of the least urgent events.
    pub(crate) fn pop_least_urgent(&mut self) -> Option<Entry> {
        let entry = self
            .buckets
            .iter_mut()
            .rev()
            .find_map(|(_, b)| b.pop_back())?;
        self.len -= 1;
        Some(entry)
    }

    /// Removes everything, returning how many events were removed.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.len;
        self.buckets.iter_mut().for_each(|(_, b)| b.clear());
        self.len = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventType;

    fn ev(n: u64, p: Priority) -> Event {
        Event::new(EventType::Created, "t", serde_json::json!(n)).with_priority(p)
    }

    fn drain(q: &mut PriorityQueue) -> Vec<u64> {
        std::iter::from_fn(|| q.pop().map(|e| e.event.payload.as_u64().unwrap())).collect()
    }

    #[test]
    fn priority_then_fifo() {
        let mut q = PriorityQueue::default();
        let now = Instant::now();
        for (n, p) in [
            (1, Priority::LOW),
            (2, Priority::HIGH),
            (3, Priority::LOW),
            (4, Priority::CRITICAL),
            (5, Priority::HIGH),
        ] {
            q.push(ev(n, p), Some(now));
        }
        assert_eq!(drain(&mut q), [4, 2, 5, 1, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn drop_helpers() {
        let mut q = PriorityQueue::default();
        let now = Instant::now();
        q.push(ev(1, Priority::HIGH), Some(now));
        q.push(ev(2, Priority::LOW), Some(now));
        q.push(ev(3, Priority::LOW), Some(now));
        q.push(ev(4, Priority::CRITICAL), Some(now));
        assert_eq!(q.least_urgent(), Some(Priority::LOW));
        assert_eq!(q.pop_oldest().unwrap().event.payload, 1);
        assert_eq!(q.pop_least_urgent().unwrap().event.payload, 3);
        assert_eq!(q.len(), 2);
        assert_eq!(drain(&mut q), [4, 2]);
    }
}
