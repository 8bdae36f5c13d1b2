//! Coalescing: requests that arrive while another is on its way to the server wait,
//! and are then sent together in one batch (one statement or pipeline, one round
//! trip), each caller still getting the outcome of its own request.
//!
//! A request that finds nothing in flight is sent at once, alone, so a lone caller
//! pays no added latency. While it is in flight, later requests queue; when it returns,
//! a drain task sends everything queued (at most the coalescer's `max_batch` per round
//! trip) and keeps doing so until the queue is empty. When a round trip returns to an
//! empty queue, the drain task yields once before giving the turn back: callers woken
//! by the answers usually submit again at once, and so travel together in the next
//! round trip instead of one of them alone. At most one round trip is in flight at a
//! time, so under load each one carries every request that arrived during the previous
//! one.
//!
//! ```
//! use std::sync::Arc;
//! use event_bus_core::coalesce::{Coalescer, SendBatch};
//!
//! struct Double;
//! #[async_trait::async_trait]
//! impl SendBatch<u32, u32> for Double {
//!     async fn send(&self, items: Vec<u32>) -> Vec<u32> {
//!         items.into_iter().map(|n| n * 2).collect() // one round trip for all of them
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let coalescer = Arc::new(Coalescer::new(Double, 100));
//! assert_eq!(coalescer.submit(21).await, Some(42));
//! # });
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::sync::oneshot;

/// Sends one batch of requests in one round trip.
#[async_trait]
pub trait SendBatch<T: Send + 'static, O>: Send + Sync + 'static {
    /// Sends `items` together and returns the outcome of each, in the same order and
    /// as many as there were items (a missing outcome is reported to its caller as
    /// `None`).
    async fn send(&self, items: Vec<T>) -> Vec<O>;

    /// Sends the request of a lone caller (one that found nothing in flight) and
    /// returns its outcome (`None`: lost, as for [`send`](Self::send)). By default a
    /// batch of one; override it to send a single request without building a batch.
    async fn send_one(&self, item: T) -> Option<O> {
        self.send(vec![item]).await.into_iter().next()
    }
}

/// A request waiting for a round trip.
type Queued<T, O> = (T, oneshot::Sender<O>);

struct State<T, O> {
    /// A round trip is in flight (or about to be).
    sending: bool,
    queue: Vec<Queued<T, O>>,
}

/// Coalesces requests of type `T` into batches sent by `S`, each caller getting its own
/// outcome `O`; see the [module docs](self).
pub struct Coalescer<T, O, S> {
    sender: S,
    max_batch: usize,
    state: Mutex<State<T, O>>,
}

impl<T, O, S> Coalescer<T, O, S>
where
    T: Send + 'static,
    O: Send + 'static,
    S: SendBatch<T, O>,
{
    /// A coalescer sending through `sender`, at most `max_batch` (at least 1) requests
    /// per round trip.
    pub fn new(sender: S, max_batch: usize) -> Self {
        Self {
            sender,
            max_batch: max_batch.max(1),
            state: Mutex::new(State {
                sending: false,
                queue: Vec::new(),
            }),
        }
    }

    /// Sends `item` at once if nothing is in flight, otherwise with the others that
    /// arrive meanwhile, and returns its outcome. `None` if the outcome was lost: the
    /// batch sender returned too few outcomes, or the runtime shut down before the
    /// queued request was sent.
    ///
    /// Dropping the future after the request was queued or sent does not take it back.
    pub async fn submit(self: &Arc<Self>, item: T) -> Option<O> {
        let waiting = {
            let mut state = self.lock();
            if state.sending {
                let (reply, outcome) = oneshot::channel();
                state.queue.push((item, reply));
                Err(outcome)
            } else {
                state.sending = true;
                Ok(item)
            }
        };
        match waiting {
            Ok(item) => {
                // Hands the queue to a drain task (or gives the turn back) however this
                // future ends, even if it is dropped mid-send.
                let _turn = TurnGuard(self);
                self.sender.send_one(item).await
            }
            Err(outcome) => outcome.await.ok(),
        }
    }

    /// Requests waiting for the round trip in flight.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// The next requests to send together, keeping the turn; with `release`, an empty
    /// queue gives the turn back.
    fn take(&self, release: bool) -> Vec<Queued<T, O>> {
        let mut state = self.lock();
        let n = state.queue.len().min(self.max_batch);
        if n == 0 && release {
            state.sending = false;
        }
        state.queue.drain(..n).collect()
    }

    /// Sends `batch` and answers each caller.
    async fn send_queued(&self, batch: Vec<Queued<T, O>>) {
        let (items, replies): (Vec<T>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
        let outcomes = self.sender.send(items).await;
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that stopped waiting does not want its outcome.
            let _ = reply.send(outcome);
        }
    }

    /// Nothing here panics while the lock is held; a poisoned lock is still consistent.
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T, O>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Held by the request that has the turn; when it ends (or is dropped) the requests
/// queued meanwhile are sent by a drain task, or the turn is given back.
struct TurnGuard<'a, T, O, S>(&'a Arc<Coalescer<T, O, S>>)
where
    T: Send + 'static,
    O: Send + 'static,
    S: SendBatch<T, O>;

