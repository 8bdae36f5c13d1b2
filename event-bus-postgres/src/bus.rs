//! The PostgreSQL event bus.

use std::sync::{
    Arc, Weak,
    atomic::{AtomicBool, Ordering},
};

use async_trait::async_trait;
use event_bus_core::{
    Dispatcher, Error, Event, EventBus, Health, MetricsSnapshot, Pattern, Publish,
    SubscribeOptions, Subscriber, Subscription, SubscriptionId, Transport,
    deadline::{Operation, within},
    flush::until_quiescent,
};
use tokio_postgres::GenericClient;

use crate::{
    channel::Channels,
    config::PostgresConfig,
    connect::Connector,
    durable::{DeadLetterEntry, DeliveryMode, Durable, DurableGroupStats, DurableHealth},
    large::LargeStore,
    listener::Listener,
    outgoing::{Outgoing, publish_error},
    publisher::{Pool, PoolSettings},
    receive::ReceiveCtx,
};

/// An event bus over PostgreSQL LISTEN/NOTIFY. Cheap to clone; clones share one bus.
///
/// See the [crate docs](crate) for the channel layout, large payloads, transactions and
/// delivery guarantees.
#[derive(Clone)]
pub struct PostgresEventBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: PostgresConfig,
    dispatcher: Dispatcher,
    channels: Channels,
    pool: Arc<Pool>,
    store: Arc<LargeStore>,
    listener: Arc<Listener>,
    /// The durable mode (`delivery = "table"`), if chosen.
    durable: Option<Arc<Durable>>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The receive loop holds the listener, not the bus: stop it with the bus.
        self.listener.abort_task();
    }
}

impl PostgresEventBus {
    /// A bus with `config`. Connects on [`connect`](EventBus::connect) or first use.
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad key (`channel_prefix`, `url`, ...).
    pub fn new(config: PostgresConfig) -> Result<Self, Error> {
        let (pg, verify_certificates) = config.parse()?;
        let channels = Channels::new(&config.channel_prefix)?;
        let shown = crate::redact::describe(&pg, verify_certificates);
        let connector = Arc::new(Connector::new(
            pg,
            verify_certificates,
            &config.channel_prefix,
            config.command_timeout(),
            shown,
        )?);
        let listener = Arc::new(Listener::new(connector.clone(), channels.clone()));
        let dispatcher = Dispatcher::new(config.dispatcher.clone())?;
        let ttl = config.large_payload_ttl();
        let settings = PoolSettings {
            size: config.pool_size,
            wait: config.pool_timeout(),
        };
        let pool = Arc::new(Pool::new(connector.clone(), settings)?);
        let durable = match config.delivery {
            DeliveryMode::Table => Some(Arc::new(Durable::new(
                pool.clone(),
                Arc::new(Pool::with_role(
                    connector,
                    settings,
                    "claim",
                    Some(crate::durable::CLAIM_SESSION),
                )?),
                &config.channel_prefix,
                config.durable.clone(),
                config.max_message_bytes,
            ))),
            DeliveryMode::Notify => None,
        };
        let inner = Arc::new(Inner {
            dispatcher,
            pool,
            durable,
            store: Arc::new(LargeStore::new(&config.channel_prefix, ttl)),
            channels,
            listener,
            closed: AtomicBool::new(false),
            config,
        });
        // Weak: the dispatcher is part of `inner`.
        let transport: Weak<dyn Transport> = Arc::downgrade(&inner) as Weak<Inner>;
        inner.dispatcher.set_transport(transport);
        Ok(Self { inner })
    }

    /// The channels this bus LISTENs on for its subscriptions (one per exact topic in
    /// use, plus `{channel_prefix}_all` while a wildcard subscription exists), sorted.
    /// A channel goes when its last subscription ends, however it ends.
    pub async fn listening_channels(&self) -> Vec<String> {
        self.inner.listener.listened().await
    }

