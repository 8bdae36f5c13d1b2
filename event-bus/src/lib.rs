#![doc = include_str!("../../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod env;
mod factory;

pub use backend::{BackendName, Config};
pub use event_bus_core::*;
pub use factory::create_event_bus;

/// In-process backend.
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use event_bus_memory::{MemoryConfig, MemoryEventBus};

/// Redis pub/sub backend.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use event_bus_redis::{RedisConfig, RedisEventBus};

/// PostgreSQL LISTEN/NOTIFY backend.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use event_bus_postgres::{PostgresConfig, PostgresEventBus};

/// The names most programs need: `use event_bus::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Config, Error, Event, EventBus, EventBusExt, EventType, Priority, Subscription,
        create_event_bus,
    };
}
