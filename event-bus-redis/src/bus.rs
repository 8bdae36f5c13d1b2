//! The Redis event bus.

use std::sync::{
    Arc, RwLock, Weak,
    atomic::{AtomicBool, Ordering},
};

use async_trait::async_trait;
use event_bus_core::{
    Dispatcher, Error, Event, EventBus, Health, MetricsSnapshot, Pattern, Publish, PublishOutcome,
    SubscribeOptions, Subscriber, Subscription, SubscriptionId, Transport,
    deadline::{self, Operation},
    flush::until_quiescent,
    topic::validate_topic,
};
use redis::{ConnectionAddr, ProtocolVersion, io::tcp::TcpSettings};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    buffer::{MESSAGES_PER_QUEUE_SLOT, ReceiveBuffer},
    channel::ChannelNames,
    config::RedisConfig,
    listener::{Listener, Progress, ping},
    publisher::{Publisher, PublisherConfig},
    registry::Registry,
    streams::{DeliveryMode, Streams, StreamsSetup},
};

/// An event bus over Redis pub/sub. Cheap to clone; clones share one bus.
///
/// Publishing uses one multiplexed connection (concurrent publishes are pipelined on
/// it); one more connection, dedicated to pub/sub, receives. Both are opened by
/// [`connect`](EventBus::connect) or on first use. See the [crate docs](crate) for the
/// channel layout, patterns, reconnects and delivery guarantees.
///
/// Dropping the last clone without [`close`](EventBus::close) stops receiving at once
/// (nothing waits for queued events).
#[derive(Clone)]
pub struct RedisEventBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    names: ChannelNames,
    publish_client: redis::Client,
    pubsub_client: redis::Client,
    pubsub_name: String,
    publish_name: String,
    /// The server's TCP address, probed while reconnecting.
    probe: Vec<(String, u16)>,
    dispatcher: Dispatcher,
    registry: Arc<Registry>,
    progress: Arc<Progress>,
    buffer: Arc<ReceiveBuffer>,
    closed: AtomicBool,
    started: RwLock<Option<Arc<Started>>>,
    connecting: tokio::sync::Mutex<()>,
    /// What the dispatcher publishes dead letters and releases subscriptions through.
    transport: Arc<BusTransport>,
    /// The durable side, with `delivery = "streams"`.
    streams: Option<Arc<Streams>>,
}

/// The bus as the dispatcher's [`Transport`]: publishes through the bus, releases
/// server subscriptions in the registry. Holds the bus weakly (the bus owns it).
struct BusTransport(Weak<Inner>);

#[async_trait]
impl Transport for BusTransport {
    async fn publish(&self, event: Event) -> Result<(), Error> {
        match self.0.upgrade() {
            Some(inner) => RedisEventBus { inner }.publish(event).await,
            None => Err(Error::Closed),
        }
    }

    async fn release(&self, id: SubscriptionId) {
        if let Some(inner) = self.0.upgrade() {
            inner.registry.release(id).await;
            if let Some(streams) = &inner.streams {
                streams.release(id).await;
            }
        }
    }
}

/// The connections and the listener task of a connected bus.
struct Started {
    publisher: Publisher,
    listener: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// Tells the listener to stop, with the close deadline.
    stop: watch::Sender<Option<Instant>>,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get_mut().take() {
            listener.abort();
        }
    }
}

