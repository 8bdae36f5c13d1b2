//! Operations on groups and dead letters: group state (lag), listing and redriving
//! dead letters.

use event_bus_core::{Error, Event, dead_letter, envelope};
use redis::Value;

use super::{
    Streams,
    entry::{self, field_int, field_text},
    maintenance::group_rows,
};

/// The state of one consumer group of a stream (`RedisEventBus::groups`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The group's name.
    pub name: String,
    /// Consumers known to the server.
    pub consumers: u64,
    /// Entries delivered to a member and not acknowledged yet.
    pub pending: u64,
    /// Entries not yet delivered to any member (`None` when the server cannot tell,
    /// e.g. after entries were deleted from the middle of the stream).
    pub lag: Option<u64>,
    /// The id of the last entry delivered to a member.
    pub last_delivered_id: String,
}

/// The groups of the stream of `streams`.
pub(crate) async fn groups(streams: &Streams) -> Result<Vec<GroupInfo>, Error> {
    let rows = group_rows(streams, &streams.keys.stream()).await?;
    Ok(rows
        .iter()
        .map(|row| GroupInfo {
            name: field_text(row, "name").unwrap_or_default(),
            consumers: field_int(row, "consumers").unwrap_or(0).max(0) as u64,
            pending: field_int(row, "pending").unwrap_or(0).max(0) as u64,
            lag: field_int(row, "lag").map(|l| l.max(0) as u64),
            last_delivered_id: field_text(row, "last-delivered-id").unwrap_or_default(),
        })
        .collect())
}

/// Up to `count` dead letters of `group`, oldest first, with their entry ids.
pub(crate) async fn dead_letters(
    streams: &Streams,
    group: &str,
    count: usize,
) -> Result<Vec<(String, Event)>, Error> {
    if group.is_empty() {
        return Err(Error::config("group", "must not be empty"));
    }
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(streams.keys.dead(group))
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(count);
    let reply: Value = streams.commands.run("list dead letters", &cmd).await?;
    let mut letters = Vec::new();
    for e in entry::entries(&reply) {
        let Some(body) = e.body else { continue };
        match envelope::decode(&body.envelope, streams.max_message_bytes) {
            Ok(event) => letters.push((e.id, event)),
            Err(err) => tracing::warn!(%group, id = %e.id, error = %err, "malformed dead letter"),
        }
    }
    Ok(letters)
}

/// Moves up to `count` dead letters of `group` back to the stream, for `group` only,
/// each in one transaction (`MULTI`, `XADD`, `XDEL`, `EXEC`). The event goes back
/// under its original topic, without the `dead_letter.*` metadata. Returns how many
/// were moved.
pub(crate) async fn redrive(streams: &Streams, group: &str, count: usize) -> Result<usize, Error> {
    let letters = dead_letters(streams, group, count).await?;
    let dead = streams.keys.dead(group);
    let mut moved = 0;
    for (id, letter) in letters {
        let event = original(&letter);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XADD")
            .arg(streams.keys.stream())
            .arg("*")
            .arg(entry::TOPIC)
            .arg(&event.topic)
            .arg(entry::ENVELOPE)
            .arg(envelope::encode(&event)?)
            .arg(entry::GROUP)
            .arg(group)
            .ignore();
        pipe.cmd("XDEL").arg(&dead).arg(&id).ignore();
        streams
            .commands
            .run_pipe::<Value>("redrive a dead letter", &pipe)
            .await?;
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
