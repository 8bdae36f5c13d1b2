//! The raw in-process transport: a `tokio::sync::broadcast` channel carrying the same
//! `Event` values the bus carries (no serialization), one receiver task per subscriber.

use std::{sync::Arc, time::Duration};

use multibus::Event;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{Collector, Workload, finish};
use crate::failure::Failure;

/// Events the publishers let queue up before waiting, like the bus's default
/// `dispatcher.queue_maxsize` under the `block` policy.
const QUEUE_BOUND: usize = 1000;

/// Publishes the workload through a broadcast channel. Publishers wait while
/// [`QUEUE_BOUND`] events are unread, so receivers do not lag (lagged events would count
/// as lost) and latency is measured under the same bounded backlog as the bus's.
pub(crate) async fn run(w: Workload, c: Arc<Collector>) -> Result<(Duration, String), Failure> {
    let capacity = (QUEUE_BOUND + w.batch).next_power_of_two();
    let (tx, _) = broadcast::channel::<Event>(capacity);
    let receivers: Vec<_> = (0..w.subscribers)
        .map(|i| {
            let (mut rx, c) = (tx.subscribe(), c.clone());
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(event) => c.record(i, &event.payload),
                        Err(RecvError::Lagged(n)) => c.lose(n),
                        Err(RecvError::Closed) => return,
                    }
                }
            })
        })
        .collect();
    let start = tokio::time::Instant::now();
    let publishers = (0..w.publishers)
        .map(|p| {
            let (tx, c, mut source) = (tx.clone(), c.clone(), w.source(p));
            tokio::spawn(async move {
                while let Some((seqs, events)) = source.next().await {
                    // The bus's default queue bound with its `block` policy: wait for room.
                    while tx.len() >= QUEUE_BOUND {
                        tokio::task::yield_now().await;
                    }
                    c.stamp(seqs);
                    for event in events {
                        // Fails only without receivers, which live until the end.
                        let _ = tx.send(event);
                    }
                }
                Ok(())
            })
        })
        .collect();
    let elapsed = finish(&c, publishers, start, w.timeout).await;
    drop(tx);
    for receiver in receivers {
        receiver.abort();
    }
    Ok((elapsed?, "tokio::sync::broadcast".to_owned()))
}
