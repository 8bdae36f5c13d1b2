//! The shared dispatcher: every backend hands the events it publishes or receives to a
//! [`Dispatcher`], which delivers them to the local subscriptions.
//!
//! # Delivery model
//!
//! Each subscription has its own bounded priority queue (`dispatcher.queue_maxsize`
//! events) and its own worker task, which calls the handler **one event at a time**:
//! per subscription, events are handled in priority order (lower value first) and, at
//! equal priority, in the order they were dispatched. Different subscriptions run
//! concurrently, up to `dispatcher.max_concurrent_handlers` calls at once, so a slow
//! handler delays only its own subscription.
//!
//! Dispatching an event puts it into the queue of every matching subscription, all or
//! nothing: when a queue is full, the `overflow` policy decides —
//! `block` waits for room, `reject` fails with [`Error::QueueFull`] (no subscription gets
//! the event), `drop_oldest` / `drop_lowest_priority` discard one queued event of the
//! full queue. Every discarded event is counted in `dropped`.
//!
//! # Failures
//!
//! A handler call that returns `Err`, panics, or runs past
//! `dispatcher.handler_timeout_seconds` (it is then cancelled) is a failure. After
//! `dispatcher.handler_max_failures` consecutive failures the subscription is cancelled
//! automatically and an error is logged with its id and pattern; a success resets the
//! count. A panic never reaches the worker or the publisher.
//!
//! # Closing
//!
//! [`Dispatcher::close`] stops accepting events, lets every queue drain for up to
//! `dispatcher.shutdown_timeout_seconds`, then cancels what is left (counted as dropped),
//! waits for running calls to finish or time out, and returns.

mod hasher;
mod limit;
mod mailbox;
mod queue;
mod registry;
#[cfg(test)]
mod tests;
mod worker;

