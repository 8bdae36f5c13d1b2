//! The task that runs one subscription's handler: one call at a time, with a timeout,
//! panic isolation, retries with backoff, dead letters and consecutive-failure tracking.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::{Pin, pin},
    sync::{Arc, Weak},
    time::Duration,
};

use futures_util::{FutureExt, future::CatchUnwind};
use tokio::time::Instant;

use super::{Ctx, Dispatcher, Shared, limit::Slot, mailbox::Status, registry::SubEntry};
use crate::{
    dead_letter::{self, Failure},
    delivery::CallContext,
    durable::DurableDelivery,
    error::BoxError,
    event::Event,
    handler::Handler,
    metrics::Outcome as Counted,
    options::OnMaxFailures,
    subscription::SubscriptionId,
    topic::validate_topic,
};

/// The subscription whose handler is running in the current task, if any.
pub(crate) fn current_subscription() -> Option<SubscriptionId> {
    CallContext::with(|ctx| ctx.subscription)
}

/// How one handler call ended.
enum Outcome {
    Success,
    Failed(BoxError),
    TimedOut(Duration),
    Panicked(String),
}

/// Starts a subscription's worker: what a [`Subscriber`](crate::Subscriber) of a
/// handler carries, its handler's type erased once per subscription.
pub(crate) trait StartWorker: Send + Sync + 'static {
    /// Starts the worker of `entry` and stores its handle in the entry.
    fn start(&self, entry: &Arc<SubEntry>, max_attempts: u32, ctx: Arc<Ctx>, shared: Weak<Shared>);
}

/// The [`StartWorker`] of a handler of type `H`: the worker it starts is built for `H`,
/// so it awaits the handler's future in place.
pub(crate) struct Typed<H>(pub(crate) Arc<H>);

impl<H: Handler> StartWorker for Typed<H> {
    fn start(&self, entry: &Arc<SubEntry>, max_attempts: u32, ctx: Arc<Ctx>, shared: Weak<Shared>) {
        spawn(entry, self.0.clone(), max_attempts, ctx, shared);
    }
}

/// Starts the worker of `entry` and stores its handle in the entry.
fn spawn<H: Handler>(
    entry: &Arc<SubEntry>,
    handler: Arc<H>,
    max_attempts: u32,
    ctx: Arc<Ctx>,
    shared: Weak<Shared>,
) {
    let call = Arc::new(CallContext::new(
        entry.id,
        entry.group.clone(),
        max_attempts,
        entry.options.handler_timeout,
    ));
    let worker = entry.clone();
    let handle = tokio::spawn(CallContext::scope(call.clone(), async move {
        let mut worker_state = Worker {
            entry: &worker,
            ctx: &ctx,
            call,
            shared,
            random: Random::seeded(),
        };
        worker_state.run(handler.as_ref()).await;
        {
            let mut state = worker.mailbox.lock();
            state.busy = false;
        }
        worker.mailbox.idle.notify_waiters();
        ctx.metrics.detach(worker.seq);
    }));
    *entry
        .worker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
}

/// A worker's state. Only the methods that call the handler are generic over its type.
struct Worker<'a> {
    entry: &'a SubEntry,
    ctx: &'a Ctx,
    /// The context behind `Delivery::current` (also the task-local of this task).
    call: Arc<CallContext>,
    shared: Weak<Shared>,
    random: Random,
}

/// Whether the worker goes on after an event.
enum Next {
    Continue,
    Stop,
}

/// How the delivery of one queued event ended.
enum Handled {
    /// The handler succeeded.
    Done,
    /// The attempt failed; the server will deliver the event again (durable delivery).
    Retrying,
    /// The last attempt failed (the event was dead-lettered or given up).
    GaveUp,
    /// The subscription ended while the event waited for its call.
    Abandoned,
}

