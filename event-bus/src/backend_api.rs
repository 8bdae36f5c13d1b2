//! For authors of backends and tools: the shared dispatcher, cancel plumbing, reconnect
//! backoff, config parsing helpers and metric counters that every backend builds on.
//!
//! Applications do not need anything here: they use the crate's top level and
//! [`prelude`](crate::prelude). A new backend implements [`EventBus`](crate::EventBus) by
//! handing the events it publishes and receives to a [`Dispatcher`], which runs the
//! subscriptions' queues, handler timeouts and failure counting, and gives each
//! [`Subscription`](crate::Subscription) a [`CancelSubscription`] to call back into.

pub use event_bus_core::{
    CancelSubscription, Dispatcher, Metrics, config, dispatcher, metrics, reconnect, seconds,
    secret::redact_connection_string,
};
