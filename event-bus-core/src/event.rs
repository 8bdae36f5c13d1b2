//! The event: what is published and what handlers receive.

use std::{collections::BTreeMap, fmt, ops::Deref, sync::Arc};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};
use serde_json::Value;
use uuid::Uuid;

use crate::{error::Error, event_type::EventType, priority::Priority};

/// The fields of an [`Event`]. Read them through the event (`event.topic`, `event.payload`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    /// Unique id, a random UUID v4 unless set with [`Event::with_id`].
    pub id: Uuid,
    /// What kind of change the event reports.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The topic the event is published on, e.g. `registry:bots:config`.
    pub topic: String,
    /// Application data.
    pub payload: Value,
    /// When the event was created (UTC).
    pub timestamp: DateTime<Utc>,
    /// Who produced the event.
    pub source: Option<String>,
    /// Ties related events together (a request id, a saga id).
    pub correlation_id: Option<String>,
    /// Free-form string annotations.
    pub metadata: BTreeMap<String, String>,
    /// Dispatch priority under backlog (lower is more urgent).
    pub priority: Priority,
}

/// An immutable event. Cloning is cheap (a reference count), so one event fans out to
/// many handlers without copying its payload.
///
/// Build one with [`Event::new`] and the `with_*` methods; the id and timestamp are
/// filled in for you. Read fields directly: `event.topic`, `event.payload`, ….
///
/// ```
/// use event_bus_core::{Event, EventType, Priority};
/// use serde_json::json;
///
/// let event = Event::new(EventType::Created, "orders:eu", json!({"order": 42}))
///     .with_source("checkout")
///     .with_priority(Priority::HIGH)
///     .with_metadata("tenant", "acme");
/// assert_eq!(event.topic, "orders:eu");
/// assert_eq!(event.payload["order"], 42);
/// assert_eq!(event.metadata["tenant"], "acme");
/// ```
#[derive(Clone, PartialEq)]
pub struct Event(Arc<EventData>);

impl Event {
    /// A new event with a fresh id, the current time, normal priority and no source,
    /// correlation id or metadata.
    pub fn new(event_type: EventType, topic: impl Into<String>, payload: Value) -> Self {
        Self(Arc::new(EventData {
            id: Uuid::new_v4(),
            event_type,
            topic: topic.into(),
            payload,
            timestamp: Utc::now(),
            source: None,
            correlation_id: None,
            metadata: BTreeMap::new(),
            priority: Priority::NORMAL,
        }))
    }

    /// Wraps fully specified event data (e.g. decoded from the wire).
    pub fn from_data(data: EventData) -> Self {
        Self(Arc::new(data))
    }

    /// The event's fields.
    pub fn data(&self) -> &EventData {
        &self.0
    }

    fn edit(mut self, f: impl FnOnce(&mut EventData)) -> Self {
        f(Arc::make_mut(&mut self.0));
        self
    }

    /// Replaces the id.
    pub fn with_id(self, id: Uuid) -> Self {
        self.edit(|d| d.id = id)
    }

    /// Replaces the topic.
    pub fn with_topic(self, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        self.edit(|d| d.topic = topic)
    }

    /// Replaces the timestamp.
    pub fn with_timestamp(self, timestamp: DateTime<Utc>) -> Self {
        self.edit(|d| d.timestamp = timestamp)
    }

    /// Sets the source.
    pub fn with_source(self, source: impl Into<String>) -> Self {
        let source = source.into();
        self.edit(|d| d.source = Some(source))
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(self, correlation_id: impl Into<String>) -> Self {
        let id = correlation_id.into();
        self.edit(|d| d.correlation_id = Some(id))
    }

    /// Adds one metadata entry (replacing an earlier value of `key`).
    pub fn with_metadata(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        self.edit(|d| {
            d.metadata.insert(key, value);
        })
    }

    /// Sets the priority.
    pub fn with_priority(self, priority: Priority) -> Self {
        self.edit(|d| d.priority = priority)
    }

    /// The payload as a `T` (any type implementing `serde::Deserialize`).
    ///
    /// # Errors
    /// [`Error::Payload`] naming the event, its topic, `T`, and where in the payload the
    /// mismatch is. In a handler, `?` turns it into a failed delivery.
    ///
    /// ```
    /// use event_bus_core::{Event, EventType};
    /// use serde::Deserialize;
    /// use serde_json::json;
    ///
    /// #[derive(Debug, Deserialize)]
    /// struct Order { id: u64, items: Vec<String> }
    ///
    /// let event = Event::new(EventType::Created, "orders:eu", json!({"id": 42, "items": ["tea"]}));
    /// let order: Order = event.payload_as()?;
    /// assert_eq!((order.id, order.items.len()), (42, 1));
    ///
    /// let event = Event::new(EventType::Created, "orders:eu", json!({"id": "42", "items": []}));
    /// let err = event.payload_as::<Order>().unwrap_err().to_string();
    /// assert!(err.contains("Order") && err.contains("(at `id`)"), "{err}");
    /// # Ok::<(), event_bus_core::Error>(())
    /// ```
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_path_to_error::deserialize(&self.payload).map_err(|e| Error::Payload {
            id: self.id,
            topic: self.topic.clone(),
            type_name: std::any::type_name::<T>(),
            path: e.path().to_string(),
            source: e.into_inner(),
        })
    }
}

impl Deref for Event {
    type Target = EventData;

    fn deref(&self) -> &EventData {
        &self.0
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<EventData> for Event {
    fn from(data: EventData) -> Self {
        Self::from_data(data)
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        EventData::deserialize(deserializer).map(Self::from_data)
    }
}
