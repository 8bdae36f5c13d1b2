//! Server subscriptions and the receive path.
//!
//! Local subscriptions whose patterns share a subscription subject (see
//! [`Subjects::target`](crate::subject::Subjects::target)) share one server
//! subscription, a *route*. Each route has one task that decodes its messages and
//! dispatches each to the local subscriptions of that route whose pattern matches the
//! topic, so a local subscription receives an event once, however many routes of the
//! bus the event reaches. The client renews every route after a reconnect.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_nats::{Message, Subscriber};
use event_bus_core::{
    Dispatcher, Error, SubscriptionId,
    envelope::decode,
    log_limit::{Excerpt, LogLimiter},
};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::{
    parts::{Joiner, Received},
    subject::Subjects,
};

/// What every route task needs.
pub(crate) struct Receive {
    pub(crate) dispatcher: Dispatcher,
    pub(crate) subjects: Subjects,
    pub(crate) max_message_bytes: usize,
    pub(crate) malformed_log: LogLimiter,
}

/// Requests to a route task.
enum Control {
    /// Dispatch every message already buffered, then answer.
    Drain(oneshot::Sender<()>),
    /// Unsubscribe; with `deliver`, dispatch what is still buffered (close); answer.
    Stop {
        deliver: bool,
        done: oneshot::Sender<()>,
    },
}

struct Route {
    users: usize,
    control: mpsc::UnboundedSender<Control>,
}

#[derive(Default)]
struct State {
    by_target: HashMap<String, Route>,
    by_subscription: HashMap<SubscriptionId, String>,
}

/// The bus's routes; see the [module docs](self).
#[derive(Default)]
pub(crate) struct Routes {
    state: Mutex<State>,
    /// Held while a subscription is added or released, so that a route is created
    /// once and never released while a new user is being added.
    changing: tokio::sync::Mutex<()>,
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a local subscription on `target`: subscribes on the server with `subscribe`
    /// if no route exists yet (then waits for `live`), and makes the local side with
    /// `local` once the server side is live.
    pub(crate) async fn add<S, L, F>(
        &self,
        receive: &Arc<Receive>,
        target: String,
        subscribe: S,
        live: L,
        local: F,
    ) -> Result<event_bus_core::Subscription, Error>
    where
        S: AsyncFnOnce(&str) -> Result<Subscriber, Error>,
        L: AsyncFnOnce() -> Result<(), Error>,
        F: FnOnce() -> Result<event_bus_core::Subscription, Error>,
    {
        let _changing = self.changing.lock().await;
        let exists = self.lock().by_target.contains_key(&target);
        if !exists {
            let subscriber = subscribe(&target).await?;
            let (control, requests) = mpsc::unbounded_channel();
            tokio::spawn(run(receive.clone(), target.clone(), subscriber, requests));
            self.lock()
                .by_target
                .insert(target.clone(), Route { users: 0, control });
            if let Err(e) = live().await {
                self.drop_user(&target, 0).await;
                return Err(e);
            }
        }
        let subscription = match local() {
            Ok(subscription) => subscription,
            Err(e) => {
                self.drop_user(&target, 0).await;
                return Err(e);
            }
        };
        let mut state = self.lock();
        if let Some(route) = state.by_target.get_mut(&target) {
            route.users += 1;
        }
        state.by_subscription.insert(subscription.id(), target);
        Ok(subscription)
    }

    /// Releases the server side of subscription `id`: the route's subscription ends
    /// with its last user.
    pub(crate) async fn release(&self, id: SubscriptionId) {
        let _changing = self.changing.lock().await;
        let target = self.lock().by_subscription.remove(&id);
        if let Some(target) = target {
            self.drop_user(&target, 1).await;
        }
    }

    /// Takes `users` users off `target`'s route and stops it if none is left.
    async fn drop_user(&self, target: &str, users: usize) {
        let stop = {
            let mut state = self.lock();
            let Some(route) = state.by_target.get_mut(target) else {
                return;
            };
            route.users = route.users.saturating_sub(users);
            if route.users > 0 {
                return;
            }
            state.by_target.remove(target)
        };
        if let Some(route) = stop {
            let (done, stopped) = oneshot::channel();
            if route
                .control
                .send(Control::Stop {
                    deliver: false,
                    done,
                })
                .is_ok()
            {
                let _ = stopped.await;
            }
            tracing::debug!(subject = target, "server subscription ended");
        }
    }

    /// Waits until every route has dispatched the messages the client buffered for it
    /// so far.
    pub(crate) async fn drain(&self) {
        let waits: Vec<_> = self
            .lock()
            .by_target
            .values()
            .filter_map(|route| {
                let (done, drained) = oneshot::channel();
                route
                    .control
                    .send(Control::Drain(done))
                    .ok()
                    .map(|()| drained)
            })
            .collect();
        for drained in waits {
            let _ = drained.await;
        }
    }

