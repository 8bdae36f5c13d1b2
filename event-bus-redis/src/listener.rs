//! The pub/sub connection task: receives messages, hands them to the dispatcher, and
//! reconnects (resubscribing everything) when the connection dies.
//!
//! The pub/sub connection speaks RESP3, so that it can carry ordinary commands while
//! subscribed: `CLIENT SETNAME`, the `PING` health check and the `PING` that
//! [`flush`](crate::RedisEventBus) uses as an ordering barrier.
//!
//! # Stopping
//!
//! `close()` stops the receive path first ([`Listener::run`] returns only after this):
//! the connection is unsubscribed from everything and a `PING` answered, so every
//! message the server sent before is in the buffer; then each buffered message is
//! handed to the (still open) dispatcher until the close deadline, and what is still
//! waiting then is counted in `dropped`. Only then does the dispatcher close. So every
//! message the bus received is, when `close()` returns, delivered or counted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use event_bus_core::{
    Dispatcher, Error, Pattern,
    deadline::{self, Operation},
    envelope::decode,
    log_limit::{Excerpt, LogLimiter},
    reconnect::{Backoff, tcp_probe},
};
use redis::{
    AsyncConnectionConfig, Msg, PushInfo, PushKind, RedisError, aio::MultiplexedConnection,
};
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    buffer::{ReceiveBuffer, is_message, size},
    channel::ChannelNames,
    registry::Registry,
};

/// Counts of messages received and fully handed to the dispatcher, so `flush` can wait
/// for everything that arrived before a point in time.
#[derive(Debug)]
pub(crate) struct Progress {
    pub(crate) received: AtomicU64,
    pub(crate) processed: watch::Sender<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            received: AtomicU64::new(0),
            processed: watch::Sender::new(0),
        }
    }
}

/// A pushed message: its connection's generation, the push, and its size in bytes
/// (messages only; counted in the [`ReceiveBuffer`]).
type Push = (u64, PushInfo, usize);

/// The close signal: the drain deadline once `close()` was called.
pub(crate) type Stop = watch::Receiver<Option<Instant>>;

/// Why [`Listener::serve`] returned.
enum Served {
    Lost(String),
    Stopped,
}

/// Everything the listener task needs; see the [module docs](self).
pub(crate) struct Listener {
    pub(crate) client: redis::Client,
    pub(crate) name: String,
    pub(crate) names: ChannelNames,
    pub(crate) registry: Arc<Registry>,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) progress: Arc<Progress>,
    pub(crate) buffer: Arc<ReceiveBuffer>,
    pub(crate) max_message_bytes: usize,
    pub(crate) timeout: Duration,
    pub(crate) ping_interval: Option<Duration>,
    /// The server's TCP address, probed while waiting to reconnect.
    pub(crate) probe: Vec<(String, u16)>,
    pub(crate) stop: Stop,
    pub(crate) tx: mpsc::UnboundedSender<Push>,
    /// Bounds the malformed-message warnings (see [`event_bus_core::log_limit`]).
    pub(crate) malformed_log: LogLimiter,
}