impl RedisEventBus {
    /// A bus with `config`. Does not connect yet.
    ///
    /// # Errors
    /// [`Error::Config`] naming a bad key.
    pub fn new(config: RedisConfig) -> Result<Self, Error> {
        config.validate()?;
        if config.uses_tls() {
            // Use ring unless the application installed a provider already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let info = config
            .connection_info()?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = |info| {
            redis::Client::open(info).map_err(|e| Error::config("url", format!("{:?}", e.kind())))
        };
        let probe = match info.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                vec![(host.clone(), *port)]
            }
            _ => Vec::new(),
        };
        // Both connections speak RESP3: the publishing one reports its own loss.
        let pubsub_client = client(info.set_redis_settings(resp3))?;
        let publish_client = pubsub_client.clone();
        let registry = Arc::new(Registry::new(config.command_timeout()));
        let dispatcher = Dispatcher::new(config.dispatcher.clone())?;
        let buffer = Arc::new(ReceiveBuffer::new(
            config
                .dispatcher
                .queue_maxsize
                .saturating_mul(MESSAGES_PER_QUEUE_SLOT),
            config.receive_buffer_bytes,
            dispatcher.metrics().clone(),
        ));
        let id = uuid::Uuid::new_v4().simple().to_string();
        let streams = (config.delivery == DeliveryMode::Streams).then(|| {
            Arc::new(Streams::new(StreamsSetup {
                config: config.streams.clone(),
                prefix: config.channel_prefix.clone(),
                client: pubsub_client.clone(),
                dispatcher: dispatcher.clone(),
                timeout: config.command_timeout(),
                max_message_bytes: config.max_message_bytes,
                id: id.clone(),
            }))
        });
        let inner = Arc::new_cyclic(|inner| Inner {
            streams,
            transport: Arc::new(BusTransport(inner.clone())),
            names: ChannelNames::new(&config.channel_prefix),
            pubsub_name: format!("eventbus:{}:sub:{}", config.channel_prefix, &id[..12]),
            publish_name: format!("eventbus:{}:pub:{}", config.channel_prefix, &id[..12]),
            config,
            publish_client,
            pubsub_client,
            probe,
            dispatcher,
            registry,
            progress: Arc::default(),
            buffer,
            closed: AtomicBool::new(false),
            started: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
        });
        let transport: Weak<dyn Transport> = Arc::downgrade(&inner.transport) as Weak<BusTransport>;
        inner.dispatcher.set_transport(transport);
        Ok(Self { inner })
    }

    /// A bus connecting to `url` (`redis://` or `rediss://`) with default settings.
    ///
    /// # Errors
    /// [`Error::Config`] if the URL cannot be used.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        Self::new(RedisConfig::from_url(url)?)
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The dispatcher behind this bus.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.inner.dispatcher
    }

    /// The Redis channel that carries `topic`: `{channel_prefix}:{topic}`.
    pub fn channel_for(&self, topic: &str) -> String {
        self.inner.names.channel(topic)
    }

    /// The `CLIENT SETNAME` name of the pub/sub connection:
    /// `eventbus:{channel_prefix}:sub:{random id}`.
    pub fn pubsub_client_name(&self) -> &str {
        &self.inner.pubsub_name
    }

    /// The `CLIENT SETNAME` name of the publishing connection:
    /// `eventbus:{channel_prefix}:pub:{random id}`.
    pub fn publish_client_name(&self) -> &str {
        &self.inner.publish_name
    }

    /// The durable side of the bus.
    ///
    /// # Errors
    /// [`Error::Config`] (key `delivery`) when the bus uses pub/sub.
    pub(crate) fn streams(&self) -> Result<&Arc<Streams>, Error> {
        self.inner
            .streams
            .as_ref()
            .ok_or_else(|| Error::config("delivery", "this operation needs delivery = \"streams\""))
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// The running connections, opening them on first use.
    /// The round trip of `flush`: afterwards, everything this bus published before
    /// has come back from the server and been handed to the dispatcher.
    async fn round_trip(&self) -> Result<(), Error> {
        let inner = &self.inner;
        if let Some(streams) = &inner.streams {
            return streams.round_trip().await;
        }
        let mut conn = inner
            .registry
            .connection()
            .await
            .ok_or_else(|| Error::connection("flush", "the pub/sub connection is down"))?;
        ping(&mut conn, inner.config.command_timeout()).await?;
        let target = inner.progress.received.load(Ordering::Acquire);
        let mut processed = inner.progress.processed.subscribe();
        let mut link = inner.registry.watch_link();
        tokio::select! {
            done = processed.wait_for(|n| *n >= target) => {
                done.map_err(|_| Error::Closed)?;
            }
            _ = link.wait_for(|l| !l.connected) => {
                return Err(Error::connection("flush", "the pub/sub connection was lost"));
            }
        }
        Ok(())
    }

    async fn started(&self) -> Result<Arc<Started>, Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        if let Some(started) = read(&self.inner.started).clone() {
            return Ok(started);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(started) = read(&self.inner.started).clone() {
            return Ok(started);
        }
        let started = Arc::new(self.start().await?);
        let mut slot = self
            .inner
            .started
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // close() sets the flag before it empties the slot: checking under the lock
        // means a concurrent close either sees this connection or we see the flag.
        if self.is_closed() {
            return Err(Error::Closed);
        }
        *slot = Some(started.clone());
        Ok(started)
    }

    async fn start(&self) -> Result<Started, Error> {
        let inner = &self.inner;
        let timeout = inner.config.command_timeout();
        let at = |e: Error| {
            // A plain server never answers a TLS handshake: say so instead of just "timed out".
            let hint = match e {
                Error::Timeout { .. } if inner.config.uses_tls() => {
                    " (no answer to the TLS handshake: does the server speak TLS?)"
                }
                _ => "",
            };
            let address = inner.config.redacted_address();
            Error::connection(format!("connect to {address}{hint}"), e)
        };
        let publisher = Publisher::connect(PublisherConfig {
            client: inner.publish_client.clone(),
            names: inner.names.clone(),
            timeout,
            max_backoff: inner.dispatcher.config().consumer_error_sleep(),
            max_message_bytes: inner.config.max_message_bytes,
            probe: inner.probe.clone(),
            name: inner.publish_name.clone(),
            stream: inner.streams.as_ref().map(|s| s.keys.stream()),
        })
        .await
        .map_err(at)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(None);
        let listener = Listener {
            client: inner.pubsub_client.clone(),
            name: inner.pubsub_name.clone(),
            names: inner.names.clone(),
            registry: inner.registry.clone(),
            dispatcher: inner.dispatcher.clone(),
            progress: inner.progress.clone(),
            buffer: inner.buffer.clone(),
            max_message_bytes: inner.config.max_message_bytes,
            timeout,
            ping_interval: inner.config.ping_interval(),
            probe: inner.probe.clone(),
            stop: stop_rx,
            tx,
            malformed_log: Default::default(),
        };
        let conn = deadline::call(Operation::Connect, timeout, listener.open(0))
            .await
            .map_err(at)?;
        inner.registry.attach(conn).await.map_err(at)?;
        inner.dispatcher.start();
        Ok(Started {
            publisher,
            listener: tokio::sync::Mutex::new(Some(tokio::spawn(listener.run(rx, 0)))),
            stop,
        })
    }

    /// Connects for a publish, handing `event` back on failure.
    async fn publisher_for(&self, event: Event) -> Result<(Arc<Started>, Event), Error> {
        match self.started().await {
            Ok(started) => Ok((started, event)),
            Err(Error::Closed) => Err(Error::Closed),
            Err(e) => Err(Error::publish(event, PublishOutcome::NotSent, e)),
        }
    }

    /// Counts the `events` of a failed publish in `publish_failed`.
    fn counted<T>(&self, result: Result<T, Error>, events: u64) -> Result<T, Error> {
        if let Err(Error::Publish { .. }) = &result {
            self.inner.dispatcher.metrics().add_publish_failed(events);
        }
        result
    }
}

