//! Handing events to the client, in parts when they exceed the server's `max_payload`.

use std::sync::atomic::Ordering;

use async_nats::{Subject, client::PublishErrorKind};
use event_bus_core::{Error, Event, envelope::encode, topic::validate_topic};
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
            Err(e) => return Err(publish_failed(event, e)),
        };
        self.send(&started, event).await?;
        self.dispatcher.metrics().add_published(1);
        Ok(())
    }

    /// Hands one event to the client (in parts if it exceeds the server's
    /// `max_payload`), within `command_timeout_seconds`.
    pub(super) async fn send(&self, started: &Started, event: Event) -> Result<(), Error> {
        let client = &started.client;
        let payload = match encode(&event) {
            Ok(payload) => payload,
            Err(e) => return Err(publish_failed(event, e)),
        };
        let subject = Subject::from(self.subjects.subject(&event.topic));
        let payload = bytes::Bytes::from(payload);
        let sent = async {
            let limit = started.max_payload.load(Ordering::Relaxed);
            if payload.len() <= limit {
                match client.publish(subject.clone(), payload.clone()).await {
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
            }
            Ok(())
        };
        tokio::pin!(sent);
        // Most publishes find room in the client's buffer at once: no timer for those.
        let outcome = match (&mut sent).now_or_never() {
            Some(outcome) => Ok(outcome),
            None => {
                let timeout = self.config.command_timeout();
                tokio::time::timeout(timeout, sent)
                    .await
                    .map_err(|_| Error::Timeout {
                        operation: "publish".into(),
                        after: timeout,
                    })
            }
        };
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(publish_failed(event, Error::connection("publish", e))),
            Err(e) => Err(publish_failed(event, e)),
        }
    }
}

/// The error of a publish that failed, handing `event` back.
pub(super) fn publish_failed(event: Event, error: Error) -> Error {
    Error::Publish {
        event: Box::new(event),
        source: error.into(),
    }
}
