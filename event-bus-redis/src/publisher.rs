//! Publishing: `PUBLISH` (in the durable mode `XADD` to the stream) on one multiplexed
//! connection, replaced in the background
//! when it is lost.
//!
//! Concurrent publishes are auto-pipelined by the shared coalescer
//! ([`event_bus_core::coalesce`]): those that arrive while one is in flight are sent
//! together in one pipeline (at most [`MAX_PIPELINE`] commands) when it returns, each
//! caller getting its own command's result; a lone publisher's command goes out at
//! once, on its own. Publishing from many tasks needs no pool. A batch is one
//! pipeline: one write, one round trip.
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

use async_trait::async_trait;
use event_bus_core::{
    Error, Event, PublishOutcome,
    coalesce::{Coalescer, SendBatch},
    deadline::{self, Operation, within},
    envelope::encode,
    error::BoxError,
    reconnect::{Backoff, tcp_probe},
};
use redis::{AsyncConnectionConfig, PushInfo, PushKind, aio::MultiplexedConnection};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::channel::ChannelNames;

/// Most commands sent in one pipeline; the rest wait for the next round trip.
pub(crate) const MAX_PIPELINE: usize = 1024;

/// The publishing side of a bus. Dropping it stops the reconnect task.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    /// Single publishes, auto-pipelined.
    pipeline: Arc<Coalescer<Publish, Outcome, Pipeline>>,
    supervisor: JoinHandle<()>,
}

/// One single publish: where it goes ([`Shared::target`]) and its envelope.
struct Publish {
    target: String,
    payload: String,
}

/// What happened to one command.
#[derive(Debug)]
enum Outcome {
    /// The server executed it.
    Done,
    /// It certainly was not executed (no connection, or the server refused it).
    NotSent(BoxError),
    /// It may have been executed (no answer: the connection died or timed out).
    Unknown(BoxError),
}

/// Sends single publishes for the coalescer: a lone one as one command, those that
/// queued meanwhile as one pipeline.
struct Pipeline(Arc<Shared>);

#[async_trait]
impl SendBatch<Publish, Outcome> for Pipeline {
    async fn send(&self, items: Vec<Publish>) -> Vec<Outcome> {
        self.0.send_many(items).await
    }

    async fn send_one(&self, item: Publish) -> Option<Outcome> {
        Some(self.0.send_one(item).await)
    }
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
    /// In the durable mode, the stream every event is added to (`XADD`) instead of
    /// being published on its channel.
    pub(crate) stream: Option<String>,
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
        let pipeline = Arc::new(Coalescer::new(Pipeline(shared.clone()), MAX_PIPELINE));
        let supervisor = tokio::spawn(supervise(shared.clone(), lost_tx, lost_rx));
        Ok(Self {
            shared,
            pipeline,
            supervisor,
        })
    }

    /// Sends one event: at once if no other publish is in flight, otherwise in one
    /// pipeline with the others that arrive meanwhile (see
    /// [`event_bus_core::coalesce`]).
    ///
    /// Dropping the future after the command was queued or handed to the connection
    /// does not take it back: it may still be published.
    pub(crate) async fn publish(&self, event: Event) -> Result<(), Error> {
        let payload = self.encode(&event)?;
        let target = self.shared.target(&event.topic);
        let sent = self
            .pipeline
            .submit(Publish { target, payload })
            .await
            .unwrap_or_else(|| {
                Outcome::Unknown("the publisher stopped before the answer arrived".into())
            });
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
            let target = self.shared.target(&event.topic);
            pipe.add_command(self.shared.command(&target, &self.encode(event)?))
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
    /// Where an event on `topic` goes: its channel, or in the durable mode its topic
    /// (a field of the stream entry).
    fn target(&self, topic: &str) -> String {
        match self.config.stream {
            None => self.config.names.channel(topic),
            Some(_) => topic.to_owned(),
        }
    }

    /// The command that sends one envelope to `target`: `PUBLISH {channel} {envelope}`,
    /// or in the durable mode `XADD {stream} * topic {topic} envelope {envelope}`.
    fn command(&self, target: &str, payload: &str) -> redis::Cmd {
        match &self.config.stream {
            None => {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(target).arg(payload);
                cmd
            }
            Some(stream) => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(stream)
                    .arg("*")
                    .arg(crate::streams::entry::TOPIC)
                    .arg(target)
                    .arg(crate::streams::entry::ENVELOPE)
                    .arg(payload);
                cmd
            }
        }
    }

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

    /// Sends one publish on its own.
    async fn send_one(&self, publish: Publish) -> Outcome {
        let mut link = match self.connection() {
            Ok(link) => link,
            Err(down) => return Outcome::NotSent(down.into()),
        };
        let cmd = self.command(&publish.target, &publish.payload);
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

    /// Sends `batch` in one pipeline and returns each command's outcome, in order.
    async fn send_many(&self, batch: Vec<Publish>) -> Vec<Outcome> {
        let mut link = match self.connection() {
            Ok(link) => link,
            Err(down) => {
                return batch
                    .iter()
                    .map(|_| Outcome::NotSent(down.clone().into()))
                    .collect();
            }
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for publish in &batch {
            pipe.add_command(self.command(&publish.target, &publish.payload));
        }
        let timeout = self.config.timeout;
        let query = pipe.query_async::<Vec<redis::RedisResult<redis::Value>>>(&mut link.conn);
        let results = match within(Operation::Publish, timeout, query).await {
            Ok(Ok(results)) => results,
            Ok(Err(e)) => {
                let e = Arc::new(e);
                return batch
                    .iter()
                    .map(|_| Outcome::Unknown(Box::new(e.clone())))
                    .collect();
            }
            Err(timeout) => {
                self.replace(&link);
                let why = timeout.to_string();
                return batch
                    .iter()
                    .map(|_| Outcome::Unknown(why.clone().into()))
                    .collect();
            }
        };
        let mut results = results.into_iter();
        batch
            .iter()
            .map(|_| match results.next() {
                Some(Ok(_)) => Outcome::Done,
                Some(Err(e)) => answered(e),
                None => Outcome::Unknown("the server's answer to a pipeline was cut short".into()),
            })
            .collect()
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
