//! The publishing side: a pool of connections and the NOTIFY statements.
//!
//! The pool is a [`deadpool_postgres`] pool of `pool_size` connections, opened on
//! first use (TLS and `application_name` as every connection of the bus, see
//! [`Connector`]) and replaced when one breaks. A statement takes a connection for
//! itself, waiting up to `pool_timeout_seconds` for one to be free; the most recently
//! used one is taken first, so a sequential publisher keeps to one server session.
//! Statements are prepared once per connection (deadpool's statement cache).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, PoolError, QueueMode, RecyclingMethod, Runtime, Timeouts,
};
use event_bus_core::{
    BoxError, Error, PublishOutcome,
    deadline::{Operation, within},
};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Row, Statement, types::ToSql};

use crate::connect::Connector;

/// Notifies a topic's channel and the pattern channel with one payload.
pub(crate) const NOTIFY_PAIR: &str = "SELECT pg_notify($1, $3), pg_notify($2, $3)";
/// Notifies one channel.
const NOTIFY_ONE: &str = "SELECT pg_notify($1, $2)";
/// Notifies many (channel, payload) pairs, in array order, in one statement.
pub(crate) const NOTIFY_MANY: &str =
    "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)";

/// How the pool's connections are opened: by the bus's [`Connector`], for one role,
/// each set up with the role's session settings; counts the connections alive.
struct RoleConnect {
    connector: Arc<Connector>,
    role: &'static str,
    session: Option<&'static str>,
    live: Arc<AtomicUsize>,
}

type Connecting<'a> = std::pin::Pin<
    Box<dyn Future<Output = Result<(Client, JoinHandle<()>), tokio_postgres::Error>> + Send + 'a>,
>;

impl deadpool_postgres::Connect for RoleConnect {
    fn connect(&self, _config: &tokio_postgres::Config) -> Connecting<'_> {
        Box::pin(async move {
            let (client, connection) = self.connector.open(self.role).await?;
            let live = Alive::enter(self.live.clone());
            let role = self.role;
            let task = tokio::spawn(async move {
                let _live = live;
                if let Err(e) = connection.await {
                    tracing::debug!(role, error = %e, "pooled connection closed");
                }
            });
            if let Some(sql) = self.session {
                client.batch_execute(sql).await?;
            }
            Ok((client, task))
        })
    }
}

/// Counts one connection alive while it exists.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn enter(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sizes and timeouts of a [`Pool`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolSettings {
    /// Connections at most.
    pub(crate) size: usize,
    /// Bound on waiting for a free connection.
    pub(crate) wait: Duration,
}

/// The publishing connections.
pub(crate) struct Pool {
    pool: deadpool_postgres::Pool,
    connector: Arc<Connector>,
    wait: Duration,
    live: Arc<AtomicUsize>,
}

impl Pool {
    /// A pool of publishing connections, none opened yet.
    pub(crate) fn new(connector: Arc<Connector>, settings: PoolSettings) -> Result<Self, Error> {
        Self::with_role(connector, settings, "publish", None)
    }

