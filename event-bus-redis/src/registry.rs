//! The server-side subscriptions of one bus: which channels and globs the pub/sub
//! connection must be subscribed to, reference-counted over the local subscriptions,
//! and the state of that connection.

use std::{collections::HashMap, time::Duration};

use event_bus_core::{
    Error, Subscription, SubscriptionId,
    deadline::{self, Operation},
};
use redis::aio::MultiplexedConnection;
use tokio::{
    sync::{Mutex, watch},
    time::{Instant, timeout_at},
};

use crate::channel::ServerTarget;

/// The state of the pub/sub connection, for `health()` and for waiters.
#[derive(Clone, Debug, Default)]
pub(crate) struct Link {
    pub(crate) connected: bool,
    pub(crate) last_error: Option<String>,
}

#[derive(Default)]
struct State {
    /// The live pub/sub connection; `None` while disconnected.
    conn: Option<MultiplexedConnection>,
    /// Server subscriptions and how many local subscriptions need each.
    targets: HashMap<ServerTarget, usize>,
    /// The server subscription of each local subscription.
    owners: HashMap<SubscriptionId, ServerTarget>,
}

/// Server subscriptions of one bus. Every change, and every (re)subscribe after a
/// reconnect, happens under one lock, so each live target is subscribed exactly once
/// on each connection.
pub(crate) struct Registry {
    state: Mutex<State>,
    link: watch::Sender<Link>,
    timeout: Duration,
}

