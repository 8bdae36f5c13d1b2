//! The task that runs one subscription's handler: one call at a time, with a timeout,
//! panic isolation and consecutive-failure tracking.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Weak},
    time::Duration,
};

use super::{Ctx, Shared, mailbox::Status, registry::SubEntry};
use crate::{
    error::BoxError, event::Event, handler::Handler, metrics::Outcome as Counted,
    subscription::SubscriptionId,
};
use futures_util::FutureExt;

tokio::task_local! {
    /// The subscription whose worker is running the current task, so that a handler
    /// cancelling its own subscription or closing the bus does not wait for itself.
    static CURRENT_SUBSCRIPTION: SubscriptionId;
}

/// The subscription whose handler is running in the current task, if any.
pub(crate) fn current_subscription() -> Option<SubscriptionId> {
    CURRENT_SUBSCRIPTION.try_with(|id| *id).ok()
}

/// How one handler call ended.
enum Outcome {
    Success,
    Failed(BoxError),
    TimedOut,
    Panicked(String),
}

/// Starts the worker of `entry` and stores its handle in the entry.
pub(crate) fn spawn(entry: &Arc<SubEntry>, ctx: Arc<Ctx>, shared: Weak<Shared>) {
    let id = entry.id;
    let worker = entry.clone();
    let handle = tokio::spawn(CURRENT_SUBSCRIPTION.scope(id, async move {
        run(&worker, &ctx, shared).await;
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

async fn run(entry: &SubEntry, ctx: &Ctx, shared: Weak<Shared>) {
    let mut consecutive_failures = 0u32;
    loop {
        let next = {
            let mut state = entry.mailbox.lock();
            match state.status {
                Status::Cancelled => return,
                Status::Open | Status::Draining => {}
            }
            let was_full = state.queue.len() >= ctx.config.queue_maxsize;
            let item = state.queue.pop();
            // Busy until the next look at the queue, so that `flush` waits for the call
            // and for an automatic unsubscribe it may cause.
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
        let slot = ctx.concurrency.enter().await;
        if entry.is_cancelled() {
            ctx.metrics.add_dropped(1);
            return;
        }
        entry.stats.set_in_flight(true);
        let outcome = call(
            entry.handler.as_ref(),
            item.event.clone(),
            ctx.handler_timeout,
        )
        .await;
        entry.stats.set_in_flight(false);
        drop(slot);
        let latency = item.enqueued.elapsed();
        if !record(entry, ctx, &item.event, outcome, latency) {
            consecutive_failures = 0;
            continue;
        }
        consecutive_failures += 1;
        if consecutive_failures >= ctx.config.handler_max_failures {
            if let Some(shared) = shared.upgrade() {
                shared.auto_unsubscribe(entry, consecutive_failures);
            }
            return;
        }
    }
}

/// Calls the handler, turning a panic (while building or polling the future) and the
/// timeout into outcomes.
async fn call(handler: &dyn Handler, event: Event, timeout: Duration) -> Outcome {
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
        None => match tokio::time::timeout(timeout, guarded).await {
            Ok(result) => result,
            Err(_) => return Outcome::TimedOut,
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

/// Counts and logs one outcome; returns whether it was a failure.
fn record(entry: &SubEntry, ctx: &Ctx, event: &Event, outcome: Outcome, latency: Duration) -> bool {
    let (sub, pattern) = (entry.id, entry.pattern.as_str());
    let (event_id, topic) = (event.id, event.topic.as_str());
    let stats = &entry.stats;
    match outcome {
        Outcome::Success => {
            stats.record(Counted::Delivered, latency);
            return false;
        }
        Outcome::Failed(error) => {
            stats.record(Counted::Failed, latency);
            tracing::warn!(%sub, pattern, %event_id, topic, error = %error, "handler failed");
        }
        Outcome::TimedOut => {
            stats.record(Counted::TimedOut, latency);
            let timeout_s = ctx.config.handler_timeout_seconds;
            tracing::warn!(%sub, pattern, %event_id, topic, timeout_s, "handler timed out and was cancelled");
        }
        Outcome::Panicked(message) => {
            stats.record(Counted::Panicked, latency);
            tracing::error!(%sub, pattern, %event_id, topic, panic = %message, "handler panicked");
        }
    }
    true
}
