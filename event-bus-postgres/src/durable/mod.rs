//! The durable delivery mode (`delivery = "table"`): at-least-once delivery per
//! consumer group through a delivery table, woken by NOTIFY.
//!
//! * **Publish** is one statement: insert the events, one delivery row per group whose
//!   pattern matches (the pattern's [regular expression](regex) against the topic, on
//!   the server), and one NOTIFY on `{prefix}_durable` naming the woken groups. Inside
//!   a caller's transaction ([`PostgresEventBus::publish_in`]) it is a transactional
//!   outbox: commit delivers, rollback does not.
//! * **Groups**: a subscription's group is [`SubscribeOptions::group`]; a subscription
//!   without one gets a group of its own (`_sub_{subscription id}`), removed with it.
//!   A group is registered with its pattern and maximum attempts when a subscription of
//!   it starts; it then receives every matching event published from then on, also
//!   while no member runs. One pattern per group: the latest subscription's wins.
//! * **Claims** ([`claimer`]): each subscription claims batches of its group's visible
//!   rows with a lease; the worker settles each event ([`settle`]): ack deletes the row,
//!   retry makes it visible after the backoff, the last failure moves it to the dead
//!   letters, each only while the lease token still matches.
//!
//! [`PostgresEventBus::publish_in`]: crate::PostgresEventBus::publish_in
//! [`SubscribeOptions::group`]: event_bus_core::SubscribeOptions::group

mod claimer;
pub mod regex;
pub mod schema;
mod settings;
mod settle;
mod stats;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use event_bus_core::{
    Dispatcher, Error, Event, Pattern, PublishOutcome, SubscriptionId, envelope::encode,
    topic::validate_topic,
};
use tokio::sync::{Notify, OnceCell, watch};
use tokio_postgres::{GenericClient, types::ToSql};

use self::{claimer::Claimer, schema::Sql, settle::Counters};
pub use self::{
    settings::{DeliveryMode, DurableConfig},
    stats::{DeadLetterEntry, DurableGroupStats, DurableHealth},
};
use crate::publisher::{Pool, SendError};

/// Session settings of the claim connections: claims, heartbeats and settles commit
/// without waiting for the WAL flush. A server crash can undo the last of them (about
/// three times `wal_writer_delay`), which redelivers those events: a duplicate, never a
/// loss. Publishes keep the server's setting.
pub(crate) const CLAIM_SESSION: &str = "SET synchronous_commit TO off";

/// What claimers and settles share.
pub(crate) struct Shared {
    /// The publishing connections (publishes, schema, dead-letter reads, redrive).
    pub(crate) publish: Arc<Pool>,
    /// The claim connections (claims, heartbeats, settles, lag).
    pub(crate) pool: Arc<Pool>,
    pub(crate) sql: Sql,
    pub(crate) config: DurableConfig,
    pub(crate) max_bytes: usize,
    /// The channel publishes NOTIFY to wake claimers.
    pub(crate) channel: String,
    ready: OnceCell<()>,
}

/// The claimer of one group in this bus, and the group's members here.
struct GroupRun {
    members: Arc<Mutex<Vec<SubscriptionId>>>,
    ephemeral: bool,
    task: tokio::task::JoinHandle<()>,
    wake: Arc<Notify>,
    passes: watch::Receiver<u64>,
}

