//! Turning events into the notifications (and stored rows) that publish them.

use event_bus_core::{Error, Event, PublishOutcome, envelope::WIRE_VERSION};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::{
    channel::Channels,
    large::{LargeRef, LargeStore, NOTIFY_PAYLOAD_LIMIT},
    publisher::{NOTIFY_PAIR, Pool, SendError},
};

/// What one event sends: its envelope inline, or a reference to a stored row.
enum Body {
    Inline(String),
    Stored {
        id: Uuid,
        reference: String,
        envelope: String,
    },
}

/// The notifications of one publish (one event or a batch), in order.
pub(crate) struct Outgoing<'a> {
    channels: &'a Channels,
    items: Vec<(String, &'a str, Body)>,
}

impl<'a> Outgoing<'a> {
    /// Encodes `events`. On failure, returns the index of the event at fault.
    pub(crate) fn new(
        channels: &'a Channels,
        events: &'a [Event],
        max_bytes: usize,
    ) -> Result<Self, (usize, Error)> {
        let mut items = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let channel = channels.topic(&event.topic).map_err(|e| (i, e))?;
            let envelope = event_bus_core::envelope::encode(event).map_err(|e| (i, e))?;
            if envelope.len() > max_bytes {
                let source = format!(
                    "its envelope of {} bytes exceeds max_message_bytes ({max_bytes})",
                    envelope.len()
                );
                let error = Error::publish(event.clone(), PublishOutcome::NotSent, source);
                return Err((i, error));
            }
            let body = if envelope.len() < NOTIFY_PAYLOAD_LIMIT {
                Body::Inline(envelope)
            } else {
                let id = Uuid::new_v4();
                let reference = serde_json::to_string(&LargeRef {
                    v: WIRE_VERSION,
                    id,
                    topic: event.topic.clone(),
                })
                .map_err(|e| (i, Error::Encode(e)))?;
                Body::Stored {
                    id,
                    reference,
                    envelope,
                }
            };
            items.push((channel, event.topic.as_str(), body));
        }
        Ok(Self { channels, items })
    }

    fn has_stored(&self) -> bool {
        self.items
            .iter()
            .any(|(_, _, b)| matches!(b, Body::Stored { .. }))
    }

    /// Channel and payload arrays: each event goes to its topic's channel, then to the
    /// pattern channel.
    fn arrays(&self) -> (Vec<&str>, Vec<&str>) {
        let mut channels = Vec::with_capacity(self.items.len() * 2);
        let mut payloads = Vec::with_capacity(self.items.len() * 2);
        for (channel, _, body) in &self.items {
            let payload = match body {
                Body::Inline(envelope) => envelope.as_str(),
                Body::Stored { reference, .. } => reference.as_str(),
            };
            channels.extend([channel.as_str(), self.channels.all()]);
            payloads.extend([payload, payload]);
        }
        (channels, payloads)
    }

    /// Id, topic and envelope arrays of the stored events.
    fn stored(&self) -> (Vec<String>, Vec<&str>, Vec<&str>) {
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for (_, topic, body) in &self.items {
            if let Body::Stored { id, envelope, .. } = body {
                out.0.push(id.to_string());
                out.1.push(*topic);
                out.2.push(envelope.as_str());
            }
        }
        out
    }

    /// Sends everything through the pool, in one statement.
    pub(crate) async fn send(&self, pool: &Pool, store: &LargeStore) -> Result<(), SendError> {
        if let [(channel, _, Body::Inline(envelope))] = self.items.as_slice() {
            return pool
                .notify_pair(channel, self.channels.all(), envelope)
                .await;
        }
        let (channels, payloads) = self.arrays();
        if !self.has_stored() {
            return pool.notify_many(&channels, &payloads).await;
        }
        store
            .ensure_table(pool)
            .await
            .map_err(SendError::not_sent)?;
        let (ids, topics, envelopes) = self.stored();
        pool.execute_large(
            store.insert_sql(),
            &[&channels, &payloads, &ids, &topics, &envelopes],
        )
        .await?;
        store.cleanup_if_due(pool).await;
        Ok(())
    }

    /// Sends everything through the caller's client or transaction, in one statement.
    pub(crate) async fn send_in<C: GenericClient + Sync>(
        &self,
        client: &C,
        pool: &Pool,
        store: &LargeStore,
    ) -> Result<(), SendError> {
        if let [(channel, _, Body::Inline(envelope))] = self.items.as_slice() {
            let all = self.channels.all();
            client
                .execute(NOTIFY_PAIR, &[channel, &all, envelope])
                .await
                .map_err(SendError::from_statement)?;
            return Ok(());
        }
        let (channels, payloads) = self.arrays();
        if !self.has_stored() {
            client
                .execute(crate::publisher::NOTIFY_MANY, &[&channels, &payloads])
                .await
                .map_err(SendError::from_statement)?;
            return Ok(());
        }
        // The table is created through the pool: DDL inside the caller's transaction
        // would be undone by a rollback.
        store
            .ensure_table(pool)
            .await
            .map_err(SendError::not_sent)?;
        let (ids, topics, envelopes) = self.stored();
        client
            .execute(
                store.insert_sql(),
                &[&channels, &payloads, &ids, &topics, &envelopes],
            )
            .await
            .map_err(SendError::from_statement)?;
        Ok(())
    }
}

/// [`Error::Publish`] handing `event` back after `failure`.
pub(crate) fn publish_error(event: Event, failure: SendError) -> Error {
    Error::publish(event, failure.outcome, failure.source)
}