impl Worker<'_> {
    async fn run<H: Handler>(&mut self, handler: &H) {
        let (entry, ctx) = (self.entry, self.ctx);
        let mut consecutive_failures = 0u32;
        // The concurrency slot of the last call, kept for the next one while nobody
        // waits for a slot (see `end_success`); given back before parking.
        let mut held: Option<Slot<'_>> = None;
        loop {
            let next = {
                let mut state = entry.mailbox.lock();
                match state.status {
                    Status::Cancelled => return,
                    Status::Open | Status::Draining => {}
                }
                let was_full = state.queue.len() >= entry.options.queue_maxsize;
                let item = state.queue.pop();
                // Busy until the next look at the queue, so that `flush` waits for the
                // call, its retries, its dead letter and an automatic unsubscribe.
                state.busy = item.is_some();
                match item {
                    Some(item) => Some((item, was_full)),
                    None if state.status == Status::Draining => return,
                    None => None,
                }
            };
            let Some((item, was_full)) = next else {
                held = None;
                entry.mailbox.idle.notify_waiters();
                entry.mailbox.ready.notified().await;
                continue;
            };
            if was_full {
                entry.mailbox.space.notify_waiters();
            }
            let handled = match item.durable {
                // The first attempt of an in-process event: when a concurrency slot is
                // free (the common case) the call happens right here, without building
                // the state of an `attempt` future; `attempt` does the rest.
                None => {
                    let first = match held.take().or_else(|| ctx.concurrency.try_enter()) {
                        Some(_) if entry.is_cancelled() => None,
                        Some(slot) => {
                            self.begin_call(1);
                            let outcome = match start(handler, &item.event) {
                                Err(panicked) => panicked,
                                Ok(call) => {
                                    let mut call = pin!(call);
                                    match call.as_mut().now_or_never() {
                                        // Succeeded on its first poll: the common case.
                                        Some(Ok(Ok(()))) => {
                                            held = self.end_success(slot, item.enqueued);
                                            consecutive_failures = 0;
                                            continue;
                                        }
                                        Some(Ok(Err(error))) => Outcome::Failed(error),
                                        Some(Err(panic)) => {
                                            Outcome::Panicked(panic_message(panic.as_ref()))
                                        }
                                        None => wait(call).await,
                                    }
                                }
                            };
                            Some(self.end_call(slot, &item.event, outcome, item.enqueued, 1))
                        }
                        None => self.attempt(handler, &item.event, item.enqueued, 1).await,
                    };
                    match first {
                        None => Handled::Abandoned,
                        Some(None) => Handled::Done,
                        Some(Some(error)) => {
                            self.deliver(handler, &item.event, item.enqueued, error)
                                .await
                        }
                    }
                }
                Some(durable) => {
                    held = None;
                    self.deliver_durable(handler, &item.event, item.enqueued, *durable)
                        .await
                }
            };
            match handled {
                Handled::Done => {
                    consecutive_failures = 0;
                    continue;
                }
                Handled::Retrying => continue,
                Handled::GaveUp => {}
                Handled::Abandoned => {
                    self.ctx.metrics.add_dropped(1);
                    return;
                }
            }
            consecutive_failures += 1;
            if consecutive_failures < entry.options.max_failures {
                continue;
            }
            match self.on_max_failures(consecutive_failures).await {
                Next::Continue => consecutive_failures = 0,
                Next::Stop => return,
            }
        }
    }

    /// Retries `event`, whose first attempt failed with `error`, until a call succeeds
    /// or the retry policy gives up, then dead-letters it if the subscription says so.
    async fn deliver<H: Handler>(
        &mut self,
        handler: &H,
        event: &Event,
        enqueued: Option<Instant>,
        mut error: String,
    ) -> Handled {
        let entry = self.entry;
        let mut attempt = 1;
        loop {
            if attempt >= entry.options.retry.max_attempts {
                self.dead_letter(event, &error, attempt).await;
                return Handled::GaveUp;
            }
            let delay = self.backoff(event, attempt);
            if !self.sleep(delay).await {
                return Handled::Abandoned;
            }
            attempt += 1;
            match self.attempt(handler, event, enqueued, attempt).await {
                None => return Handled::Abandoned,
                Some(None) => return Handled::Done,
                Some(Some(failed)) => error = failed,
            }
        }
    }

    /// Calls the handler once with an event fetched by a durable backend and settles
    /// it on the server: ack, retry there after the backoff, or dead-letter there.
    async fn deliver_durable<H: Handler>(
        &mut self,
        handler: &H,
        event: &Event,
        enqueued: Option<Instant>,
        durable: DurableDelivery,
    ) -> Handled {
        let entry = self.entry;
        let attempt = durable.attempt.max(1);
        let Some(error) = self.attempt(handler, event, enqueued, attempt).await else {
            return Handled::Abandoned;
        };
        let (settled, handled) = match error {
            None if durable.settle.ack_in_background() => {
                let (sub, event_id) = (entry.id, event.id);
                tokio::spawn(async move {
                    if let Err(e) = durable.settle.ack().await {
                        tracing::warn!(%sub, %event_id, error = %e,
                            "could not settle a durable delivery: it will be delivered again");
                    }
                });
                (Ok(()), Handled::Done)
            }
            None => (durable.settle.ack().await, Handled::Done),
            Some(error) if attempt < entry.options.retry.max_attempts => {
                let delay = self.backoff(event, attempt);
                (durable.settle.retry(delay, &error).await, Handled::Retrying)
            }
            Some(error) => {
                let letter =
                    dead_letter::build(event, event.topic.clone(), &self.failure(&error, attempt));
                let settled = durable.settle.dead_letter(letter).await;
                if settled.is_ok() {
                    entry.stats.record_dead_letter();
                }
                (settled, Handled::GaveUp)
            }
        };
        if let Err(e) = settled {
            tracing::warn!(sub = %entry.id, event_id = %event.id, error = %e,
                "could not settle a durable delivery: it will be delivered again");
        }
        handled
    }

    /// One handler call: `None` if the subscription ended while waiting for a slot,
    /// `Some(None)` on success, `Some(Some(error))` on failure.
    async fn attempt<H: Handler>(
        &self,
        handler: &H,
        event: &Event,
        enqueued: Option<Instant>,
        attempt: u32,
    ) -> Option<Option<String>> {
        let slot = match self.ctx.concurrency.try_enter() {
            Some(slot) => slot,
            None => self.slot().await?,
        };
        if self.entry.is_cancelled() {
            return None;
        }
        self.begin_call(attempt);
        let outcome = match start(handler, event) {
            Err(panicked) => panicked,
            Ok(call) => {
                let mut call = pin!(call);
                // Most handlers finish on their first poll; only those that do not need
                // a timer. (A future polled here with a no-op waker registers the real
                // one on its next poll, which `wait` makes at once.)
                match call.as_mut().now_or_never() {
                    Some(result) => Outcome::of(result),
                    None => wait(call).await,
                }
            }
        };
        Some(self.end_call(slot, event, outcome, enqueued, attempt))
    }

    /// Marks the start of attempt `attempt` of a call.
    #[inline]
    fn begin_call(&self, attempt: u32) {
        self.call.begin(attempt);
        self.entry.stats.set_in_flight(true);
    }

    /// [`end_call`](Self::end_call) of a call that succeeded. Keeps the call's
    /// concurrency slot for the worker's next call unless some worker waits for one:
    /// a slot held between two calls of one subscription is never a second call at
    /// once, and a waiter gets it at the end of the current call at the latest.
    fn end_success<'s>(&self, slot: Slot<'s>, enqueued: Option<Instant>) -> Option<Slot<'s>> {
        let stats = &self.entry.stats;
        stats.set_in_flight(false);
        let slot = slot.keep_if_uncontended();
        stats.record(Counted::Delivered, enqueued.map(|t| t.elapsed()));
        slot
    }

    /// Marks the end of a call: gives its slot back and counts its outcome; returns the
    /// failure's description, if it failed.
    fn end_call(
        &self,
        slot: Slot<'_>,
        event: &Event,
        outcome: Outcome,
        enqueued: Option<Instant>,
        attempt: u32,
    ) -> Option<String> {
        self.entry.stats.set_in_flight(false);
        drop(slot);
        record(
            self.entry,
            event,
            outcome,
            enqueued.map(|t| t.elapsed()),
            attempt,
        )
    }

    /// The delay before retrying after failed attempt `attempt`; counts the retry.
    fn backoff(&mut self, event: &Event, attempt: u32) -> Duration {
        let entry = self.entry;
        let delay = entry
            .options
            .retry
            .backoff(attempt, self.random.next_unit());
        entry.stats.record_retry();
        tracing::debug!(sub = %entry.id, event_id = %event.id, attempt, ?delay, "retrying");
        delay
    }

    /// What this subscription contributes to a dead letter.
    fn failure<'e>(&'e self, error: &'e str, attempts: u32) -> Failure<'e> {
        let entry = self.entry;
        Failure {
            error,
            attempts,
            pattern: entry.pattern.as_str(),
            group: entry.group.as_deref(),
            subscription: entry.id,
        }
    }

    /// A concurrency slot, or `None` if the subscription ends while it waits (so a
    /// cancel never waits on a worker that waits for a slot).
    async fn slot(&self) -> Option<Slot<'_>> {
        if let Some(slot) = self.ctx.concurrency.try_enter() {
            return Some(slot);
        }
        tokio::select! {
            slot = self.ctx.concurrency.enter() => Some(slot),
            () = self.entry.wait_ended() => None,
        }
    }

    /// Sleeps for `delay` unless the subscription is cancelled first (`false`).
    async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => !self.entry.is_cancelled(),
            () = self.entry.wait_ended() => false,
        }
    }

    /// Sends `event` to the subscription's dead-letter topic, if it has one.
    async fn dead_letter(&self, event: &Event, error: &str, attempts: u32) {
        let (entry, ctx) = (self.entry, self.ctx);
        let Some(topic) = entry.options.dead_letter.topic_for(&event.topic) else {
            return;
        };
        let (sub, event_id) = (entry.id, event.id);
        if dead_letter::is_dead_letter(event) {
            ctx.metrics.add_dropped(1);
            tracing::warn!(%sub, %event_id, "a dead letter failed again: dropped");
            return;
        }
        if let Err(e) = validate_topic(&topic) {
            ctx.metrics.add_dropped(1);
            tracing::error!(%sub, %event_id, error = %e, "cannot dead-letter: dropped");
            return;
        }
        let letter = dead_letter::build(event, topic, &self.failure(error, attempts));
        let Some(shared) = self.shared.upgrade() else {
            ctx.metrics.add_dropped(1);
            return;
        };
        let sent = match shared.transport() {
            Some(transport) => transport.publish(letter).await,
            None => {
                let dispatcher = Dispatcher { shared };
                tokio::select! {
                    sent = dispatcher.dispatch(letter) => sent,
                    () = entry.wait_ended() => Err(crate::Error::Closed),
                }
            }
        };
        match sent {
            Ok(()) => {
                entry.stats.record_dead_letter();
                tracing::debug!(%sub, %event_id, "dead-lettered");
            }
            Err(e) => {
                ctx.metrics.add_dropped(1);
                tracing::error!(%sub, %event_id, error = %e, "dead letter not sent: dropped");
            }
        }
    }

    /// Applies the subscription's `on_max_failures` after `failures` final failures in
    /// a row.
    async fn on_max_failures(&self, failures: u32) -> Next {
        let entry = self.entry;
        match entry.options.on_max_failures {
            OnMaxFailures::Keep => Next::Continue,
            OnMaxFailures::Remove => {
                if let Some(shared) = self.shared.upgrade() {
                    shared.remove_failing(entry, failures);
                }
                Next::Stop
            }
            OnMaxFailures::Pause => {
                let pause = entry.options.pause;
                entry.stats.record_pause();
                tracing::warn!(sub = %entry.id, pattern = entry.pattern.as_str(), failures, ?pause,
                    "handler failed too many times in a row: paused");
                if !self.sleep(pause).await {
                    return Next::Stop;
                }
                tracing::info!(sub = %entry.id, pattern = entry.pattern.as_str(), "resumed after pause");
                Next::Continue
            }
        }
    }
}

