//! Durable delivery over Redis Streams with consumer groups (`delivery = "streams"`).
//!
//! # Keys
//!
//! | key | holds |
//! |---|---|
//! | `{prefix}:stream` | every event published under the prefix, one entry each (see [`entry`]) |
//! | `{prefix}:dead:{group}` | the dead letters of consumer group `group` |
//!
//! The prefix is a hash tag, so all keys of a prefix share a cluster slot.
//!
//! Each durable subscription runs one consumer (see [`consumer`]) with its own
//! connection for blocking reads; acknowledgements, claims and lease extensions go
//! over one shared command connection ([`commands`]).

mod acker;
pub(crate) mod admin;
mod commands;
mod config;
mod consumer;
pub(crate) mod entry;
mod leases;
pub(crate) mod maintenance;
mod reader;
mod settle;
mod stats;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use event_bus_core::{
    Dispatcher, Error, Pattern, SubscribeOptions, Subscriber, Subscription, SubscriptionId,
    durable::Outstanding,
};
use tokio::task::JoinHandle;

pub(crate) use self::commands::Commands;
pub use self::{
    admin::GroupInfo,
    config::{DeliveryMode, StartPosition, StreamsConfig},
    stats::StreamMetrics,
};
use self::{consumer::ConsumerHandle, stats::StreamStats};

/// Key names of one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The stream of every event.
    pub(crate) fn stream(&self) -> String {
        format!("{{{}}}:stream", self.prefix)
    }

    /// The dead letters of `group`.
    pub(crate) fn dead(&self, group: &str) -> String {
        format!("{{{}}}:dead:{group}", self.prefix)
    }
}

/// The durable side of one bus.
pub(crate) struct Streams {
    pub(crate) config: StreamsConfig,
    pub(crate) keys: Keys,
    /// Opens the consumers' dedicated reading connections.
    pub(crate) client: redis::Client,
    pub(crate) commands: Commands,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) timeout: Duration,
    pub(crate) max_message_bytes: usize,
    /// Consumer name base of this bus.
    pub(crate) base_name: String,
    /// Client name prefix of the reading connections.
    pub(crate) client_name: String,
    pub(crate) stats: Arc<StreamStats>,
    /// Acknowledgements queued and not yet written, of every consumer.
    pub(crate) acking: Arc<Outstanding>,
    consumers: Mutex<HashMap<SubscriptionId, ConsumerHandle>>,
    maintenance: Mutex<Option<JoinHandle<()>>>,
}

/// What [`Streams::new`] needs.
pub(crate) struct StreamsSetup {
    pub(crate) config: StreamsConfig,
    pub(crate) prefix: String,
    pub(crate) client: redis::Client,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) timeout: Duration,
    pub(crate) max_message_bytes: usize,
    /// Random id of the bus, for names.
    pub(crate) id: String,
}

impl Streams {
    pub(crate) fn new(setup: StreamsSetup) -> Self {
        let base_name = setup
            .config
            .consumer_name
            .clone()
            .unwrap_or_else(|| setup.id[..12].to_owned());
        let client_name = format!("eventbus:{}:streams:{}", setup.prefix, &setup.id[..12]);
        Self {
            commands: Commands::new(
                setup.client.clone(),
                format!("{client_name}:cmd"),
                setup.timeout,
            ),
            keys: Keys::new(&setup.prefix),
            config: setup.config,
            client: setup.client,
            dispatcher: setup.dispatcher,
            timeout: setup.timeout,
            max_message_bytes: setup.max_message_bytes,
            base_name,
            client_name,
            stats: Arc::default(),
            acking: Arc::default(),
            consumers: Mutex::new(HashMap::new()),
            maintenance: Mutex::new(None),
        }
    }

