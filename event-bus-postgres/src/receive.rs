//! The receive loop: notifications in, events to the dispatcher.
//!
//! Notifications are taken in batches of what has already arrived (up to 256), decoded,
//! checked against the channel they came on, large-payload references resolved in one
//! query per batch, and dispatched in arrival order. An event that arrived on a topic's
//! channel goes only to exact subscriptions, one that arrived on the pattern channel
//! only to wildcard subscriptions, so a bus hearing an event on both delivers it once
//! per subscription. Anything that is not a valid event is logged, counted as
//! malformed and skipped; it never stops the loop.
//!
//! While the bus closes, the loop keeps dispatching what the connection task hands
//! over; an event still waiting for queue space at the drain deadline is counted in
//! `dropped` (once per subscription it was for) instead of being lost uncounted.

use std::{collections::HashSet, sync::Arc};

use event_bus_core::{
    Dispatcher, Error, Event, Pattern,
    envelope::{WIRE_VERSION, decode},
    log_limit::{Excerpt, LogLimiter},
    topic::validate_topic,
};
use tokio::sync::mpsc;
use tokio_postgres::Notification;

use crate::{
    durable::Durable,
    large::{LargeRef, LargeStore},
    listener::{Incoming, Listener, StopSignal, drain_deadline_passed},
    publisher::Pool,
};

const BATCH: usize = 256;

/// What the receive loop needs besides the listener.
pub(crate) struct ReceiveCtx {
    pub(crate) dispatcher: Dispatcher,
    pub(crate) pool: Arc<Pool>,
    pub(crate) store: Arc<LargeStore>,
    pub(crate) max_bytes: usize,
    /// Bounds the warnings that received notifications cause, malformed ones and
    /// failed large-payload lookups together (see [`event_bus_core::log_limit`]).
    pub(crate) wire_warnings: LogLimiter,
    /// The durable mode, woken by notifications on its channel.
    pub(crate) durable: Option<Arc<Durable>>,
}