/// A handler call's result, with a panic caught.
type Caught = std::thread::Result<Result<(), BoxError>>;

/// Builds the future of a handler call with `event`, the handler's future awaited in
/// place (inside this worker's own future: no allocation per call) and a panic while
/// polling it caught; a panic while building it is an outcome at once.
fn start<H: Handler>(
    handler: &H,
    event: &Event,
) -> Result<CatchUnwind<AssertUnwindSafe<H::Future>>, Outcome> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(event.clone()))) {
        Ok(future) => Ok(AssertUnwindSafe(future).catch_unwind()),
        Err(panic) => Err(Outcome::Panicked(panic_message(panic.as_ref()))),
    }
}

impl Outcome {
    fn of(result: Caught) -> Self {
        match result {
            Ok(Ok(())) => Outcome::Success,
            Ok(Err(error)) => Outcome::Failed(error),
            Err(panic) => Outcome::Panicked(panic_message(panic.as_ref())),
        }
    }
}

/// Awaits a handler call that did not finish on its first poll, under the call's
/// timeout.
async fn wait(call: Pin<&mut impl Future<Output = Caught>>) -> Outcome {
    match CallContext::with(CallContext::deadline).flatten() {
        None => Outcome::of(call.await),
        Some(deadline) => match tokio::time::timeout_at(deadline, call).await {
            Ok(result) => Outcome::of(result),
            Err(_) => {
                let after = CallContext::with(|c| c.timeout()).flatten();
                Outcome::TimedOut(after.unwrap_or_default())
            }
        },
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Counts and logs one outcome; returns the failure's description, if it failed.
fn record(
    entry: &SubEntry,
    event: &Event,
    outcome: Outcome,
    latency: Option<Duration>,
    attempt: u32,
) -> Option<String> {
    let stats = &entry.stats;
    match outcome {
        Outcome::Success => {
            stats.record(Counted::Delivered, latency);
            None
        }
        Outcome::Failed(error) => {
            stats.record(Counted::Failed, latency);
            let (sub, pattern, event_id, topic) = log_fields(entry, event);
            tracing::warn!(%sub, pattern, %event_id, topic, attempt, error = %error, "handler failed");
            Some(error.to_string())
        }
        Outcome::TimedOut(after) => {
            stats.record(Counted::TimedOut, latency);
            let (sub, pattern, event_id, topic) = log_fields(entry, event);
            let timeout_s = after.as_secs_f64();
            tracing::warn!(%sub, pattern, %event_id, topic, attempt, timeout_s, "handler timed out and was cancelled");
            Some(format!("timed out after {timeout_s} s"))
        }
        Outcome::Panicked(message) => {
            stats.record(Counted::Panicked, latency);
            let (sub, pattern, event_id, topic) = log_fields(entry, event);
            tracing::error!(%sub, pattern, %event_id, topic, attempt, panic = %message, "handler panicked");
            Some(format!("panicked: {message}"))
        }
    }
}

/// What a log line about one handler call names: subscription, pattern, event, topic.
fn log_fields<'a>(
    entry: &'a SubEntry,
    event: &'a Event,
) -> (SubscriptionId, &'a str, uuid::Uuid, &'a str) {
    (
        entry.id,
        entry.pattern.as_str(),
        event.id,
        event.topic.as_str(),
    )
}

/// A small, fast random source for retry jitter (SplitMix64), seeded per worker.
struct Random(u64);

impl Random {
    fn seeded() -> Self {
        Self(uuid::Uuid::new_v4().as_u64_pair().0)
    }

    /// A uniform number in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
