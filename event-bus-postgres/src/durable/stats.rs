//! What the durable mode reports: per-group counters and lag, health figures, dead
//! letters; and the maintenance task that deletes expired events.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use event_bus_core::{Error, Event, envelope::decode};
use serde::Serialize;

use super::{CLEANUP_BATCH, Shared, settle::Counters};

/// One consumer group's figures, as seen by this bus.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DurableGroupStats {
    /// The group's name.
    pub group: String,
    /// Events this bus acknowledged for the group.
    pub acked: u64,
    /// Failed attempts this bus scheduled for a retry.
    pub retried: u64,
    /// Events this bus claimed again after another claim's lease expired (a consumer
    /// died or stalled: each is a possible duplicate).
    pub reclaimed: u64,
    /// Events this bus moved to the group's dead letters.
    pub dead_lettered: u64,
    /// Settles refused because the lease had passed to another consumer.
    pub fenced: u64,
    /// Deliveries of the group not yet acknowledged (server-wide).
    pub lag: u64,
}

/// Health figures of the durable tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DurableHealth {
    /// Dead tuples of the delivery table (`pg_stat_user_tables.n_dead_tup`): a number
    /// that keeps growing means vacuum is held back (a long transaction).
    pub dead_tuples: u64,
    /// Age of the oldest unacknowledged delivery, if any.
    pub oldest_unacked: Option<Duration>,
}

/// One dead letter of a group.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeadLetterEntry {
    /// The id of the event row (what [`redrive`](crate::PostgresEventBus::redrive) takes).
    pub event_id: i64,
    /// The event's topic.
    pub topic: String,
    /// Attempts made before it was dead-lettered.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// The dead letter (the event with failure metadata), if its stored form decodes.
    pub event: Option<Event>,
}

pub(super) async fn group_stats(
    shared: &Shared,
    counters: Vec<(Arc<str>, Arc<Counters>)>,
) -> Result<Vec<DurableGroupStats>, Error> {
    let rows = shared
        .pool
        .query_prepared("reading durable lag", &shared.sql.lag, &[])
        .await
        .map_err(|e| Error::connection("reading durable lag", e.source))?;
    let mut out: Vec<DurableGroupStats> = counters
        .iter()
        .map(|(g, c)| DurableGroupStats {
            group: g.to_string(),
            acked: c.acked.load(Relaxed),
            retried: c.retried.load(Relaxed),
            reclaimed: c.reclaimed.load(Relaxed),
            dead_lettered: c.dead_lettered.load(Relaxed),
            fenced: c.fenced.load(Relaxed),
            lag: 0,
        })
        .collect();
    for row in rows {
        let group: String = row.get(0);
        let lag = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
        match out.iter_mut().find(|s| s.group == group) {
            Some(s) => s.lag = lag,
            None => out.push(DurableGroupStats {
                group,
                lag,
                ..Default::default()
            }),
        }
    }
    out.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(out)
}

pub(super) async fn health(shared: &Shared) -> Result<DurableHealth, Error> {
    let err =
        |e: crate::publisher::SendError| Error::connection("reading durable health", e.source);
    let table: &str = &shared.sql.deliveries_name;
    let dead = shared
        .pool
        .query_prepared("reading durable health", &shared.sql.dead_tuples, &[&table])
        .await
        .map_err(err)?;
    let oldest = shared
        .pool
        .query_prepared("reading durable health", &shared.sql.oldest, &[])
        .await
        .map_err(err)?;
    let dead_tuples = dead
        .first()
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .unwrap_or(0);
    let oldest: Option<f64> = oldest.first().and_then(|r| r.get(0));
    Ok(DurableHealth {
        dead_tuples: u64::try_from(dead_tuples).unwrap_or(0),
        oldest_unacked: oldest.map(|s| Duration::from_secs_f64(s.max(0.0))),
    })
}

pub(super) async fn dead_letters(
    shared: &Shared,
    group: &str,
    limit: i64,
) -> Result<Vec<DeadLetterEntry>, Error> {
    let rows = shared
        .pool
        .query_prepared(
            "listing dead letters",
            &shared.sql.dlq_list,
            &[&group, &limit],
        )
        .await
        .map_err(|e| Error::connection("listing dead letters", e.source))?;
    Ok(rows
        .iter()
        .map(|r| {
            let envelope: String = r.get(4);
            DeadLetterEntry {
                event_id: r.get(0),
                topic: r.get(1),
                attempts: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                last_error: r.get(3),
                event: decode(envelope.as_bytes(), shared.max_bytes).ok(),
            }
        })
        .collect())
}

/// Every `durable.maintenance_interval_seconds`, while the bus has a durable subscription: removes the own
/// groups of subscriptions whose bus died (not seen for ten leases, at least a
/// minute), then deletes acknowledged events past the retention, in batches.
pub(super) async fn maintain(shared: Arc<Shared>) {
    let retention = shared.config.retention_seconds;
    let abandoned = (shared.config.lease_seconds * 10.0).max(60.0);
    loop {
        tokio::time::sleep(shared.config.maintenance_interval()).await;
        if let Err(e) = shared
            .publish
            .execute_prepared(
                "removing abandoned groups",
                &shared.sql.expire_groups,
                &[&abandoned],
            )
            .await
        {
            tracing::debug!(error = %e.source, "removing abandoned durable groups failed");
        }
        loop {
            let deleted = shared
                .pool
                .execute_prepared(
                    "deleting expired durable events",
                    &shared.sql.cleanup,
                    &[&retention, &CLEANUP_BATCH],
                )
                .await;
            match deleted {
                Ok(n) if n == CLEANUP_BATCH as u64 => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(deleted = n, "expired durable events deleted");
                    }
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e.source, "deleting expired durable events failed");
                    break;
                }
            }
        }
    }
}
