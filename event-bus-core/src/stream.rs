//! Stream subscriptions: receive events by pulling them, like a channel receiver.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::Stream;

use crate::{
    dispatcher::mailbox::Status,
    event::Event,
    metrics::Outcome,
    pattern::Pattern,
    subscription::{EndReason, Subscription, SubscriptionId},
};

/// A subscription read as a [`Stream`] of events; made by
/// [`EventBusExt::subscribe_stream`](crate::EventBusExt::subscribe_stream).
///
/// Events wait in the subscription's own bounded queue until the stream is polled:
/// the queue size and overflow policy of the subscription apply exactly as for a
/// handler (under `block`, a reader that falls behind slows the publishers). Events come
/// out in the same order a handler would see them (more urgent first, publish order
/// among equals). Handler settings (timeout, retries, dead letters, removal) do not
/// apply: the reader decides what to do with each event.
///
/// The stream ends (yields `None`) after [`cancel`](Self::cancel), or once the bus has
/// been closed and the events queued before the close have been read.
///
/// ```
/// use futures_util::StreamExt;
/// # use event_bus_core::{Event, EventBus, EventBusExt, EventType};
/// # async fn demo(bus: &dyn EventBus) -> Result<(), event_bus_core::Error> {
/// let mut orders = bus.subscribe_stream("orders:*").await?;
/// bus.publish(Event::new(EventType::Created, "orders:eu", serde_json::json!({"id": 1}))).await?;
/// let event = orders.next().await.expect("the stream is open");
/// assert_eq!(event.topic, "orders:eu");
/// orders.cancel().await;
/// # Ok(()) }
/// ```
///
/// # Drop
///
/// Dropping the stream unsubscribes, on the server too, at once and best effort:
/// delivery stops, events still queued are discarded and counted as dropped, and the
/// backend's background task releases the server-side subscription. Drop never blocks,
/// panics, needs a runtime or spawns a task. Use [`cancel`](Self::cancel) for a
/// confirmed unsubscribe.
pub struct EventStream {
    subscription: Option<Subscription>,
}

impl EventStream {
    pub(crate) fn new(subscription: Subscription) -> Self {
        Self {
            subscription: Some(subscription),
        }
    }

    /// The underlying subscription (id, pattern, group, [`ended`](Subscription::ended)).
    pub fn subscription(&self) -> Option<&Subscription> {
        self.subscription.as_ref()
    }

    /// The subscription's id.
    pub fn id(&self) -> Option<SubscriptionId> {
        self.subscription.as_ref().map(Subscription::id)
    }

    /// The pattern this stream matches topics against.
    pub fn pattern(&self) -> Option<&Pattern> {
        self.subscription.as_ref().map(Subscription::pattern)
    }

    /// Unsubscribes and waits until the backend has released the server-side
    /// subscription. Events still queued are discarded and counted as dropped.
    pub async fn cancel(mut self) {
        if let Some(subscription) = self.subscription.take() {
            subscription.cancel().await;
        }
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let Some(subscription) = &self.subscription else {
            return Poll::Ready(None);
        };
        let entry = subscription.entry();
        let mut state = entry.mailbox.lock();
        let was_full = state.queue.len() >= entry.options.queue_maxsize;
        if let Some(item) = state.queue.pop() {
            drop(state);
            if was_full {
                entry.mailbox.space.notify_waiters();
            }
            // A durable event is done once the reader has it. Without a runtime the
            // handle is dropped and the server delivers the event again.
            if let (Some(durable), Ok(runtime)) =
                (item.durable, tokio::runtime::Handle::try_current())
            {
                runtime.spawn(async move {
                    if let Err(e) = durable.settle.ack().await {
                        tracing::warn!(error = %e, "could not acknowledge a durable event read from a stream");
                    }
                });
            }
            entry
                .stats
                .record(Outcome::Delivered, item.enqueued.map(|t| t.elapsed()));
            return Poll::Ready(Some(item.event));
        }
        match state.status {
            Status::Open => {
                if !state
                    .reader
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.reader = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Status::Draining | Status::Cancelled => {
                drop(state);
                // Closed and read to the end: the stream is finished.
                if let Some(subscription) = self.subscription.take() {
                    subscription
                        .dispatcher()
                        .cancel_now(subscription.entry(), EndReason::Closed);
                }
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(subscription) = self.subscription.take() {
            subscription.cancel_now(EndReason::Dropped);
        }
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("subscription", &self.subscription)
            .finish()
    }
}
