//! Deadlines on network calls: one helper that bounds a future in time and turns an
//! expired deadline into [`Error::Timeout`], whose [`Operation`] callers can match on.
//!
//! ```
//! use std::time::Duration;
//! use event_bus_core::{Error, deadline::{Operation, within}};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let slow = tokio::time::sleep(Duration::from_secs(60));
//! let err = within(Operation::Ping, Duration::from_millis(10), slow).await.unwrap_err();
//! assert!(matches!(err, Error::Timeout { operation: Operation::Ping, .. }));
//! assert_eq!(err.to_string(), "ping timed out after 10ms");
//! # }
//! ```

use std::{fmt, future::Future, time::Duration};

use crate::error::{BoxError, Error};

/// What a network call that timed out was doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Opening a connection.
    Connect,
    /// Re-opening a lost connection.
    Reconnect,
    /// Preparing statements on a new connection.
    Prepare,
    /// Publishing events.
    Publish,
    /// Subscribing on the server (SUBSCRIBE, LISTEN).
    Subscribe,
    /// Subscribing everything again on a new connection.
    Resubscribe,
    /// Unsubscribing on the server.
    Unsubscribe,
    /// A flush round trip.
    Flush,
    /// A liveness check.
    Ping,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Reconnect => "reconnect",
            Self::Prepare => "prepare statements",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Resubscribe => "resubscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Flush => "flush",
            Self::Ping => "ping",
        })
    }
}

/// Runs `future` for at most `after`.
///
/// # Errors
/// [`Error::Timeout`] naming `operation` when the deadline passes first.
pub async fn within<F: Future>(
    operation: Operation,
    after: Duration,
    future: F,
) -> Result<F::Output, Error> {
    tokio::time::timeout(after, future)
        .await
        .map_err(|_| Error::Timeout { operation, after })
}

/// Runs a driver call for at most `after`, mapping its error to [`Error::Connection`]
/// (context: the operation) and the deadline to [`Error::Timeout`].
///
/// # Errors
/// As described.
pub async fn call<T, E: Into<BoxError>>(
    operation: Operation,
    after: Duration,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    within(operation, after, future)
        .await?
        .map_err(|e| Error::connection(operation.to_string(), e))
}
