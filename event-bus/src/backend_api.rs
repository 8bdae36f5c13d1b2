//! For authors of backends and tools: the shared dispatcher, the [`Transport`] a backend
//! gives it, reconnect backoff, config parsing helpers and metric counters that every
//! backend builds on.
//!
//! Applications do not need anything here: they use the crate's top level and
//! [`prelude`](crate::prelude). A new backend implements [`EventBus`](crate::EventBus) by
//! handing the events it publishes and receives to a [`Dispatcher`], which runs the
//! subscriptions' queues, handler timeouts, retries, dead letters and lifecycle, and
//! implements [`Transport`] so that the dispatcher can publish dead letters and release
//! the server side of subscriptions that end.

pub use event_bus_core::{
    Dispatcher, Metrics, Subscriber, Transport, config, dispatcher, flush, log_limit, metrics,
    reconnect, seconds,
};