    /// A pool of connections named for `role`, each set up with `session`.
    pub(crate) fn with_role(
        connector: Arc<Connector>,
        settings: PoolSettings,
        role: &'static str,
        session: Option<&'static str>,
    ) -> Result<Self, Error> {
        let live = Arc::new(AtomicUsize::new(0));
        let manager = Manager::from_connect(
            connector.config().clone(),
            RoleConnect {
                connector: connector.clone(),
                role,
                session,
                live: live.clone(),
            },
            ManagerConfig {
                // A broken connection is found by its closed state, without a query.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(settings.size)
            .queue_mode(QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(settings.wait),
                // connect_timeout bounds each address; this bounds the whole attempt.
                create: Some(connector.timeout() * 2),
                recycle: Some(connector.timeout()),
            })
            .build()
            .map_err(|e| Error::config("pool_size", e.to_string()))?;
        Ok(Self {
            pool,
            wait: settings.wait,
            connector,
            live,
        })
    }

    /// The bound on each statement (`command_timeout_seconds`).
    pub(crate) fn statement_timeout(&self) -> Duration {
        self.connector.timeout()
    }

    /// Opens the first connection if none is open, to surface connection errors early.
    pub(crate) async fn warm_up(&self) -> Result<(), Error> {
        self.get().await.map(drop)
    }

    /// Whether at least one connection is open.
    pub(crate) async fn is_connected(&self) -> bool {
        !self.pool.is_closed() && self.live.load(Ordering::Relaxed) > 0
    }

    /// Closes every connection (statements in flight finish first).
    pub(crate) async fn close(&self) {
        self.pool.close();
    }

    async fn get(&self) -> Result<Object, Error> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Closed => Error::Closed,
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => Error::connection(
                "waiting for a free pooled connection",
                Error::Timeout {
                    operation: Operation::Publish,
                    after: self.wait,
                },
            ),
            PoolError::Timeout(deadpool_postgres::TimeoutType::Create) => Error::connection(
                self.connector.context(),
                Error::Timeout {
                    operation: Operation::Connect,
                    after: self.connector.timeout() * 2,
                },
            ),
            PoolError::Timeout(deadpool_postgres::TimeoutType::Recycle) => Error::connection(
                "checking a pooled connection",
                Error::Timeout {
                    operation: Operation::Ping,
                    after: self.connector.timeout(),
                },
            ),
            PoolError::Backend(e) => Error::connection(self.connector.context(), e),
            other => Error::connection(self.connector.context(), other.to_string()),
        })
    }

    /// Runs `op` on a pooled connection within the statement timeout. A connection
    /// whose statement timed out is dropped (it may be stalled) and replaced on next use.
    async fn run<T, Fut>(
        &self,
        what: &str,
        op: impl FnOnce(Arc<Object>) -> Fut,
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
        op: impl FnOnce(Arc<Object>) -> Fut,
    ) -> Result<T, SendError>
    where
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let client = Arc::new(self.get().await.map_err(SendError::not_sent)?);
        let statement = op(client.clone());
        self.finish(what, client, statement).await
    }

    /// Runs `op` with `sql` prepared on a pooled connection (once per connection:
    /// deadpool's statement cache), within the statement timeout. Nothing is sent when
    /// preparing fails.
    async fn send_prepared<T, Fut>(
        &self,
        what: &str,
        sql: &str,
        op: impl FnOnce(Arc<Object>, Statement) -> Fut,
    ) -> Result<T, SendError>
    where
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let client = Arc::new(self.get().await.map_err(SendError::not_sent)?);
        let prepared = within(
            Operation::Prepare,
            self.connector.timeout(),
            client.prepare_cached(sql),
        )
        .await;
        let statement = match prepared {
            Ok(Ok(statement)) => statement,
            Ok(Err(e)) => return Err(SendError::not_sent(e)),
            Err(timeout) => {
                discard(client);
                return Err(SendError::not_sent(Error::connection(what, timeout)));
            }
        };
        let statement = op(client.clone(), statement);
        self.finish(what, client, statement).await
    }

    /// Awaits `statement`, running on `client`, within the statement timeout.
    async fn finish<T>(
        &self,
        what: &str,
        client: Arc<Object>,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, SendError> {
        match within(Operation::Publish, self.connector.timeout(), statement).await {
            Ok(result) => result.map_err(SendError::from_statement),
            Err(timeout) => {
                discard(client);
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
        self.send_prepared("NOTIFY", NOTIFY_PAIR, |pc, stmt| async move {
            pc.execute(&stmt, &[&topic_channel, &all_channel, &payload])
                .await
        })
        .await
        .map(drop)
    }

    /// Sends one notification.
    pub(crate) async fn notify_one(&self, channel: &str, payload: &str) -> Result<(), BoxError> {
        self.send_prepared("NOTIFY", NOTIFY_ONE, |pc, stmt| async move {
            pc.execute(&stmt, &[&channel, &payload]).await
        })
        .await
        .map(drop)
        .map_err(|e| e.source)
    }

    /// Sends `channels[i]`/`payloads[i]` in order, in one statement.
    pub(crate) async fn notify_many(
        &self,
        channels: &[&str],
        payloads: &[&str],
    ) -> Result<(), SendError> {
        self.send_prepared("batch NOTIFY", NOTIFY_MANY, |pc, stmt| async move {
            pc.execute(&stmt, &[&channels, &payloads]).await
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
        self.send_prepared("NOTIFY with stored payloads", sql, |pc, stmt| async move {
            pc.execute(&stmt, params).await
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
            let rows = pc.query(sql, params).await?;
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
        self.send_prepared(what, sql, |pc, stmt| async move {
            pc.query(&stmt, params).await
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
        self.send_prepared(what, sql, |pc, stmt| async move {
            pc.execute(&stmt, params).await
        })
        .await
    }

    /// Runs one statement without results (DDL, cleanup).
    pub(crate) async fn batch_execute(&self, sql: &str) -> Result<(), BoxError> {
        self.run("statement", |pc| async move { pc.batch_execute(sql).await })
            .await
    }

    /// Runs one statement with parameters, returning the affected row count.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, BoxError> {
        self.run(
            "statement",
            |pc| async move { pc.execute(sql, params).await },
        )
        .await
    }
}

/// Takes `client` out of the pool and closes it (a statement on it timed out: it may
/// be stalled). The statement's future is gone, so this is the last reference.
fn discard(client: Arc<Object>) {
    if let Ok(client) = Arc::try_unwrap(client) {
        drop(Object::take(client));
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
