//! Durable (at-least-once) delivery: how a backend that keeps events on the server hands
//! one to a subscription and learns how it ended.
//!
//! A durable backend fetches events for a subscription from the server (a consumer
//! group's pending work) and passes each to [`Dispatcher::deliver_to`] with the server's
//! attempt number and a [`Settle`] handle. The subscription's worker calls the handler
//! once and then settles the event on the server:
//!
//! * success: [`Settle::ack`];
//! * failure with attempts left under the subscription's [`RetryPolicy`]:
//!   [`Settle::retry`] with the backoff delay (the server makes the event due again; the
//!   attempt count lives on the server, so it survives a crash);
//! * failure of the last attempt: [`Settle::dead_letter`] with the event and its failure
//!   metadata (see [`crate::dead_letter`]), which the backend moves to the group's
//!   dead-letter store atomically with its removal from the live one.
//!
//! A `Settle` dropped without being called (the subscription ended, the bus closed, the
//! queue was discarded) leaves the event on the server, which delivers it again after
//! its lease: nothing is lost, and the event may be handled twice. A stream subscription
//! acknowledges an event when the reader takes it.
//!
//! [`Dispatcher::deliver_to`]: crate::Dispatcher::deliver_to
//! [`RetryPolicy`]: crate::RetryPolicy

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;

use crate::{error::Error, event::Event, pattern::Pattern};

/// Settles one durable delivery on the server; see the [module docs](self).
#[async_trait]
pub trait Settle: Send + Sync + 'static {
    /// The handler succeeded: the event is done for this group.
    ///
    /// # Errors
    /// The server could not be told; the event will be delivered again.
    async fn ack(self: Box<Self>) -> Result<(), Error>;

    /// Whether the worker may hand [`ack`](Self::ack) to a task of its own and go on
    /// with the subscription's next event instead of waiting for the server's answer.
    /// That task still awaits the outcome of this acknowledgement and logs a failure,
    /// as the worker does. A backend that coalesces acknowledgements (several in one
    /// statement) says `true`, so that one subscription's acknowledgements can travel
    /// together; it must then count them as in flight until they are answered, for its
    /// `flush` and `close`. Default: `false`.
    fn ack_in_background(&self) -> bool {
        false
    }

    /// The attempt failed and another is allowed: make the event due again after
    /// `delay`. `error` describes the failure (for the backend's records).
    ///
    /// # Errors
    /// The server could not be told; the event will be delivered again after its lease.
    async fn retry(self: Box<Self>, delay: Duration, error: &str) -> Result<(), Error>;

    /// The last attempt failed: move the event to the group's dead letters, as `letter`
    /// (the original event with failure metadata added).
    ///
    /// # Errors
    /// The server could not be told; the event will be delivered again after its lease.
    async fn dead_letter(self: Box<Self>, letter: Event) -> Result<(), Error>;
}

/// The consumer group of a durable subscription whose options name none: its pattern,
/// so that every subscription receives every matching event and the instances of a
/// service that subscribe to the same pattern share its events. The n-th such
/// subscription to one pattern on one bus (n ≥ 2) is `{pattern}#{n}`; `taken` says
/// whether a name is already a group of one of the bus's subscriptions.
///
/// ```
/// use event_bus_core::{Pattern, durable::implicit_group};
/// let pattern = Pattern::parse("orders:*")?;
/// assert_eq!(implicit_group(&pattern, |_| false), "orders:*");
/// assert_eq!(implicit_group(&pattern, |name| name == "orders:*"), "orders:*#2");
/// # Ok::<(), event_bus_core::Error>(())
/// ```
pub fn implicit_group(pattern: &Pattern, taken: impl Fn(&str) -> bool) -> String {
    (1..)
        .map(|n| match n {
            1 => pattern.as_str().to_owned(),
            n => format!("{}#{n}", pattern.as_str()),
        })
        .find(|name| !taken(name))
        .unwrap_or_else(|| pattern.as_str().to_owned())
}

/// One event fetched from the server for a subscription.
pub struct DurableDelivery {
    /// The server's attempt number for this delivery (1 for the first).
    pub attempt: u32,
    /// How to settle it.
    pub settle: Box<dyn Settle>,
}

impl std::fmt::Debug for DurableDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableDelivery")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Counts work a durable backend has started and not finished (acknowledgements on
/// their way to the server), so that `flush` and `close` can wait until none is left.
///
/// ```
/// use std::sync::Arc;
/// use event_bus_core::durable::Outstanding;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let acks = Arc::new(Outstanding::default());
/// let guard = acks.enter(); // handed to whatever writes the acknowledgement
/// assert_eq!(acks.count(), 1);
/// drop(guard); // written (or given up)
/// acks.idle().await;
/// # }
/// ```
#[derive(Debug, Default)]
pub struct Outstanding {
    count: AtomicU64,
    done: tokio::sync::Notify,
}

impl Outstanding {
    /// Counts one piece of work until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> OutstandingGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        OutstandingGuard(self.clone())
    }

    /// How many are counted now.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until none is counted.
    pub async fn idle(&self) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            done.await;
        }
    }
}

/// One counted piece of work of an [`Outstanding`]; dropping it ends it.
#[derive(Debug)]
pub struct OutstandingGuard(Arc<Outstanding>);

impl Drop for OutstandingGuard {
    fn drop(&mut self) {
        // Only the last one wakes the waiters: `idle` waits for none, not for each.
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}
