//! Core of the `multibus` crate family: the [`EventBus`] trait, [`Event`] and its
//! parts, topic and [pattern] rules, handlers, [`Subscription`], configuration, the
//! shared [`Dispatcher`] every backend delivers through, metrics and the wire
//! [envelope].
//!
//! Applications depend on the `multibus` facade crate, which re-exports all of this
//! and picks a backend from configuration. Backend authors depend on this crate.
//!
//! ```
//! use event_bus_core::{Dispatcher, DispatcherConfig, Event, EventType, Pattern, SubscribeOptions, Subscriber};
//! use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), event_bus_core::Error> {
//! let dispatcher = Dispatcher::new(DispatcherConfig::default())?;
//! let seen = Arc::new(AtomicUsize::new(0));
//! let counter = seen.clone();
//! let handler = Subscriber::handler(move |_event: Event| {
//!     let counter = counter.clone();
//!     async move { counter.fetch_add(1, Ordering::SeqCst); Ok::<(), std::io::Error>(()) }
//! });
//! dispatcher.subscribe(Pattern::parse("orders:*")?, &SubscribeOptions::new(), handler)?;
//! dispatcher.dispatch(Event::new(EventType::Created, "orders:eu", serde_json::json!({}))).await?;
//! dispatcher.dispatch(Event::new(EventType::Created, "users:eu", serde_json::json!({}))).await?;
//! dispatcher.flush().await;
//! assert_eq!(seen.load(Ordering::SeqCst), 1);
//! dispatcher.close().await;
//! # Ok(()) }
//! ```

pub mod bus;
pub mod coalesce;
pub mod config;
pub mod dead_letter;
pub mod deadline;
pub mod delivery;
pub mod dispatcher;
pub mod durable;
pub mod envelope;
pub mod error;
pub mod event;
pub mod event_type;
pub mod flush;
pub mod handler;
pub mod log_limit;
pub mod metrics;
pub mod namespace;
pub mod options;
pub mod pattern;
pub mod priority;
pub mod publish;
pub mod reconnect;
pub mod seconds;
pub mod secret;
pub mod stream;
pub mod subscription;
pub mod topic;
pub mod transport;

pub use bus::{EventBus, EventBusExt, Health, SubscribeFuture};
pub use config::{DispatcherConfig, OverflowPolicy};
pub use dead_letter::DeadLetterInfo;
pub use delivery::Delivery;
pub use dispatcher::Dispatcher;
pub use error::{BoxError, Error, PublishOutcome};
pub use event::{Event, EventData};
pub use event_type::EventType;
pub use handler::{Handler, HandlerResult, handler_fn};
pub use metrics::{Metrics, MetricsSnapshot};
pub use options::{DeadLetter, OnMaxFailures, RetryPolicy, SubscribeOptions};
pub use pattern::Pattern;
pub use priority::Priority;
pub use publish::Publish;
pub use secret::Secret;
pub use stream::EventStream;
pub use subscription::{EndReason, Subscription, SubscriptionId, SubscriptionSet};
pub use transport::{Subscriber, Transport};

/// What applications use, in one import: `use event_bus_core::prelude::*;`. Every backend
/// crate re-exports it at its root, so one dependency on a backend crate is enough.
pub mod prelude {
    pub use crate::{
        DeadLetter, DeadLetterInfo, Delivery, DispatcherConfig, EndReason, Error, Event, EventBus,
        EventBusExt, EventStream, EventType, Handler, HandlerResult, Health, MetricsSnapshot,
        OnMaxFailures, OverflowPolicy, Pattern, Priority, RetryPolicy, SubscribeOptions,
        Subscription, SubscriptionId, SubscriptionSet, handler_fn,
    };
}