/// Why [`pump`] returned.
pub(crate) enum Pumped {
    /// The dispatcher was closed: stop for good.
    Stop,
    /// The connection was lost, for this reason.
    Lost(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Arrived on a topic's channel: for exact subscriptions.
    Exact,
    /// Arrived on the pattern channel: for wildcard subscriptions.
    Pattern,
}

enum Item {
    Event(Event, Route),
    Ref(LargeRef, Route),
    Flush(String),
    Wake(String),
    Skip,
}

/// Receives and dispatches until the connection is lost or the dispatcher closes.
pub(crate) async fn pump(
    listener: &Listener,
    ctx: &ReceiveCtx,
    rx: &mut mpsc::Receiver<Incoming>,
) -> Pumped {
    let mut batch = Vec::with_capacity(BATCH);
    let mut stop = listener.stop_signal();
    loop {
        let Some(first) = rx.recv().await else {
            return Pumped::Lost("the connection task ended".to_owned());
        };
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut lost = None;
        let mut items = Vec::with_capacity(batch.len());
        for message in batch.drain(..) {
            match message {
                Incoming::Note(n) => items.push(classify(listener, ctx, &n)),
                Incoming::Lost(reason) => {
                    lost = Some(reason);
                    break;
                }
            }
        }
        resolve_refs(ctx, &mut items).await;
        for item in items {
            match item {
                Item::Event(event, route) => {
                    if dispatch(ctx, &mut stop, event, route).await.is_err() {
                        return Pumped::Stop;
                    }
                }
                Item::Flush(token) => listener.flush_arrived(&token),
                Item::Wake(groups) => {
                    if let Some(durable) = &ctx.durable {
                        durable.wake(&groups);
                    }
                }
                Item::Ref(..) | Item::Skip => {}
            }
        }
        if ctx.dispatcher.is_closed() {
            return Pumped::Stop;
        }
        if let Some(reason) = lost {
            return Pumped::Lost(reason);
        }
    }
}

/// Dispatches one received event to the subscriptions of its route. Once the bus is
/// closing and the drain deadline has passed, an event still waiting for queue space
/// is counted in `dropped` instead. `Err` means the dispatcher is closed.
async fn dispatch(
    ctx: &ReceiveCtx,
    stop: &mut StopSignal,
    event: Event,
    route: Route,
) -> Result<(), Error> {
    let exact = route == Route::Exact;
    let for_route = move |p: &Pattern| p.literal().is_some() == exact;
    let topic = event.topic.clone();
    // Biased: the dispatch is polled first, so it is counted as received and, when
    // there is room, queued even after the deadline.
    tokio::select! {
        biased;
        sent = ctx.dispatcher.dispatch_where(event, for_route) => match sent {
            Ok(()) => {}
            Err(Error::Closed) => return Err(Error::Closed),
            Err(e) => tracing::debug!(error = %e, "received event not dispatched"),
        },
        // Dropping the dispatch queues the event nowhere: queuing is all or nothing.
        () = drain_deadline_passed(stop) => {
            let targets = ctx
                .dispatcher
                .patterns()
                .iter()
                .filter(|p| for_route(p) && p.matches(&topic))
                .count();
            ctx.dispatcher.metrics().add_dropped(targets as u64);
            tracing::debug!(%topic, targets, "bus closing: received event dropped");
        }
    }
    Ok(())
}

fn classify(listener: &Listener, ctx: &ReceiveCtx, n: &Notification) -> Item {
    let channels = &listener.channels;
    let channel = n.channel();
    if channel == channels.flush() {
        return Item::Flush(n.payload().to_owned());
    }
    if ctx.durable.as_ref().is_some_and(|d| d.channel() == channel) {
        return Item::Wake(n.payload().to_owned());
    }
    let route = if channel == channels.all() {
        Route::Pattern
    } else {
        Route::Exact
    };
    let belongs =
        |topic: &str| route == Route::Pattern || channels.topic_unchecked(topic) == channel;
    match decode(n.payload().as_bytes(), ctx.max_bytes) {
        Ok(event) if belongs(&event.topic) => Item::Event(event, route),
        Ok(event) => malformed(
            ctx,
            channel,
            &format!("topic {:?} does not belong to this channel", event.topic),
        ),
        Err(e) => match serde_json::from_str::<LargeRef>(n.payload()) {
            Ok(r)
                if r.v == WIRE_VERSION && validate_topic(&r.topic).is_ok() && belongs(&r.topic) =>
            {
                Item::Ref(r, route)
            }
            _ => malformed(ctx, channel, &e.to_string()),
        },
    }
}

/// Replaces every reference with the stored event it points to.
async fn resolve_refs(ctx: &ReceiveCtx, items: &mut [Item]) {
    let ids: HashSet<_> = items
        .iter()
        .filter_map(|i| match i {
            Item::Ref(r, _) => Some(r.id),
            _ => None,
        })
        .collect();
    if ids.is_empty() {
        return;
    }
    let ids: Vec<_> = ids.into_iter().collect();
    let stored = match ctx.store.fetch(&ctx.pool, &ids).await {
        Ok(stored) => stored,
        Err(e) => {
            if let Some(suppressed) = ctx.wire_warnings.check() {
                let count = ids.len();
                tracing::warn!(error = %e, count, suppressed, "fetching stored large payloads failed");
            }
            Default::default()
        }
    };
    for item in items.iter_mut() {
        let Item::Ref(r, route) = item else {
            continue;
        };
        let resolved = match stored
            .get(&r.id)
            .map(|s| decode(s.as_bytes(), ctx.max_bytes))
        {
            Some(Ok(event)) if event.topic == r.topic => Ok(event),
            Some(Ok(event)) => Err(format!(
                "stored payload {} has topic {:?}, reference says {:?}",
                r.id, event.topic, r.topic
            )),
            Some(Err(e)) => Err(format!("stored payload {}: {e}", r.id)),
            None => Err(format!(
                "stored payload {} not found (expired or never stored)",
                r.id
            )),
        };
        *item = match resolved {
            Ok(event) => Item::Event(event, *route),
            Err(reason) => malformed(ctx, "(large payload table)", &reason),
        };
    }
}

/// Counts a malformed notification (exactly) and logs it within the rate limit, with
/// an excerpt of the untrusted reason.
fn malformed(ctx: &ReceiveCtx, channel: &str, reason: &str) -> Item {
    ctx.dispatcher.metrics().add_malformed(1);
    if let Some(suppressed) = ctx.wire_warnings.check() {
        tracing::warn!(
            channel = %Excerpt(channel),
            reason = %Excerpt(reason),
            suppressed,
            "malformed notification dropped"
        );
    }
    Item::Skip
}
