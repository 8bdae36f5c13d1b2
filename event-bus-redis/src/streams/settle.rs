//! How a durable delivery is settled on the server: the
//! [`Settle`](event_bus_core::durable::Settle) of one stream entry.
//!
//! [`DeadLetter::Derived`]: event_bus_core::DeadLetter::Derived
//! [`DeadLetter::Topic`]: event_bus_core::DeadLetter::Topic

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use event_bus_core::{
    Error, Event, dead_letter, durable::Settle, envelope, options::DEAD_LETTER_PREFIX,
};
use redis::Value;
use tokio::time::Instant;

use super::{consumer::Ctx, entry, lock};

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
        self.acked = self.ctx.ack(self.id.clone(), true);
        if self.acked {
            Ok(())
        } else {
            Err(Error::Closed)
        }
    }

    /// Makes the entry claimable after `delay`: `XCLAIM ... IDLE <lease - delay> JUSTID`
    /// (the delivery count is not bumped), so whichever member claims expired entries
    /// first after `delay` (this consumer included: it claims at that time) delivers it
    /// again. Delays never exceed the lease: longer backoffs are refused at subscribe.
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
        let due = Instant::now() + delay.min(lease);
        lock(&ctx.retrying).insert(self.id.clone(), due + lease);
        ctx.claim_by(due);
        Ok(())
    }

    /// `MULTI`, `XADD` of `letter`, `XACK`, `EXEC`. The letter goes to the group's
    /// dead-letter stream, unless the subscription names a dead-letter topic
    /// ([`DeadLetter::Derived`] or [`DeadLetter::Topic`]): then it is published on the
    /// stream under that topic, as on every backend (a dead letter of a dead letter
    /// always goes to the group's dead-letter stream, so nothing loops).
    async fn dead_letter(self: Box<Self>, letter: Event) -> Result<(), Error> {
        let Some(streams) = self.ctx.streams.upgrade() else {
            return Err(Error::Closed);
        };
        let ctx = &self.ctx;
        let original = letter
            .metadata
            .get(dead_letter::TOPIC)
            .cloned()
            .unwrap_or_else(|| letter.topic.clone());
        let (key, letter) = match ctx.dead_letter.topic_for(&original) {
            Some(topic) if !original.starts_with(DEAD_LETTER_PREFIX) => {
                (ctx.stream.clone(), letter.with_topic(topic))
            }
            _ => (streams.keys.dead(&ctx.group), letter),
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XADD")
            .arg(key)
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
