//! The consumer task of one durable subscription: pulls its group's messages from the
//! group's durable consumer and hands them to the dispatcher; a second task extends
//! the lease of what it holds (`+WPI` every third of the lease).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    Client, Subject,
    jetstream::{Context, consumer::pull},
};
use bytes::{Bytes, BytesMut};
use event_bus_core::{
    DeadLetter, DeadLetterInfo, Pattern, SubscriptionId, durable::DurableDelivery, envelope,
    log_limit::LogLimiter, reconnect::Backoff,
};
use futures_util::StreamExt;
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::{
    Attached, JetStream, lock,
    publish::{GROUP_HEADER, PARTS_HEADER},
    settle::{JsSettle, send},
    stats::Stats,
};

/// Longest a pull request waits on the server; idle heartbeats come at a third of it.
const PULL_EXPIRES: Duration = Duration::from_secs(6);

/// What a consumer task, its heartbeat and its settle handles share.
pub(crate) struct Ctx {
    pub(crate) js: Weak<JetStream>,
    pub(crate) sub: SubscriptionId,
    pub(crate) pattern: Pattern,
    pub(crate) group: String,
    /// The durable consumer's name.
    pub(crate) consumer: String,
    /// The subscription's dead-letter option.
    pub(crate) dead_letter: DeadLetter,
    pub(crate) client: Client,
    context: Context,
    /// Messages held (queued or being handled), by stream sequence: their reply subjects.
    pub(crate) in_flight: Mutex<HashMap<u64, Subject>>,
    /// Messages waiting on the server for a retry, until when `flush` waits for them.
    pub(crate) retrying: Mutex<HashMap<u64, Instant>>,
    /// The highest consumer sequence handed over (shared by the bus's members of the
    /// group).
    handed: Arc<AtomicU64>,
    /// The highest stream sequence already checked for removal by the caps.
    lost_checked: AtomicU64,
    /// Whether the first check only sets `lost_checked` (the group is new: what the
    /// caps removed before it existed was never its).
    new_group: std::sync::atomic::AtomicBool,
    malformed_log: LogLimiter,
}

impl Ctx {
    fn is_retrying(&self) -> bool {
        let now = Instant::now();
        let mut retrying = lock(&self.retrying);
        retrying.retain(|_, until| *until > now);
        !retrying.is_empty()
    }
}

/// A running consumer task, owned by [`JetStream`].
pub(crate) struct ConsumerHandle {
    pub(crate) group: String,
    pub(crate) consumer: String,
    ctx: Arc<Ctx>,
    stop: watch::Sender<bool>,
    reader: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
}

impl ConsumerHandle {
    /// Stops pulling; what was handed to the dispatcher is still settled.
    pub(crate) fn stop_reading(&self) {
        self.stop.send_replace(true);
    }

    /// Whether a message of this consumer waits on the server for a retry.
    pub(crate) fn is_retrying(&self) -> bool {
        self.ctx.is_retrying()
    }

    /// Stops without waiting (close from a handler).
    pub(crate) fn detach(self) {
        self.stop.send_replace(true);
        self.heartbeat.abort();
    }

    /// Stops pulling (waiting up to `timeout` for a hand-over in progress) and
    /// extending leases.
    pub(crate) async fn stop(self, timeout: Duration) {
        self.stop.send_replace(true);
        let mut reader = self.reader;
        if tokio::time::timeout(timeout, &mut reader).await.is_err() {
            reader.abort();
        }
        self.heartbeat.abort();
    }
}

/// What one consumer task serves.
pub(crate) struct Spec {
    pub(crate) sub: SubscriptionId,
    pub(crate) pattern: Pattern,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) attached: Attached,
    pub(crate) puller: pull::Config,
    pub(crate) handed: Arc<AtomicU64>,
    /// Whether subscribe created the group's consumer.
    pub(crate) new_group: bool,
}