    /// The dispatcher behind this bus.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.inner.dispatcher
    }

    /// The configuration in use.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// Publishes `event` through the caller's connection or transaction (anything that
    /// implements [`GenericClient`]: a `Client`, a `Transaction`, or a pooled client that
    /// dereferences to one). NOTIFY is transactional: inside a transaction the event is
    /// delivered when it commits and never if it rolls back; on a client outside a
    /// transaction it is delivered at once. Large events are stored in the same
    /// transaction. The bus must not be closed; its own connections are used only to
    /// create the large-payload table once.
    ///
    /// ```no_run
    /// # async fn demo(bus: &event_bus_postgres::PostgresEventBus, client: &mut tokio_postgres::Client)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// use event_bus_core::{Event, EventType};
    /// let tx = client.transaction().await?;
    /// tx.execute("UPDATE orders SET paid = true WHERE id = $1", &[&42_i64]).await?;
    /// bus.publish_in(&tx, Event::new(EventType::Updated, "orders:paid", serde_json::json!({"id": 42}))).await?;
    /// tx.commit().await?; // subscribers get the event now, not before
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`]; [`Error::InvalidTopic`]; [`Error::Publish`] handing the event
    /// back when the statement fails (the caller's transaction is then aborted, as with
    /// any failed statement).
    pub async fn publish_in<C: GenericClient + Sync>(
        &self,
        client: &C,
        event: Event,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        inner.check_open()?;
        if let Some(durable) = &inner.durable {
            let columns = crate::durable::columns(
                std::slice::from_ref(&event),
                inner.config.max_message_bytes,
            )
            .map_err(|e| inner.count_failed(e, 1))?;
            durable
                .publish_in(client, &columns)
                .await
                .map_err(|e| inner.count_failed(publish_error(event, e), 1))?;
            inner.dispatcher.metrics().add_published(1);
            return Ok(());
        }
        let events = [event];
        let out = Outgoing::new(&inner.channels, &events, inner.config.max_message_bytes)
            .map_err(|(_, e)| inner.count_failed(e, 1))?;
        let sent = out.send_in(client, &inner.pool, &inner.store).await;
        drop(out);
        let [event] = events;
        sent.map_err(|e| inner.count_failed(publish_error(event, e), 1))?;
        inner.dispatcher.metrics().add_published(1);
        Ok(())
    }
}

/// The durable mode's operations (`delivery = "table"`); each fails with
/// [`Error::Config`] naming `delivery` in the default mode.
impl PostgresEventBus {
    /// Up to `limit` dead letters of consumer group `group`, oldest event first.
    ///
    /// # Errors
    /// [`Error::Config`] outside the durable mode; [`Error::Connection`].
    pub async fn dead_letters(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.inner.durable()?.dead_letters(group, limit).await
    }

    /// Puts dead letters of `group` back into its live deliveries, attempts reset:
    /// those with the given event ids, or all with `None`. Returns how many moved.
    ///
    /// # Errors
    /// [`Error::Config`] outside the durable mode; [`Error::Connection`].
    pub async fn redrive(&self, group: &str, event_ids: Option<&[i64]>) -> Result<u64, Error> {
        self.inner.durable()?.redrive(group, event_ids).await
    }

    /// Acked, retried, reclaimed and dead-lettered counts of this bus, and the lag
    /// (unacknowledged deliveries) of every group, per group.
    ///
    /// # Errors
    /// [`Error::Config`] outside the durable mode; [`Error::Connection`].
    pub async fn durable_stats(&self) -> Result<Vec<DurableGroupStats>, Error> {
        let durable = self.inner.durable()?;
        durable.ensure_schema().await?;
        durable.stats().await
    }

    /// Dead tuples of the delivery table and the age of the oldest unacknowledged
    /// delivery.
    ///
    /// # Errors
    /// [`Error::Config`] outside the durable mode; [`Error::Connection`].
    pub async fn durable_health(&self) -> Result<DurableHealth, Error> {
        self.inner.durable()?.health().await
    }
}

/// The dispatcher publishes dead letters through the bus and releases the LISTEN
/// reference of subscriptions that end.
#[async_trait]
impl Transport for Inner {
    async fn publish(&self, event: Event) -> Result<(), Error> {
        self.publish_all(vec![event]).await
    }

    async fn release(&self, id: SubscriptionId) {
        if let Some(durable) = &self.durable {
            durable.release(id).await;
        }
        self.listener.release_sub(id).await;
    }
}

impl Inner {
    /// A subscription of the durable mode: LISTEN for wake-ups (unless NOTIFY is off),
    /// subscribe locally, register the group and start its claimer.
    async fn add_durable(
        &self,
        durable: &Arc<Durable>,
        pattern: Pattern,
        options: SubscribeOptions,
        subscriber: Subscriber,
    ) -> Result<Subscription, Error> {
        let resolved = options.resolve(self.dispatcher.config())?;
        durable.ensure_schema().await?;
        let channel = durable.channel().to_owned();
        let wake = self.config.durable.notify;
        if wake {
            self.start_listener().await?;
            self.listener.acquire(&channel).await?;
        }
        let subscription = match self
            .dispatcher
            .subscribe(pattern.clone(), &options, subscriber)
        {
            Ok(subscription) => subscription,
            Err(e) => {
                if wake {
                    self.listener.release(&channel).await;
                }
                return Err(e);
            }
        };
        if wake {
            self.listener.register(subscription.id(), channel);
        }
        let started = durable
            .start(
                &self.dispatcher,
                subscription.id(),
                &pattern,
                resolved.group.as_deref(),
                resolved.retry.max_attempts,
            )
            .await;
        if let Err(e) = started {
            subscription.cancel().await;
            return Err(e);
        }
        Ok(subscription)
    }

    fn durable(&self) -> Result<&Arc<Durable>, Error> {
        self.durable.as_ref().ok_or_else(|| {
            Error::config(
                "delivery",
                "this needs the durable mode: delivery = \"table\"",
            )
        })
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) || self.dispatcher.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Counts the `events` of a failed publish in `publish_failed`, returning `error`.
    fn count_failed(&self, error: Error, events: u64) -> Error {
        if matches!(error, Error::Publish { .. }) {
            self.dispatcher.metrics().add_publish_failed(events);
        }
        error
    }

    async fn start_listener(&self) -> Result<(), Error> {
        self.dispatcher.start();
        let ctx = ReceiveCtx {
            dispatcher: self.dispatcher.clone(),
            pool: self.pool.clone(),
            store: self.store.clone(),
            max_bytes: self.config.max_message_bytes,
            wire_warnings: Default::default(),
            durable: self.durable.clone(),
        };
        self.listener.start(ctx).await
    }

    /// Sends a token on this bus's private flush channel and waits, up to `after`,
    /// until the receive loop has dispatched it: PostgreSQL delivers notifications in
    /// commit order, so everything this bus published before has been received and
    /// dispatched by then.
    async fn round_trip(&self, after: std::time::Duration) -> Result<(), Error> {
        if !self.listener.is_connected().await {
            return Err(Error::connection(
                "flush",
                "the LISTEN connection is down; reconnecting",
            ));
        }
        let token = uuid::Uuid::new_v4().to_string();
        let arrived = self.listener.expect_flush(token.clone());
        if let Err(e) = self.pool.notify_one(self.channels.flush(), &token).await {
            self.listener.forget_flush(&token);
            return Err(Error::connection("flush", e));
        }
        match within(Operation::Flush, after, arrived).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::connection(
                "flush",
                "the LISTEN connection was lost while flushing",
            )),
            Err(timeout) => {
                self.listener.forget_flush(&token);
                Err(timeout)
            }
        }
    }

    async fn publish_all(&self, events: Vec<Event>) -> Result<(), Error> {
        self.check_open()?;
        let max = self.config.max_message_bytes;
        // Validate and encode everything first: an invalid topic publishes nothing.
        let count = events.len() as u64;
        if let Some(durable) = &self.durable {
            let columns =
                crate::durable::columns(&events, max).map_err(|e| self.count_failed(e, count))?;
            if let Err(failure) = durable.publish(&columns).await {
                let mut events = events;
                return Err(self.count_failed(publish_error(events.swap_remove(0), failure), count));
            }
            self.dispatcher.metrics().add_published(count);
            return Ok(());
        }
        let out = Outgoing::new(&self.channels, &events, max)
            .map_err(|(_, e)| self.count_failed(e, count))?;
        let sent = out.send(&self.pool, &self.store).await;
        drop(out);
        if let Err(failure) = sent {
            let mut events = events;
            return Err(match events.len() {
                0 => Error::connection("publishing", failure.source),
                _ => self.count_failed(publish_error(events.swap_remove(0), failure), count),
            });
        }
        self.dispatcher.metrics().add_published(events.len() as u64);
        Ok(())
    }
}

/// Adds the durable mode's figures to `health`: `durable_dead_tuples` and, while a
/// delivery is unacknowledged, `durable_oldest_unacked_ms`; a warning if they could not
/// be read.
fn durable_figures(health: Health, figures: Result<DurableHealth, Error>) -> Health {
    match figures {
        Ok(figures) => {
            let health = health.with_figure("durable_dead_tuples", figures.dead_tuples);
            match figures.oldest_unacked {
                Some(age) => health.with_figure(
                    "durable_oldest_unacked_ms",
                    u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                ),
                None => health,
            }
        }
        Err(e) => health.with_warning(format!("could not read the durable mode's health: {e}")),
    }
}

impl std::fmt::Debug for PostgresEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEventBus")
            .field("config", &self.inner.config)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

#[async_trait]
impl EventBus for PostgresEventBus {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    /// Opens a publishing connection. The LISTEN connection is opened by the first
    /// `subscribe` or `flush`, so a bus that only publishes adds no listening session
    /// (every listening session costs the server work on every notification).
    async fn connect(&self) -> Result<(), Error> {
        self.inner.check_open()?;
        self.inner.dispatcher.start();
        self.inner.pool.warm_up().await
    }

    fn publish(&self, event: Event) -> Publish<'_> {
        Publish::new(self.inner.publish_all(vec![event]))
    }

    /// Publishes `events` in order in one statement (`pg_notify` over `unnest` of two
    /// arrays, plus one insert for large events). If the statement fails, the error
    /// hands back the first event; none of the batch was published.
    async fn publish_batch(&self, events: Vec<Event>) -> Result<(), Error> {
        if events.is_empty() {
            return self.inner.check_open();
        }
        self.inner.publish_all(events).await
    }

    async fn add_subscription(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        subscriber: Subscriber,
    ) -> Result<Subscription, Error> {
        let inner = &self.inner;
        inner.check_open()?;
        let pattern = Pattern::parse(pattern)?;
        if let Some(durable) = &inner.durable {
            return inner
                .add_durable(durable, pattern, options, subscriber)
                .await;
        }
        let channel = match pattern.literal() {
            Some(topic) => inner.channels.topic(topic)?,
            None => inner.channels.all().to_owned(),
        };
        inner.start_listener().await?;
        inner.listener.acquire(&channel).await?;
        let subscription = match inner.dispatcher.subscribe(pattern, &options, subscriber) {
            Ok(subscription) => subscription,
            Err(e) => {
                inner.listener.release(&channel).await;
                return Err(e);
            }
        };
        inner.listener.register(subscription.id(), channel);
        Ok(subscription)
    }

    /// Waits until the bus is quiescent (see [`event_bus_core::flush`]). Its round
    /// trip sends a token on this bus's private flush channel and waits until the
    /// receive loop has dispatched it (PostgreSQL delivers notifications in commit
    /// order, so everything this bus published before has been received and dispatched
    /// by then). A round trip fails with [`Error::Timeout`] after six times
    /// `command_timeout_seconds`, or with [`Error::Connection`] if the LISTEN connection is down.
    async fn flush(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner.check_open()?;
        if let Some(durable) = &inner.durable {
            // A failed attempt goes back to the server as a scheduled retry: go round
            // again until a round schedules none.
            loop {
                let retried = durable.retries_scheduled();
                until_quiescent(&inner.dispatcher, || durable.round_trip()).await?;
                // Acknowledgements are sent in the background: wait for their answers.
                durable.settled().await;
                if durable.retries_scheduled() == retried {
                    return Ok(());
                }
            }
        }
        inner.start_listener().await?;
        let after = inner.config.command_timeout() * 6;
        until_quiescent(&inner.dispatcher, || inner.round_trip(after)).await
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.inner.dispatcher.metrics().snapshot()
    }

    /// `connected` is the LISTEN connection's state once it is open, else the
    /// publishing connections'. In the durable mode a connected bus also reads the
    /// delivery table's figures (see [`durable_health`](Self::durable_health)):
    /// `figures` gets `durable_dead_tuples` and, while some delivery is unacknowledged,
    /// `durable_oldest_unacked_ms`; if they cannot be read, a warning says why.
    async fn health(&self) -> Health {
        let open = self.inner.check_open().is_ok();
        let connected = open
            && if self.inner.listener.is_started().await {
                self.inner.listener.is_connected().await
            } else {
                self.inner.pool.is_connected().await
            };
        let last_error = if connected {
            None
        } else {
            self.inner.listener.last_error()
        };
        let health = Health::new("postgres", open, connected, last_error);
        match &self.inner.durable {
            Some(durable) if connected => durable_figures(health, durable.health().await),
            _ => health,
        }
    }

    /// Closes in this order, so that every event the bus received is delivered or
    /// counted in `dropped`: refuse new publishes and subscriptions; one round trip on
    /// the flush channel, so that everything this bus published is received; stop
    /// reading the LISTEN connection and dispatch what was read (what still waits for
    /// queue space after `dispatcher.shutdown_timeout_seconds` is counted in
    /// `dropped`); close the dispatcher (see [`EventBus::close`]); close the
    /// connections.
    async fn close(&self) -> Result<(), Error> {
        let inner = &self.inner;
        // A second call returns at once (it must not close the dispatcher before the
        // first call has stopped the receive path).
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + inner.dispatcher.config().shutdown_timeout();
        if let Some(durable) = &inner.durable {
            // Claimed events not yet queued are claimed again after their lease.
            durable.stop_all();
        }
        if inner.durable.is_none() && inner.listener.is_started().await {
            let within = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout_at(deadline, inner.round_trip(within)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "closing: the last round trip failed"),
                Err(_) => tracing::debug!("closing: the last round trip timed out"),
            }
        }
        inner.listener.shutdown(deadline).await;
        inner.dispatcher.close().await;
        if let Some(durable) = &inner.durable {
            durable.close().await;
        }
        inner.pool.close().await;
        Ok(())
    }
}
