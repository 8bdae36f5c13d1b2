//! The one error type of the core crate and of every backend built on it.

use std::time::Duration;

use crate::event::Event;

/// A boxed error from a driver, a handler or the operating system.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong when building, using or closing an event bus.
///
/// Variants that concern one event which could be retried (`QueueFull`, `Publish`)
/// hand that event back so nothing is lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bus was closed: it accepts no more publishes or subscriptions.
    #[error("event bus is closed")]
    Closed,

    /// A topic broke the topic rules (see [`crate::topic`]).
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The rejected topic.
        topic: String,
        /// Which rule it broke.
        reason: String,
    },

    /// A subscription pattern broke the pattern rules (see [`crate::pattern`]).
    #[error("invalid pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The rejected pattern.
        pattern: String,
        /// Which rule it broke.
        reason: String,
    },

    /// A configuration key had a bad value, an unknown name or a wrong type.
    #[error("invalid config `{key}`: {message}")]
    Config {
        /// Dotted path of the offending key, e.g. `dispatcher.queue_maxsize`.
        key: String,
        /// What is wrong with it.
        message: String,
    },

    /// The configuration names a backend whose Cargo feature is not enabled.
    #[error(
        "backend `{backend}` is not compiled in: enable the `{feature}` feature of the `multibus` crate"
    )]
    BackendDisabled {
        /// The backend that was asked for.
        backend: String,
        /// The Cargo feature that provides it.
        feature: String,
    },

    /// The overflow policy is `reject` and a matching subscription's queue is full.
    /// No subscription received the event; it is handed back for a retry.
    #[error("queue full: event {} on topic {:?} rejected", .event.id, .event.topic)]
    QueueFull {
        /// The event that was not accepted.
        event: Box<Event>,
    },

    /// Sending an event to the server failed. The event is handed back; `outcome` says
    /// whether publishing it again is safe ([`PublishOutcome::NotSent`]) or may deliver
    /// it twice ([`PublishOutcome::Unknown`]). See [`Error::publish_outcome`].
    #[error("publishing event {} on topic {:?} failed ({outcome}): {source}", .event.id, .event.topic)]
    Publish {
        /// The event that could not be published (for a batch, its first event).
        event: Box<Event>,
        /// Whether the event may have reached the server.
        outcome: PublishOutcome,
        /// Why.
        #[source]
        source: BoxError,
    },

    /// Talking to the server failed (connect, subscribe, listen).
    #[error("{context}: {source}")]
    Connection {
        /// What was being attempted.
        context: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// An operation did not finish within its deadline.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being attempted.
        operation: crate::deadline::Operation,
        /// The deadline that passed.
        after: Duration,
    },

    /// A message from the wire could not be decoded into an event.
    #[error("malformed message: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },

    /// An event's payload does not have the shape [`Event::payload_as`] was asked for.
    #[error(
        "payload of event {id} on topic {topic:?} is not a `{type_name}`: {source} (at `{path}`)"
    )]
    Payload {
        /// The event's id.
        id: uuid::Uuid,
        /// The event's topic.
        topic: String,
        /// The type that was asked for.
        type_name: &'static str,
        /// Where in the payload the mismatch is, e.g. `items[0].qty` (`.` for the whole
        /// payload).
        path: String,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },

    /// An event could not be encoded for the wire.
    #[error("cannot encode event: {0}")]
    Encode(#[source] serde_json::Error),
}

impl Error {
    /// Builds [`Error::Config`] for `key` with `message`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Builds [`Error::Connection`] with some context and the driver's error.
    pub fn connection(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Connection {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Builds [`Error::Publish`] handing `event` back.
    pub fn publish(event: Event, outcome: PublishOutcome, source: impl Into<BoxError>) -> Self {
        Self::Publish {
            event: Box::new(event),
            outcome,
            source: source.into(),
        }
    }

    /// For [`Error::Publish`], whether the event may have reached the server; `None`
    /// for every other error.
    ///
    /// ```
    /// use event_bus_core::{Error, Event, EventType, error::PublishOutcome};
    /// let event = Event::new(EventType::Created, "orders", serde_json::json!({}));
    /// let err = Error::publish(event, PublishOutcome::NotSent, "not connected");
    /// assert!(err.publish_outcome().is_some_and(PublishOutcome::is_safe_to_retry));
    /// ```
    pub fn publish_outcome(&self) -> Option<PublishOutcome> {
        match self {
            Self::Publish { outcome, .. } => Some(*outcome),
            _ => None,
        }
    }

    /// The event a failed publish hands back, if any.
    pub fn into_event(self) -> Option<Event> {
        match self {
            Self::QueueFull { event } | Self::Publish { event, .. } => Some(*event),
            _ => None,
        }
    }
}

/// What a failed publish may have done, for [`Error::Publish`]: whether the event can be
/// published again without risk of delivering it twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// The event never reached the server (the bus knew it was disconnected, the
    /// connection could not be opened, or the server refused the statement): nobody
    /// received it, and publishing it again cannot duplicate it.
    NotSent,
    /// The event was sent but no answer came (the connection was lost or the command
    /// timed out while waiting): it may already have been delivered, and publishing it
    /// again may deliver it twice.
    Unknown,
}

impl PublishOutcome {
    /// Whether publishing the event again cannot deliver it twice.
    pub fn is_safe_to_retry(self) -> bool {
        self == Self::NotSent
    }
}

impl std::fmt::Display for PublishOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotSent => "not sent: safe to retry",
            Self::Unknown => "outcome unknown: it may have been delivered",
        })
    }
}
