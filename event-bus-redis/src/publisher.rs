//! Publishing: `PUBLISH` on one multiplexed connection, replaced in the background
//! when it is lost.
//!
//! Concurrent publishes are auto-pipelined ([`crate::pipeliner`]): those that arrive
//! while one is in flight are sent together in one pipeline when it returns, each
//! caller getting its own command's result; a lone publisher's command goes out at
//! once. Publishing from many tasks needs no pool. A batch is one pipeline: one write,
//! one round trip.
//!
//! # Failures
//!
//! The connection reports its own loss, so the publisher knows when it is down: a
//! publish then fails at once with [`PublishOutcome::NotSent`] while a background task
//! reconnects (at once, then with [`Backoff`], resuming as soon as the server accepts
//! connections again). A command that was handed to a live connection and got no
//! answer (the connection died, or `command_timeout_seconds` passed) fails with
//! [`PublishOutcome::Unknown`]: the server may have executed it. A connection on which
//! a command timed out may be stalled (a network black hole): it is replaced the same
//! way, so the publishes after it fail at once instead of each waiting for the timeout.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use event_bus_core::{
    Error, Event, PublishOutcome,
    deadline::{self, Operation, within},
    envelope::encode,
    reconnect::{Backoff, tcp_probe},
};
use redis::{AsyncConnectionConfig, PushInfo, PushKind, aio::MultiplexedConnection};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    channel::ChannelNames,
    pipeliner::{Outcome, Pipeliner, Queued, Turn},
};

/// The publishing side of a bus. Dropping it stops the reconnect task.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
}

/// Settings of a [`Publisher`].
pub(crate) struct PublisherConfig {
    /// A RESP3 client (the connection reports its loss through a push).
    pub(crate) client: redis::Client,
    pub(crate) names: ChannelNames,
    pub(crate) timeout: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) max_message_bytes: usize,
    /// The server's TCP address, probed while waiting to reconnect.
    pub(crate) probe: Vec<(String, u16)>,
    /// The `CLIENT SETNAME` name of the connection.
    pub(crate) name: String,
}

struct Shared {
    config: PublisherConfig,
    /// The live connection, or why there is none while reconnecting.
    conn: RwLock<Result<Link, String>>,
    /// Tells the supervisor that the connection of a generation is lost.
    lost: mpsc::UnboundedSender<u64>,
    /// Publishes waiting for the one in flight.
    pipeliner: Pipeliner,
}

/// A connection and whether it is still up: the driver clears the flag the moment it
/// sees the connection end, before the supervisor replaces it, so a publish in between
/// knows its command would not be sent.
#[derive(Clone)]
struct Link {
    conn: MultiplexedConnection,
    up: Arc<AtomicBool>,
    generation: u64,
}

impl Publisher {
    /// Connects, and starts the task that replaces the connection when it is lost.
    pub(crate) async fn connect(config: PublisherConfig) -> Result<Self, Error> {
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let conn = open(&config, 0, lost_tx.clone()).await?;
        let shared = Arc::new(Shared {
            config,
            conn: RwLock::new(Ok(conn)),
            lost: lost_tx.clone(),
            pipeliner: Pipeliner::default(),
        });
        let supervisor = tokio::spawn(supervise(shared.clone(), lost_tx, lost_rx));
        Ok(Self { shared, supervisor })
    }

    /// Sends one event: at once if no other publish is in flight, otherwise in one
    /// pipeline with the others that arrive meanwhile (see [`crate::pipeliner`]).
    ///
    /// Dropping the future after the command was queued or handed to the connection
    /// does not take it back: it may still be published.
    pub(crate) async fn publish(&self, event: Event) -> Result<(), Error> {
        let payload = self.encode(&event)?;
        let channel = self.shared.config.names.channel(&event.topic);
        let sent = match self.shared.pipeliner.enter(channel, payload) {
            Turn::Send(channel, payload) => {
                // Gives the turn back (or hands the queue to a drain task) however this
                // future ends, even if it is dropped mid-send.
                let _turn = TurnGuard(&self.shared);
                self.shared.send_one(channel, payload).await
            }
            Turn::Wait(result) => result.await.unwrap_or_else(|_| {
                Outcome::Unknown("the publisher stopped before the answer arrived".into())
            }),
        };
        match sent {
            Outcome::Done => Ok(()),
            Outcome::NotSent(why) => Err(Error::publish(event, PublishOutcome::NotSent, why)),
            Outcome::Unknown(why) => Err(Error::publish(event, PublishOutcome::Unknown, why)),
        }
    }

