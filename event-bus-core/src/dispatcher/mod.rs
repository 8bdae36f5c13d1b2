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
//! Each subscription may override the queue size, the overflow policy and the handler
//! settings ([`SubscribeOptions`]). When one event goes to several full queues with
//! different policies, `reject` wins over `block`, which wins over the drop policies.
//!
//! # Failures and retries
//!
//! A handler call that returns `Err`, panics, or runs past its timeout (it is then
//! cancelled) is a failed attempt. Under the subscription's [`RetryPolicy`] the same event
//! (same id) is tried again after a backoff; [`Delivery::current`] tells the handler
//! which attempt it is running. Retries happen **in place**: the subscription's later
//! events wait until the event being retried succeeds or runs out of attempts, so
//! per-subscription order is kept; the concurrency slot is given back during the
//! backoff, so a retry never holds up other subscriptions.
//!
//! After the last attempt the event goes to the subscription's dead-letter topic
//! ([`DeadLetter`], see [`crate::dead_letter`]) or, without one, is given up (counted as
//! failed). Such *final* failures count toward `handler_max_failures`; that many in a
//! row remove the subscription (logged with its id and pattern), pause it, or are only
//! counted, as [`OnMaxFailures`] says. A success resets the count. A panic never reaches
//! the worker or the publisher.
//!
//! # Consumer groups
//!
//! Subscriptions of one dispatcher with the same group name share the events: each event
//! goes to one of the group's matching members, taking turns (round robin).
//!
//! # Lifecycle
//!
//! Every subscription ends through one path, whatever ends it (cancel, automatic
//! removal, dropping a stream or a [`SubscriptionSet`](crate::SubscriptionSet), close):
//! it leaves the index, its queue is discarded and counted, its [`EndReason`] is set, and
//! the backend's [`Transport`] releases the server side.
//!
//! # Closing
//!
//! [`Dispatcher::close`] stops accepting events, lets every queue drain for up to
//! `dispatcher.shutdown_timeout_seconds`, then cancels what is left (counted as dropped),
//! waits for running calls to finish or time out, and returns.

mod hasher;
mod limit;
pub(crate) mod mailbox;
#[cfg(test)]
mod model_tests;
mod queue;
pub(crate) mod registry;
#[cfg(test)]
mod tests;
pub(crate) mod worker;

