//! Stream entries as the server returns them, read out of the replies of `XREADGROUP`,
//! `XCLAIM`, `XAUTOCLAIM` and `XPENDING` (RESP2 arrays or RESP3 maps alike).
//!
//! | field | value |
//! |---|---|
//! | `topic` | the event's topic (so a consumer filters without decoding) |
//! | `envelope` | the wire envelope (`docs/wire-format.md`) |
//! | `group` | only on redriven dead letters: the one group the entry is for |

use redis::Value;

/// Field holding the topic.
pub(crate) const TOPIC: &str = "topic";
/// Field holding the envelope.
pub(crate) const ENVELOPE: &str = "envelope";
/// Field naming the only group a redriven entry is for.
pub(crate) const GROUP: &str = "group";

/// One entry of the stream.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    pub(crate) id: String,
    /// `None` when the entry was deleted (trimmed) while pending: only its id is left.
    pub(crate) body: Option<Body>,
}

/// The fields of a live entry.
#[derive(Debug, Default)]
pub(crate) struct Body {
    pub(crate) topic: String,
    pub(crate) envelope: Vec<u8>,
    pub(crate) group: Option<String>,
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn items(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// Entries of a list `[[id, [field, value, ...]], ...]`.
pub(crate) fn entries(value: &Value) -> Vec<Entry> {
    items(value).iter().filter_map(entry).collect()
}

fn entry(value: &Value) -> Option<Entry> {
    let [id, fields] = items(value) else {
        return None;
    };
    let id = text(id)?;
    let pairs: Vec<(&Value, &Value)> = match fields {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
        Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
        _ => return Some(Entry { id, body: None }),
    };
    let mut body = Body::default();
    for (key, value) in pairs {
        match text(key).as_deref() {
            Some(TOPIC) => body.topic = text(value).unwrap_or_default(),
            Some(ENVELOPE) => {
                body.envelope = match value {
                    Value::BulkString(b) => b.clone(),
                    other => text(other).unwrap_or_default().into_bytes(),
                }
            }
            Some(GROUP) => body.group = text(value),
            _ => {}
        }
    }
    Some(Entry {
        id,
        body: Some(body),
    })
}

/// The entries of an `XREADGROUP` reply for one stream (`Nil` after a `BLOCK` timeout).
pub(crate) fn read_reply(value: &Value) -> Vec<Entry> {
    match value {
        Value::Map(streams) => streams.first().map(|(_, e)| entries(e)).unwrap_or_default(),
        Value::Array(streams) => streams
            .first()
            .and_then(|stream| items(stream).get(1))
            .map(entries)
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// An `XAUTOCLAIM` reply: the next cursor, the claimed entries, and the ids of
/// entries that were deleted while pending (Redis 7).
pub(crate) fn autoclaim_reply(value: &Value) -> (String, Vec<Entry>, Vec<String>) {
    let parts = items(value);
    let cursor = parts.first().and_then(text).unwrap_or_else(|| "0-0".into());
    let claimed = parts.get(1).map(entries).unwrap_or_default();
    let deleted = parts
        .get(2)
        .map(|d| items(d).iter().filter_map(text).collect())
        .unwrap_or_default();
    (cursor, claimed, deleted)
}

/// An extended `XPENDING` reply: `(id, consumer, delivery count)` per entry.
pub(crate) fn pending_reply(value: &Value) -> Vec<(String, String, u32)> {
    items(value)
        .iter()
        .filter_map(|row| {
            let row = items(row);
            let count = match row.get(3)? {
                Value::Int(n) => u32::try_from(*n).ok()?,
                other => text(other)?.parse().ok()?,
            };
            Some((text(row.first()?)?, text(row.get(1)?)?, count))
        })
        .collect()
}

/// The fields of a flat `[key, value, ...]` array or a map, as text (`XINFO`).
pub(crate) fn info_fields(value: &Value) -> Vec<(String, Value)> {
    match value {
        Value::Map(map) => map
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v.clone())))
            .collect(),
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|c| Some((text(c.first()?)?, c.get(1)?.clone())))
            .collect(),
        _ => Vec::new(),
    }
}

/// Rows of an `XINFO GROUPS` / `XINFO CONSUMERS` reply.
pub(crate) fn info_rows(value: &Value) -> Vec<Vec<(String, Value)>> {
    items(value).iter().map(info_fields).collect()
}

/// A field of an `XINFO` row as text.
pub(crate) fn field_text(row: &[(String, Value)], key: &str) -> Option<String> {
    row.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| text(v))
}

/// A field of an `XINFO` row as an integer.
pub(crate) fn field_int(row: &[(String, Value)], key: &str) -> Option<i64> {
    field_text(row, key).and_then(|t| t.parse().ok())
}

/// A stream id `ms-seq` as a comparable pair.
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
