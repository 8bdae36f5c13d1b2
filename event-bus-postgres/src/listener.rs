//! The dedicated LISTEN connection: reference-counted LISTENs, reconnect and re-LISTEN.
//!
//! One connection per bus LISTENs on every channel a local subscription needs (counted,
//! so the last subscription of a channel UNLISTENs it) and on the bus's flush channel.
//! A task drives the connection and forwards notifications, in server order, to the
//! receive loop ([`crate::receive`]). When the connection dies the loop reconnects with
//! [`Backoff`] (capped by `dispatcher.consumer_error_sleep_seconds`), LISTENs every
//! channel again, counts a reconnect and logs a warning. Notifications sent while it
//! was disconnected are lost (at-most-once).
//!
//! # Shutdown
//!
//! [`Listener::shutdown`] stops the receive path before the dispatcher closes: the
//! connection task stops reading (finishing the hand-over of a notification it holds),
//! and the receive loop dispatches everything already handed over. An event still
//! waiting for queue space at the drain deadline is counted in `dropped`, so every
//! event the bus received is delivered or counted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex as SyncMutex, PoisonError},
};

use event_bus_core::{
    Error, SubscriptionId,
    deadline::{self, Operation},
    reconnect::{Backoff, tcp_probe},
};
use futures_util::future::poll_fn;
use tokio::{
    sync::{Mutex, mpsc, oneshot, watch},
    task::JoinHandle,
    time::Instant,
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
    /// Set by [`shutdown`](Self::shutdown) to the drain deadline.
    stop: watch::Sender<Option<Instant>>,
}

/// The shutdown signal as the receive path sees it.
pub(crate) type StopSignal = watch::Receiver<Option<Instant>>;

/// Resolves once shutdown was requested.
pub(crate) async fn stopping(stop: &mut StopSignal) {
    if stop.wait_for(Option::is_some).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves once shutdown was requested and its drain deadline has passed.
pub(crate) async fn drain_deadline_passed(stop: &mut StopSignal) {
    stopping(stop).await;
    let deadline = *stop.borrow();
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
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
            stop: watch::Sender::new(None),
        }
    }

    /// The shutdown signal, for the receive loop.
    pub(crate) fn stop_signal(&self) -> StopSignal {
        self.stop.subscribe()
    }

    /// Connects and starts the receive loop, unless already started.
    pub(crate) async fn start(self: &Arc<Self>, ctx: ReceiveCtx) -> Result<(), Error> {
        let mut started = self.started.lock().await;
        if *started {
            return Ok(());
        }
        if self.stop.borrow().is_some() {
            return Err(Error::Closed);
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
                Pumped::Lost(_) if self.stop.borrow().is_some() => return,
                Pumped::Lost(reason) => reason,
            };
            self.lost(&reason).await;
            tracing::warn!(error = %reason, "LISTEN connection lost; reconnecting");
            let mut backoff = Backoff::new(ctx.dispatcher.config().consumer_error_sleep());
            let mut stop = self.stop_signal();
            let addresses = self.connector.tcp_addresses();
            rx = loop {
                tokio::select! {
                    () = backoff.wait(|| tcp_probe(&addresses)) => {}
                    () = stopping(&mut stop) => return,
                }
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
        let driver = tokio::spawn(drive(connection, tx, self.stop_signal()));
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
        deadline::call(Operation::Subscribe, self.connector.timeout(), fut).await
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
    /// The channels LISTENed for subscriptions, sorted.
    pub(crate) async fn listened(&self) -> Vec<String> {
        let mut channels: Vec<String> = self.state.lock().await.counts.keys().cloned().collect();
        channels.sort();
        channels
    }

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

    /// Stops the receive path (see [Shutdown](self#shutdown)): the connection is no
    /// longer read, and the receive loop ends once it has dispatched, or counted in
    /// `dropped` after `deadline`, everything already read. Then closes the connection.
    pub(crate) async fn shutdown(&self, deadline: Instant) {
        // Serialized with `start`, so that no receive loop starts after this.
        let _started = self.started.lock().await;
        self.state.lock().await.closed = true;
        self.stop.send_replace(Some(deadline));
        let task = lock(&self.task).take();
        if let Some(mut task) = task {
            // The loop needs at most until the deadline; the margin covers the batch
            // in hand (stored-payload fetch, bounded by the statement timeout).
            let margin = self.connector.timeout();
            if tokio::time::timeout_at(deadline + margin, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("the receive loop did not stop in time; aborting it");
                task.abort();
            }
        }
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

/// Drives `connection`, forwarding notifications until it ends or shutdown stops it.
/// A notification read off the connection is always handed over (the receive loop
/// keeps taking them until this task ends), so none is lost in between.
async fn drive(mut connection: PgConnection, tx: mpsc::Sender<Incoming>, mut stop: StopSignal) {
    let reason = loop {
        let message = tokio::select! {
            biased;
            () = stopping(&mut stop) => return,
            message = poll_fn(|cx| connection.poll_message(cx)) => message,
        };
        match message {
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
