#![doc = include_str!("lib.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
pub mod backend_api;
mod env;
mod factory;
mod url_scheme;

// The bus.
pub use event_bus_core::{
    EventBus, EventBusExt, Health, MetricsSnapshot, Publish, metrics::LatencyHistogram,
};

// Events, topics and patterns.
pub use event_bus_core::{
    Event, EventData, EventType, Pattern, Priority, envelope, pattern, topic,
};

// Subscribing.
pub use event_bus_core::{
    DeadLetter, DeadLetterInfo, Delivery, EndReason, EventStream, Handler, HandlerResult,
    OnMaxFailures, RetryPolicy, SubscribeOptions, Subscription, SubscriptionId, SubscriptionSet,
    dead_letter, handler::HandlerFuture, handler_fn,
};

// Errors.
pub use event_bus_core::{BoxError, Error, PublishOutcome};

// Configuration.
pub use backend::{BackendName, Config};
pub use event_bus_core::{DispatcherConfig, OverflowPolicy, Secret};
pub use factory::create_event_bus;

// Backends, each behind the Cargo feature of its name.
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use event_bus_memory::{MemoryConfig, MemoryEventBus};
/// The NATS backend crate, for what only it has (the durable mode's `DeliveryMode`,
/// `JetStreamConfig`, groups and counters).
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use event_bus_nats as nats;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use event_bus_nats::{NatsConfig, NatsEventBus};
/// The PostgreSQL backend crate, for what only it has (the durable mode's
/// `DeliveryMode`, `DurableConfig`, dead letters and statistics).
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use event_bus_postgres as postgres;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use event_bus_postgres::{PostgresConfig, PostgresEventBus};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use event_bus_redis::{
    DeliveryMode, GroupInfo, RedisConfig, RedisEventBus, StartPosition, StreamMetrics,
    StreamsConfig,
};

/// The names most programs need: `use multibus::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Config, Delivery, Error, Event, EventBus, EventBusExt, EventStream, EventType,
        HandlerResult, Priority, RetryPolicy, SubscribeOptions, Subscription, create_event_bus,
        handler_fn,
    };
}

/// The README's examples, compiled and run as doctests so that they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The examples of `docs/configuration.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/configuration.md")]
struct ConfigurationDoctests;

/// The examples of `docs/getting-started.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/getting-started.md")]
struct GettingStartedDoctests;
