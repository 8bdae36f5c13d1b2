//! Publishing: `PUBLISH` on one multiplexed, auto-reconnecting connection.
//!
//! Concurrent publishes share the connection and are pipelined on it (many commands
//! in flight, answers matched in order), so publishing from many tasks needs no pool.
//! A batch is one pipeline: one write, one round trip.

use std::time::Duration;

use event_bus_core::{BoxError, Error, Event, envelope::encode};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::channel::ChannelNames;

/// The publishing side of a bus.
#[derive(Clone)]
pub(crate) struct Publisher {
    conn: ConnectionManager,
    names: ChannelNames,
    timeout: Duration,
}

impl Publisher {
    /// Connects. The connection re-establishes itself in the background after it is
    /// lost; the publish that found it lost fails.
    pub(crate) async fn connect(
        client: redis::Client,
        names: ChannelNames,
        timeout: Duration,
        max_backoff: Duration,
    ) -> Result<Self, Error> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            // Every request is bounded by `timeout` here already: one timer is enough.
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_max_delay(max_backoff);
        let conn =
            match tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
                .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(Error::connection("connect publisher", e)),
                Err(_) => return Err(timed_out("connect publisher", timeout)),
            };
        Ok(Self {
            conn,
            names,
            timeout,
        })
    }

    /// Sends one event.
    pub(crate) async fn publish(&self, event: Event) -> Result<(), Error> {
        let payload = encode(&event)?;
        let channel = self.names.channel(&event.topic);
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        let cmd = &cmd;
        let send = self.send(|mut conn| async move { cmd.exec_async(&mut conn).await });
        match tokio::time::timeout(self.timeout, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(publish_error(event, e.into())),
            Err(_) => Err(publish_error(
                event,
                timed_out("publish", self.timeout).into(),
            )),
        }
    }

    /// Sends `events` in one pipeline. On failure the first event is handed back and
    /// the error says how many were in the batch (any of them may have been sent).
    pub(crate) async fn publish_batch(&self, events: Vec<Event>) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for event in &events {
            pipe.cmd("PUBLISH")
                .arg(self.names.channel(&event.topic))
                .arg(encode(event)?)
                .ignore();
        }
        let pipe = &pipe;
        let send = self.send(|mut conn| async move { pipe.exec_async(&mut conn).await });
        let failure: BoxError = match tokio::time::timeout(self.timeout, send).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.into(),
            Err(_) => timed_out("publish", self.timeout).into(),
        };
        let count = events.len();
        let Some(first) = events.into_iter().next() else {
            return Ok(());
        };
        Err(publish_error(
            first,
            format!("batch of {count} events (some may have been published): {failure}").into(),
        ))
    }

    /// Runs `request` on the connection, trying a second time if the connection was
    /// refused. A refusal means the command never left (no duplicate), and it may be
    /// stale: after an outage longer than its own retries (a server restart), the
    /// connection manager hands the failure of its last reconnect attempt to the next
    /// request, and only that request makes it try again. The second try waits for that
    /// fresh attempt, so the first publish after the server is back succeeds.
    async fn send<F, Fut>(&self, request: F) -> redis::RedisResult<()>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<()>>,
    {
        match request(self.conn.clone()).await {
            Err(e) if e.is_connection_refusal() => request(self.conn.clone()).await,
            result => result,
        }
    }
}

fn publish_error(event: Event, source: BoxError) -> Error {
    Error::Publish {
        event: Box::new(event),
        source,
    }
}

fn timed_out(operation: &str, after: Duration) -> Error {
    Error::Timeout {
        operation: operation.to_owned(),
        after,
    }
}