    /// Sends `events` in one pipeline. Every event is encoded and checked first, so an
    /// event too large publishes nothing and is the one handed back. Otherwise, on
    /// failure, the first event is handed back and the error says how many were in the
    /// batch; with [`PublishOutcome::Unknown`] any of them may have been published.
    pub(crate) async fn publish_batch(&self, events: Vec<Event>) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        for event in &events {
            pipe.cmd("PUBLISH")
                .arg(self.shared.config.names.channel(&event.topic))
                .arg(self.encode(event)?)
                .ignore();
        }
        let count = events.len();
        let Some(first) = events.into_iter().next() else {
            return Ok(());
        };
        let mut link = match self.shared.connection() {
            Ok(link) => link,
            Err(down) => {
                let why = format!("batch of {count} events, none sent: {down}");
                return Err(Error::publish(first, PublishOutcome::NotSent, why));
            }
        };
        let timeout = self.shared.config.timeout;
        let failure =
            match within(Operation::Publish, timeout, pipe.exec_async(&mut link.conn)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(timeout) => {
                    self.shared.replace(&link);
                    timeout.to_string()
                }
            };
        let why = format!("batch of {count} events (some may have been published): {failure}");
        Err(Error::publish(first, PublishOutcome::Unknown, why))
    }

    /// The envelope of `event`. An envelope larger than `max_message_bytes` is refused
    /// with [`Error::Publish`] ([`PublishOutcome::NotSent`]) handing a copy back:
    /// every subscriber would drop it.
    fn encode(&self, event: &Event) -> Result<String, Error> {
        let payload = encode(event)?;
        let max = self.shared.config.max_message_bytes;
        if payload.len() > max {
            let why = format!(
                "its envelope of {} bytes exceeds max_message_bytes ({max})",
                payload.len()
            );
            return Err(Error::publish(event.clone(), PublishOutcome::NotSent, why));
        }
        Ok(payload)
    }
}

impl Shared {
    /// The live connection, or why there is none.
    fn connection(&self) -> Result<Link, String> {
        let link = self
            .conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        if link.up.load(Ordering::Acquire) {
            Ok(link)
        } else {
            Err("the publishing connection was lost (reconnecting)".into())
        }
    }

    /// Gives up on `link` after a command timed out on it: it may be stalled.
    fn replace(&self, link: &Link) {
        if link.up.swap(false, Ordering::AcqRel) {
            tracing::debug!("a publish timed out: replacing the publishing connection");
            let _ = self.lost.send(link.generation);
        }
    }

    /// Sends one `PUBLISH` on its own.
    async fn send_one(&self, channel: String, payload: String) -> Outcome {
        let mut link = match self.connection() {
            Ok(link) => link,
            Err(down) => return Outcome::NotSent(down.into()),
        };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        let timeout = self.config.timeout;
        match within(Operation::Publish, timeout, cmd.exec_async(&mut link.conn)).await {
            Ok(Ok(())) => Outcome::Done,
            Ok(Err(e)) => answered(e),
            Err(timeout) => {
                self.replace(&link);
                Outcome::Unknown(timeout.into())
            }
        }
    }

