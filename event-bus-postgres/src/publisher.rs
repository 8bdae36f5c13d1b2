//! The publishing side: a small pool of connections and the NOTIFY statements.
//!
//! The pool holds `pool_size` connections, opened on first use and reopened when one
//! breaks. A publish takes the first connection with no statement in flight (so a
//! sequential publisher keeps to one server session), or else the next one in turn,
//! and pipelines on it (tokio-postgres sends a query without waiting for the previous
//! one's answer): no publish waits for a connection to be free and none opens a new
//! one while the pool is healthy.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use event_bus_core::{
    BoxError, Error, PublishOutcome,
    deadline::{self, Operation, within},
};
use tokio::sync::{Mutex, OnceCell};
use tokio_postgres::{Client, Row, Statement, types::ToSql};

use crate::connect::Connector;

/// Notifies a topic's channel and the pattern channel with one payload.
pub(crate) const NOTIFY_PAIR: &str = "SELECT pg_notify($1, $3), pg_notify($2, $3)";
/// Notifies one channel.
const NOTIFY_ONE: &str = "SELECT pg_notify($1, $2)";
/// Notifies many (channel, payload) pairs, in array order, in one statement.
pub(crate) const NOTIFY_MANY: &str =
    "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)";

/// One pooled connection with its prepared statements.
pub(crate) struct PooledClient {
    client: Client,
    pair: Statement,
    one: Statement,
    many: Statement,
    large: OnceCell<Statement>,
    /// Statements of the durable mode, prepared on first use on this connection.
    prepared: std::sync::Mutex<HashMap<String, Statement>>,
}

