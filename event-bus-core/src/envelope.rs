//! The versioned JSON wire envelope shared by the network backends.
//!
//! One event is one JSON object:
//!
//! ```json
//! {"v":1,"id":"6f1c…","type":"created","topic":"orders:eu","payload":{"order":42},
//!  "timestamp":"2026-11-22T10:00:00Z","source":"checkout","correlation_id":null,
//!  "metadata":{"tenant":"acme"},"priority":128}
//! ```
//!
//! `v`, `type` and `topic` are required. When decoding, a missing `id` becomes a fresh
//! UUID, a missing `timestamp` the time of receipt, a missing `payload` `null`, a
//! missing `priority` `128` (normal), missing `metadata` empty; unknown fields are
//! ignored so newer minor versions stay readable. The full description for other
//! languages is in `docs/wire-format.md`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    error::Error,
    event::{Event, EventData},
    event_type::EventType,
    priority::Priority,
    topic::validate_topic,
};

/// The envelope version this crate writes and reads.
pub const WIRE_VERSION: u32 = 1;

#[derive(Serialize)]
struct Outgoing<'a> {
    v: u32,
    #[serde(flatten)]
    data: &'a EventData,
}

#[derive(Deserialize)]
struct Incoming {
    v: u32,
    #[serde(default = "Uuid::new_v4")]
    id: Uuid,
    #[serde(rename = "type")]
    event_type: EventType,
    topic: String,
    #[serde(default)]
    payload: Value,
    #[serde(default = "Utc::now")]
    timestamp: DateTime<Utc>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    priority: Priority,
}

/// Encodes `event` as envelope JSON.
///
/// # Errors
/// [`Error::Encode`] if serialization fails (it does not for valid events).
pub fn encode(event: &Event) -> Result<String, Error> {
    serde_json::to_string(&Outgoing {
        v: WIRE_VERSION,
        data: event.data(),
    })
    .map_err(Error::Encode)
}

/// Decodes envelope JSON of at most `max_bytes` bytes into an event.
///
/// # Errors
/// [`Error::Malformed`] when the message is too large, not JSON, of another version,
/// missing a required field, or carries an invalid topic.
///
/// ```
/// use event_bus_core::envelope::{decode, encode};
/// use event_bus_core::{Event, EventType};
/// let event = Event::new(EventType::Updated, "a:b", serde_json::json!([1, 2]));
/// let back = decode(encode(&event).unwrap().as_bytes(), 1 << 20).unwrap();
/// assert_eq!(back, event);
/// assert!(decode(br#"{"v":2,"type":"created","topic":"a"}"#, 1 << 20).is_err());
/// ```
pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Event, Error> {
    if bytes.len() > max_bytes {
        return Err(Error::Malformed {
            reason: format!(
                "message of {} bytes exceeds the limit of {max_bytes}",
                bytes.len()
            ),
        });
    }
    let incoming: Incoming = serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
        reason: format!("not a valid event envelope: {e}"),
    })?;
    if incoming.v != WIRE_VERSION {
        return Err(Error::Malformed {
            reason: format!(
                "envelope version {} is not supported (expected {WIRE_VERSION})",
                incoming.v
            ),
        });
    }
    validate_topic(&incoming.topic).map_err(|e| Error::Malformed {
        reason: e.to_string(),
    })?;
    Ok(Event::from_data(EventData {
        id: incoming.id,
        event_type: incoming.event_type,
        topic: incoming.topic,
        payload: incoming.payload,
        timestamp: incoming.timestamp,
        source: incoming.source,
        correlation_id: incoming.correlation_id,
        metadata: incoming.metadata,
        priority: incoming.priority,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_every_field() {
        let event = Event::new(
            EventType::custom("Ünïcødé ✓"),
            "t:ü",
            json!({"k": "värde 🚀"}),
        )
        .with_source("src")
        .with_correlation_id("corr")
        .with_metadata("a", "b")
        .with_priority(Priority::new(7));
        let text = encode(&event).unwrap();
        assert!(text.starts_with(r#"{"v":1,"#), "{text}");
        assert_eq!(decode(text.as_bytes(), usize::MAX).unwrap(), event);
    }

    #[test]
    fn minimal_foreign_message_is_accepted() {
        let e = decode(
            br#"{"v":1,"type":"order_placed","topic":"orders:eu"}"#,
            1024,
        )
        .unwrap();
        assert_eq!(e.event_type, EventType::custom("order_placed"));
        assert_eq!(e.priority, Priority::NORMAL);
        assert!(e.payload.is_null());
    }

    #[test]
    fn malformed_messages_are_errors() {
        for bad in [
            &b"not json"[..],
            br#"{"v":1,"topic":"a"}"#,
            br#"{"v":1,"type":"created"}"#,
            br#"{"v":9,"type":"created","topic":"a"}"#,
            br#"{"v":1,"type":"created","topic":""}"#,
            br#"{"v":1,"type":"created","topic":"a","priority":999}"#,
        ] {
            assert!(matches!(decode(bad, 1024), Err(Error::Malformed { .. })));
        }
        let big = format!(
            r#"{{"v":1,"type":"created","topic":"a","payload":"{}"}}"#,
            "x".repeat(100)
        );
        assert!(
            decode(big.as_bytes(), 50)
                .unwrap_err()
                .to_string()
                .contains("exceeds")
        );
    }
}