    /// Stops every route: unsubscribes, dispatches what the client still holds for it
    /// (waiting a moment for the client to confirm), and ends its task.
    pub(crate) async fn stop_all(&self) {
        let routes: Vec<Route> = {
            let mut state = self.lock();
            state.by_subscription.clear();
            state.by_target.drain().map(|(_, route)| route).collect()
        };
        let waits: Vec<_> = routes
            .iter()
            .filter_map(|route| {
                let (done, stopped) = oneshot::channel();
                let stop = Control::Stop {
                    deliver: true,
                    done,
                };
                route.control.send(stop).ok().map(|()| stopped)
            })
            .collect();
        // Bounded: a route blocked on a full queue of a handler that is itself closing
        // the bus would otherwise wait for that handler.
        let all = futures_util::future::join_all(waits);
        if tokio::time::timeout(STOP_WAIT * 2, all).await.is_err() {
            tracing::warn!(
                "close: a server subscription did not stop in time; its buffered events are not delivered"
            );
        }
    }
}

/// How long a stopping route waits for the client to confirm its unsubscribe before
/// dispatching only what is buffered already.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// The task of one route.
async fn run(
    receive: Arc<Receive>,
    target: String,
    mut subscriber: Subscriber,
    mut requests: mpsc::UnboundedReceiver<Control>,
) {
    let target: Arc<str> = target.into();
    let mut joiner = Joiner::default();
    let mut route = RouteReceiver {
        receive: &receive,
        target: &target,
        joiner: &mut joiner,
    };
    loop {
        tokio::select! {
            biased;
            request = requests.recv() => match request {
                Some(Control::Drain(done)) => {
                    while let Some(message) = ready(&mut subscriber) {
                        route.handle(message).await;
                    }
                    let _ = done.send(());
                }
                Some(Control::Stop { deliver, done }) => {
                    let _ = subscriber.unsubscribe().await;
                    if deliver {
                        // After the unsubscribe the client closes the buffer: all of it
                        // is dispatched, then `next` ends.
                        let rest = async {
                            while let Some(message) = subscriber.next().await {
                                route.handle(message).await;
                            }
                        };
                        if tokio::time::timeout(STOP_WAIT, rest).await.is_err() {
                            while let Some(message) = ready(&mut subscriber) {
                                route.handle(message).await;
                            }
                        }
                    }
                    let _ = done.send(());
                    return;
                }
                None => return,
            },
            message = subscriber.next() => match message {
                Some(message) => route.handle(message).await,
                None => return,
            },
        }
    }
}

/// The receiving state of one route task.
struct RouteReceiver<'a> {
    receive: &'a Receive,
    target: &'a str,
    joiner: &'a mut Joiner,
}

impl RouteReceiver<'_> {
    /// Joins, decodes and dispatches one message.
    async fn handle(&mut self, message: Message) {
        let receive = self.receive;
        let subject = message.subject.clone();
        let mut evicted = 0;
        let received = self
            .joiner
            .accept(message, receive.max_message_bytes, &mut evicted);
        for _ in 0..evicted {
            receive.malformed(&subject, "incomplete parts of a large event (parts lost)");
        }
        match received {
            Received::Whole(payload) => receive.handle(self.target, &subject, &payload).await,
            Received::Pending => {}
            Received::Broken(reason) => receive.malformed(&subject, &reason),
        }
    }
}

/// A message the client has buffered for `subscriber`, if any. Unconstrained: Tokio's
/// cooperative budget would otherwise report an empty buffer once the task has run for
/// a while, and a drain would stop early.
fn ready(subscriber: &mut Subscriber) -> Option<Message> {
    tokio::task::unconstrained(subscriber.next())
        .now_or_never()
        .flatten()
}

impl Receive {
    /// Decodes one envelope of route `target` and dispatches it to that route's local
    /// subscriptions.
    async fn handle(&self, target: &str, subject: &str, payload: &[u8]) {
        let event = match decode(payload, self.max_message_bytes) {
            Ok(event) if self.subjects.is_subject_of(subject, &event.topic) => event,
            Ok(event) => {
                let reason = format!("topic {:?} does not belong on this subject", event.topic);
                return self.malformed(subject, &reason);
            }
            Err(e) => return self.malformed(subject, &e.to_string()),
        };
        let (id, topic) = (event.id, event.topic.clone());
        let result = self
            .dispatcher
            .dispatch_where(event, |p| self.subjects.is_target_of(target, p))
            .await;
        match result {
            Ok(()) | Err(Error::Closed) => {}
            // Counted by the dispatcher; the publisher is another process.
            Err(e) => {
                tracing::debug!(event_id = %id, %topic, error = %e, "received event not queued");
            }
        }
    }

    fn malformed(&self, subject: &str, reason: &str) {
        self.dispatcher.metrics().add_malformed(1);
        if let Some(suppressed) = self.malformed_log.check() {
            tracing::warn!(
                subject = %Excerpt(subject),
                reason = %Excerpt(reason),
                suppressed,
                "malformed message skipped"
            );
        }
    }
}