impl PooledClient {
    /// `sql` prepared on this connection (once).
    async fn prepared(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let cached = lock(&self.prepared).get(sql).cloned();
        if let Some(stmt) = cached {
            return Ok(stmt);
        }
        let stmt = self.client.prepare(sql).await?;
        lock(&self.prepared).insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The publishing connections.
pub(crate) struct Pool {
    connector: Arc<Connector>,
    /// The `application_name` role of its connections (`publish`, `claim`).
    role: &'static str,
    /// Settings applied to each new connection (`SET ...`).
    session: Option<&'static str>,
    slots: Vec<Mutex<Option<Arc<PooledClient>>>>,
    in_flight: Vec<AtomicUsize>,
    next: AtomicUsize,
    closed: AtomicBool,
}

impl Pool {
    /// A pool of `size` connections, none opened yet.
    pub(crate) fn new(connector: Arc<Connector>, size: usize) -> Self {
        Self::with_role(connector, size, "publish", None)
    }

    /// A pool of `size` connections named for `role`, each set up with `session`.
    pub(crate) fn with_role(
        connector: Arc<Connector>,
        size: usize,
        role: &'static str,
        session: Option<&'static str>,
    ) -> Self {
        Self {
            connector,
            role,
            session,
            slots: (0..size).map(|_| Mutex::new(None)).collect(),
            in_flight: (0..size).map(|_| AtomicUsize::new(0)).collect(),
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Opens the first connection if none is open, to surface connection errors early.
    pub(crate) async fn warm_up(&self) -> Result<(), Error> {
        self.get().await.map(drop)
    }

    /// Whether at least one publishing connection is open.
    pub(crate) async fn is_connected(&self) -> bool {
        for slot in &self.slots {
            if slot
                .lock()
                .await
                .as_ref()
                .is_some_and(|pc| !pc.client.is_closed())
            {
                return true;
            }
        }
        false
    }

    /// Closes every connection (in-flight statements finish first).
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for slot in &self.slots {
            slot.lock().await.take();
        }
    }

    async fn get(&self) -> Result<(usize, Arc<PooledClient>), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let idle = self
            .in_flight
            .iter()
            .position(|n| n.load(Ordering::Relaxed) == 0);
        let i =
            idle.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len());
        let mut slot = self.slots[i].lock().await;
        if let Some(pc) = slot.as_ref().filter(|pc| !pc.client.is_closed()) {
            return Ok((i, pc.clone()));
        }
        let pc = Arc::new(self.open().await?);
        *slot = Some(pc.clone());
        Ok((i, pc))
    }

    async fn open(&self) -> Result<PooledClient, Error> {
        let (client, connection) = self.connector.connect(self.role).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "publish connection closed");
            }
        });
        let session = self.session;
        let prepare = async {
            if let Some(sql) = session {
                client.batch_execute(sql).await?;
            }
            Ok::<_, tokio_postgres::Error>(PooledClient {
                pair: client.prepare(NOTIFY_PAIR).await?,
                one: client.prepare(NOTIFY_ONE).await?,
                many: client.prepare(NOTIFY_MANY).await?,
                large: OnceCell::new(),
                prepared: Default::default(),
                client,
            })
        };
        deadline::call(Operation::Prepare, self.connector.timeout(), prepare).await
    }

    /// Runs `op` on a pooled connection within the statement timeout. A connection
    /// whose statement timed out is dropped (it may be stalled) and replaced on next use.
    async fn run<T, Fut>(
        &self,
        what: &str,
        op: impl FnOnce(Arc<PooledClient>) -> Fut,
    ) -> Result<T, BoxError>
    where
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        self.send(what, op).await.map_err(|e| e.source)
    }

    /// [`run`](Self::run), telling whether a failed statement may have run.
    async fn send<T, Fut>(
        &self,
        what: &str,
        op: impl FnOnce(Arc<PooledClient>) -> Fut,
    ) -> Result<T, SendError>
    where
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let (i, pc) = self.get().await.map_err(SendError::not_sent)?;
        let outcome = {
            let _busy = InFlight::enter(&self.in_flight[i]);
            within(Operation::Publish, self.connector.timeout(), op(pc.clone())).await
        };
        match outcome {
            Ok(result) => result.map_err(SendError::from_statement),
            Err(timeout) => {
                let mut slot = self.slots[i].lock().await;
                if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &pc)) {
                    *slot = None;
                }
                Err(SendError {
                    outcome: PublishOutcome::Unknown,
                    source: Error::connection(what, timeout).into(),
                })
            }
        }
    }

    /// Sends `payload` on a topic's channel and on the pattern channel.
    pub(crate) async fn notify_pair(
        &self,
        topic_channel: &str,
        all_channel: &str,
        payload: &str,
    ) -> Result<(), SendError> {
        self.send("NOTIFY", |pc| async move {
            pc.client
                .execute(&pc.pair, &[&topic_channel, &all_channel, &payload])
                .await
        })
        .await
        .map(drop)
    }

    /// Sends one notification.
    pub(crate) async fn notify_one(&self, channel: &str, payload: &str) -> Result<(), BoxError> {
        self.run("NOTIFY", |pc| async move {
            pc.client.execute(&pc.one, &[&channel, &payload]).await
        })
        .await
        .map(drop)
    }

    /// Sends `channels[i]`/`payloads[i]` in order, in one statement.
    pub(crate) async fn notify_many(
        &self,
        channels: &[&str],
        payloads: &[&str],
    ) -> Result<(), SendError> {
        self.send("batch NOTIFY", |pc| async move {
            pc.client.execute(&pc.many, &[&channels, &payloads]).await
        })
        .await
        .map(drop)
    }

    /// Runs the large-payload statement `sql` (prepared once per connection) with
    /// `params`: arrays of channels, payloads, ids, topics and envelopes.
    pub(crate) async fn execute_large(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), SendError> {
        self.send("NOTIFY with stored payloads", |pc| async move {
            let stmt = pc
                .large
                .get_or_try_init(|| pc.client.prepare(sql))
                .await?
                .clone();
            pc.client.execute(&stmt, params).await
        })
        .await
        .map(drop)
    }

    /// Runs a query returning `(text, text)` rows.
    pub(crate) async fn query_pairs(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<(String, String)>, BoxError> {
        self.run("fetching stored payloads", |pc| async move {
            let rows = pc.client.query(sql, params).await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
        .await
    }

    /// Runs `sql`, prepared once per connection, with `params`, returning its rows.
    pub(crate) async fn query_prepared(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, SendError> {
        self.send(what, |pc| async move {
            let stmt = pc.prepared(sql).await?;
            pc.client.query(&stmt, params).await
        })
        .await
    }

    /// Runs `sql`, prepared once per connection, with `params`, returning the number
    /// of rows it changed.
    pub(crate) async fn execute_prepared(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, SendError> {
        self.send(what, |pc| async move {
            let stmt = pc.prepared(sql).await?;
            pc.client.execute(&stmt, params).await
        })
        .await
    }

    /// Runs one statement without results (DDL, cleanup).
    pub(crate) async fn batch_execute(&self, sql: &str) -> Result<(), BoxError> {
        self.run("statement", |pc| async move {
            pc.client.batch_execute(sql).await
        })
        .await
    }

    /// Runs one statement with parameters, returning the affected row count.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, BoxError> {
        self.run("statement", |pc| async move {
            pc.client.execute(sql, params).await
        })
        .await
    }
}

/// A publishing statement that failed, and whether it may have run.
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) outcome: PublishOutcome,
    pub(crate) source: BoxError,
}

impl SendError {
    /// Failed before anything was sent (no connection, or a step before the statement).
    pub(crate) fn not_sent(source: impl Into<BoxError>) -> Self {
        Self {
            outcome: PublishOutcome::NotSent,
            source: source.into(),
        }
    }

    /// A statement's own failure: an error the server answered with means it did not
    /// run (a failed statement notifies nobody); anything else (the connection closed
    /// while the statement was sent or awaited) leaves the outcome unknown.
    pub(crate) fn from_statement(e: tokio_postgres::Error) -> Self {
        let outcome = if e.as_db_error().is_some() {
            PublishOutcome::NotSent
        } else {
            PublishOutcome::Unknown
        };
        Self {
            outcome,
            source: e.into(),
        }
    }
}

/// Counts a statement in flight on a slot while alive (also when the publish future is
/// dropped midway).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
