//! The pub/sub connection task: receives messages, hands them to the dispatcher, and
//! reconnects (resubscribing everything) when the connection dies.
//!
//! The pub/sub connection speaks RESP3, so that it can carry ordinary commands while
//! subscribed: `CLIENT SETNAME`, the `PING` health check and the `PING` that
//! [`flush`](crate::RedisEventBus) uses as an ordering barrier.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use event_bus_core::{
    Dispatcher, Error,
    envelope::decode,
    log_limit::{Excerpt, LogLimiter},
    reconnect::Backoff,
};
use redis::{
    AsyncConnectionConfig, Msg, PushInfo, PushKind, RedisError, aio::MultiplexedConnection,
};
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior},
};

use crate::{channel::ChannelNames, registry::Registry};

/// Counts of messages received and fully handed to the dispatcher, so `flush` can wait
/// for everything that arrived before a point in time.
#[derive(Debug)]
pub(crate) struct Progress {
    pub(crate) received: AtomicU64,
    pub(crate) processed: watch::Sender<u64>,
    /// Event messages the driver has handed over and the listener not yet dispatched.
    buffered: AtomicUsize,
    /// Event messages dropped because `buffered` was at its bound.
    overflowed: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            received: AtomicU64::new(0),
            processed: watch::Sender::new(0),
            buffered: AtomicUsize::new(0),
            overflowed: AtomicU64::new(0),
        }
    }
}

/// Whether a push carries a published message (as opposed to connection or
/// subscription notices, which are never dropped).
fn is_message(push: &PushInfo) -> bool {
    matches!(push.kind, PushKind::Message | PushKind::PMessage)
}

type Push = (u64, PushInfo);

/// How many received messages may wait for the dispatcher, per slot of a subscription
/// queue (`dispatcher.queue_maxsize`): generous enough that bursts are never dropped,
/// small enough that a subscriber that cannot keep up does not exhaust memory.
const BUFFER_PER_QUEUE_SLOT: usize = 64;

/// Everything the listener task needs; see the [module docs](self).
pub(crate) struct Listener {
    pub(crate) client: redis::Client,
    pub(crate) name: String,
    pub(crate) names: ChannelNames,
    pub(crate) registry: Arc<Registry>,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) progress: Arc<Progress>,
    pub(crate) max_message_bytes: usize,
    pub(crate) timeout: Duration,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) tx: mpsc::UnboundedSender<Push>,
    /// Bounds the malformed-message warnings (see [`event_bus_core::log_limit`]).
    pub(crate) malformed_log: LogLimiter,
}

