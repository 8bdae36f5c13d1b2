//! The `EventBus` trait every backend implements.

use std::{collections::BTreeMap, future::Future, pin::Pin};

use async_trait::async_trait;
use serde::Serialize;

use crate::{
    error::Error, event::Event, handler::Handler, metrics::MetricsSnapshot,
    options::SubscribeOptions, publish::Publish, stream::EventStream, subscription::Subscription,
    transport::Subscriber,
};

/// A publish/subscribe event bus. Object safe: hold one as `Arc<dyn EventBus>`.
///
/// The contract every backend keeps (the conformance suite in `integration-tests` is
/// its executable form):
///
/// * `subscribe` returns once the subscription is live (on the server, for network
///   backends): an event published after it returns is delivered.
/// * Each event is delivered once to every subscription whose pattern matches its topic,
///   however many of the bus's subscriptions match; never to one that does not match.
/// * `publish` does not wait for handlers to run (it may wait for queue space under the
///   `block` overflow policy).
/// * Under backlog a subscription receives more urgent events first, and events of equal
///   priority in publish order. Each subscription runs one handler call at a time.
/// * After [`Subscription::cancel`] returns, that handler is never called again.
/// * After [`close`](Self::close), `publish` and `subscribe` fail with [`Error::Closed`];
///   a handler may call `close` itself.
/// * No replay: a subscription sees only events published after it was made.
///
/// Use [`EventBusExt::subscribe`] to subscribe a closure or `async fn`.
///
/// ```
/// use event_bus_core::{Event, EventBus, EventBusExt, EventType};
/// # async fn demo(bus: &dyn EventBus) -> Result<(), event_bus_core::Error> {
/// let sub = bus
///     .subscribe("orders:*", |event: Event| async move {
///         println!("got {}", event.topic);
///         Ok::<(), std::io::Error>(())
///     })
///     .await?;
/// bus.publish(Event::new(EventType::Created, "orders:eu", serde_json::json!({"id": 1}))).await?;
/// bus.flush().await?;
/// sub.cancel().await;
/// bus.close().await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Short backend name: `memory`, `redis` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Connects to the server and starts background tasks. Idempotent. The memory
    /// backend needs no connection, and every backend connects on first use if this was
    /// not called.
    ///
    /// # Errors
    /// [`Error::Connection`] if the server cannot be reached; [`Error::Closed`] after close.
    async fn connect(&self) -> Result<(), Error>;

    /// Publishes one event to every matching subscription (of every bus on the same
    /// server and namespace, for network backends).
    ///
    /// # Errors
    /// [`Error::InvalidTopic`]; [`Error::Closed`]; [`Error::QueueFull`] under the `reject`
    /// policy; [`Error::Publish`] when sending to the server failed, saying whether it is
    /// safe to retry ([`Error::publish_outcome`]). Errors about one event hand it back
    /// ([`Error::into_event`]).
    ///
    /// Returns a named future, [`Publish`]: a publish that finishes without waiting (the
    /// memory backend queueing an event) allocates nothing; backends that wait for a
    /// server return [`Publish::new`] of their async block.
    fn publish(&self, event: Event) -> Publish<'_>;

    /// Publishes several events, in order. Network backends send them in one round trip.
    /// Every topic is validated before anything is sent, so an invalid topic publishes
    /// nothing.
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    async fn publish_batch(&self, events: Vec<Event>) -> Result<(), Error> {
        for event in &events {
            crate::topic::validate_topic(&event.topic)?;
        }
        for event in events {
            self.publish(event).await?;
        }
        Ok(())
    }

    /// Subscribes `subscriber` (a handler or a stream) to topics matching `pattern`
    /// (see [`crate::pattern`]) with `options`. Applications call the
    /// [`EventBusExt`] methods, which build the subscriber; backends implement this one.
    ///
    /// # Errors
    /// [`Error::InvalidPattern`]/[`Error::InvalidTopic`]; [`Error::Config`] for bad
    /// options; [`Error::Closed`]; [`Error::Connection`] if the server could not be told.
    async fn add_subscription(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        subscriber: Subscriber,
    ) -> Result<Subscription, Error>;

    /// Waits until the bus is quiescent: nothing this bus published, received or
    /// queued is still waiting, including what its handlers published during the
    /// flush. When it returns, every event this bus published before or during the
    /// call has come back from the server (network backends) and been handled by the
    /// matching local subscriptions, and so have the follow-up events their handlers
    /// published, and theirs. The same on every backend; see [`crate::flush`].
    /// Events other buses publish meanwhile are not waited for; a bus that never stops
    /// publishing (an endless chain of handlers, a producer that never pauses) keeps it
    /// waiting. Meant for tests and orderly
    /// shutdown. Must not be called from a handler (it would wait for itself).
    ///
    /// # Errors
    /// [`Error::Closed`] after close; network errors (a lost connection, a round trip
    /// past its deadline) for backends that round-trip.
    async fn flush(&self) -> Result<(), Error>;

    /// A copy of the bus's metrics.
    fn metrics(&self) -> MetricsSnapshot;

    /// Whether the bus is usable and connected.
    async fn health(&self) -> Health;

    /// Stops accepting events, stops receiving, lets received and queued events drain
    /// (up to `dispatcher.shutdown_timeout_seconds`), waits for running handlers (up to
    /// their timeout), closes connections and returns. Events still waiting at the
    /// deadline are discarded and counted in `dropped`: every event the bus received is,
    /// when `close` returns, delivered or counted. Idempotent; a handler may call it.
    ///
    /// # Errors
    /// Reserved for backends whose connections fail to close cleanly.
    async fn close(&self) -> Result<(), Error>;
}

