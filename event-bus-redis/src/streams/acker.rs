//! Batched acknowledgements of one consumer: `XACK` of whatever accumulated while the
//! previous one was on its way.

use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::{
    Streams,
    consumer::{Ack, Ctx},
    leases::InFlight,
    stats::StreamStats,
};

/// What the acker needs of a consumer (not the consumer itself: the acker ends when
/// the consumer and its settle handles are gone).
pub(super) struct Acking {
    stream: String,
    group: String,
    in_flight: Arc<InFlight>,
}

impl Acking {
    /// What the acker of `ctx` needs.
    pub(super) fn of(ctx: &Ctx) -> Self {
        Self {
            stream: ctx.stream.clone(),
            group: ctx.group.clone(),
            in_flight: ctx.in_flight.clone(),
        }
    }
}

/// Acknowledges the ids it receives, in batches, until every sender is gone. An `XACK`
/// that fails is tried once more (it is idempotent) on a fresh connection.
pub(super) async fn ack_loop(
    streams: Weak<Streams>,
    acking: Acking,
    mut acks: mpsc::UnboundedReceiver<Ack>,
) {
    let Acking {
        stream,
        group,
        in_flight,
    } = acking;
    let mut batch = Vec::new();
    // Dropped once the batch is written (or given up): `flush` waits for them.
    let mut outstanding = Vec::new();
    let mut handled = 0;
    while let Some(first) = acks.recv().await {
        let mut next = Some(first);
        while let Some((id, was_handled, guard)) = next.take() {
            batch.push(id);
            outstanding.push(guard);
            handled += u64::from(was_handled);
            if batch.len() < 1000 {
                next = acks.try_recv().ok();
            }
        }
        let Some(streams) = streams.upgrade() else {
            return;
        };
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&stream).arg(&group).arg(&batch);
        let mut result = streams.commands.run::<u64>("acknowledge", &cmd).await;
        if result.is_err() {
            result = streams.commands.run::<u64>("acknowledge", &cmd).await;
        }
        match result {
            Ok(_) => StreamStats::add(&streams.stats.acked, handled),
            Err(e) => tracing::warn!(%group, entries = batch.len(), error = %e,
                "could not acknowledge: the entries will be delivered again after their lease"),
        }
        for id in batch.drain(..) {
            in_flight.remove(&id);
        }
        outstanding.clear();
        handled = 0;
    }
}
