//! The bus's round trip through the server: a numbered message on a private inbox
//! subject, published and received on the bus's own connection.
//!
//! The server handles one connection's messages in order and writes what it sends to
//! a connection in order, so when the echo of a round trip comes back, every
//! subscription the bus made before is live on that server, and every message the bus
//! published before has been delivered to the bus's own matching subscriptions (and
//! sits in the client's buffers, see [`Routes::drain`](crate::routes::Routes::drain)).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{Client, Subscriber};
use event_bus_core::{
    Error,
    deadline::{Operation, within},
};
use futures_util::StreamExt;
use tokio::{sync::watch, task::JoinHandle};

/// A private inbox and the highest round trip number seen on it.
pub(crate) struct Echo {
    subject: String,
    sent: AtomicU64,
    seen: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Echo {
    /// Subscribes to a fresh inbox of `client`.
    pub(crate) async fn start(client: &Client) -> Result<Arc<Self>, Error> {
        let subject = client.new_inbox();
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::connection("subscribe to the flush inbox", e))?;
        let seen = watch::Sender::new(0);
        let task = tokio::spawn(receive(subscriber, seen.clone()));
        Ok(Arc::new(Self {
            subject,
            sent: AtomicU64::new(0),
            seen,
            task,
        }))
    }

    /// One round trip, within `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the echo did not come back in time (the connection may be
    /// down); [`Error::Connection`] if the client is closed.
    pub(crate) async fn round_trip(&self, client: &Client, timeout: Duration) -> Result<(), Error> {
        let number = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let mut seen = self.seen.subscribe();
        let trip = async {
            client
                .publish(self.subject.clone(), number.to_string().into())
                .await
                .map_err(|e| Error::connection("round trip", e))?;
            client
                .flush()
                .await
                .map_err(|e| Error::connection("round trip", e))?;
            seen.wait_for(|n| *n >= number)
                .await
                .map_err(|_| Error::Closed)?;
            Ok(())
        };
        within(Operation::Flush, timeout, trip).await?
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(mut subscriber: Subscriber, seen: watch::Sender<u64>) {
    while let Some(message) = subscriber.next().await {
        let number = std::str::from_utf8(&message.payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(number) = number {
            seen.send_if_modified(|n| {
                let newer = number > *n;
                if newer {
                    *n = number;
                }
                newer
            });
        }
    }
}