/// The future of a subscribe call.
pub type SubscribeFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// Subscribing with handlers and streams, for every [`EventBus`] (including
/// `dyn EventBus`).
pub trait EventBusExt: EventBus {
    /// Subscribes any [`Handler`] (an `async fn(Event) -> Result<(), E>` or async
    /// closure) to topics matching `pattern`, with the bus-wide settings.
    ///
    /// # Errors
    /// As [`EventBus::add_subscription`].
    fn subscribe<'a, H: Handler>(
        &'a self,
        pattern: &'a str,
        handler: H,
    ) -> SubscribeFuture<'a, Subscription> {
        self.subscribe_with(pattern, SubscribeOptions::default(), handler)
    }

    /// Subscribes `handler` with per-subscription `options` (timeout, queue, retries,
    /// dead letters, failure policy, consumer group); unset options take the bus-wide
    /// value.
    ///
    /// ```
    /// use std::time::Duration;
    /// use event_bus_core::{DeadLetter, Event, EventBus, EventBusExt, RetryPolicy, SubscribeOptions};
    /// # async fn demo(bus: &dyn EventBus) -> Result<(), event_bus_core::Error> {
    /// let options = SubscribeOptions::new()
    ///     .retry(RetryPolicy::exponential(5, Duration::from_millis(50), Duration::from_secs(5)))
    ///     .dead_letter(DeadLetter::Derived);
    /// let sub = bus
    ///     .subscribe_with("payments:*", options, |event: Event| async move {
    ///         println!("charging {}", event.id);
    ///         Ok::<(), std::io::Error>(())
    ///     })
    ///     .await?;
    /// # sub.cancel().await; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`EventBus::add_subscription`].
    fn subscribe_with<'a, H: Handler>(
        &'a self,
        pattern: &'a str,
        options: SubscribeOptions,
        handler: H,
    ) -> SubscribeFuture<'a, Subscription> {
        self.add_subscription(pattern, options, Subscriber::handler(handler))
    }

    /// Subscribes a [`EventStream`] to topics matching `pattern`, with the bus-wide
    /// queue settings.
    ///
    /// # Errors
    /// As [`EventBus::add_subscription`].
    fn subscribe_stream<'a>(&'a self, pattern: &'a str) -> SubscribeFuture<'a, EventStream> {
        self.subscribe_stream_with(pattern, SubscribeOptions::default())
    }

    /// Subscribes a [`EventStream`] with per-subscription `options` (queue size,
    /// overflow policy, consumer group; handler settings do not apply to streams).
    ///
    /// # Errors
    /// As [`EventBus::add_subscription`].
    fn subscribe_stream_with<'a>(
        &'a self,
        pattern: &'a str,
        options: SubscribeOptions,
    ) -> SubscribeFuture<'a, EventStream> {
        Box::pin(async move {
            let subscription = self
                .add_subscription(pattern, options, Subscriber::stream())
                .await?;
            Ok(EventStream::new(subscription))
        })
    }
}

impl<T: EventBus + ?Sized> EventBusExt for T {}

/// The state of a bus, for health checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Backend name.
    pub backend: &'static str,
    /// Whether the bus accepts publishes and subscriptions.
    pub open: bool,
    /// Whether the bus is connected to its server (always true for memory while open).
    pub connected: bool,
    /// The last connection error, if the bus is currently disconnected.
    pub last_error: Option<String>,
    /// Server settings that put the bus's guarantees at risk (e.g. a Redis eviction
    /// policy that may evict durable streams). They do not make the bus unhealthy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Backend-specific figures by name, such as the durable PostgreSQL mode's
    /// `durable_dead_tuples` and `durable_oldest_unacked_ms` (each backend documents
    /// its own). Empty for most backends.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, u64>,
}

impl Health {
    /// A health report.
    pub fn new(
        backend: &'static str,
        open: bool,
        connected: bool,
        last_error: Option<String>,
    ) -> Self {
        Self {
            backend,
            open,
            connected,
            last_error,
            warnings: Vec::new(),
            figures: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) figure `name`.
    pub fn with_figure(mut self, name: impl Into<String>, value: u64) -> Self {
        self.figures.insert(name.into(), value);
        self
    }

    /// Adds a warning.
    pub fn with_warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    /// Open and connected.
    pub fn is_healthy(&self) -> bool {
        self.open && self.connected
    }
}
