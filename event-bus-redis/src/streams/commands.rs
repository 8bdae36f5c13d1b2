//! The shared command connection of the durable mode: group creation, acks, claims,
//! lease extensions, dead letters and maintenance. Opened on first use and replaced
//! after a command fails on it.

use std::time::Duration;

use event_bus_core::{Error, deadline::Operation};
use redis::{AsyncConnectionConfig, Value, aio::MultiplexedConnection};
use tokio::sync::Mutex;

use super::config::StartPosition;

/// One multiplexed connection, reopened when lost.
pub(crate) struct Commands {
    client: redis::Client,
    name: String,
    timeout: Duration,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl Commands {
    pub(crate) fn new(client: redis::Client, name: String, timeout: Duration) -> Self {
        Self {
            client,
            name,
            timeout,
            conn: Mutex::new(None),
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, Error> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = open(&self.client, &self.name, self.timeout, Some(self.timeout)).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `cmd`, bounded by the command timeout.
    pub(crate) async fn run<T: redis::FromRedisValue + Send>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, Error> {
        let mut conn = self.connection().await?;
        let result = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await;
        self.settle(what, result).await
    }

    /// Runs `pipe` (e.g. `MULTI` ... `EXEC`), bounded by the command timeout.
    pub(crate) async fn run_pipe<T: redis::FromRedisValue + Send>(
        &self,
        what: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, Error> {
        let mut conn = self.connection().await?;
        let result = tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await;
        self.settle(what, result).await
    }

    async fn settle<T>(
        &self,
        what: &str,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, Error> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if !matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                ) {
                    *self.conn.lock().await = None;
                }
                Err(Error::connection(what.to_owned(), e))
            }
            Err(_) => {
                *self.conn.lock().await = None;
                Err(Error::Timeout {
                    operation: Operation::Stream,
                    after: self.timeout,
                })
            }
        }
    }

    /// Creates `group` on `stream` (and the stream), starting at `start`; a group that
    /// exists already is left as it is.
    pub(crate) async fn create_group(
        &self,
        stream: &str,
        group: &str,
        start: StartPosition,
    ) -> Result<(), Error> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE").arg(stream).arg(group);
        cmd.arg(match start {
            StartPosition::Latest => "$",
            StartPosition::Earliest => "0",
        });
        cmd.arg("MKSTREAM");
        match self.run::<Value>("create consumer group", &cmd).await {
            Ok(_) => Ok(()),
            Err(e) if is_server_code(&e, "BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The error the server answered a command with (`BUSYGROUP ...`, `NOGROUP ...`,
/// `ERR no such key`), if that is what `error` is.
pub(crate) fn server_error(error: &Error) -> Option<&redis::RedisError> {
    match error {
        Error::Connection { source, .. } => {
            source.downcast_ref::<redis::RedisError>().filter(|e| {
                matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                )
            })
        }
        _ => None,
    }
}

/// Whether `error` is the server's answer with error code `code`.
pub(crate) fn is_server_code(error: &Error, code: &str) -> bool {
    server_error(error).and_then(redis::RedisError::code) == Some(code)
}

/// Opens a named connection whose answers are awaited at most `response_timeout`
/// (`None` for blocking reads, bounded by their caller).
pub(crate) async fn open(
    client: &redis::Client,
    name: &str,
    timeout: Duration,
    response_timeout: Option<Duration>,
) -> Result<MultiplexedConnection, Error> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(response_timeout);
    let named = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .exec_async(&mut conn)
            .await?;
        Ok::<_, redis::RedisError>(conn)
    };
    match tokio::time::timeout(timeout, named).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Error::connection(format!("open connection {name}"), e)),
        Err(_) => Err(Error::Timeout {
            operation: Operation::Connect,
            after: timeout,
        }),
    }
}
