//! Publishing in the durable mode: one statement inserts the events, their delivery
//! rows (one per matching group) and sends one NOTIFY naming the woken groups.

use event_bus_core::{Error, Event, PublishOutcome, envelope::encode, topic::validate_topic};
use tokio_postgres::{GenericClient, types::ToSql};

use super::Durable;
use crate::publisher::SendError;

impl Durable {
    /// Publishes encoded events ([`columns`]) in one statement through the bus's pool.
    pub(crate) async fn publish(&self, columns: &Columns) -> Result<(), SendError> {
        self.ensure_schema().await.map_err(SendError::not_sent)?;
        let (topics, priorities, envelopes) = columns;
        let sql = self.publish_sql();
        let channel = self.shared.channel.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![topics, priorities, envelopes];
        if self.shared.config.notify {
            params.push(&channel);
        }
        self.shared
            .publish
            .query_prepared("publishing durable events", sql, &params)
            .await
            .map(drop)
    }

    /// Publishes encoded events ([`columns`]) in one statement through the caller's
    /// client or transaction.
    pub(crate) async fn publish_in<C: GenericClient + Sync>(
        &self,
        client: &C,
        columns: &Columns,
    ) -> Result<(), SendError> {
        self.ensure_schema().await.map_err(SendError::not_sent)?;
        let (topics, priorities, envelopes) = columns;
        let channel = self.shared.channel.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![topics, priorities, envelopes];
        if self.shared.config.notify {
            params.push(&channel);
        }
        client
            .query(self.publish_sql(), &params)
            .await
            .map(drop)
            .map_err(SendError::from_statement)
    }

    fn publish_sql(&self) -> &str {
        if self.shared.config.notify {
            &self.shared.sql.publish_notify
        } else {
            &self.shared.sql.publish_quiet
        }
    }
}

/// Topics, priorities and envelopes of events to publish, as statement parameters.
pub(crate) type Columns = (Vec<String>, Vec<i32>, Vec<String>);

/// Validates and encodes `events`: an invalid topic or an envelope over `max_bytes`
/// publishes nothing.
///
/// # Errors
/// [`Error::InvalidTopic`]; [`Error::Publish`] (not sent) handing back a too-large event.
pub(crate) fn columns(events: &[Event], max_bytes: usize) -> Result<Columns, Error> {
    let mut topics = Vec::with_capacity(events.len());
    let mut priorities = Vec::with_capacity(events.len());
    let mut envelopes = Vec::with_capacity(events.len());
    for event in events {
        validate_topic(&event.topic)?;
        let envelope = encode(event)?;
        if envelope.len() > max_bytes {
            let source = format!(
                "its envelope of {} bytes exceeds max_message_bytes ({max_bytes})",
                envelope.len()
            );
            return Err(Error::publish(
                event.clone(),
                PublishOutcome::NotSent,
                source,
            ));
        }
        topics.push(event.topic.clone());
        priorities.push(i32::from(event.priority.value()));
        envelopes.push(envelope);
    }
    Ok((topics, priorities, envelopes))
}
