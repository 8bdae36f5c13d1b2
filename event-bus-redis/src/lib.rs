//! Redis pub/sub backend of the `multibus` crate family.
//!
//! [`RedisEventBus`] publishes each event as a versioned JSON envelope
//! (`docs/wire-format.md`) with `PUBLISH` on one multiplexed connection, and receives on
//! one dedicated pub/sub connection; every received event goes through the shared
//! [`Dispatcher`](event_bus_core::Dispatcher) (queues, priorities, timeouts, failure
//! tracking), exactly as on the memory backend.
//!
//! # Channels
//!
//! Topic `t` travels on the Redis channel `{channel_prefix}:t` (prefix `events` by
//! default; a prefix is ASCII letters, digits and `_`, see
//! [`event_bus_core::namespace`]), so applications with different prefixes share a
//! server without seeing each other's events. A subscription to a plain topic is a `SUBSCRIBE` of its channel;
//! a wildcard pattern is a `PSUBSCRIBE` of a Redis glob matching at least the same
//! channels, and the core [pattern](event_bus_core::pattern) language then decides
//! exactly, so escapes and character classes behave as on every other backend. Local
//! subscriptions that need the same server subscription share it; each local
//! subscription receives an event once, however many server subscriptions match it.
//!
//! # Guarantees
//!
//! Redis pub/sub is **at-most-once**: an event published while a subscriber is
//! disconnected is lost for that subscriber, and nothing is replayed. A publish that
//! fails returns [`Error::Publish`] with the event and
//! its [`PublishOutcome`](event_bus_core::PublishOutcome): `NotSent` (safe to retry)
//! when the publishing connection was known to be down, the server refused the command
//! or the event is larger than `max_message_bytes`; `Unknown` (it may have been
//! published) when the connection was lost or `command_timeout_seconds` passed after it
//! was sent. `close()` stops receiving first, so every event the bus received is
//! delivered or counted in `dropped` when it returns.
//!
//! # Durable delivery
//!
//! With [`RedisConfig::delivery`] set to [`DeliveryMode::Streams`], events are added to
//! one Redis stream per prefix (`{channel_prefix}:stream`) instead, and each subscription
//! reads it as a member of a consumer group: **at-least-once**, nothing lost while a
//! subscriber is away or after it crashes, members in any number of processes sharing
//! the events, acknowledgement on success only, retries counted by the server, and the
//! last failure moved atomically to the group's dead-letter stream. Groups, leases,
//! retention, redrive and operations are described in `docs/backends/redis.md` (*Durable
//! mode*); [`RedisEventBus::groups`], [`RedisEventBus::dead_letters`],
//! [`RedisEventBus::redrive`] and [`RedisEventBus::stream_metrics`] operate it.
//!
//! # Reconnects
//!
//! When the pub/sub connection is lost (server restart, `CLIENT KILL`, a network cut, or
//! a failed periodic `PING`), the bus logs a warning, reconnects with
//! [`Backoff`](event_bus_core::reconnect::Backoff) (exponential, capped at
//! `dispatcher.consumer_error_sleep_seconds`, cut short when the server accepts
//! connections again), subscribes every live subscription again exactly once, counts the
//! reconnect in
//! [`MetricsSnapshot::reconnects`](event_bus_core::MetricsSnapshot::reconnects) and logs
//! another warning. `health()` reports the connection state and last error. The
//! publishing connection is replaced in the background the same way; meanwhile
//! publishes fail at once.
//!
//! # Example
//!
//! ```no_run
//! use event_bus_core::{Event, EventBus, EventBusExt, EventType};
//! use event_bus_redis::{RedisConfig, RedisEventBus};
//!
//! # #[tokio::main] async fn main() -> Result<(), event_bus_core::Error> {
//! let bus = RedisEventBus::new(RedisConfig {
//!     channel_prefix: "shop".into(),
//!     ..RedisConfig::from_url("redis://localhost:6379")?
//! })?;
//! bus.connect().await?;
//! let sub = bus
//!     .subscribe("orders:*", |event: Event| async move {
//!         println!("{} on {}", event.event_type, event.topic);
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .await?;
//! // Travels on channel `shop:orders:eu`.
//! bus.publish(Event::new(EventType::Created, "orders:eu", serde_json::json!({"id": 1}))).await?;
//! bus.flush().await?;
//! sub.cancel().await;
//! bus.close().await?;
//! # Ok(()) }
//! ```

mod buffer;
mod bus;
mod channel;
mod config;
mod durable;
mod listener;
mod publisher;
mod registry;
mod streams;

pub use bus::RedisEventBus;
pub use config::RedisConfig;
pub use event_bus_core::namespace::MAX_PREFIX_LEN;
pub use streams::{DeliveryMode, GroupInfo, StartPosition, StreamMetrics, StreamsConfig};

// What applications need besides the bus itself, so that this crate alone is enough.
pub use event_bus_core::prelude::*;

/// The bus, its config and everything applications use: `use event_bus_redis::prelude::*;`.
pub mod prelude {
    pub use crate::{RedisConfig, RedisEventBus};
    pub use event_bus_core::prelude::*;
}
