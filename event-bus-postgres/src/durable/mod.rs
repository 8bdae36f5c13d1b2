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
//! * **Claims**: each bus runs one claimer per group it has members of, which claims
//!   batches of the group's visible rows with a lease and hands them to the members in
//!   turn; the worker settles each event: ack deletes the row,
//!   retry makes it visible after the backoff, the last failure moves it to the dead
//!   letters, each only while the lease token still matches.
//!
//! [`PostgresEventBus::publish_in`]: crate::PostgresEventBus::publish_in
//! [`SubscribeOptions::group`]: event_bus_core::SubscribeOptions::group

mod claimer;
mod groups;
mod publish;
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

use event_bus_core::{Error, SubscriptionId, durable::Outstanding};
use tokio::sync::{Notify, OnceCell, watch};

pub(crate) use self::publish::columns;
use self::{
    schema::Sql,
    settle::{AckSender, Acks, Counters, MAX_ACK_BATCH},
};
pub use self::{
    settings::{DeliveryMode, DurableConfig},
    stats::{DeadLetterEntry, DurableGroupStats, DurableHealth},
};
use crate::publisher::Pool;

/// Session settings of the claim connections.
///
/// Claims, heartbeats and settles commit without waiting for the WAL flush. A server
/// crash can undo the last of them (about three times `wal_writer_delay`), which
/// redelivers those events: a duplicate, never a loss. Publishes keep the server's
/// setting.
///
/// Sorting is turned off so that a claim walks the deliveries' primary key in claim
/// order and stops after its batch. A queue table's statistics are often taken while
/// it is nearly empty; with them the planner prefers to read a group's whole backlog
/// and sort it, for every claim: a cost that grows with the backlog, so consumers that
/// fall behind fall further behind. No statement of these connections needs a sort.
pub(crate) const CLAIM_SESSION: &str = "SET synchronous_commit TO off; SET enable_sort TO off";

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
    /// The bus's acknowledgements, coalesced into one statement per round trip.
    pub(crate) acks: Arc<Acks>,
    /// Acknowledgements on their way, for `close` to let them finish.
    pub(crate) acking: Arc<Outstanding>,
    ready: OnceCell<()>,
}

/// The claimer of one group in this bus, and the group's members here.
struct GroupRun {
    /// The events its claimer claimed and that are not settled yet (acknowledgements
    /// on their way included).
    held: Arc<settle::Held>,
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
        let sql = Sql::new(prefix);
        let acks = Arc::new(Acks::new(
            AckSender {
                pool: pool.clone(),
                sql: sql.ack_many.clone(),
            },
            MAX_ACK_BATCH,
        ));
        Self {
            shared: Arc::new(Shared {
                publish,
                pool,
                acks,
                acking: Arc::default(),
                sql,
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
        // Let the acknowledgements on their way finish (bounded: what does not is
        // delivered again). Not every held event: a handler may be closing the bus.
        let bound = self.shared.pool.statement_timeout() * 2;
        if tokio::time::timeout(bound, self.shared.acking.idle())
            .await
            .is_err()
        {
            tracing::debug!("closing: acknowledgements still on their way are dropped");
        }
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

    /// Waits until every event this bus claimed is settled (acknowledgements on their
    /// way included). Called once the dispatcher is quiescent.
    pub(crate) async fn settled(&self) {
        let held: Vec<Arc<settle::Held>> = lock(&self.groups)
            .values()
            .map(|r| r.held.clone())
            .collect();
        for h in held {
            h.wait_below(0).await;
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

/// Bound on one maintenance pass's statements.
pub(crate) const CLEANUP_BATCH: i64 = 1000;
