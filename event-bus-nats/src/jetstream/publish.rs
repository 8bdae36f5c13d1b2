//! Publishing to the events stream: each publish waits for the stream's
//! acknowledgement (the event is stored), a batch pipelines them.
//!
//! Every event carries `Nats-Msg-Id: <event id>`, so a publish retried after an
//! unknown outcome (the acknowledgement did not arrive) is stored once if the retry
//! comes within `jetstream.duplicate_window_seconds`. An envelope larger than the
//! server's `max_payload` (less 4 KiB for headers) is stored in parts on the auxiliary
//! stream's part subject, and the event's own message holds only the header
//! `Event-Bus-Parts: <sequence> <sequence> …` listing them; consumers join them.

use async_nats::jetstream::{
    context::{PublishAckFuture, PublishErrorKind},
    message::PublishMessage,
};
use bytes::Bytes;
use event_bus_core::{Error, Event, PublishOutcome, deadline::Operation, envelope::encode};

use super::{Attached, JetStream};

/// Header of a message whose envelope is stored in parts.
pub(crate) const PARTS_HEADER: &str = "Event-Bus-Parts";
/// Header of an event redriven for one group only.
pub(crate) const GROUP_HEADER: &str = "Event-Bus-Group";
/// Room left in each part for the subject and headers.
const HEADROOM: usize = 4096;

/// Where [`JetStream::send`] sends an event, when not as a plain publish.
#[derive(Debug, Default)]
pub(crate) struct Target {
    /// Another subject than the topic's.
    pub(crate) subject: Option<String>,
    /// For this group only (a redrive): the group header.
    pub(crate) group: Option<String>,
    /// Another message id than the event id.
    pub(crate) msg_id: Option<String>,
}

/// A publish that failed, with what the caller knows of its outcome.
pub(crate) struct Failed {
    pub(crate) outcome: PublishOutcome,
    pub(crate) error: Error,
}

impl JetStream {
    /// Publishes `event` and waits until the stream has stored it.
    ///
    /// # Errors
    /// [`Error::Publish`] with the event and whether it may have been stored.
    pub(crate) async fn publish(&self, event: Event) -> Result<(), Error> {
        let attached = match self.attached() {
            Ok(attached) => attached,
            Err(e) => return Err(Error::publish(event, PublishOutcome::NotSent, e)),
        };
        let result = match self.send(&attached, &event, Target::default()).await {
            Ok(ack) => self.acknowledged(ack).await,
            Err(failed) => Err(failed),
        };
        result
            .map(|_| ())
            .map_err(|f| Error::publish(event, f.outcome, f.error))
    }

    /// Publishes `events`, all sent before the first acknowledgement is awaited.
    ///
    /// # Errors
    /// [`Error::Publish`] for the first event that failed, saying what became of the
    /// others.
    pub(crate) async fn publish_batch(&self, events: Vec<Event>) -> Result<(), Error> {
        let attached = match self.attached() {
            Ok(attached) => attached,
            Err(e) => match events.into_iter().next() {
                Some(first) => return Err(Error::publish(first, PublishOutcome::NotSent, e)),
                None => return Ok(()),
            },
        };
        let count = events.len();
        let mut acks = Vec::with_capacity(count);
        let mut failure = None;
        for (i, event) in events.iter().enumerate() {
            match self.send(&attached, event, Target::default()).await {
                Ok(ack) => acks.push(ack),
                Err(failed) => {
                    failure = Some((i, failed));
                    break;
                }
            }
        }
        // Acknowledgements exist only for the events before a failed send, so the
        // first failed acknowledgement comes before it.
        for (i, ack) in acks.into_iter().enumerate() {
            if let Err(failed) = self.acknowledged(ack).await {
                failure = Some((i, failed));
                break;
            }
        }
        match failure {
            None => {
                self.dispatcher.metrics().add_published(count as u64);
                Ok(())
            }
            Some((i, failed)) => {
                self.dispatcher.metrics().add_published(i as u64);
                let event = events
                    .into_iter()
                    .nth(i)
                    .unwrap_or_else(|| unreachable!("the failed index is in the batch"));
                Err(Error::publish(
                    event,
                    failed.outcome,
                    format!(
                        "event {} of a batch of {count}: the {i} before it were stored, the \
                         {} after it may not have been: {}",
                        i + 1,
                        count - i - 1,
                        failed.error
                    ),
                ))
            }
        }
    }

    /// Sends `event` on its topic's subject, in parts if it needs them; the stream's
    /// acknowledgement is still to come.
    pub(crate) async fn send(
        &self,
        attached: &Attached,
        event: &Event,
        target: Target,
    ) -> Result<PublishAckFuture, Failed> {
        let not_sent = |error: Error| Failed {
            outcome: PublishOutcome::NotSent,
            error,
        };
        let payload = Bytes::from(encode(event).map_err(not_sent)?);
        let mut message = PublishMessage::build();
        let msg_id = target.msg_id.unwrap_or_else(|| event.id.to_string());
        if let Some(group) = &target.group {
            message = message.header(GROUP_HEADER, group.as_str());
        }
        let limit = attached.client.server_info().max_payload;
        if payload.len() + HEADROOM > limit {
            let sequences = self
                .store_parts(attached, &payload, limit, &msg_id)
                .await
                .map_err(not_sent)?;
            message = message.header(PARTS_HEADER, sequences.as_str());
        } else {
            message = message.payload(payload);
        }
        let subject = target
            .subject
            .unwrap_or_else(|| self.subjects.subject(&event.topic));
        attached
            .context
            .send_publish(subject, message.message_id(msg_id))
            .await
            .map_err(|e| not_sent(Error::connection(Operation::Publish.to_string(), e)))
    }

    /// Stores `payload` in parts on the part subject; returns their sequences,
    /// space-separated.
    async fn store_parts(
        &self,
        attached: &Attached,
        payload: &Bytes,
        limit: usize,
        msg_id: &str,
    ) -> Result<String, Error> {
        let size = limit.saturating_sub(HEADROOM).max(1);
        let mut acks = Vec::new();
        for (i, start) in (0..payload.len()).step_by(size).enumerate() {
            let end = payload.len().min(start + size);
            let part = PublishMessage::build()
                .payload(payload.slice(start..end))
                .message_id(format!("{msg_id}:part:{i}"));
            let ack = attached
                .context
                .send_publish(self.names.part(), part)
                .await
                .map_err(|e| Error::connection(Operation::Publish.to_string(), e))?;
            acks.push(ack);
        }
        let mut sequences = Vec::with_capacity(acks.len());
        for ack in acks {
            let ack = ack
                .await
                .map_err(|e| Error::connection(Operation::Publish.to_string(), e))?;
            sequences.push(ack.sequence.to_string());
        }
        Ok(sequences.join(" "))
    }

    /// Waits for the stream's acknowledgement of one publish.
    /// No stream answered (it does not exist): nothing was stored, `NotSent`; any
    /// other failure may have come after the stream stored the event, `Unknown`.
    pub(crate) async fn acknowledged(&self, ack: PublishAckFuture) -> Result<u64, Failed> {
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) => Err(Failed {
                outcome: if e.kind() == PublishErrorKind::StreamNotFound {
                    PublishOutcome::NotSent
                } else {
                    PublishOutcome::Unknown
                },
                error: Error::connection(Operation::Publish.to_string(), e),
            }),
        }
    }
}
