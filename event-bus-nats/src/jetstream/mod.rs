//! Durable delivery over JetStream with durable pull consumers (`delivery = "jetstream"`).
//!
//! # Streams and subjects
//!
//! | stream | subjects | holds |
//! |---|---|---|
//! | `eventbus_{prefix}` | `{prefix}.>` | every event, on its topic's subject (see [`subject`](crate::subject)) |
//! | `eventbus_{prefix}-aux` | `{prefix}-aux.dead.{group}` | the dead letters of consumer group `group` |
//! | | `{prefix}-aux.part` | the parts of events larger than the server's `max_payload` |
//!
//! A prefix holds no `-`, so these subjects never meet another prefix's. Each consumer
//! group is one durable pull consumer of the events stream, named
//! `g_{readable part of the group}_{16 hex digits of its hash}` and filtered on the
//! subscription subject of its pattern; every member of the group pulls from it, so
//! they share its events. Each durable subscription runs one consumer task; see
//! `docs/backends/nats.md` for the guarantees.

pub(crate) mod admin;
mod config;
mod consumer;
pub(crate) mod names;
mod publish;
mod settle;
mod stats;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock, atomic::AtomicU64},
    time::Duration,
};

use async_nats::{
    Client,
    jetstream::{self, Context, consumer::pull, stream},
};
use event_bus_core::{
    Dispatcher, Error, Pattern, SubscribeOptions, Subscriber, Subscription, SubscriptionId,
    deadline::Operation,
};

pub use self::{
    admin::NatsGroupInfo,
    config::{DeliveryMode, JetStreamConfig, StartPosition},
    stats::JetStreamMetrics,
};
use self::{consumer::ConsumerHandle, names::Names, stats::Stats};
use crate::subject::Subjects;

/// The durable side of one bus.
pub(crate) struct JetStream {
    pub(crate) config: JetStreamConfig,
    pub(crate) names: Names,
    pub(crate) subjects: Subjects,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) timeout: Duration,
    pub(crate) max_message_bytes: usize,
    pub(crate) stats: Arc<Stats>,
    attached: RwLock<Option<Attached>>,
    consumers: Mutex<HashMap<SubscriptionId, ConsumerHandle>>,
    /// Per consumer (group): the highest consumer sequence this bus has handed over.
    handed: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

/// The client side, once connected.
#[derive(Clone)]
pub(crate) struct Attached {
    pub(crate) client: Client,
    pub(crate) context: Context,
}

