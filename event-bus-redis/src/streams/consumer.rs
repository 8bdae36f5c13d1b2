//! The consumer of one durable subscription: reads its group's entries on a dedicated
//! connection and hands them to the dispatcher.
//!
//! On every (re)connect it first reads its own pending entries (`XREADGROUP ... 0`:
//! what it had taken before a crash or a lost connection), then new ones (`>` with
//! `BLOCK` and `COUNT`). Between reads it claims entries whose lease expired
//! (`XAUTOCLAIM`): those of dead members, and its own after a retry backoff. A second
//! task extends the lease of what it holds (`XCLAIM ... JUSTID`) every third of the
//! lease, and a third acknowledges in batches (`XACK`).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use event_bus_core::{
    DeadLetter, DeadLetterInfo, Error, Pattern, SubscriptionId, durable::DurableDelivery, envelope,
    reconnect::Backoff,
};
use redis::{Value, aio::MultiplexedConnection};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

use super::{
    Streams, commands,
    entry::{self, Entry},
    lock,
    settle::StreamSettle,
    stats::StreamStats,
};

/// Longest blocking read: how soon a stop or a due retry is noticed.
const BLOCK: Duration = Duration::from_millis(500);

/// Ids of the entries a consumer holds (handed to the dispatcher, not settled yet):
/// their lease is extended while they are held.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<HashSet<String>>);

impl InFlight {
    pub(crate) fn insert(&self, id: &str) -> bool {
        lock(&self.0).insert(id.to_owned())
    }

    pub(crate) fn remove(&self, id: &str) {
        lock(&self.0).remove(id);
    }

    fn contains(&self, id: &str) -> bool {
        lock(&self.0).contains(id)
    }

    fn snapshot(&self) -> Vec<String> {
        lock(&self.0).iter().cloned().collect()
    }
}

/// What a consumer, its helper tasks and its settle handles share.
pub(crate) struct Ctx {
    pub(crate) streams: Weak<Streams>,
    pub(crate) sub: SubscriptionId,
    pub(crate) pattern: Pattern,
    pub(crate) group: String,
    pub(crate) name: String,
    /// The subscription's dead-letter option (see [`StreamSettle`]).
    pub(crate) dead_letter: DeadLetter,
    pub(crate) stream: String,
    pub(crate) in_flight: Arc<InFlight>,
    /// Entries to acknowledge (the acker batches them).
    pub(crate) acks: mpsc::UnboundedSender<(String, bool)>,
    /// When the next claim is due (moved earlier by a retry).
    pub(crate) claim_at: Mutex<Instant>,
    /// Entries waiting on the server for a retry, until when they are waited for (by
    /// `flush`): their due time plus a lease, in case another member takes them.
    pub(crate) retrying: Mutex<HashMap<String, Instant>>,
    /// `CLIENT ID` of the reading connection (0 before it is open).
    client_id: AtomicI64,
    /// Reads started, and reads finished with what they returned handed over.
    reads_started: AtomicU64,
    reads_done: watch::Sender<u64>,
}

/// What the acker needs of a consumer (not the consumer itself: the acker ends when
/// the consumer and its settle handles are gone).
struct Acking {
    stream: String,
    group: String,
    in_flight: Arc<InFlight>,
}

impl Ctx {
    /// Whether an entry of this consumer waits on the server for a retry.
    pub(crate) fn is_retrying(&self) -> bool {
        let now = Instant::now();
        let mut retrying = lock(&self.retrying);
        retrying.retain(|_, until| *until > now);
        !retrying.is_empty()
    }

