//! How a durable delivery is settled on the server: the
//! [`Settle`](event_bus_core::durable::Settle) of one stream entry.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use event_bus_core::{Error, Event, durable::Settle, envelope};
use redis::Value;
use tokio::time::Instant;

use super::{consumer::Ctx, entry};

/// One entry handed to the dispatcher. Dropped unsettled, it stops having its lease
/// extended, so the group gets it again once the lease expires.
pub(crate) struct StreamSettle {
    ctx: Arc<Ctx>,
    id: String,
    /// Handed to the acker, which forgets the entry once the `XACK` is done (so a
    /// re-read of pending entries meanwhile does not deliver it again).
    acked: bool,
}

impl StreamSettle {
    pub(crate) fn new(ctx: Arc<Ctx>, id: String) -> Self {
        Self {
            ctx,
            id,
            acked: false,
        }
    }
}

impl Drop for StreamSettle {
    fn drop(&mut self) {
        if !self.acked {
            self.ctx.in_flight.remove(&self.id);
        }
    }
}

#[async_trait]
impl Settle for StreamSettle {
    /// Queues the `XACK` (sent in batches).
    async fn ack(mut self: Box<Self>) -> Result<(), Error> {
        let sent = self.ctx.acks.send((self.id.clone(), true));
        self.acked = sent.is_ok();
        sent.map_err(|_| Error::Closed)
    }

    /// Makes the entry claimable after `delay`: `XCLAIM ... IDLE <lease - delay> JUSTID`
    /// (the delivery count is not bumped), so whichever member claims expired entries
    /// first after `delay` (this consumer included: it claims at that time) delivers it
    /// again. A delay longer than the lease is cut to the lease.
    async fn retry(self: Box<Self>, delay: Duration, _error: &str) -> Result<(), Error> {
        let Some(streams) = self.ctx.streams.upgrade() else {
            return Err(Error::Closed);
        };
        let lease = streams.config.lease();
        let idle = lease.saturating_sub(delay);
        let ctx = &self.ctx;
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&ctx.stream)
            .arg(&ctx.group)
            .arg(&ctx.name)
            .arg(0)
            .arg(&self.id);
        cmd.arg("IDLE").arg(idle.as_millis() as u64).arg("JUSTID");
        streams
            .commands
            .run::<Value>("schedule a retry", &cmd)
            .await?;
        ctx.claim_by(Instant::now() + delay.min(lease));
        Ok(())
    }

    /// `MULTI`, `XADD` of `letter` to the group's dead-letter stream, `XACK`, `EXEC`.
    async fn dead_letter(self: Box<Self>, letter: Event) -> Result<(), Error> {
        let Some(streams) = self.ctx.streams.upgrade() else {
            return Err(Error::Closed);
        };
        let ctx = &self.ctx;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XADD")
            .arg(streams.keys.dead(&ctx.group))
            .arg("*")
            .arg(entry::TOPIC)
            .arg(&letter.topic)
            .arg(entry::ENVELOPE)
            .arg(envelope::encode(&letter)?)
            .ignore();
        pipe.cmd("XACK")
            .arg(&ctx.stream)
            .arg(&ctx.group)
            .arg(&self.id)
            .ignore();
        streams
            .commands
            .run_pipe::<Value>("dead-letter", &pipe)
            .await?;
        Ok(())
    }
}