impl JetStream {
    pub(crate) fn new(
        config: JetStreamConfig,
        prefix: &str,
        dispatcher: Dispatcher,
        timeout: Duration,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            config,
            names: Names::new(prefix),
            subjects: Subjects::new(prefix),
            dispatcher,
            timeout,
            max_message_bytes,
            stats: Arc::default(),
            attached: RwLock::new(None),
            consumers: Mutex::new(HashMap::new()),
            handed: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the connected client: creates (or updates to this config) the events
    /// stream and the auxiliary stream.
    ///
    /// # Errors
    /// A connection error, or the server's refusal (e.g. JetStream is not enabled).
    pub(crate) async fn attach(&self, client: &Client) -> Result<(), Error> {
        let context = jetstream::ContextBuilder::new()
            .timeout(self.timeout)
            .ack_timeout(self.timeout)
            .max_ack_inflight(10_000)
            .backpressure_on_inflight(true)
            .build(client.clone());
        for (name, subjects) in [
            (self.names.stream(), self.names.stream_subjects()),
            (self.names.aux_stream(), self.names.aux_subjects()),
        ] {
            let config = self.stream_config(name.clone(), subjects);
            let result =
                tokio::time::timeout(self.timeout * 2, context.create_or_update_stream(config))
                    .await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(Error::connection(
                        format!("create JetStream stream {name} (is JetStream enabled?)"),
                        e,
                    ));
                }
                Err(_) => {
                    return Err(Error::Timeout {
                        operation: Operation::Stream,
                        after: self.timeout * 2,
                    });
                }
            }
        }
        *self
            .attached
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Attached {
            client: client.clone(),
            context,
        });
        Ok(())
    }

    fn stream_config(&self, name: String, subjects: String) -> stream::Config {
        let cap = |v: u64| if v == 0 { -1 } else { v as i64 };
        stream::Config {
            name,
            subjects: vec![subjects],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: self.config.max_age(),
            max_bytes: cap(self.config.max_bytes),
            max_messages: cap(self.config.max_msgs),
            max_messages_per_subject: -1,
            max_consumers: -1,
            max_message_size: -1,
            storage: if self.config.memory_storage {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            num_replicas: self.config.replicas,
            duplicate_window: self.config.duplicate_window(),
            description: Some("multibus events (delivery = \"jetstream\")".to_owned()),
            ..Default::default()
        }
    }

    /// The connected client side.
    ///
    /// # Errors
    /// [`Error::Closed`] before connect or after close.
    pub(crate) fn attached(&self) -> Result<Attached, Error> {
        self.attached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(Error::Closed)
    }

    /// Adds a durable subscription: creates its group's consumer if needed, registers
    /// it with the dispatcher and starts its consumer task.
    ///
    /// # Errors
    /// [`Error::Config`] for bad options or a group that consumes another pattern; a
    /// connection error if the consumer cannot be created.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        pattern: Pattern,
        options: &SubscribeOptions,
        subscriber: Subscriber,
    ) -> Result<Subscription, Error> {
        let resolved = options.resolve(self.dispatcher.config())?;
        let group = match resolved.group {
            Some(group) => group,
            None => self.implicit_group(&pattern),
        };
        let attached = self.attached()?;
        let consumer = names::consumer(&group);
        let (puller, new_group) = self
            .ensure_consumer(&attached, &consumer, &group, &pattern)
            .await?;
        let subscription = self
            .dispatcher
            .subscribe(pattern.clone(), options, subscriber)?;
        let handed = lock(&self.handed)
            .entry(consumer.clone())
            .or_default()
            .clone();
        let handle = consumer::spawn(
            self,
            consumer::Spec {
                sub: subscription.id(),
                pattern,
                group,
                consumer,
                dead_letter: resolved.dead_letter,
                attached,
                puller,
                handed,
                new_group,
            },
        );
        lock(&self.consumers).insert(subscription.id(), handle);
        Ok(subscription)
    }

    /// The group of a subscription whose options name none (see
    /// [`implicit_group`](event_bus_core::durable::implicit_group)).
    fn implicit_group(&self, pattern: &Pattern) -> String {
        let consumers = lock(&self.consumers);
        event_bus_core::durable::implicit_group(pattern, |name| {
            consumers.values().any(|c| c.group == name)
        })
    }

    /// The durable consumer of `group`, created if it does not exist. Its description
    /// holds the pattern it serves; a member subscribing with another pattern is
    /// refused (one consumer has one filter).
    async fn ensure_consumer(
        &self,
        attached: &Attached,
        name: &str,
        group: &str,
        pattern: &Pattern,
    ) -> Result<(pull::Config, bool), Error> {
        let wanted = self.consumer_config(name, group, pattern);
        let stream = self.names.stream();
        let context = &attached.context;
        let fail =
            |e: String| Error::connection(format!("create the consumer of group {group}"), e);
        match context
            .get_consumer_from_stream::<pull::Config, _, _>(name, &stream)
            .await
        {
            Ok(existing) => {
                let info = existing.cached_info();
                let served = names::described(info.config.description.as_deref())
                    .map(|(_, p)| p)
                    .unwrap_or_default();
                if served != pattern.as_str() {
                    return Err(Error::config(
                        "options.group",
                        format!(
                            "group {group:?} already consumes pattern {served:?} on this \
                             prefix; every member of a group subscribes to the same pattern \
                             (use another group name, or delete consumer {name} of stream \
                             {stream})"
                        ),
                    ));
                }
                if info.config.ack_wait != wanted.ack_wait {
                    let updated = context
                        .create_consumer_on_stream(wanted.clone(), &stream)
                        .await;
                    if let Err(e) = updated {
                        tracing::warn!(%group, error = %e,
                            "could not update the consumer's lease to jetstream.lease_seconds");
                    }
                }
                Ok((wanted, false))
            }
            Err(e) if is_not_found(&e.kind()) => {
                context
                    .create_consumer_on_stream(wanted.clone(), &stream)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                Ok((wanted, true))
            }
            Err(e) => Err(fail(e.to_string())),
        }
    }

    fn consumer_config(&self, name: &str, group: &str, pattern: &Pattern) -> pull::Config {
        pull::Config {
            durable_name: Some(name.to_owned()),
            description: Some(names::describe(group, pattern.as_str())),
            deliver_policy: match self.config.start {
                StartPosition::Latest => jetstream::consumer::DeliverPolicy::New,
                StartPosition::Earliest => jetstream::consumer::DeliverPolicy::All,
            },
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.config.lease(),
            max_deliver: -1,
            filter_subject: self.subjects.target(pattern),
            max_ack_pending: 20_000,
            ..Default::default()
        }
    }

    /// Stops the consumer task of subscription `id`, if it has one (its group stays on
    /// the server, with what it has not acknowledged).
    pub(crate) async fn release(&self, id: SubscriptionId) {
        let handle = lock(&self.consumers).remove(&id);
        if let Some(handle) = handle {
            handle.stop(self.timeout).await;
        }
    }

    /// Stops reading for close: consumers pull nothing more, while what they handed to
    /// the dispatcher drains.
    pub(crate) fn stop_reading(&self) {
        for handle in lock(&self.consumers).values() {
            handle.stop_reading();
        }
    }

    /// Stops every consumer task (close); from a handler, without waiting.
    pub(crate) async fn stop_all(&self) {
        let handles: Vec<_> = lock(&self.consumers).drain().map(|(_, h)| h).collect();
        let in_handler = event_bus_core::Delivery::current().is_some();
        for handle in handles {
            if in_handler {
                handle.detach();
            } else {
                handle.stop(self.timeout).await;
            }
        }
        *self
            .attached
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The round trip of `flush`: waits until the consumer of every group this bus
    /// subscribes in has nothing left to deliver, and what it delivered to this bus
    /// has been handed to the dispatcher (or acknowledged by another member).
    pub(crate) async fn round_trip(&self) -> Result<(), Error> {
        let waits: Vec<(String, Arc<AtomicU64>)> = {
            let consumers = lock(&self.consumers);
            let handed = lock(&self.handed);
            let mut names: Vec<String> = consumers.values().map(|c| c.consumer.clone()).collect();
            names.sort();
            names.dedup();
            names
                .into_iter()
                .filter_map(|n| handed.get(&n).map(|h| (n, h.clone())))
                .collect()
        };
        if waits.is_empty() {
            return Ok(());
        }
        let attached = self.attached()?;
        let stream = self.names.stream();
        let deadline = tokio::time::Instant::now() + self.timeout;
        for (name, handed) in waits {
            loop {
                let info = tokio::time::timeout(
                    self.timeout,
                    attached
                        .context
                        .get_consumer_from_stream::<pull::Config, _, _>(&name, &stream),
                )
                .await;
                let done = match info {
                    Ok(Ok(consumer)) => {
                        let info = consumer.cached_info();
                        info.num_pending == 0
                            && (info.num_ack_pending == 0
                                || handed.load(std::sync::atomic::Ordering::Acquire)
                                    >= info.delivered.consumer_sequence)
                    }
                    Ok(Err(e)) => return Err(Error::connection("flush", e)),
                    Err(_) => false,
                };
                if done {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        operation: Operation::Flush,
                        after: self.timeout,
                    });
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Ok(())
    }

    /// Warnings for `health()`: the events stream cannot be read, or it lives in
    /// memory only (lost when the server restarts).
    pub(crate) async fn warnings(&self) -> Vec<String> {
        let Ok(attached) = self.attached() else {
            return Vec::new();
        };
        let name = self.names.stream();
        let info = tokio::time::timeout(self.timeout, async {
            let mut stream = attached
                .context
                .get_stream(&name)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .info()
                .await
                .map(|i| i.config.storage)
                .map_err(|e| e.to_string())
        })
        .await;
        match info {
            Ok(Ok(stream::StorageType::Memory)) => vec![format!(
                "JetStream stream {name} is kept in memory: its events are lost when the server \
                 restarts (jetstream.memory_storage)"
            )],
            Ok(Ok(_)) => Vec::new(),
            Ok(Err(e)) => vec![format!("JetStream stream {name} cannot be read: {e}")],
            Err(_) => vec![format!(
                "JetStream stream {name} did not answer within the command timeout"
            )],
        }
    }

    /// Whether an event of this bus's consumers waits on the server for a retry.
    pub(crate) fn retrying(&self) -> bool {
        lock(&self.consumers)
            .values()
            .any(ConsumerHandle::is_retrying)
    }
}

/// Whether a consumer look-up failed because the consumer does not exist.
fn is_not_found(kind: &stream::ConsumerErrorKind) -> bool {
    matches!(kind, stream::ConsumerErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