impl Registry {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            link: watch::Sender::new(Link::default()),
            timeout,
        }
    }

    /// The current connection state.
    pub(crate) fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    /// A receiver of connection state changes.
    pub(crate) fn watch_link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }

    /// Makes sure the server is subscribed to `target`, then registers the local
    /// subscription `register` creates. Waits (up to the command timeout) for the
    /// connection if it is down.
    pub(crate) async fn subscribe(
        &self,
        target: ServerTarget,
        register: impl FnOnce() -> Result<Subscription, Error>,
    ) -> Result<Subscription, Error> {
        let deadline = Instant::now() + self.timeout;
        let mut state = loop {
            let state = timeout_at(deadline, self.state.lock())
                .await
                .map_err(|_| self.timed_out(Operation::Subscribe))?;
            if state.conn.is_some() {
                break state;
            }
            drop(state);
            let mut link = self.link.subscribe();
            timeout_at(deadline, link.wait_for(|l| l.connected))
                .await
                .map_err(|_| self.timed_out(Operation::Subscribe))?
                .map_err(|e| Error::connection("subscribe", e))?;
        };
        if !state.targets.contains_key(&target) {
            let mut conn = state.conn.clone().ok_or(Error::Closed)?;
            let result = timeout_at(deadline, server_change(&mut conn, &target, true)).await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::connection(format!("subscribe to {target:?}"), e)),
                Err(_) => return Err(self.timed_out(Operation::Subscribe)),
            }
        }
        let subscription = match register() {
            Ok(subscription) => subscription,
            Err(e) => {
                // Nothing registered: drop the server subscription again if it is unused.
                if let (false, Some(mut conn)) =
                    (state.targets.contains_key(&target), state.conn.clone())
                {
                    let _ = timeout_at(deadline, server_change(&mut conn, &target, false)).await;
                }
                return Err(e);
            }
        };
        *state.targets.entry(target.clone()).or_insert(0) += 1;
        state.owners.insert(subscription.id(), target);
        Ok(subscription)
    }

    /// Forgets local subscription `id`; unsubscribes the server from its target when
    /// no other local subscription needs it. Best effort: a failed `UNSUBSCRIBE` only
    /// means messages nobody wants still arrive until the next reconnect.
    pub(crate) async fn release(&self, id: SubscriptionId) {
        let mut state = self.state.lock().await;
        let Some(target) = state.owners.remove(&id) else {
            return;
        };
        let Some(count) = state.targets.get_mut(&target) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        state.targets.remove(&target);
        if let Some(mut conn) = state.conn.clone() {
            let deadline = Instant::now() + self.timeout;
            match timeout_at(deadline, server_change(&mut conn, &target, false)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(?target, error = %e, "unsubscribe failed"),
                Err(_) => tracing::debug!(?target, "unsubscribe timed out"),
            }
        }
    }

    /// Installs a fresh connection: subscribes it to every live target (one command per
    /// kind), then makes it the current one. Returns how many targets it subscribed.
    pub(crate) async fn attach(&self, mut conn: MultiplexedConnection) -> Result<usize, Error> {
        let mut state = self.state.lock().await;
        let mut channels = Vec::new();
        let mut globs = Vec::new();
        for target in state.targets.keys() {
            match target {
                ServerTarget::Channel(c) => channels.push(c.clone()),
                ServerTarget::Glob(g) => globs.push(g.clone()),
            }
        }
        let resubscribe = async {
            if !channels.is_empty() {
                conn.subscribe(&channels).await?;
            }
            if !globs.is_empty() {
                conn.psubscribe(&globs).await?;
            }
            Ok::<_, redis::RedisError>(())
        };
        deadline::call(Operation::Resubscribe, self.timeout, resubscribe).await?;
        state.conn = Some(conn);
        self.link.send_replace(Link {
            connected: true,
            last_error: None,
        });
        Ok(channels.len() + globs.len())
    }

    /// The current connection, if any.
    pub(crate) async fn connection(&self) -> Option<MultiplexedConnection> {
        self.state.lock().await.conn.clone()
    }

    /// Forgets the connection after it failed with `error` (or on close).
    pub(crate) async fn detach(&self, error: Option<String>) {
        self.state.lock().await.conn = None;
        self.link.send_replace(Link {
            connected: false,
            last_error: error,
        });
    }

    /// Stops for close: forgets the connection, marks the link down and returns the
    /// connection, so the caller can unsubscribe it.
    pub(crate) async fn stop(&self) -> Option<MultiplexedConnection> {
        let conn = self.state.lock().await.conn.take();
        self.link.send_replace(Link::default());
        conn
    }

    /// Unsubscribes `conn` from every live target, so the server sends it nothing more.
    pub(crate) async fn unsubscribe_all(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<(), Error> {
        let (channels, globs) = {
            let state = self.state.lock().await;
            let mut lists = (Vec::new(), Vec::new());
            for target in state.targets.keys() {
                match target {
                    ServerTarget::Channel(c) => lists.0.push(c.clone()),
                    ServerTarget::Glob(g) => lists.1.push(g.clone()),
                }
            }
            lists
        };
        let unsubscribe = async {
            if !channels.is_empty() {
                conn.unsubscribe(&channels).await?;
            }
            if !globs.is_empty() {
                conn.punsubscribe(&globs).await?;
            }
            Ok::<_, redis::RedisError>(())
        };
        deadline::call(Operation::Unsubscribe, self.timeout, unsubscribe).await
    }

    /// Records a failed reconnect attempt.
    pub(crate) fn set_error(&self, error: String) {
        self.link.send_modify(|l| l.last_error = Some(error));
    }

    /// The timeout of an operation bounded by the shared deadline of `subscribe`.
    fn timed_out(&self, operation: Operation) -> Error {
        Error::Timeout {
            operation,
            after: self.timeout,
        }
    }
}

async fn server_change(
    conn: &mut MultiplexedConnection,
    target: &ServerTarget,
    subscribe: bool,
) -> redis::RedisResult<()> {
    match (target, subscribe) {
        (ServerTarget::Channel(c), true) => conn.subscribe(c).await,
        (ServerTarget::Channel(c), false) => conn.unsubscribe(c).await,
        (ServerTarget::Glob(g), true) => conn.psubscribe(g).await,
        (ServerTarget::Glob(g), false) => conn.punsubscribe(g).await,
    }
}
