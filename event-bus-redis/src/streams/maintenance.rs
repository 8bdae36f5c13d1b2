//! Periodic upkeep of a stream: trimming what every group has acknowledged, the
//! `max_len` safety cap (counted loss), and removal of idle consumers with nothing
//! pending.
//!
//! The trim floor is the smallest, over every group of the stream, of its last
//! delivered id and its smallest pending id: everything below it has been read and
//! acknowledged by every group (`XTRIM ... MINID`). Without any group nothing is
//! trimmed except by the cap, so a group created later with `start = "earliest"`
//! still finds the events.

use std::sync::{Arc, Weak};

use event_bus_core::Error;
use redis::Value;

use super::{
    Streams, commands,
    entry::{self, field_int, field_text, parse_id},
    stats::StreamStats,
};

/// Runs the upkeep every `streams.trim_interval_seconds` until the bus is gone.
pub(crate) async fn run(streams: Weak<Streams>) {
    loop {
        let Some(interval) = streams.upgrade().map(|s| s.config.trim_interval()) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(streams) = streams.upgrade() else {
            return;
        };
        if let Err(e) = upkeep(&streams).await {
            tracing::debug!(error = %e, "stream upkeep failed; trying again later");
        }
    }
}

/// One round of upkeep; returns how many entries the cap trimmed.
pub(crate) async fn upkeep(streams: &Arc<Streams>) -> Result<u64, Error> {
    let key = streams.keys.stream();
    let groups = group_rows(streams, &key).await?;
    let mut floor: Option<((u64, u64), String)> = None;
    for row in &groups {
        let Some(name) = field_text(row, "name") else {
            continue;
        };
        let mut candidates = vec![field_text(row, "last-delivered-id").unwrap_or_default()];
        if field_int(row, "pending").unwrap_or(0) > 0 {
            let mut cmd = redis::cmd("XPENDING");
            cmd.arg(&key).arg(&name);
            let summary: Value = streams.commands.run("pending summary", &cmd).await?;
            if let Value::Array(parts) = summary
                && let Some(Value::BulkString(min)) = parts.get(1)
            {
                candidates.push(String::from_utf8_lossy(min).into_owned());
            }
        }
        for id in candidates {
            if let Some(parsed) = parse_id(&id)
                && floor.as_ref().is_none_or(|(f, _)| parsed < *f)
            {
                floor = Some((parsed, id));
            }
        }
        remove_idle_consumers(streams, &key, &name).await?;
    }
    if let Some((_, floor)) = &floor {
        let mut cmd = redis::cmd("XTRIM");
        cmd.arg(&key).arg("MINID").arg(floor);
        streams
            .commands
            .run::<u64>("trim acknowledged entries", &cmd)
            .await?;
    }
    let cap = streams.config.max_len;
    if cap == 0 {
        return Ok(0);
    }
    let mut cmd = redis::cmd("XTRIM");
    cmd.arg(&key).arg("MAXLEN").arg(cap);
    let trimmed: u64 = streams.commands.run("trim to max_len", &cmd).await?;
    if trimmed > 0 && !groups.is_empty() {
        StreamStats::add(&streams.stats.lost, trimmed);
        tracing::error!(stream = %key, trimmed, max_len = cap,
            "stream over streams.max_len: entries a group had not acknowledged were trimmed (lost)");
    }
    Ok(trimmed)
}

/// `XINFO GROUPS` of `key` (none if the stream does not exist).
pub(crate) async fn group_rows(
    streams: &Streams,
    key: &str,
) -> Result<Vec<Vec<(String, Value)>>, Error> {
    let mut cmd = redis::cmd("XINFO");
    cmd.arg("GROUPS").arg(key);
    match streams
        .commands
        .run::<Value>("list consumer groups", &cmd)
        .await
    {
        Ok(reply) => Ok(entry::info_rows(&reply)),
        Err(e)
            if commands::server_error(&e)
                .and_then(redis::RedisError::detail)
                .is_some_and(|d| d.contains("no such key")) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Deletes consumers of `group` idle longer than `streams.consumer_idle_seconds`
/// that have nothing pending (deleting one with pending entries would lose them).
async fn remove_idle_consumers(streams: &Streams, key: &str, group: &str) -> Result<(), Error> {
    let Some(max_idle) = streams.config.consumer_idle() else {
        return Ok(());
    };
    let mut cmd = redis::cmd("XINFO");
    cmd.arg("CONSUMERS").arg(key).arg(group);
    let reply: Value = streams.commands.run("list consumers", &cmd).await?;
    for row in entry::info_rows(&reply) {
        let idle = field_int(&row, "idle").unwrap_or(0);
        let pending = field_int(&row, "pending").unwrap_or(1);
        let (Some(name), true) = (field_text(&row, "name"), pending == 0) else {
            continue;
        };
        if u128::try_from(idle).unwrap_or(0) > max_idle.as_millis() {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("DELCONSUMER").arg(key).arg(group).arg(&name);
            streams
                .commands
                .run::<i64>("remove idle consumer", &cmd)
                .await?;
            tracing::info!(%group, consumer = %name, "removed an idle consumer with nothing pending");
        }
    }
    Ok(())
}