    /// Adds a durable subscription: creates its group if needed, registers it with the
    /// dispatcher and starts its consumer.
    ///
    /// # Errors
    /// [`Error::Config`] for bad options; a connection error if the group cannot be
    /// created.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        pattern: Pattern,
        options: &SubscribeOptions,
        subscriber: Subscriber,
    ) -> Result<Subscription, Error> {
        let resolved = options.resolve(self.dispatcher.config())?;
        self.config
            .check_retry(&resolved.retry, "options.retry.max_backoff_seconds")?;
        let group = match resolved.group {
            Some(group) => group,
            None => self.implicit_group(&pattern),
        };
        self.commands
            .create_group(&self.keys.stream(), &group, self.config.start)
            .await?;
        let subscription = self
            .dispatcher
            .subscribe(pattern.clone(), options, subscriber)?;
        let mut consumers = lock(&self.consumers);
        let index = (1..)
            .find(|n| {
                !consumers
                    .values()
                    .any(|c| c.group == group && c.index == *n)
            })
            .unwrap_or(1);
        let name = format!("{}-{index}", self.base_name);
        let handle = consumer::spawn(
            self,
            consumer::Spec {
                sub: subscription.id(),
                pattern,
                group,
                name,
                index,
                dead_letter: resolved.dead_letter,
            },
        );
        consumers.insert(subscription.id(), handle);
        drop(consumers);
        self.start_maintenance();
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

    /// Stops the consumer of subscription `id`, if it has one (its group and pending
    /// entries stay on the server).
    pub(crate) async fn release(&self, id: SubscriptionId) {
        let handle = lock(&self.consumers).remove(&id);
        if let Some(handle) = handle {
            handle.stop(self).await;
        }
    }

    /// Stops every consumer (close), waiting for their acknowledgements to be sent;
    /// called from a handler, it does not wait (that handler's own acknowledgement
    /// comes after close returns) and the acknowledgements are still sent.
    pub(crate) async fn stop_all(&self) {
        let handles: Vec<_> = lock(&self.consumers).drain().map(|(_, h)| h).collect();
        let in_handler = event_bus_core::Delivery::current().is_some();
        for handle in handles {
            if in_handler {
                handle.detach();
            } else {
                handle.stop(self).await;
            }
        }
        if let Some(task) = lock(&self.maintenance).take() {
            task.abort();
        }
    }

    /// Stops reading for close: consumers take nothing more from the server, while
    /// what they handed to the dispatcher drains.
    pub(crate) fn stop_reading(&self) {
        for handle in lock(&self.consumers).values() {
            handle.stop_reading();
        }
    }

    fn start_maintenance(self: &Arc<Self>) {
        let mut task = lock(&self.maintenance);
        if task.is_none() {
            *task = Some(tokio::spawn(maintenance::run(Arc::downgrade(self))));
        }
    }

    /// The round trip of `flush`: waits until every group of this bus has read past
    /// the last entry of the stream, and this bus's consumers have handed what they
    /// read to the dispatcher.
    pub(crate) async fn round_trip(&self) -> Result<(), Error> {
        let key = self.keys.stream();
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(&key).arg("+").arg("-").arg("COUNT").arg(1);
        let reply: redis::Value = self.commands.run("flush", &cmd).await?;
        let Some(last) = entry::entries(&reply)
            .first()
            .and_then(|e| entry::parse_id(&e.id))
        else {
            return Ok(());
        };
        let groups = self.groups_of_this_bus();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let rows = maintenance::group_rows(self, &key).await?;
            let caught_up = groups.iter().all(|group| {
                rows.iter().any(|row| {
                    entry::field_text(row, "name").as_deref() == Some(group.as_str())
                        && entry::field_text(row, "last-delivered-id")
                            .and_then(|id| entry::parse_id(&id))
                            >= Some(last)
                })
            });
            if caught_up {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    operation: event_bus_core::deadline::Operation::Flush,
                    after: self.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // A read that returned the last entries may still be on its way: let every
        // consumer finish the read it is in.
        let consumers: Vec<_> = lock(&self.consumers)
            .values()
            .map(ConsumerHandle::waiter)
            .collect();
        for consumer in consumers {
            consumer.finish_read(self).await;
        }
        Ok(())
    }

    /// A warning if the server's `maxmemory-policy` may evict keys (an evicted stream
    /// loses every event in it); `None` under `noeviction` or when the policy cannot
    /// be read (e.g. `CONFIG` is not allowed for this user).
    pub(crate) async fn eviction_risk(&self) -> Option<String> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let reply: redis::Value = self
            .commands
            .run("read maxmemory-policy", &cmd)
            .await
            .ok()?;
        let policy = entry::info_fields(&reply)
            .into_iter()
            .find(|(k, _)| k == "maxmemory-policy")
            .and_then(|(_, v)| match v {
                redis::Value::BulkString(b) => String::from_utf8(b).ok(),
                redis::Value::SimpleString(s) => Some(s),
                _ => None,
            })?;
        (policy != "noeviction").then(|| {
            format!(
                "maxmemory-policy is {policy}: the server may evict the event streams; set it to noeviction"
            )
        })
    }

    /// Whether an entry of this bus's consumers waits on the server for a retry.
    pub(crate) fn retrying(&self) -> bool {
        lock(&self.consumers)
            .values()
            .any(ConsumerHandle::is_retrying)
    }

    /// The groups this bus has durable subscriptions in.
    pub(crate) fn groups_of_this_bus(&self) -> Vec<String> {
        let mut groups: Vec<String> = lock(&self.consumers)
            .values()
            .map(|c| c.group.clone())
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
