//! Namespaces, waiting with deadlines, and a recording handler.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use multibus::{Event, Handler};
use tokio::{sync::Notify, time::Instant};

/// Default deadline for waiting on a condition.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A namespace no other test uses: `t` and 12 lowercase hex characters. Use it as the
/// channel prefix (network backends) and as the first topic segment.
pub fn namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Polls `condition` every few milliseconds until it holds (returns `true`) or
/// `timeout` passes (returns `false`).
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Like [`wait_until`] for a condition that needs to await (a server query).
pub async fn wait_until_async<F: Future<Output = bool>>(
    timeout: Duration,
    mut condition: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks a publish-under-faults run: every event `0..total` (numbered by its payload) was
/// delivered to `recorder` exactly once, except those whose publish failed with an
/// "outcome unknown" error (`unknown`), which may also be missing. Returns how often each
/// payload was seen.
///
/// # Panics
/// On a lost event or a duplicate.
pub fn assert_once_unless_unknown(
    recorder: &Recorder,
    total: u64,
    unknown: &std::collections::HashSet<u64>,
) -> std::collections::HashMap<u64, usize> {
    let mut seen = std::collections::HashMap::new();
    for e in recorder.events() {
        *seen
            .entry(e.payload.as_u64().unwrap_or(u64::MAX))
            .or_default() += 1;
    }
    for n in 0..total {
        let count = seen.get(&n).copied().unwrap_or(0);
        if unknown.contains(&n) {
            assert!(count <= 1, "event {n} delivered {count} times");
        } else {
            assert_eq!(
                count, 1,
                "event {n} (never an unknown outcome) delivered {count} times"
            );
        }
    }
    seen
}

/// A handler that records every event it receives, in order.
#[derive(Clone, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
    changed: Arc<Notify>,
}

impl Recorder {
    /// A new, empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handler recording into this recorder.
    pub fn handler(&self) -> impl Handler + use<> {
        let recorder = self.clone();
        move |event: Event| {
            let recorder = recorder.clone();
            async move {
                recorder.lock().push(event);
                recorder.changed.notify_waiters();
                Ok::<(), std::convert::Infallible>(())
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }

    /// Number of events recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The topics recorded, in order.
    pub fn topics(&self) -> Vec<String> {
        self.lock().iter().map(|e| e.topic.clone()).collect()
    }

    /// Waits until at least `n` events were recorded and returns them.
    ///
    /// # Panics
    /// If fewer than `n` arrive within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let events = self.events();
            if events.len() >= n {
                return events;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let got = self.topics();
                panic!(
                    "waited {timeout:?} for {n} events, got {}: {got:?}",
                    got.len()
                );
            }
        }
    }
}