use std::{
    future::Future,
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::{task::JoinHandle, time::Instant};

use self::{
    mailbox::{Mailbox, MailboxState, Status},
    registry::{Registry, SubEntry},
};
use crate::{
    config::{DispatcherConfig, OverflowPolicy},
    error::Error,
    event::Event,
    handler::Handler,
    metrics::Metrics,
    pattern::Pattern,
    subscription::{CancelSubscription, SubscriptionId},
};

/// Called with the id and pattern of a subscription the dispatcher removed by itself
/// (after too many failures), so a network backend can drop its server subscription.
pub type RemovalHook = Box<dyn Fn(SubscriptionId, &Pattern) + Send + Sync>;

/// Delivers events to local subscriptions; see the [module docs](self).
///
/// Cloning is cheap and every clone is the same dispatcher. Dropping the last clone
/// without [`close`](Self::close) lets each worker finish its queue and stop.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

/// State the workers need on every event.
struct Ctx {
    config: DispatcherConfig,
    /// `config.handler_timeout()`, computed once.
    handler_timeout: Duration,
    metrics: Arc<Metrics>,
    concurrency: limit::Limit,
}

struct Shared {
    ctx: Arc<Ctx>,
    registry: RwLock<Registry>,
    closed: AtomicBool,
    next_seq: AtomicU64,
    on_removed: Option<RemovalHook>,
    metrics_task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Result of one attempt to queue an event.
enum Enqueue {
    Accepted,
    Rejected,
    /// The mailbox at this index of the targets is full (policy `block`).
    WaitFor(usize),
}

impl Dispatcher {
    /// A dispatcher with `config`, which must be [valid](DispatcherConfig::validate).
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad key.
    pub fn new(config: DispatcherConfig) -> Result<Self, Error> {
        Self::with_removal_hook(config, None)
    }

    /// Like [`new`](Self::new), with a hook called when the dispatcher cancels a
    /// subscription by itself (too many consecutive failures).
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad key.
    pub fn with_removal_hook(
        config: DispatcherConfig,
        on_removed: Option<RemovalHook>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let ctx = Ctx {
            handler_timeout: config.handler_timeout(),
            concurrency: limit::Limit::new(config.max_concurrent_handlers),
            config,
            metrics: Arc::new(Metrics::default()),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                ctx: Arc::new(ctx),
                registry: RwLock::new(Registry::default()),
                closed: AtomicBool::new(false),
                next_seq: AtomicU64::new(0),
                on_removed,
                metrics_task: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &DispatcherConfig {
        &self.shared.ctx.config
    }

    /// The live metrics, shared with the backend (which counts publishes, reconnects
    /// and malformed messages in it).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.ctx.metrics
    }

    /// Whether [`close`](Self::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Starts the periodic metrics log line (`dispatcher.metrics_log_interval_seconds`) if it
    /// is enabled and not yet running. Called by backends on connect and first use;
    /// does nothing outside a Tokio runtime.
    pub fn start(&self) {
        let Some(period) = self.config().metrics_log_interval() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut task = lock(&self.shared.metrics_task);
        if task.is_some() || self.is_closed() {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        *task = Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
            loop {
                ticker.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let m = shared.ctx.metrics.snapshot();
                tracing::info!(
                    queue_depth = m.queue_depth,
                    published = m.published,
                    processed = m.delivered + m.failed + m.timed_out + m.panicked,
                    failed = m.failed + m.timed_out + m.panicked,
                    dropped = m.dropped,
                    subscriptions = m.subscriptions,
                    reconnects = m.reconnects,
                    "event bus metrics"
                );
            }
        }));
    }

    /// Adds a subscription and starts its worker. Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// [`Error::Closed`] after close.
    pub fn subscribe(
        &self,
        pattern: Pattern,
        handler: Arc<dyn Handler>,
    ) -> Result<SubscriptionId, Error> {
        self.start();
        let entry = Arc::new(SubEntry {
            id: SubscriptionId::new(),
            seq: self.shared.next_seq.fetch_add(1, Ordering::Relaxed),
            pattern,
            handler,
            mailbox: Mailbox::new(),
            cancelled: AtomicBool::new(false),
            worker: std::sync::Mutex::new(None),
            stats: Default::default(),
        });
        let id = entry.id;
        {
            let mut registry = self.shared.write();
            // Checked under the lock so that close() cannot miss this entry.
            if self.is_closed() {
                return Err(Error::Closed);
            }
            registry.insert(entry.clone());
        }
        self.metrics().add_subscriptions(1);
        self.metrics().attach(entry.seq, entry.clone());
        worker::spawn(
            &entry,
            self.shared.ctx.clone(),
            Arc::downgrade(&self.shared),
        );
        tracing::debug!(sub = %id, "subscribed");
        Ok(id)
    }

    /// Whether subscription `id` is live.
    pub fn is_subscribed(&self, id: SubscriptionId) -> bool {
        self.shared.read().contains(id)
    }

    /// The patterns of all live subscriptions (network backends re-subscribe these
    /// after a reconnect).
    pub fn patterns(&self) -> Vec<Pattern> {
        self.shared
            .read()
            .entries()
            .map(|e| e.pattern.clone())
            .collect()
    }

    /// Cancels subscription `id`: removes it, discards its queued events (counted as
    /// dropped) and waits until its handler is not running. Returns `false` if it was not
    /// live. Called from the subscription's own handler, it does not wait for itself.
    pub async fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let Some(entry) = self.shared.write().remove(id) else {
            return false;
        };
        self.metrics().add_subscriptions(-1);
        self.shared.ctx.cancel_entry(&entry);
        if worker::current_subscription() != Some(id) {
            if let Some(handle) = entry.take_worker() {
                let _ = handle.await;
            }
        }
        tracing::debug!(sub = %id, pattern = entry.pattern.as_str(), "unsubscribed");
        true
    }

    /// Dispatches `event` to every matching subscription. Does not wait for handlers.
    ///
    /// # Errors
    /// [`Error::Closed`]; [`Error::QueueFull`] under the `reject` policy.
    pub fn dispatch(&self, event: Event) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.dispatch_where(event, |_| true)
    }

    /// Dispatches `event` to the matching subscriptions whose pattern also passes
    /// `filter`. Network backends use this when the server already told them which of
    /// their subscriptions a message is for (e.g. per Redis pattern subscription), so an
    /// event reaching the bus twice is still delivered once per subscription.
    ///
    /// # Errors
    /// [`Error::Closed`]; [`Error::QueueFull`] under the `reject` policy.
    pub fn dispatch_where(
        &self,
        event: Event,
        filter: impl Fn(&Pattern) -> bool,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        let targets = if self.is_closed() {
            None
        } else {
            Some(self.shared.read().matching(&event.topic, filter))
        };
        async move {
            let Some(targets) = targets else {
                return Err(Error::Closed);
            };
            self.metrics().add_received(1);
            match targets.as_slice() {
                [] => Ok(()),
                targets => self.deliver(targets, event).await,
            }
        }
    }

    async fn deliver(&self, targets: &[Arc<SubEntry>], event: Event) -> Result<(), Error> {
        loop {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            match self.try_enqueue(targets, &event) {
                Enqueue::Accepted => return Ok(()),
                Enqueue::Rejected => {
                    self.metrics().add_rejected(1);
                    tracing::debug!(event_id = %event.id, topic = %event.topic, "queue full: event rejected");
                    return Err(Error::QueueFull {
                        event: Box::new(event),
                    });
                }
                Enqueue::WaitFor(i) => {
                    let mailbox = &targets[i].mailbox;
                    let space = mailbox.space.notified();
                    tokio::pin!(space);
                    space.as_mut().enable();
                    if mailbox.lock().queue.len() < self.config().queue_maxsize {
                        continue;
                    }
                    space.await;
                }
            }
        }
    }

    /// Locks the targets' mailboxes (in creation order, so concurrent publishers cannot
    /// deadlock) and queues `event` in every open one, applying the overflow policy.
    fn try_enqueue(&self, targets: &[Arc<SubEntry>], event: &Event) -> Enqueue {
        if let [only] = targets {
            return self.enqueue_locked(targets, &mut [only.mailbox.lock()], event);
        }
        let mut guards: Vec<_> = targets.iter().map(|t| t.mailbox.lock()).collect();
        self.enqueue_locked(targets, &mut guards, event)
    }

    fn enqueue_locked(
        &self,
        targets: &[Arc<SubEntry>],
        guards: &mut [std::sync::MutexGuard<'_, MailboxState>],
        event: &Event,
    ) -> Enqueue {
        let ctx = &self.shared.ctx;
        let capacity = ctx.config.queue_maxsize;
        let is_full = |g: &MailboxState| g.status == Status::Open && g.queue.len() >= capacity;
        if let Some(i) = guards.iter().position(|g| is_full(g)) {
            match ctx.config.overflow {
                OverflowPolicy::Block => return Enqueue::WaitFor(i),
                OverflowPolicy::Reject => return Enqueue::Rejected,
                OverflowPolicy::DropOldest | OverflowPolicy::DropLowestPriority => {}
            }
        }
        let now = Instant::now();
        for (guard, target) in guards.iter_mut().zip(targets) {
            match guard.status {
                Status::Open => {}
                // Raced with close(): not delivered, so counted.
                Status::Draining => {
                    ctx.discard(event, "bus closing");
                    continue;
                }
                // Raced with cancel(): that subscription no longer wants it.
                Status::Cancelled => continue,
            }
            if is_full(guard) {
                let victim = match ctx.config.overflow {
                    OverflowPolicy::DropLowestPriority
                        if guard.queue.least_urgent() <= Some(event.priority) =>
                    {
                        ctx.discard(event, "queue full");
                        continue;
                    }
                    OverflowPolicy::DropLowestPriority => guard.queue.pop_least_urgent(),
                    _ => guard.queue.pop_oldest(),
                };
                if let Some(victim) = victim {
                    ctx.discard(&victim.event, "queue full");
                }
            }
            let was_empty = guard.queue.is_empty();
            guard.queue.push(event.clone(), now);
            // A worker only parks on an empty queue. Waking one that is busy leaves a
            // permit behind, which costs it one extra look at its queue.
            if was_empty {
                target.mailbox.ready.notify_one();
            }
        }
        Enqueue::Accepted
    }

    /// Waits until every dispatched event has been handled or discarded. Must not be
    /// called from a handler.
    pub async fn flush(&self) {
        loop {
            let entries: Vec<Arc<SubEntry>> = self.shared.read().entries().cloned().collect();
            let Some(busy) = entries.iter().find(|e| !e.mailbox.is_idle()) else {
                return;
            };
            busy.mailbox.wait_idle().await;
        }
    }

    /// Closes the dispatcher; see the [module docs](self#closing). A second call returns
    /// at once. Called from a handler, it stops intake and returns without waiting for
    /// the queues to drain (a handler's own timeout would otherwise cut the wait short);
    /// the workers still drain them.
    pub async fn close(&self) {
        self.close_by(Instant::now() + self.config().shutdown_timeout())
            .await;
    }

    /// Like [`close`](Self::close), with queues draining until `drain_deadline` instead
    /// of `shutdown_timeout_seconds` from now: a backend that first drained its own
    /// receive buffer passes the deadline it started with, so `close()` has one.
    pub async fn close_by(&self, drain_deadline: Instant) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(task) = lock(&self.shared.metrics_task).take() {
            task.abort();
        }
        let entries = self.shared.write().drain();
        self.metrics().add_subscriptions(-(entries.len() as i64));
        let in_handler = worker::current_subscription().is_some();
        let mut workers = Vec::new();
        for entry in &entries {
            entry.mailbox.set_status(Status::Draining);
            if !in_handler {
                workers.extend(entry.take_worker().map(|h| (entry, h)));
            }
        }
        let ctx = &self.shared.ctx;
        for (_, handle) in &mut workers {
            let _ = tokio::time::timeout_at(drain_deadline, handle).await;
        }
        workers.retain(|(_, h)| !h.is_finished());
        if !workers.is_empty() {
            tracing::warn!(
                subscriptions = workers.len(),
                "close deadline passed: discarding queued events"
            );
        }
        for (entry, _) in &workers {
            ctx.cancel_entry(entry);
        }
        // Running calls end by themselves within the handler timeout; the margin covers
        // a worker that was waiting for a concurrency slot.
        let stop_deadline =
            Instant::now() + ctx.config.handler_timeout() + Duration::from_millis(100);
        for (_, handle) in &mut workers {
            if tokio::time::timeout_at(stop_deadline, &mut *handle)
                .await
                .is_err()
            {
                handle.abort();
            }
        }
        tracing::debug!("dispatcher closed");
    }
}

