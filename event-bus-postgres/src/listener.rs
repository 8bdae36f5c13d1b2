//! The dedicated LISTEN connection: reference-counted LISTENs, reconnect and re-LISTEN.
//!
//! One connection per bus LISTENs on every channel a local subscription needs (counted,
//! so the last subscription of a channel UNLISTENs it) and on the bus's flush channel.
//! A task drives the connection and forwards notifications, in server order, to the
//! receive loop ([`crate::receive`]). When the connection dies the loop reconnects with
//! [`Backoff`] (capped by `dispatcher.consumer_error_sleep_seconds`), LISTENs every
//! channel again, counts a reconnect and logs a warning. Notifications sent while it
//! was disconnected are lost (at-most-once).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex as SyncMutex, PoisonError},
};

use event_bus_core::{Error, SubscriptionId, reconnect::Backoff};
use futures_util::future::poll_fn;
use tokio::{
    sync::{Mutex, mpsc, oneshot},
    task::JoinHandle,
};
use tokio_postgres::{AsyncMessage, Client, Notification};

use crate::{
    channel::{Channels, quote_ident},
    connect::{Connector, PgConnection},
    receive::{self, Pumped, ReceiveCtx},
};

/// How many notifications may wait between the connection and the receive loop.
/// When full, the connection is not read (backpressure to the server).
const BUFFER: usize = 1024;

/// What the connection task forwards.
pub(crate) enum Incoming {
    /// A notification, in server order.
    Note(Notification),
    /// The connection ended (with this reason); nothing follows.
    Lost(String),
}

#[derive(Default)]
struct ListenState {
    client: Option<Arc<Client>>,
    driver: Option<JoinHandle<()>>,
    counts: HashMap<String, usize>,
    closed: bool,
}

/// The listening side of one bus.
pub(crate) struct Listener {
    connector: Arc<Connector>,
    pub(crate) channels: Channels,
    state: Mutex<ListenState>,
    started: Mutex<bool>,
    subs: SyncMutex<HashMap<SubscriptionId, String>>,
    flushes: SyncMutex<HashMap<String, oneshot::Sender<()>>>,
    last_error: SyncMutex<Option<String>>,
    task: SyncMutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &SyncMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Listener {
    pub(crate) fn new(connector: Arc<Connector>, channels: Channels) -> Self {
        Self {
            connector,
            channels,
            state: Mutex::default(),
            started: Mutex::new(false),
            subs: SyncMutex::default(),
            flushes: SyncMutex::default(),
            last_error: SyncMutex::default(),
            task: SyncMutex::default(),
        }
    }

    /// Connects and starts the receive loop, unless already started.
    pub(crate) async fn start(self: &Arc<Self>, ctx: ReceiveCtx) -> Result<(), Error> {
        let mut started = self.started.lock().await;
        if *started {
            return Ok(());
        }
        let rx = self.connect_and_listen().await?;
        let me = self.clone();
        *lock(&self.task) = Some(tokio::spawn(me.run(ctx, rx)));
        *started = true;
        Ok(())
    }

    async fn run(self: Arc<Self>, ctx: ReceiveCtx, mut rx: mpsc::Receiver<Incoming>) {
        loop {
            let reason = match receive::pump(&self, &ctx, &mut rx).await {
                Pumped::Stop => return,
                Pumped::Lost(reason) => reason,
            };
            self.lost(&reason).await;
            tracing::warn!(error = %reason, "LISTEN connection lost; reconnecting");
            let mut backoff = Backoff::new(ctx.dispatcher.config().consumer_error_sleep());
            rx = loop {
                tokio::time::sleep(backoff.next_delay()).await;
                if ctx.dispatcher.is_closed() || self.state.lock().await.closed {
                    return;
                }
                match self.connect_and_listen().await {
                    Ok(rx) => break rx,
                    Err(e) => {
                        *lock(&self.last_error) = Some(e.to_string());
                        tracing::warn!(error = %e, attempt = backoff.attempts(), "reconnecting the LISTEN connection failed");
                    }
                }
            };
            ctx.dispatcher.metrics().add_reconnects(1);
            let channels = self.state.lock().await.counts.len();
            tracing::warn!(
                channels,
                attempts = backoff.attempts(),
                "LISTEN connection re-established; channels listened again (events published meanwhile are lost)"
            );
        }
    }

    async fn lost(&self, reason: &str) {
        let mut state = self.state.lock().await;
        state.client = None;
        state.driver.take();
        *lock(&self.last_error) = Some(reason.to_owned());
        // Pending flushes cannot complete: their senders are dropped, they fail.
        lock(&self.flushes).clear();
    }

    /// Opens a connection, LISTENs on every counted channel and the flush channel, and
    /// makes it the current one.
    async fn connect_and_listen(&self) -> Result<mpsc::Receiver<Incoming>, Error> {
        let (client, connection) = self.connector.connect("listen").await?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let driver = tokio::spawn(drive(connection, tx));
        let mut state = self.state.lock().await;
        if state.closed {
            driver.abort();
            return Err(Error::Closed);
        }
        let names = state.counts.keys().map(String::as_str);
        let sql = listen_sql("LISTEN", names.chain([self.channels.flush()]));
        if let Err(e) = self.within_timeout(client.batch_execute(&sql)).await {
            driver.abort();
            return Err(e);
        }
        state.client = Some(Arc::new(client));
        if let Some(old) = state.driver.replace(driver) {
            old.abort();
        }
        *lock(&self.last_error) = None;
        Ok(rx)
    }

    async fn within_timeout(
        &self,
        fut: impl Future<Output = Result<(), tokio_postgres::Error>>,
    ) -> Result<(), Error> {
        let after = self.connector.timeout();
        match tokio::time::timeout(after, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::connection("LISTEN", e)),
            Err(_) => Err(Error::Timeout {
                operation: "LISTEN".into(),
                after,
            }),
        }
    }

