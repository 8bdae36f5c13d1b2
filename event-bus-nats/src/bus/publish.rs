//! Handing events to the client, in parts when they exceed the server's `max_payload`.
//!
//! A publish is done once the client has the event in its outgoing buffer; the client
//! writes it to the server in the background (and keeps it across a reconnect). So a
//! publish that fails never reached the client: [`PublishOutcome::NotSent`], safe to
//! retry; except a large event of which some parts were buffered before the failure
//! ([`PublishOutcome::Unknown`]: receivers drop an incomplete group, but the caller
//! cannot know that nobody got it).

use std::sync::atomic::Ordering;

use async_nats::{Subject, client::PublishErrorKind};
use bytes::Bytes;
use event_bus_core::{
    Error, Event, PublishOutcome,
    deadline::{Operation, within},
    envelope::encode,
    topic::validate_topic,
};
use futures_util::FutureExt;

use super::{Inner, Started};
use crate::parts;

impl Inner {
    pub(super) async fn publish(&self, event: Event) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        validate_topic(&event.topic)?;
        let started = match self.started().await {
            Ok(started) => started,
            Err(Error::Closed) => return Err(Error::Closed),
            Err(e) => return Err(Error::publish(event, PublishOutcome::NotSent, e)),
        };
        if let Some(js) = &self.jetstream {
            js.publish(event).await?;
            self.dispatcher.metrics().add_published(1);
            return Ok(());
        }
        self.send(&started, event).await?;
        self.dispatcher.metrics().add_published(1);
        Ok(())
    }

    /// Hands one event to the client (in parts if it exceeds the server's
    /// `max_payload`), within `command_timeout_seconds`.
    pub(super) async fn send(&self, started: &Started, event: Event) -> Result<(), Error> {
        let payload = match encode(&event) {
            Ok(payload) => Bytes::from(payload),
            Err(e) => return Err(Error::publish(event, PublishOutcome::NotSent, e)),
        };
        let subject = Subject::from(self.subjects.subject(&event.topic));
        let mut parts_sent = 0;
        let result = {
            let sent = hand_over(started, subject, payload, &mut parts_sent);
            tokio::pin!(sent);
            // Most publishes find room in the client's buffer at once: no timer for those.
            match (&mut sent).now_or_never() {
                Some(result) => result.map_err(publish_error),
                None => {
                    let timeout = self.config.command_timeout();
                    within(Operation::Publish, timeout, sent)
                        .await
                        .and_then(|r| r.map_err(publish_error))
                }
            }
        };
        result.map_err(|e| {
            let outcome = if parts_sent > 0 {
                PublishOutcome::Unknown
            } else {
                PublishOutcome::NotSent
            };
            Error::publish(event, outcome, e)
        })
    }
}

fn publish_error(error: async_nats::PublishError) -> Error {
    Error::connection(Operation::Publish.to_string(), error)
}

/// Puts `payload` into the client's buffer, in parts if the server's `max_payload` asks
/// for it; counts the parts buffered in `parts_sent`.
async fn hand_over(
    started: &Started,
    subject: Subject,
    payload: Bytes,
    parts_sent: &mut usize,
) -> Result<(), async_nats::PublishError> {
    let client = &started.client;
    let limit = started.max_payload.load(Ordering::Relaxed);
    if payload.len() <= limit {
        match client.publish(subject.clone(), payload.clone()).await {
            // The server reached after a reconnect may have a smaller limit.
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                let limit = client.server_info().max_payload;
                started.max_payload.store(limit, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    let limit = started.max_payload.load(Ordering::Relaxed);
    let Some(parts) = parts::split(&payload, limit) else {
        return client.publish(subject, payload).await;
    };
    for (headers, part) in parts {
        client
            .publish_with_headers(subject.clone(), headers, part)
            .await?;
        *parts_sent += 1;
    }
    Ok(())
}

/// The error of event `sent` (0-based) of a batch of `count` whose earlier events were
/// handed to the client: it says which were sent and which were not.
pub(super) fn in_batch(error: Error, sent: usize, count: usize) -> Error {
    match error {
        Error::Publish {
            event,
            outcome,
            source,
        } => Error::publish(
            *event,
            outcome,
            format!(
                "event {} of a batch of {count}: the {sent} before it were sent, the {} after it \
                 were not: {source}",
                sent + 1,
                count - sent - 1
            ),
        ),
        other => other,
    }
}
