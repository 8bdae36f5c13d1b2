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
        "backend `{backend}` is not compiled in: enable the `{feature}` feature of the `event-bus` crate"
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

    /// Sending an event to the server failed. The event is handed back for a retry;
    /// it may or may not have reached the server.
    #[error("publishing event {} on topic {:?} failed: {source}", .event.id, .event.topic)]
    Publish {
        /// The event that could not be published.
        event: Box<Event>,
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
        operation: String,
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

    /// The event a failed publish hands back, if any.
    pub fn into_event(self) -> Option<Event> {
        match self {
            Self::QueueFull { event } | Self::Publish { event, .. } => Some(*event),
            _ => None,
        }
    }
}
