//! How a durable delivery is settled on the server: the
//! [`Settle`](event_bus_core::durable::Settle) of one JetStream message, through its
//! reply subject (`+ACK`, `-NAK {"delay": …}`, `+TERM`).

use std::{sync::Arc, time::Duration};

use async_nats::Subject;
use async_trait::async_trait;
use bytes::Bytes;
use event_bus_core::{
    Error, Event, dead_letter, deadline::Operation, durable::Settle, options::DEAD_LETTER_PREFIX,
};
use tokio::time::Instant;

use super::{consumer::Ctx, lock, publish::Target, stats::Stats};

/// One message handed to the dispatcher. Dropped unsettled, its lease stops being
/// extended, so the server delivers it again once the lease runs out.
pub(crate) struct JsSettle {
    ctx: Arc<Ctx>,
    sequence: u64,
    reply: Subject,
}

impl JsSettle {
    pub(crate) fn new(ctx: Arc<Ctx>, sequence: u64, reply: Subject) -> Self {
        Self {
            ctx,
            sequence,
            reply,
        }
    }

    async fn send(&self, what: &'static [u8]) -> Result<(), Error> {
        send(&self.ctx, &self.reply, Bytes::from_static(what)).await
    }
}

/// Sends an acknowledgement `body` to `reply`.
pub(crate) async fn send(ctx: &Ctx, reply: &Subject, body: Bytes) -> Result<(), Error> {
    ctx.client
        .publish(reply.clone(), body)
        .await
        .map_err(|e| Error::connection(Operation::Stream.to_string(), e))
}

impl Drop for JsSettle {
    fn drop(&mut self) {
        lock(&self.ctx.in_flight).remove(&self.sequence);
    }
}

#[async_trait]
impl Settle for JsSettle {
    /// `+ACK`.
    async fn ack(self: Box<Self>) -> Result<(), Error> {
        self.send(b"+ACK").await?;
        if let Some(js) = self.ctx.js.upgrade() {
            Stats::add(&js.stats.acked, 1);
        }
        Ok(())
    }

    /// `-NAK {"delay": <nanoseconds>}`: the server delivers the message again after
    /// `delay` (to any member of the group), with its delivery count one higher. The
    /// delay is not bounded by the lease.
    async fn retry(self: Box<Self>, delay: Duration, _error: &str) -> Result<(), Error> {
        let body = format!("-NAK {{\"delay\":{}}}", delay.as_nanos());
        send(&self.ctx, &self.reply, Bytes::from(body)).await?;
        let lease = self
            .ctx
            .js
            .upgrade()
            .map(|js| js.config.lease())
            .unwrap_or_default();
        lock(&self.ctx.retrying).insert(self.sequence, Instant::now() + delay + lease);
        Ok(())
    }

    /// Stores `letter` on the group's dead-letter subject (or, when the subscription
    /// names a dead-letter topic, publishes it on the events stream under that topic,
    /// as on every backend), waits for the stream's acknowledgement, then `+TERM`s the
    /// original. The letter's message id is derived from the original's sequence, so a
    /// second attempt after a failed `+TERM` is dropped as a duplicate.
    async fn dead_letter(self: Box<Self>, letter: Event) -> Result<(), Error> {
        let Some(js) = self.ctx.js.upgrade() else {
            return Err(Error::Closed);
        };
        let attached = js.attached()?;
        let ctx = &self.ctx;
        let original = letter
            .metadata
            .get(dead_letter::TOPIC)
            .cloned()
            .unwrap_or_else(|| letter.topic.clone());
        let (subject, letter) = match ctx.dead_letter.topic_for(&original) {
            Some(topic) if !original.starts_with(DEAD_LETTER_PREFIX) => {
                (None, letter.with_topic(topic))
            }
            _ => (Some(js.names.dead(&ctx.group)), letter),
        };
        let target = Target {
            subject,
            group: None,
            msg_id: Some(format!("dead:{}:{}", ctx.consumer, self.sequence)),
        };
        let ack = js
            .send(&attached, &letter, target)
            .await
            .map_err(|f| f.error)?;
        js.acknowledged(ack).await.map_err(|f| f.error)?;
        self.send(b"+TERM").await
    }
}