use std::{
    future::Future,
    sync::{
        Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

use self::{
    mailbox::{Mailbox, MailboxState, Status},
    registry::{Registry, SubEntry, Targets},
};
use crate::{
    config::{DispatcherConfig, OverflowPolicy},
    dead_letter,
    durable::DurableDelivery,
    error::Error,
    event::Event,
    metrics::Metrics,
    options::SubscribeOptions,
    pattern::Pattern,
    publish::Publish,
    subscription::{EndReason, Subscription, SubscriptionId},
    topic::validate_topic,
    transport::{Subscriber, SubscriberKind, Transport},
};
#[allow(unused_imports)] // linked from the module docs
use crate::{
    delivery::Delivery,
    options::{DeadLetter, OnMaxFailures, RetryPolicy},
};

/// Delivers events to local subscriptions; see the [module docs](self).
///
/// Cloning is cheap and every clone is the same dispatcher. Dropping the last clone
/// without [`close`](Self::close) lets each worker finish its queue and stop.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

/// State the workers need on every event.
pub(crate) struct Ctx {
    config: DispatcherConfig,
    metrics: Arc<Metrics>,
    concurrency: limit::Limit,
}

pub(crate) struct Shared {
    ctx: Arc<Ctx>,
    registry: RwLock<Registry>,
    closed: AtomicBool,
    next_seq: AtomicU64,
    /// The backend's server side, once attached.
    transport: OnceLock<Weak<dyn Transport>>,
    /// Subscriptions whose server side is to be released by the releaser task (from
    /// paths that cannot wait: drop, automatic removal).
    releases: mpsc::UnboundedSender<SubscriptionId>,
    pending_releases: std::sync::Mutex<Option<mpsc::UnboundedReceiver<SubscriptionId>>>,
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
        config.validate()?;
        let ctx = Ctx {
            concurrency: limit::Limit::new(config.max_concurrent_handlers),
            config,
            metrics: Arc::new(Metrics::default()),
        };
        let (releases, pending_releases) = mpsc::unbounded_channel();
        Ok(Self {
            shared: Arc::new(Shared {
                ctx: Arc::new(ctx),
                registry: RwLock::new(Registry::default()),
                closed: AtomicBool::new(false),
                next_seq: AtomicU64::new(0),
                transport: OnceLock::new(),
                releases,
                pending_releases: std::sync::Mutex::new(Some(pending_releases)),
                metrics_task: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Attaches the backend's server side: dead letters are published through it and
    /// ended subscriptions released on it. The dispatcher keeps a weak reference, so
    /// the backend may own the dispatcher. Only the first call has an effect.
    pub fn set_transport(&self, transport: Weak<dyn Transport>) {
        let _ = self.shared.transport.set(transport);
    }

    fn transport(&self) -> Option<Arc<dyn Transport>> {
        self.shared.transport()
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

    /// Starts the background tasks: the releaser of ended subscriptions' server side,
    /// and the periodic metrics log line (`dispatcher.metrics_log_interval_seconds`) if
    /// it is enabled. Idempotent. Called by backends on connect and first use; does
    /// nothing outside a Tokio runtime.
    pub fn start(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.start_releaser();
        let Some(period) = self.config().metrics_log_interval() else {
            return;
        };
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

    /// Starts the task that releases the server side of subscriptions ended where
    /// nobody can wait (drop, automatic removal). Runs until the dispatcher is dropped.
    fn start_releaser(&self) {
        let Some(transport) = self.shared.transport.get().cloned() else {
            return;
        };
        let Some(mut pending) = lock(&self.shared.pending_releases).take() else {
            return;
        };
        tokio::spawn(async move {
            while let Some(id) = pending.recv().await {
                let Some(transport) = transport.upgrade() else {
                    return;
                };
                transport.release(id).await;
            }
        });
    }

    /// Adds a subscription with `options` over the bus-wide settings and, for a handler,
    /// starts its worker. Must be called inside a Tokio runtime. Network backends call
    /// this once the server side is live.
    ///
    /// # Errors
    /// [`Error::Config`] for bad options; [`Error::Closed`] after close.
    pub fn subscribe(
        &self,
        pattern: Pattern,
        options: &SubscribeOptions,
        subscriber: Subscriber,
    ) -> Result<Subscription, Error> {
        let mut options = options.resolve(self.config())?;
        if subscriber.is_stream() {
            options.handler_timeout = None;
        }
        self.start();
        let group = options.group.as_deref().map(Arc::from);
        let max_attempts = options.retry.max_attempts;
        let entry = Arc::new(SubEntry {
            id: SubscriptionId::new(),
            seq: self.shared.next_seq.fetch_add(1, Ordering::Relaxed),
            pattern,
            kind: subscriber.0,
            options,
            group,
            mailbox: Mailbox::new(),
            cancelled: AtomicBool::new(false),
            ended: watch::Sender::new(None),
            worker: std::sync::Mutex::new(None),
            stats: Default::default(),
        });
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
        if let SubscriberKind::Handler(start) = &entry.kind {
            start.start(
                &entry,
                max_attempts,
                self.shared.ctx.clone(),
                Arc::downgrade(&self.shared),
            );
        }
        tracing::debug!(sub = %entry.id, pattern = entry.pattern.as_str(), "subscribed");
        Ok(Subscription::new(entry, self.clone()))
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

    /// Ends a subscription: cancel (awaited), see [`Subscription::cancel`].
    pub(crate) async fn cancel(&self, entry: &Arc<SubEntry>) {
        let removed = self.shared.end(entry, EndReason::Cancelled);
        if worker::current_subscription() != Some(entry.id) {
            if let Some(handle) = entry.take_worker() {
                let _ = handle.await;
            }
        }
        if removed {
            if let Some(transport) = self.transport() {
                transport.release(entry.id).await;
            }
        }
    }

    /// Ends a subscription without waiting (drop paths): never blocks or needs a
    /// runtime; the server side is released by the releaser task.
    pub(crate) fn cancel_now(&self, entry: &SubEntry, reason: EndReason) {
        if self.shared.end(entry, reason) {
            self.shared.release_soon(entry.id);
        }
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
        let targets = self.targets(&event, filter).map(|(targets, _)| targets);
        async move {
            let Some(targets) = targets else {
                return Err(Error::Closed);
            };
            self.metrics().add_received(1);
            match self.try_enqueue(targets.as_slice(), &event) {
                Enqueue::Accepted => Ok(()),
                // Boxed so that the common case above keeps this future small.
                first => Box::pin(self.deliver(targets.as_slice(), event, first)).await,
            }
        }
    }

    /// Publishes `event` in this process, as the memory backend's
    /// [`EventBus::publish`](crate::EventBus::publish) does: checks its topic,
    /// dispatches it to the matching subscriptions and counts it as published. The
    /// work happens on the first poll; when every queue has room (or the event is
    /// refused at once) that poll finishes it without allocating, and only a wait for
    /// room (`block`) continues in a boxed future.
    ///
    /// # Errors
    /// [`Error::InvalidTopic`]; [`Error::Closed`]; [`Error::QueueFull`] under the
    /// `reject` policy.
    pub fn publish(&self, event: Event) -> Publish<'_> {
        Publish::local(self, event)
    }

    /// The first poll of [`publish`](Self::publish): the result, or the wait for room.
    #[inline]
    pub(crate) fn publish_now(&self, event: Event) -> Result<Result<(), Error>, Publish<'_>> {
        let Some((targets, exact)) = self.targets(&event, |_| true) else {
            return Ok(validate_topic(&event.topic).and(Err(Error::Closed)));
        };
        // A topic that is some subscription's exact topic has passed the topic rules.
        if !exact {
            if let Err(e) = validate_topic(&event.topic) {
                return Ok(Err(e));
            }
        }
        self.metrics().add_received(1);
        match self.try_enqueue(targets.as_slice(), &event) {
            Enqueue::Accepted => {
                self.metrics().add_published(1);
                Ok(Ok(()))
            }
            first => Err(Publish::new(async move {
                self.deliver(targets.as_slice(), event, first).await?;
                self.metrics().add_published(1);
                Ok(())
            })),
        }
    }

    /// The subscriptions `event` goes to and whether its topic is some subscription's
    /// exact topic (`None` once closed).
    fn targets(&self, event: &Event, filter: impl Fn(&Pattern) -> bool) -> Option<(Targets, bool)> {
        if self.is_closed() {
            return None;
        }
        // A subscription never receives its own dead letters.
        let origin = dead_letter::origin(event);
        let filter = |e: &SubEntry| Some(e.id) != origin && filter(&e.pattern);
        Some(self.shared.read().matching(&event.topic, filter))
    }

    /// Finishes a dispatch whose first attempt to queue (`first`) was not accepted.
    async fn deliver(
        &self,
        targets: &[Arc<SubEntry>],
        event: Event,
        first: Enqueue,
    ) -> Result<(), Error> {
        let mut attempt = Some(first);
        loop {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            let enqueued = match attempt.take() {
                Some(enqueued) => enqueued,
                None => self.try_enqueue(targets, &event),
            };
            match enqueued {
                Enqueue::Accepted => return Ok(()),
                Enqueue::Rejected => {
                    self.metrics().add_rejected(1);
                    tracing::debug!(event_id = %event.id, topic = %event.topic, "queue full: event rejected");
                    return Err(Error::QueueFull {
                        event: Box::new(event),
                    });
                }
                Enqueue::WaitFor(i) => {
                    let target = &targets[i];
                    let space = target.mailbox.space.notified();
                    tokio::pin!(space);
                    space.as_mut().enable();
                    if target.mailbox.lock().queue.len() < target.options.queue_maxsize {
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
        if targets.is_empty() {
            return Enqueue::Accepted;
        }
        if let [only] = targets {
            return self.enqueue_one(only, event);
        }
        let mut guards: Vec<_> = targets.iter().map(|t| t.mailbox.lock()).collect();
        self.enqueue_locked(targets, &mut guards, event)
    }

    /// [`try_enqueue`](Self::try_enqueue) for the common case of one target whose
    /// queue has room, without the loops over targets; a full queue takes the general
    /// path.
    fn enqueue_one(&self, target: &Arc<SubEntry>, event: &Event) -> Enqueue {
        let mut guard = target.mailbox.lock();
        match guard.status {
            Status::Open if guard.queue.len() < target.options.queue_maxsize => {}
            Status::Open => {
                let targets = std::slice::from_ref(target);
                return self.enqueue_locked(targets, &mut [guard], event);
            }
            // Raced with close(): not delivered, so counted.
            Status::Draining => {
                self.shared.ctx.discard(event, "bus closing");
                return Enqueue::Accepted;
            }
            // Raced with cancel(): that subscription no longer wants it.
            Status::Cancelled => return Enqueue::Accepted,
        }
        let enqueued = guard.queue.samples_next().then(Instant::now);
        let was_empty = guard.queue.is_empty();
        guard.queue.push(event.clone(), enqueued);
        if was_empty {
            wake(target, &mut guard);
        }
        Enqueue::Accepted
    }

    fn enqueue_locked(
        &self,
        targets: &[Arc<SubEntry>],
        guards: &mut [std::sync::MutexGuard<'_, MailboxState>],
        event: &Event,
    ) -> Enqueue {
        let ctx = &self.shared.ctx;
        let is_full = |g: &MailboxState, t: &SubEntry| {
            g.status == Status::Open && g.queue.len() >= t.options.queue_maxsize
        };
        let mut wait_for = None;
        for (i, (guard, target)) in guards.iter().zip(targets).enumerate() {
            if is_full(guard, target) {
                match target.options.overflow {
                    OverflowPolicy::Reject => return Enqueue::Rejected,
                    OverflowPolicy::Block => wait_for = wait_for.or(Some(i)),
                    OverflowPolicy::DropOldest | OverflowPolicy::DropLowestPriority => {}
                }
            }
        }
        if let Some(i) = wait_for {
            return Enqueue::WaitFor(i);
        }
        // One clock read per event at most, and only if a queue samples it.
        let mut now = None;
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
            if is_full(guard, target) {
                let victim = match target.options.overflow {
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
            let enqueued = guard
                .queue
                .samples_next()
                .then(|| *now.get_or_insert_with(Instant::now));
            guard.queue.push(event.clone(), enqueued);
            if was_empty {
                wake(target, guard);
            }
        }
        Enqueue::Accepted
    }

    /// Queues `event`, fetched from the server by a durable backend for subscription `id`,
    /// for that subscription alone; its worker calls the handler and settles the event
    /// through `delivery` (see [`crate::durable`]). Waits for room whatever the overflow
    /// policy: what is not taken stays on the server. Returns `false` (and drops
    /// `delivery`, leaving the event to be delivered again) if the subscription is no
    /// longer live.
    ///
    /// # Errors
    /// [`Error::Closed`] after close.
    pub async fn deliver_to(
        &self,
        id: SubscriptionId,
        event: Event,
        delivery: DurableDelivery,
    ) -> Result<bool, Error> {
        let Some(entry) = self.shared.read().get(id) else {
            return Ok(false);
        };
        let mut delivery = Some(Box::new(delivery));
        loop {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            let space = entry.mailbox.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut guard = entry.mailbox.lock();
                if guard.status != Status::Open {
                    return Ok(false);
                }
                if guard.queue.len() < entry.options.queue_maxsize {
                    let was_empty = guard.queue.is_empty();
                    let enqueued = guard.queue.samples_next().then(Instant::now);
                    guard.queue.push_entry(event, enqueued, delivery.take());
                    if was_empty {
                        wake(&entry, &mut guard);
                    }
                    self.metrics().add_received(1);
                    return Ok(true);
                }
            }
            space.await;
        }
    }

    /// Waits until every dispatched event has been handled (including its retries and
    /// dead letter) or discarded. Events queued for a stream subscription count as
    /// handled: they wait for the reader. Must not be called from a handler.
    pub async fn flush(&self) {
        loop {
            let entries: Vec<Arc<SubEntry>> = self.shared.read().entries().cloned().collect();
            let busy = entries
                .iter()
                .find(|e| matches!(e.kind, SubscriberKind::Handler(_)) && !e.mailbox.is_idle());
            let Some(busy) = busy else {
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
            ctx.cancel_entry(entry, EndReason::Closed);
        }
        // Running calls end by themselves within their timeout; the margin covers a
        // worker that was waiting for a concurrency slot.
        let longest = workers
            .iter()
            .filter_map(|(e, _)| e.options.handler_timeout)
            .max()
            .unwrap_or_default();
        let stop_deadline = Instant::now() + longest + Duration::from_millis(100);
        for (_, handle) in &mut workers {
            if tokio::time::timeout_at(stop_deadline, &mut *handle)
                .await
                .is_err()
            {
                handle.abort();
            }
        }
        // Streams keep what is queued for their reader; every subscription has ended.
        for entry in &entries {
            entry.end(EndReason::Closed);
        }
        tracing::debug!("dispatcher closed");
    }
}

/// Wakes the consumer of `target`, whose queue just stopped being empty. A worker only
/// parks on an empty queue; waking one that is busy leaves a permit behind, which costs
/// it one extra look at its queue.
fn wake(target: &SubEntry, guard: &mut MailboxState) {
    match target.kind {
        SubscriberKind::Handler(_) => target.mailbox.ready.notify_one(),
        SubscriberKind::Stream => guard.wake_reader(),
    }
}

impl Ctx {
    /// Marks `entry` cancelled, discards (and counts) its queue, and records why.
    fn cancel_entry(&self, entry: &SubEntry, reason: EndReason) {
        entry.cancelled.store(true, Ordering::Release);
        let discarded = entry.mailbox.set_status(Status::Cancelled);
        if discarded > 0 {
            self.metrics.add_dropped(discarded as u64);
        }
        entry.end(reason);
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

    fn transport(&self) -> Option<Arc<dyn Transport>> {
        self.transport.get().and_then(Weak::upgrade)
    }

    /// The one way a subscription ends (except close, which ends them all): leaves the
    /// index, stops delivery, discards and counts its queue, records `reason`. Returns
    /// whether it was live (and so needs its server side released).
    fn end(&self, entry: &SubEntry, reason: EndReason) -> bool {
        let removed = self.unregister(entry, &reason);
        self.ctx.cancel_entry(entry, reason);
        removed
    }

    /// The registry half of [`end`](Self::end): removes `entry` from the index and
    /// counts it; whether it was there.
    fn unregister(&self, entry: &SubEntry, reason: &EndReason) -> bool {
        let removed = self.write().remove(entry.id).is_some();
        if removed {
            self.ctx.metrics.add_subscriptions(-1);
            tracing::debug!(sub = %entry.id, pattern = entry.pattern.as_str(), %reason, "unsubscribed");
        }
        removed
    }

    /// Hands the server-side release of `id` to the releaser task.
    fn release_soon(&self, id: SubscriptionId) {
        if self.transport.get().is_some() {
            // Fails only once the releaser is gone with the runtime: nothing to release then.
            let _ = self.releases.send(id);
        }
    }

    /// Called by a worker whose handler failed finally `failures` times in a row.
    fn remove_failing(&self, entry: &SubEntry, failures: u32) {
        let reason = EndReason::Removed { failures };
        if !self.unregister(entry, &reason) {
            return; // cancelled concurrently
        }
        // Counted before the end is announced: whoever awaits it sees the count.
        self.ctx.metrics.add_auto_unsubscribed(1);
        self.ctx.cancel_entry(entry, reason);
        tracing::error!(
            sub = %entry.id,
            pattern = entry.pattern.as_str(),
            failures,
            "handler failed too many times in a row: unsubscribed automatically"
        );
        self.release_soon(entry.id);
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

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