/// Starts the consumer task of `spec`.
pub(crate) fn spawn(js: &Arc<JetStream>, spec: Spec) -> ConsumerHandle {
    let ctx = Arc::new(Ctx {
        js: Arc::downgrade(js),
        sub: spec.sub,
        pattern: spec.pattern,
        group: spec.group.clone(),
        consumer: spec.consumer.clone(),
        dead_letter: spec.dead_letter,
        client: spec.attached.client,
        context: spec.attached.context,
        in_flight: Mutex::default(),
        retrying: Mutex::default(),
        handed: spec.handed,
        lost_checked: AtomicU64::new(0),
        new_group: std::sync::atomic::AtomicBool::new(spec.new_group),
        malformed_log: LogLimiter::default(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(heartbeat_loop(ctx.clone(), js.config.lease()));
    let reader = tokio::spawn(read_loop(ctx.clone(), spec.puller, stop_rx));
    ConsumerHandle {
        group: spec.group,
        consumer: spec.consumer,
        ctx,
        stop,
        reader,
        heartbeat,
    }
}

/// How often a member checks whether the retention caps removed events its group had
/// not acknowledged.
const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Extends the lease of every held message, every third of the lease; checks for
/// losses to the caps every [`LOSS_CHECK_INTERVAL`].
async fn heartbeat_loop(ctx: Arc<Ctx>, lease: Duration) {
    let every = (lease / 3).max(Duration::from_millis(30));
    let mut next_check = Instant::now() + LOSS_CHECK_INTERVAL;
    loop {
        tokio::time::sleep(every).await;
        if Instant::now() >= next_check {
            next_check = Instant::now() + LOSS_CHECK_INTERVAL;
            check_lost(&ctx).await;
        }
        let replies: Vec<Subject> = lock(&ctx.in_flight).values().cloned().collect();
        for reply in replies {
            let _ = send(&ctx, &reply, Bytes::from_static(b"+WPI")).await;
        }
    }
}

/// Whether the task goes on.
enum Flow {
    Continue,
    Stop,
}

/// Pulls until stopped; after an error, starts a new pull stream with backoff (the
/// client renews its connection by itself).
async fn read_loop(ctx: Arc<Ctx>, puller: pull::Config, mut stop: watch::Receiver<bool>) {
    let mut backoff = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(js) = ctx.js.upgrade() else { return };
        let backoff = backoff
            .get_or_insert_with(|| Backoff::new(js.dispatcher.config().consumer_error_sleep()));
        let batch = js.config.batch_size;
        let stream = js.names.stream();
        drop(js);
        check_lost(&ctx).await;
        let opened = async {
            let consumer = match ctx
                .context
                .get_consumer_from_stream::<pull::Config, _, _>(&ctx.consumer, &stream)
                .await
            {
                Ok(consumer) => consumer,
                Err(e) if super::is_not_found(&e.kind()) => {
                    // Deleted under us (by an operator): make it again.
                    ctx.context
                        .create_consumer_on_stream(puller.clone(), &stream)
                        .await
                        .map_err(|e| e.to_string())?
                }
                Err(e) => return Err(e.to_string()),
            };
            consumer
                .stream()
                .max_messages_per_batch(batch)
                .expires(PULL_EXPIRES)
                .heartbeat(PULL_EXPIRES / 3)
                .messages()
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let error = match opened {
            Ok(mut messages) => loop {
                let next = tokio::select! {
                    next = messages.next() => next,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match next {
                    Some(Ok(message)) => {
                        backoff.reset();
                        if let Flow::Stop = hand_over(&ctx, message).await {
                            return;
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "the pull stream ended".to_owned(),
                }
            },
            Err(e) => e,
        };
        tracing::warn!(group = %ctx.group, consumer = %ctx.consumer, %error,
            "JetStream consumer failed; pulling again");
        if let Some(js) = ctx.js.upgrade() {
            js.dispatcher.metrics().add_reconnects(1);
        }
        tokio::select! {
            () = backoff.wait(|| async { true }) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Counts (in `lost`) and logs the events the retention caps removed before the group
/// acknowledged them: the stream's first sequence has passed the consumer's
/// acknowledgement floor. An upper bound when the group's filter does not cover every
/// subject of the stream; each member that notices counts it.
async fn check_lost(ctx: &Ctx) {
    let Some(js) = ctx.js.upgrade() else { return };
    let name = js.names.stream();
    let Ok(mut stream) = ctx.context.get_stream(&name).await else {
        return;
    };
    let Ok(info) = stream.info().await else {
        return;
    };
    let first = info.state.first_sequence;
    let Ok(consumer) = ctx
        .context
        .get_consumer_from_stream::<pull::Config, _, _>(&ctx.consumer, &name)
        .await
    else {
        return;
    };
    let floor = consumer.cached_info().ack_floor.stream_sequence;
    if ctx.new_group.swap(false, Ordering::AcqRel) {
        ctx.lost_checked.fetch_max(floor, Ordering::AcqRel);
        return;
    }
    let checked = ctx.lost_checked.load(Ordering::Acquire);
    let from = floor.max(checked) + 1;
    if first > from {
        let lost = first - from;
        Stats::add(&js.stats.lost, lost);
        tracing::error!(group = %ctx.group, lost, first = from, last = first - 1,
            "the retention caps removed events the group had not acknowledged: lost");
    }
    ctx.lost_checked
        .fetch_max(first.saturating_sub(1), Ordering::AcqRel);
}

/// Hands one message to the dispatcher, or acknowledges it unseen when it is not for
/// this subscription.
async fn hand_over(ctx: &Arc<Ctx>, message: async_nats::jetstream::Message) -> Flow {
    let Some(js) = ctx.js.upgrade() else {
        return Flow::Stop;
    };
    let (sequence, delivered, consumer_sequence) = match message.info() {
        Ok(info) => (info.stream_sequence, info.delivered, info.consumer_sequence),
        Err(_) => return Flow::Continue, // not a JetStream delivery: nothing to settle
    };
    let Some(reply) = message.reply.clone() else {
        return Flow::Continue;
    };
    let headers = message.headers.as_ref();
    let redriven_for = headers
        .and_then(|h| h.get(GROUP_HEADER))
        .map(|v| v.as_str().to_owned());
    let topic = js.subjects.topic(&message.subject);
    let for_us = redriven_for.as_ref().is_none_or(|g| *g == ctx.group)
        && topic.as_deref().is_some_and(|t| ctx.pattern.matches(t));
    if !for_us {
        return skip(ctx, &js, &reply, consumer_sequence).await;
    }
    let parts = headers
        .and_then(|h| h.get(PARTS_HEADER))
        .map(|v| v.as_str().to_owned());
    let payload = match parts {
        Some(parts) => match join(&js, ctx, &parts).await {
            Ok(payload) => payload,
            Err(Missing::Lost(error)) => {
                Stats::add(&js.stats.lost, 1);
                tracing::error!(group = %ctx.group, sequence, %error,
                    "a part of a large event is missing: lost");
                return skip(ctx, &js, &reply, consumer_sequence).await;
            }
            Err(Missing::Unreadable(error)) => {
                // Left unsettled: the server delivers it again after its lease.
                tracing::warn!(group = %ctx.group, sequence, %error,
                    "could not read the parts of a large event; it will be delivered again");
                return Flow::Continue;
            }
        },
        None => message.payload.clone(),
    };
    let event = match envelope::decode(&payload, js.max_message_bytes) {
        // A subscription never receives its own dead letters.
        Ok(event) if !js.subjects.is_subject_of(&message.subject, &event.topic) => {
            js.dispatcher.metrics().add_malformed(1);
            if let Some(suppressed) = ctx.malformed_log.check() {
                tracing::warn!(group = %ctx.group, sequence, suppressed,
                    "JetStream message skipped: its envelope's topic does not belong on its subject");
            }
            return skip(ctx, &js, &reply, consumer_sequence).await;
        }
        Ok(event) if DeadLetterInfo::of(&event).and_then(|i| i.subscription) != Some(ctx.sub) => {
            event
        }
        Ok(_) => return skip(ctx, &js, &reply, consumer_sequence).await,
        Err(e) => {
            js.dispatcher.metrics().add_malformed(1);
            if let Some(suppressed) = ctx.malformed_log.check() {
                tracing::warn!(group = %ctx.group, sequence, error = %e, suppressed,
                    "malformed JetStream message skipped");
            }
            return skip(ctx, &js, &reply, consumer_sequence).await;
        }
    };
    let scheduled = lock(&ctx.retrying).remove(&sequence).is_some();
    if delivered > 1 && !scheduled {
        Stats::add(&js.stats.redelivered, 1);
    }
    lock(&ctx.in_flight).insert(sequence, reply.clone());
    let delivery = DurableDelivery {
        attempt: u32::try_from(delivered.max(1)).unwrap_or(u32::MAX),
        settle: Box::new(JsSettle::new(ctx.clone(), sequence, reply)),
    };
    let dispatcher = js.dispatcher.clone();
    drop(js);
    let flow = match dispatcher.deliver_to(ctx.sub, event, delivery).await {
        Ok(true) => Flow::Continue,
        Ok(false) | Err(_) => Flow::Stop,
    };
    ctx.handed.fetch_max(consumer_sequence, Ordering::AcqRel);
    flow
}

/// Acknowledges a message unseen and counts it.
async fn skip(ctx: &Ctx, js: &JetStream, reply: &Subject, consumer_sequence: u64) -> Flow {
    Stats::add(&js.stats.skipped, 1);
    let _ = send(ctx, reply, Bytes::from_static(b"+ACK")).await;
    ctx.handed.fetch_max(consumer_sequence, Ordering::AcqRel);
    Flow::Continue
}

/// Why the parts of a large event could not be joined.
enum Missing {
    /// A part is gone (retention) or the header is broken: the event is lost.
    Lost(String),
    /// The server could not be asked: try again later.
    Unreadable(String),
}

/// The envelope stored in the parts whose sequences `parts` lists.
async fn join(js: &JetStream, ctx: &Ctx, parts: &str) -> Result<Bytes, Missing> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let aux = ctx
        .context
        .get_stream_no_info(js.names.aux_stream())
        .await
        .map_err(|e| Missing::Lost(e.to_string()))?;
    let mut data = BytesMut::new();
    for sequence in parts.split(' ') {
        let sequence: u64 = sequence
            .parse()
            .map_err(|_| Missing::Lost(format!("bad {PARTS_HEADER} header")))?;
        let part = aux.get_raw_message(sequence).await.map_err(|e| {
            let text = format!("part {sequence}: {e}");
            match e.kind() {
                RawMessageErrorKind::NoMessageFound => Missing::Lost(text),
                RawMessageErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::NO_MESSAGE_FOUND =>
                {
                    Missing::Lost(text)
                }
                _ => Missing::Unreadable(text),
            }
        })?;
        if data.len() + part.payload.len() > js.max_message_bytes {
            return Err(Missing::Lost(format!(
                "parts exceed the limit of {} bytes",
                js.max_message_bytes
            )));
        }
        data.extend_from_slice(&part.payload);
    }
    Ok(data.freeze())
}
