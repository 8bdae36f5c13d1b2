//! The NATS event bus.

mod connect;
mod publish;

use std::sync::{
    Arc, RwLock, Weak,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use async_nats::Client;
use async_trait::async_trait;
use event_bus_core::{
    Dispatcher, Error, Event, EventBus, Health, MetricsSnapshot, Pattern, Publish, PublishOutcome,
    SubscribeOptions, Subscriber, Subscription, SubscriptionId, Transport, flush::until_quiescent,
    topic::validate_topic,
};

use crate::{
    config::NatsConfig,
    echo::Echo,
    jetstream::{DeliveryMode, JetStream},
    link::Link,
    routes::{Receive, Routes},
    servers::Servers,
    subject::Subjects,
};

/// An event bus over core NATS publish/subscribe. Cheap to clone; clones share one bus.
///
/// One client connection publishes and receives. It is opened by
/// [`connect`](EventBus::connect) or on first use. See the [crate docs](crate) for the
/// subject layout, patterns, reconnects and delivery guarantees.
///
/// Dropping the last clone without [`close`](EventBus::close) stops receiving at once
/// (nothing waits for queued events).
#[derive(Clone)]
pub struct NatsEventBus {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: NatsConfig,
    servers: Servers,
    address: String,
    subjects: Subjects,
    dispatcher: Dispatcher,
    receive: Arc<Receive>,
    routes: Routes,
    link: Arc<Link>,
    client_name: String,
    closed: AtomicBool,
    started: RwLock<Option<Arc<Started>>>,
    connecting: tokio::sync::Mutex<()>,
    /// The durable side, with `delivery = "jetstream"`.
    jetstream: Option<Arc<JetStream>>,
}

/// The client of a connected bus.
pub(crate) struct Started {
    client: Client,
    echo: Arc<Echo>,
    /// The server's `max_payload`, read at connect and again when a publish exceeds it
    /// (a reconnect may reach a server with a smaller limit).
    max_payload: AtomicUsize,
}

impl NatsEventBus {
    /// A bus with `config`. Does not connect yet.
    ///
    /// # Errors
    /// [`Error::Config`] naming a bad key.
    pub fn new(config: NatsConfig) -> Result<Self, Error> {
        config.validate()?;
        let servers = config.servers()?;
        let dispatcher = Dispatcher::new(config.dispatcher.clone())?;
        let subjects = Subjects::new(&config.channel_prefix);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let jetstream = (config.delivery == DeliveryMode::Jetstream).then(|| {
            Arc::new(JetStream::new(
                config.jetstream.clone(),
                &config.channel_prefix,
                dispatcher.clone(),
                config.command_timeout(),
                config.max_message_bytes,
            ))
        });
        let inner = Arc::new(Inner {
            jetstream,
            address: servers.redacted(),
            servers,
            receive: Arc::new(Receive {
                dispatcher: dispatcher.clone(),
                subjects: subjects.clone(),
                max_message_bytes: config.max_message_bytes,
                malformed_log: Default::default(),
            }),
            client_name: format!("eventbus:{}:{}", config.channel_prefix, &id[..12]),
            subjects,
            dispatcher,
            routes: Routes::default(),
            link: Arc::default(),
            closed: AtomicBool::new(false),
            started: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            config,
        });
        inner
            .dispatcher
            .set_transport(Arc::downgrade(&inner) as Weak<dyn Transport>);
        Ok(Self { inner })
    }

    /// A bus connecting to `url` (`nats://` or `tls://`) with default settings.
    ///
    /// # Errors
    /// [`Error::Config`] if the URL cannot be used.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        Self::new(NatsConfig::from_url(url)?)
    }

    /// The configuration in use.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// The dispatcher behind this bus.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.inner.dispatcher
    }

    /// The subject that carries `topic` (see [`subject`](crate::subject)).
    pub fn subject_for(&self, topic: &str) -> String {
        self.inner.subjects.subject(topic)
    }

    /// The durable side of the bus.
    ///
    /// # Errors
    /// [`Error::Config`] (key `delivery`) when the bus uses pub/sub.
    pub(crate) fn jetstream(&self) -> Result<&Arc<JetStream>, Error> {
        self.inner.jetstream.as_ref().ok_or_else(|| {
            Error::config("delivery", "this operation needs delivery = \"jetstream\"")
        })
    }

    /// The name the connection gives the server (shown by its monitoring, `/connz`):
    /// `eventbus:{channel_prefix}:{random id}`.
    pub fn client_name(&self) -> &str {
        &self.inner.client_name
    }
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The running client, connecting on first use.
    pub(crate) async fn started(&self) -> Result<Arc<Started>, Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        if let Some(started) = read(&self.started).clone() {
            return Ok(started);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(started) = read(&self.started).clone() {
            return Ok(started);
        }
        let started = Arc::new(self.start().await?);
        let mut slot = self
            .started
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // close() sets the flag before it empties the slot: checking under the lock
        // means a concurrent close either sees this client or we see the flag.
        if self.is_closed() {
            return Err(Error::Closed);
        }
        *slot = Some(started.clone());
        Ok(started)
    }

    /// The round trip of `flush`: afterwards, everything this bus published before has
    /// come back from the server and been handed to the dispatcher.
    async fn round_trip(&self) -> Result<(), Error> {
        let started = self.started().await?;
        if let Some(js) = &self.jetstream {
            return js.round_trip().await;
        }
        started
            .echo
            .round_trip(&started.client, self.config.command_timeout())
            .await?;
        self.routes.drain().await;
        Ok(())
    }
}