impl Listener {
    /// Opens a pub/sub connection whose messages are tagged with `generation`, named
    /// so operators (and tests) can find it in `CLIENT LIST`.
    ///
    /// The driver reads the socket on its own and cannot be slowed down, so while the
    /// dispatcher is full (overflow `block`) messages wait here; at most
    /// [`BUFFER_PER_QUEUE_SLOT`] × `dispatcher.queue_maxsize` of them. Beyond that an
    /// event message is dropped, counted in `dropped` and logged, rather than buffered
    /// without bound.
    pub(crate) async fn open(&self, generation: u64) -> Result<MultiplexedConnection, RedisError> {
        let tx = self.tx.clone();
        let progress = self.progress.clone();
        let metrics = self.dispatcher.metrics().clone();
        let bound = self
            .dispatcher
            .config()
            .queue_maxsize
            .saturating_mul(BUFFER_PER_QUEUE_SLOT);
        let connection = self.name.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(move |info: PushInfo| {
                if is_message(&info) {
                    if progress.buffered.load(Ordering::Acquire) >= bound {
                        metrics.add_dropped(1);
                        let n = progress.overflowed.fetch_add(1, Ordering::AcqRel) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(dropped = n, bound, %connection, "receive buffer full: redis message dropped");
                        }
                        return Ok(());
                    }
                    progress.buffered.fetch_add(1, Ordering::AcqRel);
                }
                progress.received.fetch_add(1, Ordering::AcqRel);
                tx.send((generation, info))
            });
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.name)
            .exec_async(&mut conn)
            .await?;
        Ok(conn)
    }

    /// Runs until aborted: serves the connection of `generation`, and after it is lost
    /// reconnects and serves the next one.
    pub(crate) async fn run(self, mut rx: mpsc::UnboundedReceiver<Push>, mut generation: u64) {
        let mut backoff = Backoff::new(self.dispatcher.config().consumer_error_sleep());
        loop {
            let reason = self.serve(&mut rx, generation).await;
            if self.dispatcher.is_closed() {
                return;
            }
            tracing::warn!(error = %reason, connection = %self.name, "redis pub/sub connection lost; reconnecting");
            self.registry.detach(Some(reason)).await;
            generation = self.reconnect(&mut rx, &mut backoff, generation).await;
        }
    }

    /// Handles messages of connection `generation` until it is lost; returns why.
    async fn serve(&self, rx: &mut mpsc::UnboundedReceiver<Push>, generation: u64) -> String {
        let mut ping = self.ping_interval.map(|every| {
            let mut t = tokio::time::interval_at(Instant::now() + every, every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        loop {
            tokio::select! {
                item = rx.recv() => {
                    // The listener holds a sender itself, so the channel never closes.
                    let Some(first) = item else { return "message channel closed".into() };
                    if self.handle_burst(rx, first, generation).await {
                        return "connection closed".into();
                    }
                }
                _ = tick(&mut ping) => {
                    if let Err(e) = self.ping().await {
                        return e.to_string();
                    }
                }
            }
        }
    }

    /// Handles `first` and whatever else is already waiting (up to a bound), then
    /// counts them as processed in one step. Returns whether the connection was lost.
    async fn handle_burst(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Push>,
        first: Push,
        generation: u64,
    ) -> bool {
        const BURST: u64 = 64;
        let mut next = Some(first);
        let mut handled = 0;
        let mut lost = false;
        while let Some((g, push)) = next.take() {
            handled += 1;
            if is_message(&push) {
                self.progress.buffered.fetch_sub(1, Ordering::AcqRel);
            }
            if g == generation {
                if push.kind == PushKind::Disconnection {
                    lost = true;
                    break;
                }
                self.handle(push).await;
            }
            if handled < BURST {
                next = rx.try_recv().ok();
            }
        }
        self.progress.processed.send_modify(|n| *n += handled);
        lost
    }

    async fn ping(&self) -> Result<(), Error> {
        let mut conn = self
            .registry
            .connection()
            .await
            .ok_or_else(|| Error::connection("ping", "not connected"))?;
        ping(&mut conn, self.timeout).await
    }

    /// Reconnects with backoff until it succeeds; returns the new generation.
    async fn reconnect(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Push>,
        backoff: &mut Backoff,
        mut generation: u64,
    ) -> u64 {
        loop {
            let sleep = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(sleep);
            // Keep counting what the old connection still delivers (it is discarded),
            // so a concurrent `flush` is not left waiting for it.
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    Some((_, push)) = rx.recv() => {
                        if is_message(&push) {
                            self.progress.buffered.fetch_sub(1, Ordering::AcqRel);
                        }
                        self.progress.processed.send_modify(|n| *n += 1);
                    }
                }
            }
            generation += 1;
            let attempt = backoff.attempts();
            let result = match tokio::time::timeout(self.timeout, self.open(generation)).await {
                Ok(Ok(conn)) => self.registry.attach(conn).await,
                Ok(Err(e)) => Err(Error::connection("reconnect", e)),
                Err(_) => Err(Error::Timeout {
                    operation: "reconnect".into(),
                    after: self.timeout,
                }),
            };
            match result {
                Ok(resubscribed) => {
                    self.dispatcher.metrics().add_reconnects(1);
                    backoff.reset();
                    tracing::warn!(attempt, resubscribed, connection = %self.name, "redis pub/sub connection re-established");
                    return generation;
                }
                Err(e) => {
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        tracing::warn!(attempt, error = %e, "redis pub/sub reconnect failed; retrying");
                    } else {
                        tracing::debug!(attempt, error = %e, "redis pub/sub reconnect failed; retrying");
                    }
                    self.registry.set_error(e.to_string());
                }
            }
        }
    }

    /// Decodes one pushed message and dispatches it to the local subscriptions the
    /// server delivered it for.
    async fn handle(&self, push: PushInfo) {
        let Some(msg) = Msg::from_push_info(push) else {
            return; // not a message (e.g. an unsubscribe notice)
        };
        let channel = msg.get_channel_name();
        let event = match decode(msg.get_payload_bytes(), self.max_message_bytes) {
            Ok(event) if self.names.topic(channel) == Some(event.topic.as_str()) => event,
            Ok(event) => {
                return self.malformed(
                    channel,
                    &format!("topic {:?} does not belong on this channel", event.topic),
                );
            }
            Err(e) => return self.malformed(channel, &e.to_string()),
        };
        let (id, topic) = (event.id, event.topic.clone());
        let result = if msg.from_pattern() {
            let glob: String = msg.get_pattern().unwrap_or_default();
            self.dispatcher
                .dispatch_where(event, |p| {
                    p.literal().is_none() && self.names.glob(p) == glob
                })
                .await
        } else {
            self.dispatcher
                .dispatch_where(event, |p| p.literal().is_some())
                .await
        };
        match result {
            Ok(()) | Err(Error::Closed) => {}
            // Counted by the dispatcher; the publisher is another process.
            Err(e) => {
                tracing::debug!(event_id = %id, %topic, error = %e, "received event not queued")
            }
        }
    }

    /// Counts a malformed message (exactly) and logs it within the rate limit, with
    /// excerpts of the untrusted channel name and reason.
    fn malformed(&self, channel: &str, reason: &str) {
        self.dispatcher.metrics().add_malformed(1);
        if let Some(suppressed) = self.malformed_log.check() {
            tracing::warn!(
                channel = %Excerpt(channel),
                reason = %Excerpt(reason),
                suppressed,
                "malformed message skipped"
            );
        }
    }
}

/// `PING` on `conn`, bounded by `timeout`.
pub(crate) async fn ping(conn: &mut MultiplexedConnection, timeout: Duration) -> Result<(), Error> {
    match tokio::time::timeout(timeout, redis::cmd("PING").exec_async(conn)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::connection("ping", e)),
        Err(_) => Err(Error::Timeout {
            operation: "ping".into(),
            after: timeout,
        }),
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
