//! NATS backend of the `multibus` crate family: core NATS pub/sub, or durable delivery
//! on JetStream.
//!
//! [`NatsEventBus`] publishes each event as a versioned JSON envelope
//! (`docs/wire-format.md`) on one client connection, which also receives; every
//! received event goes through the shared [`Dispatcher`](event_bus_core::Dispatcher)
//! (queues, priorities, timeouts, retries, failure tracking), exactly as on the memory
//! backend.
//!
//! # Subjects
//!
//! Topic `orders:eu` travels on subject `{channel_prefix}.orders.eu` (prefix `events`
//! by default), with the characters NATS reserves encoded; see [`subject`] for the
//! table. A subscription to a plain topic subscribes to its subject; a wildcard pattern
//! subscribes to a subject wildcard matching at least the same topics
//! (`orders:*` → `events.orders.>`), and the core [pattern](event_bus_core::pattern)
//! language then decides exactly, so escapes and character classes behave as on every
//! other backend. Local subscriptions that need the same server subscription share it;
//! each local subscription receives an event once.
//!
//! # Guarantees
//!
//! Core NATS (the default, `delivery = "pubsub"`) is **at-most-once**: an event
//! published while a subscriber is disconnected is lost for that subscriber, and
//! nothing is replayed. A publish hands
//! the event to the client, which writes it to the server; while the connection is
//! down the client buffers publishes until it reconnects, and a publish that cannot
//! even be buffered within `command_timeout_seconds` fails with [`Error::Publish`],
//! handing the event back ([`PublishOutcome::NotSent`](event_bus_core::PublishOutcome):
//! safe to retry). When the
//! client cannot keep up with a subscription (its buffer of `subscription_capacity`
//! messages is full) it drops messages: each is counted in `dropped` and logged as a
//! slow consumer (rate-limited).
//!
//! # Durable mode
//!
//! With `delivery = "jetstream"` ([`DeliveryMode::Jetstream`], settings in
//! [`JetStreamConfig`]) events are stored in a JetStream stream and delivered
//! **at-least-once** per consumer group: one durable pull consumer per group, `+ACK` on
//! success, `-NAK` with the retry backoff, the server's delivery count as attempt, dead
//! letters on the group's subject ([`NatsEventBus::dead_letters`],
//! [`NatsEventBus::redrive`]), crash recovery after `jetstream.lease_seconds`. See the
//! [`jetstream`] module for the stream layout and `docs/backends/nats.md` for the
//! guarantees.
//!
//! # Reconnects and clusters
//!
//! When the connection is lost (server restart, network cut, missed pings) the client
//! reconnects with exponential backoff capped at
//! `dispatcher.consumer_error_sleep_seconds`, to any server of the `url` list or of the
//! cluster it learned about, and renews every subscription; the bus counts the
//! reconnect in [`MetricsSnapshot::reconnects`]
//! and logs a warning. `health()` reports the connection state and last error.
//!
//! # Example
//!
//! ```no_run
//! use event_bus_core::{Event, EventBus, EventBusExt, EventType};
//! use event_bus_nats::{NatsConfig, NatsEventBus};
//!
//! # #[tokio::main] async fn main() -> Result<(), event_bus_core::Error> {
//! let bus = NatsEventBus::new(NatsConfig {
//!     channel_prefix: "shop".into(),
//!     ..NatsConfig::from_url("nats://localhost:4222")?
//! })?;
//! bus.connect().await?;
//! let sub = bus
//!     .subscribe("orders:*", |event: Event| async move {
//!         println!("{} on {}", event.event_type, event.topic);
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .await?;
//! // Travels on subject `shop.orders.eu`.
//! bus.publish(Event::new(EventType::Created, "orders:eu", serde_json::json!({"id": 1}))).await?;
//! bus.flush().await?;
//! sub.cancel().await;
//! bus.close().await?;
//! # Ok(()) }
//! ```

mod bus;
mod config;
mod durable;
mod echo;
pub mod jetstream;
mod link;
mod parts;
mod routes;
mod servers;
pub mod subject;

pub use bus::NatsEventBus;
pub use config::NatsConfig;
pub use event_bus_core::namespace::MAX_PREFIX_LEN;
pub use jetstream::{
    DeliveryMode, JetStreamConfig, JetStreamMetrics, NatsGroupInfo, StartPosition,
};

// What applications need besides the bus itself, so that this crate alone is enough.
pub use event_bus_core::prelude::*;

/// The bus, its config and everything applications use: `use event_bus_nats::prelude::*;`.
pub mod prelude {
    pub use crate::{NatsConfig, NatsEventBus};
    pub use event_bus_core::prelude::*;
}