impl<T, O, S> Drop for TurnGuard<'_, T, O, S>
where
    T: Send + 'static,
    O: Send + 'static,
    S: SendBatch<T, O>,
{
    fn drop(&mut self) {
        let batch = self.0.take(true);
        if batch.is_empty() {
            return;
        }
        let coalescer = self.0.clone();
        let drain = async move {
            let mut batch = batch;
            loop {
                coalescer.send_queued(batch).await;
                batch = coalescer.take(false);
                if batch.is_empty() {
                    // Let the callers just answered submit again (see the module docs).
                    tokio::task::yield_now().await;
                    batch = coalescer.take(true);
                    if batch.is_empty() {
                        return;
                    }
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(drain);
            }
            // No runtime (dropped outside one): nothing can be sent any more. Dropping
            // the drain answers the queued callers with `None`, and the turn is never
            // given back, so later requests queue and get `None` the same way.
            Err(_) => drop(drain),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    /// Records each batch; each round trip waits for a permit.
    struct Gated {
        gate: Arc<Semaphore>,
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        sent: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl SendBatch<u32, Result<u32, String>> for Gated {
        async fn send(&self, items: Vec<u32>) -> Vec<Result<u32, String>> {
            self.sent.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.unwrap().forget();
            self.batches.lock().unwrap().push(items.clone());
            items
                .into_iter()
                .map(|n| {
                    if n % 2 == 0 {
                        Ok(n)
                    } else {
                        Err(format!("odd {n}"))
                    }
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn a_lone_request_goes_at_once_and_the_rest_travel_together() {
        let gate = Arc::new(Semaphore::new(0));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicUsize::new(0));
        let c = Arc::new(Coalescer::new(
            Gated {
                gate: gate.clone(),
                batches: batches.clone(),
                sent: sent.clone(),
            },
            2,
        ));
        let first = tokio::spawn({
            let c = c.clone();
            async move { c.submit(0).await }
        });
        while sent.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let later: Vec<_> = (1..=3)
            .map(|n| {
                let c = c.clone();
                tokio::spawn(async move { c.submit(n).await })
            })
            .collect();
        while c.queued() < 3 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(3);
        assert_eq!(first.await.unwrap(), Some(Ok(0)));
        let mut outcomes = Vec::new();
        for task in later {
            outcomes.push(task.await.unwrap());
        }
        assert_eq!(
            outcomes,
            [
                Some(Err("odd 1".to_owned())),
                Some(Ok(2)),
                Some(Err("odd 3".to_owned()))
            ]
        );
        // One alone, then the queue in order, at most two per round trip.
        assert_eq!(*batches.lock().unwrap(), [vec![0], vec![1, 2], vec![3]]);
        // The turn was given back: the next request goes alone at once.
        gate.add_permits(1);
        assert_eq!(c.submit(4).await, Some(Ok(4)));
        assert_eq!(batches.lock().unwrap().last(), Some(&vec![4]));
    }

    /// Answers a lone request with its own path, a batch with the other.
    struct Split;

    #[async_trait]
    impl SendBatch<u32, (&'static str, u32)> for Split {
        async fn send(&self, items: Vec<u32>) -> Vec<(&'static str, u32)> {
            items.into_iter().map(|n| ("batch", n)).collect()
        }

        async fn send_one(&self, item: u32) -> Option<(&'static str, u32)> {
            Some(("one", item))
        }
    }

    #[tokio::test]
    async fn a_lone_request_goes_through_send_one() {
        let c = Arc::new(Coalescer::new(Split, 10));
        assert_eq!(c.submit(7).await, Some(("one", 7)));
        assert_eq!(c.submit(8).await, Some(("one", 8)));
    }

    struct Short;

    #[async_trait]
    impl SendBatch<u32, u32> for Short {
        async fn send(&self, _items: Vec<u32>) -> Vec<u32> {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn a_missing_outcome_is_none() {
        let c = Arc::new(Coalescer::new(Short, 10));
        assert_eq!(c.submit(1).await, None);
    }
}
