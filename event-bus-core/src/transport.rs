//! What a network backend gives the shared dispatcher: a way to publish (for dead
//! letters) and to release the server side of a subscription that ended. The
//! subscription lifecycle itself lives in core; backends implement only this.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    dispatcher::worker::{StartWorker, Typed},
    error::Error,
    event::Event,
    handler::Handler,
    subscription::SubscriptionId,
};

/// The server side of a bus, as the [`Dispatcher`](crate::Dispatcher) sees it.
///
/// A backend implements this on its connection state and attaches it with
/// [`Dispatcher::set_transport`](crate::Dispatcher::set_transport). Without one (the
/// memory backend), dead letters are dispatched locally and there is nothing to release.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Publishes `event` on the bus, as `EventBus::publish` does. The dispatcher uses it
    /// for dead letters.
    ///
    /// # Errors
    /// As `EventBus::publish`.
    async fn publish(&self, event: Event) -> Result<(), Error>;

    /// Releases the server-side subscription of `id` (unsubscribe, unlisten), once local
    /// delivery has stopped. Called once for every subscription that ends by cancel,
    /// automatic removal or drop (not on close, which closes the connections). Best
    /// effort: a failure may be logged, and must leave the bus consistent.
    async fn release(&self, id: SubscriptionId);
}

/// What consumes a new subscription's events: a handler called by a worker, or a
/// stream read by the application. Passed to
/// [`EventBus::add_subscription`](crate::EventBus::add_subscription); applications use
/// [`EventBusExt`](crate::EventBusExt) instead.
#[derive(Clone)]
pub struct Subscriber(pub(crate) SubscriberKind);

#[derive(Clone)]
pub(crate) enum SubscriberKind {
    /// Starts a worker built for the concrete handler type.
    Handler(Arc<dyn StartWorker>),
    Stream,
}

impl Subscriber {
    /// Events go to `handler`, one call at a time. The type is erased here, once per
    /// subscription: the worker that calls `handler` is built for its concrete type,
    /// so no call boxes a future.
    pub fn handler<H: Handler>(handler: H) -> Self {
        Self(SubscriberKind::Handler(Arc::new(Typed(Arc::new(handler)))))
    }

    /// Events wait in the queue for an [`EventStream`](crate::EventStream) to read them.
    pub fn stream() -> Self {
        Self(SubscriberKind::Stream)
    }

    /// Whether this is a stream subscriber.
    pub fn is_stream(&self) -> bool {
        matches!(self.0, SubscriberKind::Stream)
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            SubscriberKind::Handler(_) => "Subscriber::Handler",
            SubscriberKind::Stream => "Subscriber::Stream",
        })
    }
}
