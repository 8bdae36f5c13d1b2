//! Subscriptions: the handle a subscriber keeps to stop delivery.

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::pattern::Pattern;

/// Unique id of a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(Uuid);

impl SubscriptionId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
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

/// What a backend does when a subscription is cancelled. Implemented by backends;
/// users call [`Subscription::cancel`].
#[async_trait]
pub trait CancelSubscription: Send + Sync + 'static {
    /// Stops delivery to subscription `id`. When this returns, the handler is not
    /// running and will never be called again.
    async fn cancel_subscription(&self, id: SubscriptionId);

    /// Whether subscription `id` still receives events.
    fn is_subscribed(&self, id: SubscriptionId) -> bool;
}

/// A live subscription: a handler receiving the events whose topic matches a pattern.
///
/// # Drop
///
/// Dropping a `Subscription` does **not** cancel it: the handler keeps receiving events
/// until [`cancel`](Self::cancel) is called, the subscription is cancelled automatically
/// after `dispatcher.handler_max_failures` consecutive failures, or the bus is closed.
/// This makes `bus.subscribe(..).await?;` a fire-and-forget subscription, like a
/// detached task. Drop itself does nothing: it never blocks, panics or needs a runtime.
///
/// # Cancel safety
///
/// If the future returned by `cancel` is dropped before it completes, the subscription
/// has been removed (no new deliveries start) but a handler call already running may
/// still finish.
pub struct Subscription {
    id: SubscriptionId,
    pattern: Pattern,
    created_at: DateTime<Utc>,
    control: Arc<dyn CancelSubscription>,
}

impl Subscription {
    /// Wraps a subscription a backend has made live.
    pub fn new(id: SubscriptionId, pattern: Pattern, control: Arc<dyn CancelSubscription>) -> Self {
        Self {
            id,
            pattern,
            created_at: Utc::now(),
            control,
        }
    }

    /// The subscription's id (it appears in log lines about this subscription).
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// The pattern this subscription matches topics against.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// When the subscription was made.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// Whether the handler still receives events (false after cancel, automatic
    /// unsubscribe or close).
    pub fn is_active(&self) -> bool {
        self.control.is_subscribed(self.id)
    }

    /// Stops delivery. When this returns the handler is not running and will never be
    /// called again; events queued for it and not yet started are discarded and counted
    /// as dropped. A handler may cancel its own subscription.
    pub async fn cancel(self) {
        self.control.cancel_subscription(self.id).await;
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("pattern", &self.pattern)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}
