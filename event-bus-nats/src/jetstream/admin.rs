//! Operations on groups and dead letters: group state (lag), listing and redriving
//! dead letters.

use async_nats::jetstream::stream::RawMessageErrorKind;
use event_bus_core::{Error, Event, dead_letter, deadline::Operation, envelope};
use futures_util::StreamExt;

use super::{JetStream, names, publish::Target};

/// The state of one consumer group (`NatsEventBus::groups`): the server's figures of
/// its durable consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsGroupInfo {
    /// The group's name.
    pub name: String,
    /// The pattern its members subscribe to.
    pub pattern: String,
    /// The durable consumer's name.
    pub consumer: String,
    /// Events matching the consumer's filter not yet delivered to any member: the lag.
    pub pending: u64,
    /// Events delivered to a member and not acknowledged yet (including those waiting
    /// for a retry).
    pub ack_pending: u64,
    /// Deliveries the server repeated (retries and lease expiries).
    pub redelivered: u64,
    /// Pull requests of members waiting for events.
    pub waiting: u64,
}

fn stream_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::connection(format!("{what} ({})", Operation::Stream), e.to_string())
}

/// The groups of the events stream of `js`.
pub(crate) async fn groups(js: &JetStream) -> Result<Vec<NatsGroupInfo>, Error> {
    let attached = js.attached()?;
    let stream = attached
        .context
        .get_stream_no_info(js.names.stream())
        .await
        .map_err(|e| stream_error("list groups", e))?;
    let mut consumers = stream.consumers();
    let mut groups = Vec::new();
    while let Some(info) = consumers.next().await {
        let info = info.map_err(|e| stream_error("list groups", e))?;
        let Some((name, pattern)) = names::described(info.config.description.as_deref()) else {
            continue; // not a consumer of this bus family
        };
        groups.push(NatsGroupInfo {
            name,
            pattern,
            consumer: info.name,
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
            waiting: info.num_waiting as u64,
        });
    }
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(groups)
}

/// Up to `count` dead letters of `group`, oldest first, with their sequences in the
/// auxiliary stream.
pub(crate) async fn dead_letters(
    js: &JetStream,
    group: &str,
    count: usize,
) -> Result<Vec<(u64, Event)>, Error> {
    if group.is_empty() {
        return Err(Error::config("group", "must not be empty"));
    }
    let attached = js.attached()?;
    let aux = attached
        .context
        .get_stream_no_info(js.names.aux_stream())
        .await
        .map_err(|e| stream_error("list dead letters", e))?;
    let subject = js.names.dead(group);
    let mut letters = Vec::new();
    let mut next = 1;
    while letters.len() < count {
        let message = match aux.get_first_raw_message_by_subject(&subject, next).await {
            Ok(message) => message,
            Err(e) if is_no_message(e.kind()) => break,
            Err(e) => return Err(stream_error("list dead letters", e)),
        };
        next = message.sequence + 1;
        match envelope::decode(&message.payload, js.max_message_bytes) {
            Ok(event) => letters.push((message.sequence, event)),
            Err(err) => {
                tracing::warn!(%group, sequence = message.sequence, error = %err, "malformed dead letter");
            }
        }
    }
    Ok(letters)
}

fn is_no_message(kind: RawMessageErrorKind) -> bool {
    match kind {
        RawMessageErrorKind::NoMessageFound => true,
        RawMessageErrorKind::JetStream(e) => {
            e.error_code() == async_nats::jetstream::ErrorCode::NO_MESSAGE_FOUND
        }
        _ => false,
    }
}

/// Moves up to `count` dead letters of `group` back to the events stream, for `group`
/// only: each is stored (and acknowledged by the stream) before it is deleted from the
/// dead letters. The event goes back under its original topic, without the
/// `dead_letter.*` metadata. Returns how many were moved.
pub(crate) async fn redrive(js: &JetStream, group: &str, count: usize) -> Result<usize, Error> {
    let letters = dead_letters(js, group, count).await?;
    let attached = js.attached()?;
    let aux = attached
        .context
        .get_stream_no_info(js.names.aux_stream())
        .await
        .map_err(|e| stream_error("redrive", e))?;
    let mut moved = 0;
    for (sequence, letter) in letters {
        let event = original(&letter);
        let target = Target {
            subject: None,
            group: Some(group.to_owned()),
            msg_id: Some(format!("redrive:{}:{sequence}", names::consumer(group))),
        };
        let ack = js
            .send(&attached, &event, target)
            .await
            .map_err(|f| f.error)?;
        js.acknowledged(ack).await.map_err(|f| f.error)?;
        aux.delete_message(sequence)
            .await
            .map_err(|e| stream_error("delete a redriven dead letter", e))?;
        moved += 1;
    }
    Ok(moved)
}

/// The event a dead letter was made from: its original topic, without the failure
/// metadata.
fn original(letter: &Event) -> Event {
    let mut data = letter.data().clone();
    if let Some(topic) = data.metadata.get(dead_letter::TOPIC).cloned() {
        data.topic = topic;
    }
    data.metadata.retain(|k, _| !k.starts_with("dead_letter."));
    Event::from_data(data)
}
