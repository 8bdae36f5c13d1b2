//! The task that runs one subscription's handler: one call at a time, with a timeout,
//! panic isolation, retries with backoff, dead letters and consecutive-failure tracking.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Weak},
    time::Duration,
};

use futures_util::FutureExt;
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

/// Starts the worker of `entry` and stores its handle in the entry.
pub(crate) fn spawn(
    entry: &Arc<SubEntry>,
    handler: Arc<dyn Handler>,
    max_attempts: u32,
    ctx: Arc<Ctx>,
    shared: Weak<Shared>,
) {
    let call = CallContext::new(
        entry.id,
        entry.group.clone(),
        max_attempts,
        entry.options.handler_timeout,
    );
    let worker = entry.clone();
    let handle = tokio::spawn(call.scope(async move {
        let mut worker_state = Worker {
            entry: &worker,
            handler: handler.as_ref(),
            ctx: &ctx,
            shared,
            random: Random::seeded(),
        };
        worker_state.run().await;
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

struct Worker<'a> {
    entry: &'a SubEntry,
    handler: &'a dyn Handler,
    ctx: &'a Ctx,
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
    async fn run(&mut self) {
        let entry = self.entry;
        let mut consecutive_failures = 0u32;
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
                entry.mailbox.idle.notify_waiters();
                entry.mailbox.ready.notified().await;
                continue;
            };
            if was_full {
                entry.mailbox.space.notify_waiters();
            }
            let handled = match item.durable {
                None => self.deliver(&item.event, item.enqueued).await,
                Some(durable) => {
                    self.deliver_durable(&item.event, item.enqueued, *durable)
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

    /// Calls the handler with `event` until it succeeds or the retry policy gives up,
    /// then dead-letters it if the subscription says so.
    async fn deliver(&mut self, event: &Event, enqueued: Instant) -> Handled {
        let entry = self.entry;
        let mut attempt = 1;
        loop {
            let Some(error) = self.attempt(event, enqueued, attempt).await else {
                return Handled::Abandoned;
            };
            let Some(error) = error else {
                return Handled::Done;
            };
            if attempt >= entry.options.retry.max_attempts {
                self.dead_letter(event, &error, attempt).await;
                return Handled::GaveUp;
            }
            let delay = self.backoff(event, attempt);
            if !self.sleep(delay).await {
                return Handled::Abandoned;
            }
            attempt += 1;
        }
    }

    /// Calls the handler once with an event fetched by a durable backend and settles
    /// it on the server: ack, retry there after the backoff, or dead-letter there.
    async fn deliver_durable(
        &mut self,
        event: &Event,
        enqueued: Instant,
        durable: DurableDelivery,
    ) -> Handled {
        let entry = self.entry;
        let attempt = durable.attempt.max(1);
        let Some(error) = self.attempt(event, enqueued, attempt).await else {
            return Handled::Abandoned;
        };
        let (settled, handled) = match error {
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
    async fn attempt(
        &self,
        event: &Event,
        enqueued: Instant,
        attempt: u32,
    ) -> Option<Option<String>> {
        let entry = self.entry;
        let slot = self.slot().await?;
        if entry.is_cancelled() {
            return None;
        }
        CallContext::with(|call| call.begin(attempt));
        entry.stats.set_in_flight(true);
        let outcome = call(self.handler, event.clone()).await;
        entry.stats.set_in_flight(false);
        drop(slot);
        Some(record(entry, event, outcome, enqueued.elapsed(), attempt))
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

/// Calls the handler, turning a panic (while building or polling the future) and the
/// timeout into outcomes.
async fn call(handler: &dyn Handler, event: Event) -> Outcome {
    let future = match std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(event))) {
        Ok(future) => future,
        Err(panic) => return Outcome::Panicked(panic_message(panic.as_ref())),
    };
    let mut guarded = AssertUnwindSafe(future).catch_unwind();
    // Most handlers finish on their first poll; only those that do not need a timer.
    // (A future polled here with a no-op waker registers the real one on its next poll,
    // which the timeout makes at once.)
    let result = match (&mut guarded).now_or_never() {
        Some(result) => result,
        None => match CallContext::with(CallContext::deadline).flatten() {
            None => guarded.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, guarded).await {
                Ok(result) => result,
                Err(_) => {
                    let after = CallContext::with(|c| c.timeout()).flatten();
                    return Outcome::TimedOut(after.unwrap_or_default());
                }
            },
        },
    };
    match result {
        Ok(Ok(())) => Outcome::Success,
        Ok(Err(error)) => Outcome::Failed(error),
        Err(panic) => Outcome::Panicked(panic_message(panic.as_ref())),
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
    latency: Duration,
    attempt: u32,
) -> Option<String> {
    let (sub, pattern) = (entry.id, entry.pattern.as_str());
    let (event_id, topic) = (event.id, event.topic.as_str());
    let stats = &entry.stats;
    match outcome {
        Outcome::Success => {
            stats.record(Counted::Delivered, latency);
            None
        }
        Outcome::Failed(error) => {
            stats.record(Counted::Failed, latency);
            tracing::warn!(%sub, pattern, %event_id, topic, attempt, error = %error, "handler failed");
            Some(error.to_string())
        }
        Outcome::TimedOut(after) => {
            stats.record(Counted::TimedOut, latency);
            let timeout_s = after.as_secs_f64();
            tracing::warn!(%sub, pattern, %event_id, topic, attempt, timeout_s, "handler timed out and was cancelled");
            Some(format!("timed out after {timeout_s} s"))
        }
        Outcome::Panicked(message) => {
            stats.record(Counted::Panicked, latency);
            tracing::error!(%sub, pattern, %event_id, topic, attempt, panic = %message, "handler panicked");
            Some(format!("panicked: {message}"))
        }
    }
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