    /// Counts one more local subscription on `channel`; the first one LISTENs. Returns
    /// once the LISTEN has executed.
    pub(crate) async fn acquire(&self, channel: &str) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        if state.closed {
            return Err(Error::Closed);
        }
        if !state.counts.contains_key(channel) {
            let Some(client) = state.client.clone() else {
                return Err(Error::connection(
                    "subscribing",
                    "the LISTEN connection is down; reconnecting",
                ));
            };
            let sql = listen_sql("LISTEN", [channel]);
            self.within_timeout(client.batch_execute(&sql)).await?;
        }
        *state.counts.entry(channel.to_owned()).or_insert(0) += 1;
        Ok(())
    }

    /// Counts one subscription less on `channel`; the last one UNLISTENs.
    pub(crate) async fn release(&self, channel: &str) {
        let mut state = self.state.lock().await;
        let Some(count) = state.counts.get_mut(channel) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        state.counts.remove(channel);
        if let Some(client) = state.client.clone() {
            let sql = listen_sql("UNLISTEN", [channel]);
            if let Err(e) = self.within_timeout(client.batch_execute(&sql)).await {
                tracing::debug!(error = %e, "UNLISTEN failed");
            }
        }
    }

    /// Remembers which channel subscription `id` holds.
    pub(crate) fn register(&self, id: SubscriptionId, channel: String) {
        lock(&self.subs).insert(id, channel);
    }

    /// Releases the channel of subscription `id` (cancelled or removed), once.
    pub(crate) async fn release_sub(&self, id: SubscriptionId) {
        let channel = lock(&self.subs).remove(&id);
        if let Some(channel) = channel {
            self.release(&channel).await;
        }
    }

    /// Registers a flush token; the receiver completes when it comes back.
    pub(crate) fn expect_flush(&self, token: String) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        lock(&self.flushes).insert(token, tx);
        rx
    }

    /// Forgets a flush token (timed out).
    pub(crate) fn forget_flush(&self, token: &str) {
        lock(&self.flushes).remove(token);
    }

    /// Called by the receive loop when a token arrives.
    pub(crate) fn flush_arrived(&self, token: &str) {
        if let Some(tx) = lock(&self.flushes).remove(token) {
            let _ = tx.send(());
        }
    }

    /// Whether the receive loop was started.
    pub(crate) async fn is_started(&self) -> bool {
        *self.started.lock().await
    }

    /// Whether the LISTEN connection is up.
    pub(crate) async fn is_connected(&self) -> bool {
        let state = self.state.lock().await;
        state.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The last connection error while disconnected.
    pub(crate) fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Stops the receive loop and closes the connection.
    pub(crate) async fn shutdown(&self) {
        self.abort_task();
        let mut state = self.state.lock().await;
        state.closed = true;
        state.client = None;
        if let Some(driver) = state.driver.take() {
            driver.abort();
        }
        lock(&self.flushes).clear();
    }

    /// Stops the receive loop without waiting (used on drop).
    pub(crate) fn abort_task(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

/// `LISTEN "a"; LISTEN "b";` with every name quoted.
fn listen_sql<'a>(verb: &str, names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|n| format!("{verb} {};", quote_ident(n)))
        .collect()
}

/// Drives `connection`, forwarding notifications until it ends.
async fn drive(mut connection: PgConnection, tx: mpsc::Sender<Incoming>) {
    let reason = loop {
        match poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if tx.send(Incoming::Note(n)).await.is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break e.to_string(),
            None => break "connection closed by the server".to_owned(),
        }
    };
    let _ = tx.send(Incoming::Lost(reason)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_sql_quotes() {
        assert_eq!(
            listen_sql("LISTEN", ["a", "b\"c"]),
            "LISTEN \"a\";LISTEN \"b\"\"c\";"
        );
    }
}
