//! Publishing: `PUBLISH` on one multiplexed connection, replaced in the background
//! when it is lost.
//!
//! Concurrent publishes share the connection and are pipelined on it (many commands
//! in flight, answers matched in order), so publishing from many tasks needs no pool.
//! A batch is one pipeline: one write, one round trip.
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

use crate::channel::ChannelNames;

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
        });
        let supervisor = tokio::spawn(supervise(shared.clone(), lost_tx, lost_rx));
        Ok(Self { shared, supervisor })
    }

    /// Sends one event.
    pub(crate) async fn publish(&self, event: Event) -> Result<(), Error> {
        let payload = self.encode(&event)?;
        let mut link = match self.connection() {
            Ok(link) => link,
            Err(down) => return Err(Error::publish(event, PublishOutcome::NotSent, down)),
        };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.shared.config.names.channel(&event.topic))
            .arg(payload);
        let timeout = self.shared.config.timeout;
        match within(Operation::Publish, timeout, cmd.exec_async(&mut link.conn)).await {
            Ok(Ok(())) => Ok(()),
            // The server answered with an error: it did not publish.
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                ) =>
            {
                Err(Error::publish(event, PublishOutcome::NotSent, e))
            }
            Ok(Err(e)) => Err(Error::publish(event, PublishOutcome::Unknown, e)),
            Err(timeout) => {
                self.replace(&link);
                Err(Error::publish(event, PublishOutcome::Unknown, timeout))
            }
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
        let mut link = match self.connection() {
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
                    self.replace(&link);
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

    /// The live connection, or why there is none.
    fn connection(&self) -> Result<Link, String> {
        let link = self
            .shared
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
            let _ = self.shared.lost.send(link.generation);
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
