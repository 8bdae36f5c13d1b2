//! Dead letters: events whose last handler attempt failed, republished under a
//! dead-letter topic with the failure described in their metadata.
//!
//! A dead letter keeps the original event's id, type, payload, source, correlation id,
//! priority and metadata; its topic is the dead-letter topic (see
//! [`DeadLetter`](crate::DeadLetter)) and these metadata keys are added:
//!
//! | key | value |
//! |---|---|
//! | `dead_letter.topic` | the original topic |
//! | `dead_letter.error` | the last error, truncated to 1,024 bytes |
//! | `dead_letter.attempts` | how many calls were made |
//! | `dead_letter.pattern` | the failing subscription's pattern |
//! | `dead_letter.group` | its consumer group, when it has one |
//! | `dead_letter.subscription` | its id |
//! | `dead_letter.failed_at` | when the last attempt failed (RFC 3339, UTC) |
//!
//! ```
//! use event_bus_core::{Event, dead_letter::DeadLetterInfo};
//!
//! async fn inspect(event: Event) -> Result<(), std::io::Error> {
//!     if let Some(info) = DeadLetterInfo::of(&event) {
//!         eprintln!("{} failed {} times on {}: {}", event.id, info.attempts, info.topic, info.error);
//!     }
//!     Ok(())
//! }
//! # let _ = inspect;
//! ```

use chrono::{DateTime, Utc};

use crate::{event::Event, subscription::SubscriptionId};

/// Metadata key: the original topic.
pub const TOPIC: &str = "dead_letter.topic";
/// Metadata key: the last error, truncated.
pub const ERROR: &str = "dead_letter.error";
/// Metadata key: the number of attempts.
pub const ATTEMPTS: &str = "dead_letter.attempts";
/// Metadata key: the failing subscription's pattern.
pub const PATTERN: &str = "dead_letter.pattern";
/// Metadata key: the failing subscription's consumer group.
pub const GROUP: &str = "dead_letter.group";
/// Metadata key: the failing subscription's id.
pub const SUBSCRIPTION: &str = "dead_letter.subscription";
/// Metadata key: when the last attempt failed.
pub const FAILED_AT: &str = "dead_letter.failed_at";

/// Longest error text kept in a dead letter, in bytes.
pub const ERROR_MAX_BYTES: usize = 1024;

/// The failure a dead letter describes, read back from its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterInfo {
    /// The topic the event was originally published on.
    pub topic: String,
    /// The last error (truncated).
    pub error: String,
    /// How many handler calls were made.
    pub attempts: u32,
    /// The failing subscription's pattern.
    pub pattern: String,
    /// Its consumer group.
    pub group: Option<String>,
    /// Its id.
    pub subscription: Option<SubscriptionId>,
    /// When the last attempt failed.
    pub failed_at: Option<DateTime<Utc>>,
}

impl DeadLetterInfo {
    /// The failure `event` describes, if it is a dead letter.
    pub fn of(event: &Event) -> Option<Self> {
        let meta = &event.metadata;
        let get = |key: &str| meta.get(key).cloned();
        Some(Self {
            topic: get(TOPIC)?,
            error: get(ERROR).unwrap_or_default(),
            attempts: meta.get(ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(0),
            pattern: get(PATTERN).unwrap_or_default(),
            group: get(GROUP),
            subscription: origin(event),
            failed_at: meta
                .get(FAILED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
        })
    }
}

/// Whether `event` is a dead letter.
pub fn is_dead_letter(event: &Event) -> bool {
    event.metadata.contains_key(TOPIC)
}

/// The subscription that dead-lettered `event`, if it is a dead letter. A subscription
/// never receives its own dead letters.
pub(crate) fn origin(event: &Event) -> Option<SubscriptionId> {
    if event.metadata.is_empty() {
        return None;
    }
    event
        .metadata
        .get(SUBSCRIPTION)
        .and_then(|id| id.parse::<uuid::Uuid>().ok())
        .map(SubscriptionId::from)
}

/// What the failing subscription contributes to a dead letter.
pub(crate) struct Failure<'a> {
    pub(crate) error: &'a str,
    pub(crate) attempts: u32,
    pub(crate) pattern: &'a str,
    pub(crate) group: Option<&'a str>,
    pub(crate) subscription: SubscriptionId,
}

/// The dead letter of `event` under `topic`.
pub(crate) fn build(event: &Event, topic: String, failure: &Failure<'_>) -> Event {
    let original = event.topic.clone();
    let mut letter = event
        .clone()
        .with_topic(topic)
        .with_metadata(TOPIC, original)
        .with_metadata(ERROR, truncate(failure.error, ERROR_MAX_BYTES))
        .with_metadata(ATTEMPTS, failure.attempts.to_string())
        .with_metadata(PATTERN, failure.pattern)
        .with_metadata(SUBSCRIPTION, failure.subscription.to_string())
        .with_metadata(FAILED_AT, Utc::now().to_rfc3339());
    if let Some(group) = failure.group {
        letter = letter.with_metadata(GROUP, group);
    }
    letter
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventType;

    #[test]
    fn dead_letter_round_trip() {
        let event = Event::new(EventType::Created, "orders:eu", serde_json::json!({"n": 1}))
            .with_metadata("tenant", "acme");
        let sub = SubscriptionId::new();
        let long = "é".repeat(2000);
        let letter = build(
            &event,
            "dead_letter:orders:eu".into(),
            &Failure {
                error: &long,
                attempts: 3,
                pattern: "orders:*",
                group: Some("billing"),
                subscription: sub,
            },
        );
        assert_eq!((letter.id, &letter.payload), (event.id, &event.payload));
        assert_eq!(letter.metadata["tenant"], "acme");
        assert!(is_dead_letter(&letter) && !is_dead_letter(&event));
        let info = DeadLetterInfo::of(&letter).unwrap();
        assert_eq!(info.topic, "orders:eu");
        assert_eq!(info.attempts, 3);
        assert_eq!(info.group.as_deref(), Some("billing"));
        assert_eq!(info.subscription, Some(sub));
        assert!(info.error.len() <= ERROR_MAX_BYTES + '…'.len_utf8());
        assert!(info.failed_at.is_some());
        assert_eq!(origin(&letter), Some(sub));
    }
}
