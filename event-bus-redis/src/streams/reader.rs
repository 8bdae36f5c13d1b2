//! The read loop of a consumer: its own pending entries first after every (re)connect,
//! then claims of expired entries and blocking reads of new ones, each handed to the
//! dispatcher.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use event_bus_core::{
    DeadLetterInfo, Error, deadline::Operation, durable::DurableDelivery, envelope,
    reconnect::Backoff,
};
use redis::{Value, aio::MultiplexedConnection};
use tokio::{sync::watch, time::Instant};

use super::{
    Streams, commands,
    consumer::{BLOCK, Ctx},
    entry::{self, Entry},
    lock,
    settle::StreamSettle,
    stats::StreamStats,
};

/// Whether the reader goes on.
#[derive(Clone, Copy)]
enum Flow {
    Continue,
    Stop,
}

/// Reads until stopped, reconnecting with backoff after errors.
pub(super) async fn read_loop(ctx: Arc<Ctx>, stop: watch::Receiver<bool>) {
    let mut backoff = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(streams) = ctx.streams.upgrade() else {
            return;
        };
        let max_backoff = streams.dispatcher.config().consumer_error_sleep();
        let backoff = backoff.get_or_insert_with(|| Backoff::new(max_backoff));
        let name = format!("{}:read:{}", streams.client_name, ctx.name);
        let opened = commands::open(&streams.client, &name, streams.timeout, None).await;
        let result = match opened {
            Ok(conn) => {
                drop(streams);
                serve(&ctx, conn, &stop, backoff).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(Flow::Stop) => return,
            Ok(Flow::Continue) => {}
            Err(e) => {
                tracing::warn!(group = %ctx.group, consumer = %ctx.name, error = %e,
                    "redis stream consumer failed; reconnecting");
                if let Some(streams) = ctx.streams.upgrade() {
                    if commands::is_server_code(&e, "NOGROUP") {
                        let stream = streams.keys.stream();
                        let _ = streams
                            .commands
                            .create_group(&stream, &ctx.group, streams.config.start)
                            .await;
                    }
                    streams.dispatcher.metrics().add_reconnects(1);
                }
                tokio::select! {
                    () = backoff.wait(|| async { true }) => {}
                    () = stopped(stop.clone()) => return,
                }
            }
        }
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves one connection: own pending entries first, then claims and new entries.
async fn serve(
    ctx: &Arc<Ctx>,
    mut conn: MultiplexedConnection,
    stop: &watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<Flow, Error> {
    let mut history = Some("0".to_owned());
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await
        .map_err(|e| Error::connection("read stream", e))?;
    ctx.client_id.store(id, Ordering::Release);
    loop {
        let flow = serve_once(ctx, &mut conn, &mut history, backoff).await;
        let started = ctx.reads_started.load(Ordering::Acquire);
        ctx.reads_done.send_replace(started);
        match flow {
            Ok(Some(flow)) => return Ok(flow),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        if *stop.borrow() {
            return Ok(Flow::Stop);
        }
    }
}

/// One claim round or one read; `Some` when the consumer should stop.
async fn serve_once(
    ctx: &Arc<Ctx>,
    conn: &mut MultiplexedConnection,
    history: &mut Option<String>,
    backoff: &mut Backoff,
) -> Result<Option<Flow>, Error> {
    let Some(streams) = ctx.streams.upgrade() else {
        return Ok(Some(Flow::Stop));
    };
    ctx.reads_started.fetch_add(1, Ordering::AcqRel);
    let now = Instant::now();
    let claim_at = *lock(&ctx.claim_at);
    if history.is_none() && claim_at <= now {
        *lock(&ctx.claim_at) = now + claim_interval(&streams);
        return Ok(stop_only(claim(&streams, ctx).await?));
    }
    let block = match history {
        Some(_) => None,
        None => Some(BLOCK.min(claim_at - now).max(Duration::from_millis(1))),
    };
    let cursor = history.clone().unwrap_or_else(|| ">".into());
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(&ctx.group).arg(&ctx.name);
    cmd.arg("COUNT").arg(streams.config.read_count);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS").arg(&ctx.stream).arg(&cursor);
    let limit = block.unwrap_or_default() + streams.timeout;
    let reply = match tokio::time::timeout(limit, cmd.query_async::<Value>(conn)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(Error::connection("read stream", e)),
        Err(_) => {
            return Err(Error::Timeout {
                operation: Operation::Stream,
                after: limit,
            });
        }
    };
    backoff.reset();
    let entries = entry::read_reply(&reply);
    if history.is_none() {
        return Ok(stop_only(
            hand_over(&streams, ctx, entries, &HashMap::new()).await,
        ));
    }
    // Own pending entries: skip those still held, and ask for their delivery counts.
    *history = entries.last().map(|e| e.id.clone());
    let fresh: Vec<Entry> = entries
        .into_iter()
        .filter(|e| !ctx.in_flight.contains(&e.id))
        .collect();
    let counts = attempts(&streams, ctx, &fresh).await?;
    Ok(stop_only(hand_over(&streams, ctx, fresh, &counts).await))
}

fn stop_only(flow: Flow) -> Option<Flow> {
    match flow {
        Flow::Stop => Some(Flow::Stop),
        Flow::Continue => None,
    }
}

/// How often a consumer looks for entries whose lease expired.
fn claim_interval(streams: &Streams) -> Duration {
    (streams.config.lease() / 2).max(Duration::from_millis(50))
}

/// Claims every entry of the group whose lease expired (`XAUTOCLAIM` until the cursor
/// comes back to `0-0`) and hands them over.
async fn claim(streams: &Arc<Streams>, ctx: &Arc<Ctx>) -> Result<Flow, Error> {
    let lease = streams.config.lease().as_millis() as u64;
    let mut cursor = "0-0".to_owned();
    loop {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&ctx.stream)
            .arg(&ctx.group)
            .arg(&ctx.name)
            .arg(lease);
        cmd.arg(&cursor).arg("COUNT").arg(streams.config.read_count);
        let reply: Value = streams.commands.run("claim expired entries", &cmd).await?;
        let (next, claimed, deleted) = entry::autoclaim_reply(&reply);
        if !deleted.is_empty() {
            StreamStats::add(&streams.stats.lost, deleted.len() as u64);
            tracing::error!(group = %ctx.group, lost = deleted.len(), first = %deleted[0],
                "pending entries were trimmed from the stream before they were handled: lost");
        }
        let fresh: Vec<Entry> = claimed
            .into_iter()
            .filter(|e| !ctx.in_flight.contains(&e.id))
            .collect();
        StreamStats::add(&streams.stats.reclaimed, fresh.len() as u64);
        let counts = attempts(streams, ctx, &fresh).await?;
        if let Flow::Stop = hand_over(streams, ctx, fresh, &counts).await {
            return Ok(Flow::Stop);
        }
        if next == "0-0" || next.is_empty() {
            return Ok(Flow::Continue);
        }
        cursor = next;
    }
}

/// The server's delivery count of each of `entries` (all pending with this consumer).
async fn attempts(
    streams: &Streams,
    ctx: &Ctx,
    entries: &[Entry],
) -> Result<HashMap<String, u32>, Error> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(HashMap::new());
    };
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(&ctx.stream)
        .arg(&ctx.group)
        .arg(&first.id)
        .arg(&last.id);
    cmd.arg(entries.len() * 2 + 16).arg(&ctx.name);
    let reply: Value = streams.commands.run("read delivery counts", &cmd).await?;
    Ok(entry::pending_reply(&reply)
        .into_iter()
        .map(|(id, _, count)| (id, count))
        .collect())
}

/// Hands `entries` to the dispatcher (attempt 1 unless `counts` says otherwise);
/// acknowledges unseen those that are not for this subscription.
async fn hand_over(
    streams: &Streams,
    ctx: &Arc<Ctx>,
    entries: Vec<Entry>,
    counts: &HashMap<String, u32>,
) -> Flow {
    for Entry { id, body } in entries {
        let Some(body) = body else {
            StreamStats::add(&streams.stats.lost, 1);
            tracing::error!(group = %ctx.group, %id, "a pending entry was trimmed before it was handled: lost");
            let _ = ctx.ack(id, false);
            continue;
        };
        let for_us =
            body.group.as_ref().is_none_or(|g| *g == ctx.group) && ctx.pattern.matches(&body.topic);
        let event = match envelope::decode(&body.envelope, streams.max_message_bytes) {
            // A subscription never receives its own dead letters.
            Ok(event)
                if for_us
                    && DeadLetterInfo::of(&event).and_then(|i| i.subscription) != Some(ctx.sub) =>
            {
                event
            }
            Ok(_) => {
                StreamStats::add(&streams.stats.skipped, 1);
                let _ = ctx.ack(id, false);
                continue;
            }
            Err(e) => {
                streams.dispatcher.metrics().add_malformed(1);
                StreamStats::add(&streams.stats.skipped, 1);
                tracing::warn!(group = %ctx.group, %id, error = %e, "malformed stream entry skipped");
                let _ = ctx.ack(id, false);
                continue;
            }
        };
        lock(&ctx.retrying).remove(&id);
        let attempt = counts.get(&id).copied().unwrap_or(1);
        ctx.in_flight.insert(&id);
        let delivery = DurableDelivery {
            attempt,
            settle: Box::new(StreamSettle::new(ctx.clone(), id)),
        };
        match streams
            .dispatcher
            .deliver_to(ctx.sub, event, delivery)
            .await
        {
            Ok(true) => {}
            Ok(false) | Err(_) => return Flow::Stop,
        }
    }
    Flow::Continue
}