impl Ctx {
    /// Marks `entry` cancelled and discards its queue.
    fn cancel_entry(&self, entry: &SubEntry) {
        entry.cancelled.store(true, Ordering::Release);
        let discarded = entry.mailbox.set_status(Status::Cancelled);
        if discarded > 0 {
            self.metrics.add_dropped(discarded as u64);
        }
    }

    /// Counts and logs one discarded event.
    fn discard(&self, event: &Event, reason: &'static str) {
        self.metrics.add_dropped(1);
        tracing::debug!(event_id = %event.id, topic = %event.topic, reason, "event dropped");
    }
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Called by a worker whose handler failed `failures` times in a row.
    fn auto_unsubscribe(&self, entry: &SubEntry, failures: u32) {
        if self.write().remove(entry.id).is_none() {
            return; // cancelled concurrently
        }
        let metrics = &self.ctx.metrics;
        metrics.add_subscriptions(-1);
        metrics.add_auto_unsubscribed(1);
        self.ctx.cancel_entry(entry);
        tracing::error!(
            sub = %entry.id,
            pattern = entry.pattern.as_str(),
            failures,
            "handler failed too many times in a row: unsubscribed automatically"
        );
        if let Some(hook) = &self.on_removed {
            hook(entry.id, &entry.pattern);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let registry = self
            .registry
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for entry in registry.entries() {
            entry.mailbox.set_status(Status::Draining);
        }
        if let Some(task) = lock(&self.metrics_task).take() {
            task.abort();
        }
    }
}

#[async_trait]
impl CancelSubscription for Dispatcher {
    async fn cancel_subscription(&self, id: SubscriptionId) {
        self.unsubscribe(id).await;
    }

    fn is_subscribed(&self, id: SubscriptionId) -> bool {
        Dispatcher::is_subscribed(self, id)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