    /// Sends queued publishes in one pipeline and answers each caller.
    async fn send_queued(&self, batch: Vec<Queued>) {
        let mut link = match self.connection() {
            Ok(link) => link,
            Err(down) => {
                for queued in batch {
                    let _ = queued.reply.send(Outcome::NotSent(down.clone().into()));
                }
                return;
            }
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for queued in &batch {
            pipe.cmd("PUBLISH")
                .arg(&queued.channel)
                .arg(&queued.payload);
        }
        let timeout = self.config.timeout;
        let query = pipe.query_async::<Vec<redis::RedisResult<redis::Value>>>(&mut link.conn);
        let results = match within(Operation::Publish, timeout, query).await {
            Ok(Ok(results)) => results,
            Ok(Err(e)) => {
                let e = Arc::new(e);
                for queued in batch {
                    let _ = queued.reply.send(Outcome::Unknown(Box::new(e.clone())));
                }
                return;
            }
            Err(timeout) => {
                self.replace(&link);
                let why = timeout.to_string();
                for queued in batch {
                    let _ = queued.reply.send(Outcome::Unknown(why.clone().into()));
                }
                return;
            }
        };
        let mut results = results.into_iter();
        for queued in batch {
            let sent = match results.next() {
                Some(Ok(_)) => Outcome::Done,
                Some(Err(e)) => answered(e),
                None => Outcome::Unknown("the server's answer to a pipeline was cut short".into()),
            };
            let _ = queued.reply.send(sent);
        }
    }
}

/// The outcome of a command the connection returned an error for: the server refused
/// it (not published), or the connection failed before an answer (maybe published).
fn answered(e: redis::RedisError) -> Outcome {
    if matches!(
        e.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    ) {
        Outcome::NotSent(e.into())
    } else {
        Outcome::Unknown(e.into())
    }
}

/// Held by the publish that has the turn; when it ends (or is dropped) the publishes
/// queued meanwhile are sent by a drain task, or the turn is given back.
struct TurnGuard<'a>(&'a Arc<Shared>);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        let batch = self.0.pipeliner.next_batch();
        if batch.is_empty() {
            return;
        }
        let shared = self.0.clone();
        let drain = async move {
            let mut batch = batch;
            loop {
                shared.send_queued(batch).await;
                batch = shared.pipeliner.take_queued();
                if batch.is_empty() {
                    // Let the callers just answered publish again (see crate::pipeliner).
                    tokio::task::yield_now().await;
                    batch = shared.pipeliner.next_batch();
                    if batch.is_empty() {
                        return;
                    }
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(drain);
            }
            // No runtime (dropped outside one): nothing can be sent any more. Dropping
            // the drain answers the queued callers with an unknown outcome, and the turn
            // is never given back, so later publishes queue and fail the same way.
            Err(_) => drop(drain),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

/// Opens a publishing connection that reports its loss as `generation` on `lost`.
async fn open(
    config: &PublisherConfig,
    generation: u64,
    lost: mpsc::UnboundedSender<u64>,
) -> Result<Link, Error> {
    let up = Arc::new(AtomicBool::new(true));
    let down = up.clone();
    // Connecting and every request are bounded by the timeout here already: one timer
    // is enough, and its error is ours.
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(None)
        .set_response_timeout(None)
        .set_push_sender(move |info: PushInfo| {
            if info.kind == PushKind::Disconnection {
                down.store(false, Ordering::Release);
                let _ = lost.send(generation);
            }
            Ok::<(), std::convert::Infallible>(())
        });
    let connect = config
        .client
        .get_multiplexed_async_connection_with_config(&connection);
    let named = async {
        let mut conn = connect.await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&config.name)
            .exec_async(&mut conn)
            .await?;
        Ok::<_, redis::RedisError>(conn)
    };
    let conn = deadline::call(Operation::Connect, config.timeout, named).await?;
    Ok(Link {
        conn,
        up,
        generation,
    })
}

/// Replaces the connection each time it reports its loss.
async fn supervise(
    shared: Arc<Shared>,
    lost_tx: mpsc::UnboundedSender<u64>,
    mut lost_rx: mpsc::UnboundedReceiver<u64>,
) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.max_backoff);
    let mut generation = 0;
    while let Some(lost) = lost_rx.recv().await {
        if lost != generation {
            continue; // an older connection, already replaced
        }
        tracing::warn!("redis publishing connection lost; reconnecting");
        set(
            &shared,
            Err("the publishing connection is down (reconnecting)".into()),
        );
        // The first attempt is immediate: after a killed connection the server is
        // usually there, and every publish fails until the connection is back.
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                backoff.wait(|| tcp_probe(&config.probe)).await;
            }
            generation += 1;
            match open(config, generation, lost_tx.clone()).await {
                Ok(conn) => {
                    set(&shared, Ok(conn));
                    tracing::warn!(
                        attempts = backoff.attempts(),
                        "redis publishing connection re-established"
                    );
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt = backoff.attempts(), "redis publishing reconnect failed");
                    set(
                        &shared,
                        Err(format!(
                            "the publishing connection is down (reconnecting): {e}"
                        )),
                    );
                }
            }
        }
    }
}

fn set(shared: &Shared, conn: Result<Link, String>) {
    *shared
        .conn
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = conn;
}
