//! Subscriptions: the handle a subscriber keeps to stop delivery or learn that it
//! stopped, and [`SubscriptionSet`], which owns several and cancels them together.

use std::{fmt, future::Future, sync::Arc};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    dispatcher::{Dispatcher, registry::SubEntry},
    pattern::Pattern,
};

/// Unique id of a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(Uuid);

impl SubscriptionId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for SubscriptionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Uuid> for SubscriptionId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

/// Why a subscription stopped receiving events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// [`Subscription::cancel`] (or `EventStream::cancel`) was called.
    Cancelled,
    /// Removed automatically after `failures` consecutive final failures (see
    /// [`OnMaxFailures::Remove`](crate::OnMaxFailures::Remove)).
    Removed {
        /// The consecutive failures that caused the removal.
        failures: u32,
    },
    /// Its owner was dropped: an [`EventStream`](crate::EventStream) or a
    /// [`SubscriptionSet`].
    Dropped,
    /// The bus was closed.
    Closed,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cancelled => f.write_str("cancelled"),
            Self::Removed { failures } => {
                write!(f, "removed after {failures} consecutive failures")
            }
            Self::Dropped => f.write_str("dropped"),
            Self::Closed => f.write_str("bus closed"),
        }
    }
}

/// A live subscription: a handler receiving the events whose topic matches a pattern.
///
/// Every way a subscription ends — [`cancel`](Self::cancel), automatic removal after
/// repeated failures, dropping a stream or a [`SubscriptionSet`], closing the bus — goes
/// through one path: the dispatcher stops delivery, discards (and counts) what was
/// queued, and the backend releases the server-side subscription.
/// [`ended`](Self::ended) tells when that happened and why.
///
/// # Drop
///
/// Dropping a `Subscription` does **not** cancel it: the handler keeps receiving events
/// until [`cancel`](Self::cancel) is called, the subscription is removed automatically
/// after repeated failures, or the bus is closed. This makes `bus.subscribe(..).await?;`
/// a fire-and-forget subscription, like a detached task. Drop itself does nothing: it
/// never blocks, panics or needs a runtime. (Stream subscriptions and
/// [`SubscriptionSet`] unsubscribe on drop instead.)
///
/// # Cancel safety
///
/// If the future returned by `cancel` is dropped before it completes, the subscription
/// has been removed (no new deliveries start) but a handler call already running may
/// still finish, and the server-side release may not have happened yet (it then happens
/// at the next reconnect or close).
pub struct Subscription {
    entry: Arc<SubEntry>,
    dispatcher: Dispatcher,
    created_at: DateTime<Utc>,
}

impl Subscription {
    pub(crate) fn new(entry: Arc<SubEntry>, dispatcher: Dispatcher) -> Self {
        Self {
            entry,
            dispatcher,
            created_at: Utc::now(),
        }
    }

    /// The subscription's id (it appears in log lines about this subscription).
    pub fn id(&self) -> SubscriptionId {
        self.entry.id
    }

    /// The pattern this subscription matches topics against.
    pub fn pattern(&self) -> &Pattern {
        &self.entry.pattern
    }

    /// The consumer group the subscription belongs to, if any.
    pub fn group(&self) -> Option<&str> {
        self.entry.group.as_deref()
    }

    /// When the subscription was made.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// Whether the subscription still receives events (false once it has ended).
    pub fn is_active(&self) -> bool {
        self.entry.ended.borrow().is_none()
    }

    /// Resolves when the subscription ends, with the reason. The future does not borrow
    /// the handle: keep it after moving the handle elsewhere, or await it in a task.
    ///
    /// ```
    /// # use event_bus_core::{EndReason, EventBus, EventBusExt, Event};
    /// # async fn demo(bus: &dyn EventBus) -> Result<(), event_bus_core::Error> {
    /// let sub = bus.subscribe("jobs", |_: Event| async { Ok::<(), std::io::Error>(()) }).await?;
    /// let ended = sub.ended();
    /// sub.cancel().await;
    /// assert_eq!(ended.await, EndReason::Cancelled);
    /// # Ok(()) }
    /// ```
    pub fn ended(&self) -> impl Future<Output = EndReason> + Send + 'static {
        let mut ended = self.entry.ended.subscribe();
        async move {
            match ended.wait_for(Option::is_some).await {
                Ok(reason) => reason.unwrap_or(EndReason::Closed),
                // The dispatcher is gone without a close.
                Err(_) => EndReason::Closed,
            }
        }
    }

    /// Stops delivery. When this returns the handler is not running and will never be
    /// called again, events queued for it and not yet started are discarded and counted
    /// as dropped, and the backend has released the server-side subscription. A handler
    /// may cancel its own subscription.
    pub async fn cancel(self) {
        self.dispatcher.cancel(&self.entry).await;
    }

    /// Unsubscribes at once without waiting: stops new deliveries, and hands the
    /// server-side release to the backend's background task. Never blocks, panics or
    /// needs a runtime.
    pub(crate) fn cancel_now(&self, reason: EndReason) {
        self.dispatcher.cancel_now(&self.entry, reason);
    }

    pub(crate) fn entry(&self) -> &Arc<SubEntry> {
        &self.entry
    }

    pub(crate) fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.entry.id)
            .field("pattern", &self.entry.pattern)
            .field("group", &self.entry.group)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Several subscriptions owned together: cancelled together by
/// [`cancel`](Self::cancel), and unsubscribed when the set is dropped.
///
/// Use it for the subscriptions of one component, so that shutting the component down
/// is one call.
///
/// ```
/// # use event_bus_core::{EventBus, EventBusExt, Event, SubscriptionSet};
/// # async fn demo(bus: &dyn EventBus) -> Result<(), event_bus_core::Error> {
/// let handler = |_: Event| async { Ok::<(), std::io::Error>(()) };
/// let mut subs = SubscriptionSet::new();
/// subs.insert(bus.subscribe("orders:*", handler).await?);
/// subs.insert(bus.subscribe("payments:*", handler).await?);
/// subs.cancel().await; // both are gone, on the server too
/// # Ok(()) }
/// ```
///
/// # Drop
///
/// Dropping the set unsubscribes every member at once and best effort, as dropping an
/// [`EventStream`](crate::EventStream) does: new deliveries stop, queued events are
/// discarded and counted, the server-side release happens in the backend's background
/// task. A handler call already running may still finish. Drop never blocks, panics or
/// needs a runtime.
#[derive(Debug, Default)]
pub struct SubscriptionSet {
    members: Vec<Subscription>,
}

impl SubscriptionSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscription to the set.
    pub fn insert(&mut self, subscription: Subscription) {
        self.members.push(subscription);
    }

    /// How many subscriptions the set holds.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the set holds none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Cancels every member, with the guarantees of [`Subscription::cancel`].
    pub async fn cancel(mut self) {
        for member in std::mem::take(&mut self.members) {
            member.cancel().await;
        }
    }
}

impl Extend<Subscription> for SubscriptionSet {
    fn extend<I: IntoIterator<Item = Subscription>>(&mut self, iter: I) {
        self.members.extend(iter);
    }
}

impl FromIterator<Subscription> for SubscriptionSet {
    fn from_iter<I: IntoIterator<Item = Subscription>>(iter: I) -> Self {
        Self {
            members: iter.into_iter().collect(),
        }
    }
}

impl Drop for SubscriptionSet {
    fn drop(&mut self) {
        for member in &self.members {
            member.cancel_now(EndReason::Dropped);
        }
    }
}