fn read<T: Clone>(lock: &RwLock<Option<T>>) -> std::sync::RwLockReadGuard<'_, Option<T>> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for NatsEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEventBus")
            .field("config", &self.inner.config)
            .field("closed", &self.inner.is_closed())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Transport for Inner {
    async fn publish(&self, event: Event) -> Result<(), Error> {
        Inner::publish(self, event).await
    }

    async fn release(&self, id: SubscriptionId) {
        match &self.jetstream {
            Some(js) => js.release(id).await,
            None => self.routes.release(id).await,
        }
    }
}

#[async_trait]
impl EventBus for NatsEventBus {
    fn backend(&self) -> &'static str {
        "nats"
    }

    async fn connect(&self) -> Result<(), Error> {
        self.inner.started().await.map(|_| ())
    }

    fn publish(&self, event: Event) -> Publish<'_> {
        Publish::new(self.inner.publish(event))
    }

    /// Hands every event to the client before the first is written, so they travel
    /// together.
    async fn publish_batch(&self, events: Vec<Event>) -> Result<(), Error> {
        let inner = &self.inner;
        if inner.is_closed() {
            return Err(Error::Closed);
        }
        for event in &events {
            validate_topic(&event.topic)?;
        }
        if let Some(js) = &inner.jetstream {
            if events.is_empty() {
                return Ok(());
            }
            if let Err(e) = inner.started().await {
                return match (e, events.into_iter().next()) {
                    (Error::Closed, _) | (_, None) => Err(Error::Closed),
                    (e, Some(first)) => Err(Error::publish(first, PublishOutcome::NotSent, e)),
                };
            }
            return js.publish_batch(events).await;
        }
        let mut events = events.into_iter();
        let Some(first) = events.next() else {
            return Ok(());
        };
        let started = match inner.started().await {
            Ok(started) => started,
            Err(Error::Closed) => return Err(Error::Closed),
            Err(e) => return Err(Error::publish(first, PublishOutcome::NotSent, e)),
        };
        let count = events.len() + 1;
        for (sent, event) in std::iter::once(first).chain(events).enumerate() {
            if let Err(e) = inner.send(&started, event).await {
                return Err(publish::in_batch(e, sent, count));
            }
            inner.dispatcher.metrics().add_published(1);
        }
        Ok(())
    }

    async fn add_subscription(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        subscriber: Subscriber,
    ) -> Result<Subscription, Error> {
        let inner = &self.inner;
        if inner.is_closed() {
            return Err(Error::Closed);
        }
        let pattern = Pattern::parse(pattern)?;
        let started = inner.started().await?;
        if let Some(js) = &inner.jetstream {
            return js.subscribe(pattern, &options, subscriber).await;
        }
        let timeout = inner.config.command_timeout();
        let client = &started.client;
        inner
            .routes
            .add(
                &inner.receive,
                inner.subjects.target(&pattern),
                async |target: &str| {
                    client
                        .subscribe(target.to_owned())
                        .await
                        .map_err(|e| Error::connection(format!("subscribe to {target}"), e))
                },
                async || started.echo.round_trip(client, timeout).await,
                || inner.dispatcher.subscribe(pattern, &options, subscriber),
            )
            .await
    }

    /// Waits until the bus is quiescent (see [`event_bus_core::flush`]). Its round
    /// trip is a message on the bus's private inbox, which comes back after every
    /// message this bus published before it has been delivered to the bus, and then
    /// waiting until every server subscription's buffered messages are dispatched.
    async fn flush(&self) -> Result<(), Error> {
        self.inner.started().await?;
        loop {
            until_quiescent(&self.inner.dispatcher, || self.inner.round_trip()).await?;
            // Durable retries wait on the server: wait for them too.
            match &self.inner.jetstream {
                Some(js) if js.retrying() => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                _ => return Ok(()),
            }
        }
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.inner.dispatcher.metrics().snapshot()
    }

    /// Open and connected; in the durable mode, with a warning when the events stream
    /// cannot be read (deleted, JetStream unavailable) or is kept in memory only.
    async fn health(&self) -> Health {
        let inner = &self.inner;
        let started = read(&inner.started).clone();
        let connected = started.as_ref().is_some_and(|s| {
            s.client.connection_state() == async_nats::connection::State::Connected
        });
        let (_, last_error) = inner.link.status();
        let health = Health::new(
            "nats",
            !inner.is_closed(),
            connected,
            (!connected).then_some(last_error).flatten(),
        );
        match &inner.jetstream {
            Some(js) if connected => js
                .warnings()
                .await
                .into_iter()
                .fold(health, Health::with_warning),
            _ => health,
        }
    }

    /// Stops receiving first (every server subscription ends, and what the client
    /// still held for it is dispatched), then closes the dispatcher (queued events
    /// drain or are counted as dropped), then the connection.
    async fn close(&self) -> Result<(), Error> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(js) = &inner.jetstream {
            js.stop_reading();
        }
        let started = inner
            .started
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        inner.routes.stop_all().await;
        inner.dispatcher.close().await;
        if let Some(js) = &inner.jetstream {
            js.stop_all().await;
        }
        if let Some(started) = started {
            let _ =
                tokio::time::timeout(inner.config.command_timeout(), started.client.flush()).await;
            let _ = started.client.drain().await;
        }
        Ok(())
    }
}