fn read<T: Clone>(lock: &RwLock<Option<T>>) -> std::sync::RwLockReadGuard<'_, Option<T>> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for RedisEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEventBus")
            .field("config", &self.inner.config)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventBus for RedisEventBus {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn connect(&self) -> Result<(), Error> {
        self.started().await.map(|_| ())
    }

    fn publish(&self, event: Event) -> Publish<'_> {
        Publish::new(async move {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            validate_topic(&event.topic)?;
            let (started, event) = self.counted(self.publisher_for(event).await, 1)?;
            self.counted(started.publisher.publish(event).await, 1)?;
            self.inner.dispatcher.metrics().add_published(1);
            Ok(())
        })
    }

    async fn publish_batch(&self, events: Vec<Event>) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        for event in &events {
            validate_topic(&event.topic)?;
        }
        let count = events.len() as u64;
        if count == 0 {
            return Ok(());
        }
        let started = match self.started().await {
            Ok(started) => started,
            Err(Error::Closed) => return Err(Error::Closed),
            Err(e) => {
                return self.counted(
                    Err(match events.into_iter().next() {
                        Some(first) => Error::publish(first, PublishOutcome::NotSent, e),
                        None => e,
                    }),
                    count,
                );
            }
        };
        self.counted(started.publisher.publish_batch(events).await, count)?;
        self.inner.dispatcher.metrics().add_published(count);
        Ok(())
    }

    async fn add_subscription(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        subscriber: Subscriber,
    ) -> Result<Subscription, Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let pattern = Pattern::parse(pattern)?;
        self.started().await?;
        let inner = &self.inner;
        if let Some(streams) = &inner.streams {
            return streams.subscribe(pattern, &options, subscriber).await;
        }
        let target = inner.names.target(&pattern);
        inner
            .registry
            .subscribe(target, || {
                inner.dispatcher.subscribe(pattern, &options, subscriber)
            })
            .await
    }

    /// Waits until the bus is quiescent (see [`event_bus_core::flush`]). Its round
    /// trip is a `PING` on the pub/sub connection, answered after every message the
    /// server queued for it before, and then waiting until the listener has dispatched
    /// everything received up to that answer. In the durable mode it also waits for
    /// retries due on the server and for the acknowledgements of what was handled to
    /// be written.
    async fn flush(&self) -> Result<(), Error> {
        self.started().await?;
        loop {
            until_quiescent(&self.inner.dispatcher, || self.round_trip()).await?;
            // Durable retries wait on the server: wait for them too, and for the
            // acknowledgements still on their way (the acker writes them in batches).
            match &self.inner.streams {
                Some(streams) if streams.retrying() => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Some(streams) => {
                    streams.acking.idle().await;
                    return Ok(());
                }
                None => return Ok(()),
            }
        }
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.inner.dispatcher.metrics().snapshot()
    }

    /// Open and connected; in the durable mode, with a warning when the server's
    /// `maxmemory-policy` may evict keys (an evicted stream loses its events): it
    /// should be `noeviction`.
    async fn health(&self) -> Health {
        let link = self.inner.registry.link();
        let health = Health::new("redis", !self.is_closed(), link.connected, link.last_error);
        match &self.inner.streams {
            Some(streams) if link.connected => match streams.eviction_risk().await {
                Some(warning) => health.with_warning(warning),
                None => health,
            },
            _ => health,
        }
    }

    /// Closes in order, so that every event the bus received is, when this returns,
    /// delivered or counted in `dropped`: the listener stops receiving (unsubscribes,
    /// then hands everything it holds to the dispatcher until the deadline and counts
    /// the rest), then the dispatcher drains its queues until the same deadline
    /// (`dispatcher.shutdown_timeout_seconds` from now), then the connections close.
    async fn close(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.dispatcher.config().shutdown_timeout();
        inner.closed.store(true, Ordering::Release);
        if let Some(streams) = &inner.streams {
            streams.stop_reading();
        }
        let started = inner
            .started
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(started) = &started {
            started.stop.send_replace(Some(deadline));
            if let Some(listener) = started.listener.lock().await.take() {
                let _ = listener.await;
            }
        }
        inner.registry.detach(None).await;
        inner.dispatcher.close_by(deadline).await;
        if let Some(streams) = &inner.streams {
            streams.stop_all().await;
        }
        drop(started);
        Ok(())
    }
}