impl Listener {
    /// Opens a pub/sub connection whose messages are tagged with `generation`, named
    /// so operators (and tests) can find it in `CLIENT LIST`. Messages wait in the
    /// bounded [`ReceiveBuffer`] until the listener hands them to the dispatcher.
    pub(crate) async fn open(&self, generation: u64) -> Result<MultiplexedConnection, RedisError> {
        let tx = self.tx.clone();
        let progress = self.progress.clone();
        let buffer = self.buffer.clone();
        let metrics = self.dispatcher.metrics().clone();
        let connection = self.name.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(move |info: PushInfo| {
                let bytes = if is_message(&info) {
                    let bytes = size(&info);
                    if !buffer.admit(bytes, &connection) {
                        return Ok(());
                    }
                    bytes
                } else {
                    0
                };
                let message = is_message(&info);
                progress.received.fetch_add(1, Ordering::AcqRel);
                if tx.send((generation, info, bytes)).is_err() {
                    // The listener has stopped: received, never to be dispatched.
                    progress.received.fetch_sub(1, Ordering::AcqRel);
                    if message {
                        buffer.release(bytes);
                        metrics.add_dropped(1);
                    }
                }
                Ok::<(), std::convert::Infallible>(())
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

    /// Runs until stopped (see [Stopping](self#stopping)): serves the connection of
    /// `generation`, and after it is lost reconnects and serves the next one.
    pub(crate) async fn run(self, mut rx: mpsc::UnboundedReceiver<Push>, mut generation: u64) {
        let mut backoff = Backoff::new(self.dispatcher.config().consumer_error_sleep());
        loop {
            let reason = match self.serve(&mut rx, generation).await {
                Served::Lost(reason) => reason,
                Served::Stopped => break,
            };
            if self.dispatcher.is_closed() {
                return;
            }
            tracing::warn!(error = %reason, connection = %self.name, "redis pub/sub connection lost; reconnecting");
            self.registry.detach(Some(reason)).await;
            match self.reconnect(&mut rx, &mut backoff, generation).await {
                Some(next) => generation = next,
                None => break,
            }
        }
        self.shut_down(rx, generation).await;
    }

    /// Resolves when `close()` was called.
    async fn stopped(&self) {
        let mut stop = self.stop.clone();
        if stop.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves when the close deadline has passed.
    async fn past_deadline(&self) {
        let mut stop = self.stop.clone();
        let deadline = match stop.wait_for(Option::is_some).await {
            Ok(deadline) => *deadline,
            Err(_) => None,
        };
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }

    /// Stops receiving and accounts for everything received: unsubscribes the live
    /// connection from everything, waits for a `PING` answer (everything the server
    /// sent before is then buffered), dispatches the buffer until the deadline, and
    /// counts the rest as dropped.
    async fn shut_down(&self, mut rx: mpsc::UnboundedReceiver<Push>, generation: u64) {
        if let Some(mut conn) = self.registry.stop().await {
            let barrier = async {
                self.registry.unsubscribe_all(&mut conn).await?;
                ping(&mut conn, self.timeout).await
            };
            if let Err(e) = barrier.await {
                tracing::debug!(error = %e, connection = %self.name, "unsubscribe on close failed");
            }
        }
        rx.close();
        let mut handled = 0;
        while let Ok((g, push, bytes)) = rx.try_recv() {
            handled += 1;
            self.take(&push, bytes, g, generation);
            if g == generation {
                self.handle(push).await;
            }
        }
        self.progress.processed.send_modify(|n| *n += handled);
    }

    /// Handles messages of connection `generation` until it is lost or the bus closes.
    async fn serve(&self, rx: &mut mpsc::UnboundedReceiver<Push>, generation: u64) -> Served {
        let mut ping = self.ping_interval.map(|every| {
            let mut t = tokio::time::interval_at(Instant::now() + every, every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        loop {
            tokio::select! {
                biased;
                () = self.stopped() => return Served::Stopped,
                item = rx.recv() => {
                    // The listener holds a sender itself, so the channel never closes.
                    let Some(first) = item else {
                        return Served::Lost("message channel closed".into());
                    };
                    if self.handle_burst(rx, first, generation).await {
                        return Served::Lost("connection closed".into());
                    }
                }
                _ = tick(&mut ping) => {
                    if let Err(e) = self.ping().await {
                        return Served::Lost(e.to_string());
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
        while let Some((g, push, bytes)) = next.take() {
            handled += 1;
            self.take(&push, bytes, g, generation);
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

    /// Takes a push out of the receive buffer. A message of an older connection is
    /// discarded, and counted: the new connection may carry the same event.
    fn take(&self, push: &PushInfo, bytes: usize, generation: u64, current: u64) {
        if is_message(push) {
            self.buffer.release(bytes);
            if generation != current {
                self.dispatcher.metrics().add_dropped(1);
            }
        }
    }

    async fn ping(&self) -> Result<(), Error> {
        let mut conn = self
            .registry
            .connection()
            .await
            .ok_or_else(|| Error::connection("ping", "not connected"))?;
        ping(&mut conn, self.timeout).await
    }

    /// Reconnects with backoff until it succeeds; returns the new generation, or `None`
    /// when the bus closes meanwhile.
    async fn reconnect(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Push>,
        backoff: &mut Backoff,
        mut generation: u64,
    ) -> Option<u64> {
        loop {
            {
                let wait = backoff.wait(|| tcp_probe(&self.probe));
                tokio::pin!(wait);
                // Keep taking what the old connection still delivers (it is discarded),
                // so a concurrent `flush` is not left waiting for it.
                loop {
                    tokio::select! {
                        () = &mut wait => break,
                        () = self.stopped() => return None,
                        Some((g, push, bytes)) = rx.recv() => {
                            self.take(&push, bytes, g, generation + 1);
                            self.progress.processed.send_modify(|n| *n += 1);
                        }
                    }
                }
            }
            generation += 1;
            let attempt = backoff.attempts();
            let opened =
                deadline::call(Operation::Reconnect, self.timeout, self.open(generation)).await;
            let result = match opened {
                Ok(conn) => self.registry.attach(conn).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(resubscribed) => {
                    self.dispatcher.metrics().add_reconnects(1);
                    backoff.reset();
                    tracing::warn!(attempt, resubscribed, connection = %self.name, "redis pub/sub connection re-established");
                    return Some(generation);
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
    /// server delivered it for. Once the bus is closing, a message still waiting for
    /// queue space at the close deadline is counted in `dropped`.
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
        // The subscriptions the server delivered this message for.
        let glob: Option<String> = msg
            .from_pattern()
            .then(|| msg.get_pattern().unwrap_or_default());
        let for_route = |p: &Pattern| match &glob {
            Some(glob) => p.literal().is_none() && self.names.glob(p) == *glob,
            None => p.literal().is_some(),
        };
        // Dispatching is all or nothing: cut short while waiting for room, the event
        // was queued nowhere, and is counted once per subscription it was for.
        let result = tokio::select! {
            biased;
            result = self.dispatcher.dispatch_where(event, &for_route) => result,
            () = self.past_deadline() => {
                let targets = self
                    .dispatcher
                    .patterns()
                    .iter()
                    .filter(|p| for_route(p) && p.matches(&topic))
                    .count();
                self.dispatcher.metrics().add_dropped(targets as u64);
                tracing::debug!(event_id = %id, %topic, targets, "close deadline passed: received event dropped");
                return;
            }
        };
        match result {
            Ok(()) => {}
            Err(Error::Closed) => {
                self.dispatcher.metrics().add_dropped(1);
            }
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
    deadline::call(
        Operation::Ping,
        timeout,
        redis::cmd("PING").exec_async(conn),
    )
    .await
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
