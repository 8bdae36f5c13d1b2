//! The bound on handler calls running at once across a bus.
//!
//! Entering and leaving cost one atomic operation each when the limit is not reached
//! (the common case); only tasks that find it reached park, and only then does leaving
//! wake one of them. A worker with more events queued keeps its slot from one call to
//! the next while nobody waits ([`Slot::keep_if_uncontended`]).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;

/// At most `max` holders of a [`Slot`] at a time.
pub(crate) struct Limit {
    max: usize,
    running: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
}

/// One of the `max` places; gives it back when dropped.
pub(crate) struct Slot<'a>(&'a Limit);

impl Limit {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// A place, if one is free now.
    pub(crate) fn try_enter(&self) -> Option<Slot<'_>> {
        self.running
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Slot(self))
    }

    /// Waits for a place.
    pub(crate) async fn enter(&self) -> Slot<'_> {
        if let Some(slot) = self.try_enter() {
            return slot;
        }
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // Counted before the second look, so that a place freed after it is
            // announced (leave sees `waiting` > 0 and notifies).
            self.waiting.fetch_add(1, SeqCst);
            let slot = self.try_enter();
            if slot.is_none() {
                freed.await;
            }
            self.waiting.fetch_sub(1, SeqCst);
            if let Some(slot) = slot.or_else(|| self.try_enter()) {
                return slot;
            }
        }
    }
}

impl Slot<'_> {
    /// The slot back if nobody waits for one; otherwise gives it back (waking a
    /// waiter). Lets a worker run its next call without leaving and entering again.
    #[inline]
    pub(crate) fn keep_if_uncontended(self) -> Option<Self> {
        (self.0.waiting.load(SeqCst) == 0).then_some(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let limit = self.0;
        limit.running.fetch_sub(1, SeqCst);
        if limit.waiting.load(SeqCst) > 0 {
            limit.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_max_and_nobody_starves() {
        let limit = std::sync::Arc::new(Limit::new(3));
        let peak = std::sync::Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (limit, peak) = (limit.clone(), peak.clone());
                tokio::spawn(async move {
                    for _ in 0..20 {
                        let _slot = limit.enter().await;
                        peak.fetch_max(limit.running.load(SeqCst), SeqCst);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .expect("a task starved")
                .unwrap();
        }
        assert!(peak.load(SeqCst) <= 3);
        assert_eq!(limit.running.load(SeqCst), 0);
    }
}