    fn clone_acking(&self) -> Acking {
        Acking {
            stream: self.stream.clone(),
            group: self.group.clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    /// Makes the next claim happen no later than `at`.
    pub(crate) fn claim_by(&self, at: Instant) {
        let mut next = lock(&self.claim_at);
        if at < *next {
            *next = at;
        }
    }
}

/// A running consumer, owned by [`Streams`].
pub(crate) struct ConsumerHandle {
    pub(crate) group: String,
    pub(crate) index: u32,
    ctx: Arc<Ctx>,
    stop: watch::Sender<bool>,
    reader: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    acker: JoinHandle<()>,
}

impl ConsumerHandle {
    /// Stops reading; what was handed to the dispatcher is still settled.
    pub(crate) fn stop_reading(&self) {
        self.stop.send_replace(true);
    }

    /// Whether an entry of this consumer waits on the server for a retry.
    pub(crate) fn is_retrying(&self) -> bool {
        self.ctx.is_retrying()
    }

    /// A handle to wait for the consumer's current read.
    pub(crate) fn waiter(&self) -> Waiter {
        Waiter {
            ctx: self.ctx.clone(),
            stop: self.stop.subscribe(),
        }
    }

    /// Stops the consumer without waiting (close from a handler): it reads no more and
    /// stops extending leases; its acknowledgements are still sent.
    pub(crate) fn detach(self) {
        self.stop.send_replace(true);
        self.heartbeat.abort();
    }

    /// Stops the consumer: ends its read (within one blocking read), stops extending
    /// leases, and waits up to `timeout` for the pending acknowledgements to be sent.
    pub(crate) async fn stop(self, streams: &Streams) {
        let timeout = streams.timeout;
        self.stop.send_replace(true);
        self.waiter().finish_read(streams).await;
        let mut reader = self.reader;
        if tokio::time::timeout(BLOCK + timeout, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
        self.heartbeat.abort();
        drop(self.ctx);
        // The acker ends once every settle handle is gone (the dispatcher settled or
        // dropped them), after sending what they acknowledged.
        let _ = tokio::time::timeout(timeout, self.acker).await;
    }
}

/// Waits for one consumer's read in progress.
pub(crate) struct Waiter {
    ctx: Arc<Ctx>,
    stop: watch::Receiver<bool>,
}

impl Waiter {
    /// Waits until the read in progress (if any) has finished and handed over what it
    /// returned; a read blocked waiting for entries is cut short (`CLIENT UNBLOCK`).
    pub(crate) async fn finish_read(mut self, streams: &Streams) {
        let started = self.ctx.reads_started.load(Ordering::Acquire);
        let mut done = self.ctx.reads_done.subscribe();
        if *done.borrow() >= started {
            return;
        }
        let id = self.ctx.client_id.load(Ordering::Acquire);
        if id != 0 {
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("UNBLOCK").arg(id);
            let _ = streams.commands.run::<i64>("unblock a reader", &cmd).await;
        }
        let stop = self.stop.wait_for(|s| *s);
        tokio::select! {
            _ = done.wait_for(|d| *d >= started) => {}
            _ = stop => {}
        }
    }
}

/// What one consumer serves.
pub(crate) struct Spec {
    pub(crate) sub: SubscriptionId,
    pub(crate) pattern: Pattern,
    pub(crate) group: String,
    /// Consumer name in the group.
    pub(crate) name: String,
    /// Its number among this bus's consumers of the group.
    pub(crate) index: u32,
    pub(crate) dead_letter: DeadLetter,
}

/// Starts the consumer of `spec`.
pub(crate) fn spawn(streams: &Arc<Streams>, spec: Spec) -> ConsumerHandle {
    let Spec {
        sub,
        pattern,
        group,
        name,
        index,
        dead_letter,
    } = spec;
    let (acks, ack_rx) = mpsc::unbounded_channel();
    let in_flight = Arc::new(InFlight::default());
    let stream = streams.keys.stream();
    let ctx = Arc::new(Ctx {
        streams: Arc::downgrade(streams),
        sub,
        pattern,
        group: group.clone(),
        name,
        dead_letter,
        stream,
        in_flight,
        acks,
        claim_at: Mutex::new(Instant::now()),
        retrying: Mutex::default(),
        client_id: AtomicI64::new(0),
        reads_started: AtomicU64::new(0),
        reads_done: watch::Sender::new(0),
    });
    let (stop, stop_rx) = watch::channel(false);
    let acker = tokio::spawn(ack_loop(
        Arc::downgrade(streams),
        ctx.clone_acking(),
        ack_rx,
    ));
    let heartbeat = tokio::spawn(heartbeat_loop(ctx.clone(), streams.config.lease()));
    let reader = tokio::spawn(read_loop(ctx.clone(), stop_rx));
    ConsumerHandle {
        group,
        index,
        ctx,
        stop,
        reader,
        heartbeat,
        acker,
    }
}

/// Whether the reader goes on.
#[derive(Clone, Copy)]
enum Flow {
    Continue,
    Stop,
}

/// Reads until stopped, reconnecting with backoff after errors.
async fn read_loop(ctx: Arc<Ctx>, stop: watch::Receiver<bool>) {
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
                    if format!("{e:?}").contains("NOGROUP") {
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
                operation: "read stream".into(),
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
            let _ = ctx.acks.send((id, false));
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
                let _ = ctx.acks.send((id, false));
                continue;
            }
            Err(e) => {
                streams.dispatcher.metrics().add_malformed(1);
                StreamStats::add(&streams.stats.skipped, 1);
                tracing::warn!(group = %ctx.group, %id, error = %e, "malformed stream entry skipped");
                let _ = ctx.acks.send((id, false));
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

/// Extends the lease of every held entry still pending with this consumer, every third
/// of the lease.
async fn heartbeat_loop(ctx: Arc<Ctx>, lease: Duration) {
    let period = (lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        let Some(streams) = ctx.streams.upgrade() else {
            return;
        };
        let held = ctx.in_flight.snapshot();
        if held.is_empty() {
            continue;
        }
        if let Err(e) = extend(&streams, &ctx, held).await {
            tracing::warn!(group = %ctx.group, consumer = %ctx.name, error = %e, "could not extend leases");
        }
    }
}

async fn extend(streams: &Streams, ctx: &Ctx, held: Vec<String>) -> Result<(), Error> {
    // Only what is still ours: a member that took an entry over keeps it.
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(&ctx.stream).arg(&ctx.group).arg("-").arg("+");
    cmd.arg(held.len() + 10_000).arg(&ctx.name);
    let reply: Value = streams
        .commands
        .run("list own pending entries", &cmd)
        .await?;
    let ours: HashSet<String> = entry::pending_reply(&reply)
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    let ids: Vec<&String> = held.iter().filter(|id| ours.contains(*id)).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut cmd = redis::cmd("XCLAIM");
    cmd.arg(&ctx.stream).arg(&ctx.group).arg(&ctx.name).arg(0);
    cmd.arg(&ids).arg("JUSTID");
    streams.commands.run::<Value>("extend leases", &cmd).await?;
    Ok(())
}

/// Acknowledges the ids it receives, in batches, until every sender is gone. An `XACK`
/// that fails is tried once more (it is idempotent) on a fresh connection.
async fn ack_loop(
    streams: Weak<Streams>,
    acking: Acking,
    mut acks: mpsc::UnboundedReceiver<(String, bool)>,
) {
    let Acking {
        stream,
        group,
        in_flight,
    } = acking;
    let mut batch = Vec::new();
    let mut handled = 0;
    while let Some(first) = acks.recv().await {
        let mut next = Some(first);
        while let Some((id, was_handled)) = next.take() {
            batch.push(id);
            handled += u64::from(was_handled);
            if batch.len() < 1000 {
                next = acks.try_recv().ok();
            }
        }
        let Some(streams) = streams.upgrade() else {
            return;
        };
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&stream).arg(&group).arg(&batch);
        let mut result = streams.commands.run::<u64>("acknowledge", &cmd).await;
        if result.is_err() {
            result = streams.commands.run::<u64>("acknowledge", &cmd).await;
        }
        match result {
            Ok(_) => StreamStats::add(&streams.stats.acked, handled),
            Err(e) => tracing::warn!(%group, entries = batch.len(), error = %e,
                "could not acknowledge: the entries will be delivered again after their lease"),
        }
        for id in batch.drain(..) {
            in_flight.remove(&id);
        }
        handled = 0;
    }
}
