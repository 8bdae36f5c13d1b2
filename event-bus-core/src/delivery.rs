//! What a handler can learn about the delivery it is handling: which attempt this is,
//! how many there will be at most, and when the call times out.
//!
//! Handlers keep the plain `async fn(Event)` signature; inside the call,
//! [`Delivery::current`] returns the context:
//!
//! ```
//! use event_bus_core::{Delivery, Event};
//!
//! async fn charge(event: Event) -> Result<(), std::io::Error> {
//!     if let Some(delivery) = Delivery::current() {
//!         if delivery.attempt() > 1 {
//!             // A retry of the same event (same id): make the side effect idempotent.
//!         }
//!     }
//!     Ok(())
//! }
//! # let _ = charge;
//! ```

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::subscription::SubscriptionId;

tokio::task_local! {
    /// Set by a subscription's worker for its whole life; updated before each call.
    static CURRENT: Arc<CallContext>;
}

/// The worker-side state behind [`Delivery::current`]: one per worker task, updated
/// in place before each handler call (no allocation, no clock read on the hot path).
/// The worker keeps its own reference, so starting a call does not go through the
/// task-local.
pub(crate) struct CallContext {
    pub(crate) subscription: SubscriptionId,
    pub(crate) group: Option<Arc<str>>,
    pub(crate) max_attempts: u32,
    attempt: AtomicU32,
    timeout: Option<Duration>,
    /// Whether `deadline` was fixed during the current call (so `begin` must clear it).
    deadline_fixed: AtomicBool,
    /// Fixed on first use: by the handler asking for it, or by the worker when the call
    /// does not finish on its first poll and its timer starts.
    deadline: Mutex<Option<Instant>>,
}

impl CallContext {
    pub(crate) fn new(
        subscription: SubscriptionId,
        group: Option<Arc<str>>,
        max_attempts: u32,
        timeout: Option<Duration>,
    ) -> Self {
        Self {
            subscription,
            group,
            max_attempts,
            attempt: AtomicU32::new(1),
            timeout,
            deadline_fixed: AtomicBool::new(false),
            deadline: Mutex::new(None),
        }
    }

    /// Runs `future` (the worker's loop) with `this` context current.
    pub(crate) fn scope<F: Future>(this: Arc<Self>, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(this, future)
    }

    /// The context of the worker running the current task, if any.
    pub(crate) fn with<R>(f: impl FnOnce(&CallContext) -> R) -> Option<R> {
        CURRENT.try_with(|ctx| f(ctx)).ok()
    }

    /// Marks the start of attempt `attempt` of a new call.
    #[inline]
    pub(crate) fn begin(&self, attempt: u32) {
        self.attempt.store(attempt, Relaxed);
        if self.deadline_fixed.load(Relaxed) {
            self.deadline_fixed.store(false, Relaxed);
            *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// The handler timeout (`None`: none).
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The call's deadline, fixing it now if nobody asked before.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let mut deadline = self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
        if deadline.is_none() {
            *deadline = self.timeout.map(|t| Instant::now() + t);
            self.deadline_fixed.store(true, Relaxed);
        }
        *deadline
    }
}

/// The delivery a handler is handling; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    subscription: SubscriptionId,
    group: Option<Arc<str>>,
    attempt: u32,
    max_attempts: u32,
    deadline: Option<Instant>,
}

impl Delivery {
    /// The delivery being handled, when called from inside a handler call (in the
    /// task that runs it: not from a task the handler spawned).
    pub fn current() -> Option<Self> {
        CallContext::with(|ctx| Self {
            subscription: ctx.subscription,
            group: ctx.group.clone(),
            attempt: ctx.attempt.load(Relaxed),
            max_attempts: ctx.max_attempts,
            deadline: ctx.deadline(),
        })
    }

    /// Which attempt this call is: 1 for the first delivery, 2 for the first retry, ….
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The most attempts the subscription's retry policy makes.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether a failure of this call is final (no retry follows).
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// When the call is cancelled as timed out (`None`: no timeout).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The subscription the event was delivered to.
    pub fn subscription(&self) -> SubscriptionId {
        self.subscription
    }

    /// The subscription's consumer group, if it has one.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}
