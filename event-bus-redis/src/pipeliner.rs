//! Auto-pipelining: publishes that arrive while another publish is on its way to the
//! server wait, and are then sent together in one pipeline (one write, one round
//! trip), each caller still getting the result of its own command.
//!
//! A publish that finds nothing in flight is sent at once, alone, so a lone publisher
//! pays no added latency. While it is in flight, later publishes queue here; when it
//! returns, a drain task sends everything queued (at most [`MAX_PIPELINE`] commands
//! per round trip) and keeps doing so until the queue is empty. When a round trip
//! returns to an empty queue, the drain task yields once before giving the turn back:
//! publishers woken by the answers usually publish again at once, and so travel
//! together in the next round trip instead of one of them alone. At most one round trip
//! of single publishes is in flight at a time, so under load each round trip carries
//! every publish that arrived during the previous one.

use std::sync::{Mutex, PoisonError};

use event_bus_core::error::BoxError;
use tokio::sync::oneshot;

/// Most commands sent in one pipeline; the rest wait for the next round trip.
pub(crate) const MAX_PIPELINE: usize = 1024;

/// What happened to one command.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The server executed it.
    Done,
    /// It certainly was not executed (no connection, or the server refused it).
    NotSent(BoxError),
    /// It may have been executed (no answer: the connection died or timed out).
    Unknown(BoxError),
}

/// A command waiting for a round trip.
pub(crate) struct Queued {
    pub(crate) channel: String,
    pub(crate) payload: String,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// Whose turn it is to send a publish.
pub(crate) enum Turn {
    /// Nothing is in flight: send it (the channel and payload handed back) now, then
    /// call [`Pipeliner::next_batch`] until it comes back empty (or hand that over to a
    /// task).
    Send(String, String),
    /// Queued behind the publish in flight: the result arrives here.
    Wait(oneshot::Receiver<Outcome>),
}

#[derive(Default)]
struct State {
    /// A round trip of single publishes is in flight (or about to be).
    sending: bool,
    queue: Vec<Queued>,
}

/// The queue of publishes waiting for the round trip in flight.
#[derive(Default)]
pub(crate) struct Pipeliner {
    state: Mutex<State>,
}

impl Pipeliner {
    /// Sends now ([`Turn::Send`], taking the turn) or queues the command.
    pub(crate) fn enter(&self, channel: String, payload: String) -> Turn {
        let mut state = self.lock();
        if !state.sending {
            state.sending = true;
            return Turn::Send(channel, payload);
        }
        let (reply, result) = oneshot::channel();
        state.queue.push(Queued {
            channel,
            payload,
            reply,
        });
        Turn::Wait(result)
    }

    /// The next commands to send together, keeping the turn; empty (and the turn given
    /// back) when nothing is queued.
    pub(crate) fn next_batch(&self) -> Vec<Queued> {
        let mut state = self.lock();
        let n = state.queue.len().min(MAX_PIPELINE);
        if n == 0 {
            state.sending = false;
        }
        state.queue.drain(..n).collect()
    }

    /// The next commands to send together, keeping the turn even when there are none.
    pub(crate) fn take_queued(&self) -> Vec<Queued> {
        let mut state = self.lock();
        let n = state.queue.len().min(MAX_PIPELINE);
        state.queue.drain(..n).collect()
    }

    /// Nothing here panics while the lock is held; a poisoned lock is still consistent.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_turn_at_a_time_and_the_queue_in_order() {
        let p = Pipeliner::default();
        assert!(matches!(p.enter("c".into(), "0".into()), Turn::Send(..)));
        let waiting: Vec<_> = (1..=3)
            .map(|n| match p.enter("c".into(), n.to_string()) {
                Turn::Wait(rx) => rx,
                Turn::Send(..) => panic!("a second turn while one is held"),
            })
            .collect();
        let batch = p.next_batch();
        let payloads: Vec<_> = batch.iter().map(|q| q.payload.as_str()).collect();
        assert_eq!(payloads, ["1", "2", "3"]);
        for (queued, rx) in batch.into_iter().zip(waiting) {
            queued.reply.send(Outcome::Done).unwrap();
            drop(rx);
        }
        assert!(p.next_batch().is_empty(), "the turn is given back");
        assert!(matches!(p.enter("c".into(), "4".into()), Turn::Send(..)));
    }
}