/// The durable mode of one bus.
pub(crate) struct Durable {
    shared: Arc<Shared>,
    /// The group of each durable subscription.
    subscriptions: Mutex<HashMap<SubscriptionId, Arc<str>>>,
    groups: Mutex<HashMap<Arc<str>, GroupRun>>,
    counters: Mutex<HashMap<Arc<str>, Arc<Counters>>>,
    wakers: Mutex<HashMap<Arc<str>, Vec<Weak<Notify>>>>,
    maintenance: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Durable {
    /// The durable mode of a bus with a validated `prefix`.
    pub(crate) fn new(
        publish: Arc<Pool>,
        pool: Arc<Pool>,
        prefix: &str,
        config: DurableConfig,
        max_bytes: usize,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                publish,
                pool,
                sql: Sql::new(prefix),
                config,
                max_bytes,
                channel: wake_channel(prefix),
                ready: OnceCell::new(),
            }),
            subscriptions: Mutex::default(),
            groups: Mutex::default(),
            counters: Mutex::default(),
            wakers: Mutex::default(),
            maintenance: Mutex::default(),
        }
    }

    /// The channel claimers are woken on.
    pub(crate) fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// Creates the tables if needed (once per bus) and checks the schema version.
    pub(crate) async fn ensure_schema(&self) -> Result<(), Error> {
        let shared = &self.shared;
        shared
            .ready
            .get_or_try_init(|| async {
                shared
                    .publish
                    .batch_execute(&shared.sql.create)
                    .await
                    .map_err(|e| Error::connection("creating the durable delivery tables", e))?;
                let rows = shared
                    .publish
                    .query_prepared("reading the schema version", &shared.sql.version, &[])
                    .await
                    .map_err(|e| Error::connection("reading the schema version", e.source))?;
                let version: Option<i32> = rows
                    .first()
                    .and_then(|r| r.try_get(0).ok())
                    .flatten();
                match version {
                    Some(v) if v > schema::SCHEMA_VERSION => Err(Error::config(
                        "channel_prefix",
                        format!(
                            "the durable tables of this prefix have schema version {v}; this library supports up to {}",
                            schema::SCHEMA_VERSION
                        ),
                    )),
                    _ => Ok(()),
                }
            })
            .await
            .map(drop)
    }

    /// Publishes encoded events ([`columns`]) in one statement through the bus's pool.
    pub(crate) async fn publish(&self, columns: &Columns) -> Result<(), SendError> {
        self.ensure_schema().await.map_err(SendError::not_sent)?;
        let (topics, priorities, envelopes) = columns;
        let sql = self.publish_sql();
        let channel = self.shared.channel.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![topics, priorities, envelopes];
        if self.shared.config.notify {
            params.push(&channel);
        }
        self.shared
            .publish
            .query_prepared("publishing durable events", sql, &params)
            .await
            .map(drop)
    }

    /// Publishes encoded events ([`columns`]) in one statement through the caller's
    /// client or transaction.
    pub(crate) async fn publish_in<C: GenericClient + Sync>(
        &self,
        client: &C,
        columns: &Columns,
    ) -> Result<(), SendError> {
        self.ensure_schema().await.map_err(SendError::not_sent)?;
        let (topics, priorities, envelopes) = columns;
        let channel = self.shared.channel.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![topics, priorities, envelopes];
        if self.shared.config.notify {
            params.push(&channel);
        }
        client
            .query(self.publish_sql(), &params)
            .await
            .map(drop)
            .map_err(SendError::from_statement)
    }

    fn publish_sql(&self) -> &str {
        if self.shared.config.notify {
            &self.shared.sql.publish_notify
        } else {
            &self.shared.sql.publish_quiet
        }
    }

    /// Registers the group of subscription `id` and starts its claimer.
    pub(crate) async fn start(
        &self,
        dispatcher: &Dispatcher,
        id: SubscriptionId,
        pattern: &Pattern,
        group: Option<&str>,
        max_attempts: u32,
    ) -> Result<(), Error> {
        self.ensure_schema().await?;
        let ephemeral = group.is_none();
        let group: Arc<str> = match group {
            Some(g) => g.into(),
            None => format!("_sub_{id}").into(),
        };
        let regex = regex::pattern_regex(pattern);
        let name: &str = &group;
        let source = pattern.as_str();
        let attempts = i32::try_from(max_attempts).unwrap_or(i32::MAX);
        let rows = self
            .shared
            .publish
            .query_prepared(
                "registering a consumer group",
                &self.shared.sql.register,
                &[&name, &source, &regex, &attempts],
            )
            .await
            .map_err(|e| Error::connection("registering a consumer group", e.source))?;
        let before: Option<String> = rows.first().and_then(|r| r.try_get(0).ok()).flatten();
        if before.as_deref().is_some_and(|p| p != source) {
            tracing::warn!(group = name, old = ?before, new = source, "consumer group pattern changed");
        }
        lock(&self.subscriptions).insert(id, group.clone());
        let mut groups = lock(&self.groups);
        if let Some(run) = groups.get(&group).filter(|r| !r.task.is_finished()) {
            lock(&run.members).push(id);
        } else {
            let run = self.spawn_claimer(dispatcher, id, &group, ephemeral);
            groups.insert(group, run);
        }
        drop(groups);
        self.start_maintenance();
        Ok(())
    }

    /// Starts the claimer of `group` in this bus, with `first` as its one member.
    fn spawn_claimer(
        &self,
        dispatcher: &Dispatcher,
        first: SubscriptionId,
        group: &Arc<str>,
        ephemeral: bool,
    ) -> GroupRun {
        let counters = lock(&self.counters)
            .entry(group.clone())
            .or_default()
            .clone();
        let wake = Arc::new(Notify::new());
        lock(&self.wakers)
            .entry(group.clone())
            .or_default()
            .push(Arc::downgrade(&wake));
        let (passes, passes_rx) = watch::channel(0);
        let members = Arc::new(Mutex::new(vec![first]));
        let claimer = Claimer {
            shared: self.shared.clone(),
            dispatcher: dispatcher.clone(),
            members: members.clone(),
            group: group.clone(),
            wake: wake.clone(),
            counters,
            passes,
        };
        GroupRun {
            members,
            ephemeral,
            task: tokio::spawn(claimer.run()),
            wake,
            passes: passes_rx,
        }
    }

    /// Removes subscription `id` from its group here; the group's claimer stops with
    /// its last member, and a subscription's own group goes with it (its undelivered
    /// rows too). Rows claimed and not settled are claimed again after their lease.
    pub(crate) async fn release(&self, id: SubscriptionId) {
        let Some(group) = lock(&self.subscriptions).remove(&id) else {
            return;
        };
        let ended = {
            let mut groups = lock(&self.groups);
            let last = groups.get(&group).is_some_and(|run| {
                let mut members = lock(&run.members);
                members.retain(|m| *m != id);
                members.is_empty()
            });
            if last { groups.remove(&group) } else { None }
        };
        let Some(run) = ended else {
            return;
        };
        run.task.abort();
        if run.ephemeral {
            let name: &str = &group;
            if let Err(e) = self.drop_group(name).await {
                tracing::debug!(group = name, error = %e, "removing a subscription's own group failed");
            }
        }
    }

    async fn drop_group(&self, name: &str) -> Result<(), Error> {
        let sql = &self.shared.sql;
        for stmt in [&sql.drop_group, &sql.drop_group_rows] {
            self.shared
                .publish
                .execute_prepared("removing a consumer group", stmt, &[&name])
                .await
                .map_err(|e| Error::connection("removing a consumer group", e.source))?;
        }
        Ok(())
    }

    /// Stops every claimer (the bus is closing); claimed events not yet queued are
    /// claimed again after their lease.
    pub(crate) fn stop_all(&self) {
        for run in lock(&self.groups).values() {
            run.task.abort();
        }
        if let Some(task) = lock(&self.maintenance).take() {
            task.abort();
        }
    }

    /// Removes the own groups of this bus's subscriptions (best effort: what fails is
    /// removed later, see [`stats::maintain`]) and closes the claim connections. Called
    /// once the dispatcher has closed.
    pub(crate) async fn close(&self) {
        let runs: Vec<(Arc<str>, GroupRun)> = lock(&self.groups).drain().collect();
        lock(&self.subscriptions).clear();
        for (group, run) in runs {
            if run.ephemeral {
                if let Err(e) = self.drop_group(&group).await {
                    tracing::debug!(group = &*group, error = %e, "removing a subscription's own group failed");
                }
            }
        }
        self.shared.pool.close().await;
    }

    /// Wakes the claimers of the groups a NOTIFY payload names (`*`: all).
    pub(crate) fn wake(&self, payload: &str) {
        let named: Option<Vec<String>> = serde_json::from_str(payload).ok();
        let mut wakers = lock(&self.wakers);
        for (group, list) in wakers.iter_mut() {
            list.retain(|w| w.strong_count() > 0);
            let wanted = named
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| **n == **group));
            if wanted {
                for w in list.iter().filter_map(Weak::upgrade) {
                    w.notify_one();
                }
            }
        }
        wakers.retain(|_, list| !list.is_empty());
    }

    /// Waits until every claimer has made a claim, started after this call, that left
    /// nothing visible for it, and until the groups of this bus have no retry
    /// scheduled: everything published before is then in the queues or handled.
    pub(crate) async fn round_trip(&self) -> Result<(), Error> {
        loop {
            let claimers: Vec<(Arc<str>, Arc<Notify>, watch::Receiver<u64>)> = lock(&self.groups)
                .iter()
                .map(|(g, r)| (g.clone(), r.wake.clone(), r.passes.clone()))
                .collect();
            if claimers.is_empty() {
                return Ok(());
            }
            for (_, wake, passes) in &claimers {
                let mut passes = passes.clone();
                let start = *passes.borrow_and_update();
                wake.notify_one();
                // A pass already under way may finish first: wait for the one after it.
                let _ = passes.wait_for(|n| *n >= start + 2).await;
            }
            let names: Vec<String> = claimers.iter().map(|(g, ..)| g.to_string()).collect();
            let rows = self
                .shared
                .pool
                .query_prepared("flushing", &self.shared.sql.scheduled, &[&names])
                .await
                .map_err(|e| Error::connection("flushing", e.source))?;
            let due_in: Option<f64> = rows.first().and_then(|r| r.get(0));
            let Some(secs) = due_in else {
                return Ok(());
            };
            tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.005, 1.0))).await;
        }
    }

    /// Retries this bus has scheduled so far, over all groups.
    pub(crate) fn retries_scheduled(&self) -> u64 {
        lock(&self.counters)
            .values()
            .map(|c| c.retried.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    fn start_maintenance(&self) {
        let mut task = lock(&self.maintenance);
        if task.is_some() {
            return;
        }
        let shared = self.shared.clone();
        *task = Some(tokio::spawn(stats::maintain(shared)));
    }

    /// Counters and lag per group known to this bus, plus every group with pending rows.
    pub(crate) async fn stats(&self) -> Result<Vec<DurableGroupStats>, Error> {
        let counters: Vec<(Arc<str>, Arc<Counters>)> = lock(&self.counters)
            .iter()
            .map(|(g, c)| (g.clone(), c.clone()))
            .collect();
        stats::group_stats(&self.shared, counters).await
    }

    /// Dead tuples of the delivery table and the age of the oldest unacknowledged delivery.
    pub(crate) async fn health(&self) -> Result<DurableHealth, Error> {
        self.ensure_schema().await?;
        stats::health(&self.shared).await
    }

    /// Up to `limit` dead letters of `group`, oldest event first.
    pub(crate) async fn dead_letters(
        &self,
        group: &str,
        limit: i64,
    ) -> Result<Vec<DeadLetterEntry>, Error> {
        self.ensure_schema().await?;
        stats::dead_letters(&self.shared, group, limit).await
    }

    /// Moves dead letters of `group` (those of `event_ids`, or all) back to its live
    /// deliveries with their attempts reset; returns how many.
    pub(crate) async fn redrive(
        &self,
        group: &str,
        event_ids: Option<&[i64]>,
    ) -> Result<u64, Error> {
        self.ensure_schema().await?;
        let ids: Option<Vec<i64>> = event_ids.map(<[i64]>::to_vec);
        let moved = self
            .shared
            .publish
            .execute_prepared(
                "redriving dead letters",
                &self.shared.sql.redrive,
                &[&group, &ids],
            )
            .await
            .map_err(|e| Error::connection("redriving dead letters", e.source))?;
        if moved > 0 && self.shared.config.notify {
            let payload = serde_json::json!([group]).to_string();
            let _ = self
                .shared
                .publish
                .notify_one(&self.shared.channel, &payload)
                .await;
        }
        Ok(moved)
    }
}

/// The wake-up channel of a prefix.
fn wake_channel(prefix: &str) -> String {
    format!("{prefix}_durable")
}

/// Topics, priorities and envelopes of events to publish, as statement parameters.
pub(crate) type Columns = (Vec<String>, Vec<i32>, Vec<String>);

/// Validates and encodes `events`: an invalid topic or an envelope over `max_bytes`
/// publishes nothing.
///
/// # Errors
/// [`Error::InvalidTopic`]; [`Error::Publish`] (not sent) handing back a too-large event.
pub(crate) fn columns(events: &[Event], max_bytes: usize) -> Result<Columns, Error> {
    let mut topics = Vec::with_capacity(events.len());
    let mut priorities = Vec::with_capacity(events.len());
    let mut envelopes = Vec::with_capacity(events.len());
    for event in events {
        validate_topic(&event.topic)?;
        let envelope = encode(event)?;
        if envelope.len() > max_bytes {
            let source = format!(
                "its envelope of {} bytes exceeds max_message_bytes ({max_bytes})",
                envelope.len()
            );
            return Err(Error::publish(
                event.clone(),
                PublishOutcome::NotSent,
                source,
            ));
        }
        topics.push(event.topic.clone());
        priorities.push(i32::from(event.priority.value()));
        envelopes.push(envelope);
    }
    Ok((topics, priorities, envelopes))
}

/// Bound on one maintenance pass's statements.
pub(crate) const CLEANUP_BATCH: i64 = 1000;
/// How often a subscribed bus deletes expired events.
pub(crate) const CLEANUP_EVERY: Duration = Duration::from_secs(30);
