//! PostgreSQL LISTEN/NOTIFY backend of the `multibus` crate family: a service that
//! already runs PostgreSQL gets an event bus with no new infrastructure.
//!
//! * **Publishing** sends `SELECT pg_notify($1, $3), pg_notify($2, $3)` (bind
//!   parameters, never SQL built from strings) on a connection of a small
//!   `deadpool-postgres` pool (`pool_size`, `pool_timeout_seconds`);
//!   [`publish_batch`](event_bus_core::EventBus::publish_batch) sends a whole batch in
//!   one statement over `unnest` of two arrays.
//! * **Receiving**: one dedicated connection LISTENs; events go through the shared
//!   [`Dispatcher`](event_bus_core::Dispatcher). `subscribe` returns once the LISTEN has
//!   executed, so an event published after it returns is delivered.
//! * **Channels** (see [`channel`]): a topic's events go to `{prefix}_{hash}` for exact
//!   subscriptions *and* to `{prefix}_all` for wildcard subscriptions, which are matched
//!   locally. Each publish therefore costs two notifications, and a bus with any
//!   wildcard subscription receives every event of its prefix.
//! * **Large events**: envelopes of 8000 bytes or more (NOTIFY's limit) are stored in a
//!   table and sent by reference; nothing is rejected for size below
//!   `max_message_bytes` (see the `large` module docs, summarized in
//!   `docs/backends/postgres.md`).
//! * **Transactions**: [`PostgresEventBus::publish_in`] publishes through the caller's
//!   transaction, so the event is delivered when it commits and never if it rolls back.
//! * **TLS** with rustls, following libpq's `sslmode`: `prefer` (default) and `require`
//!   encrypt without verifying the certificate, `verify-ca`/`verify-full` verify it
//!   against the Mozilla roots, `disable` never encrypts.
//! * **Durable delivery** (`delivery = "table"`, see [`durable`]): at-least-once per
//!   consumer group through a delivery table woken by NOTIFY, with server-side attempt
//!   counts, leases, retries, dead letters ([`PostgresEventBus::dead_letters`],
//!   [`PostgresEventBus::redrive`]) and transactional publish.
//! * **Reconnect**: a lost LISTEN connection is reopened with backoff and every channel
//!   is LISTENed again; the reconnect is counted and logged.
//!
//! # Guarantees
//!
//! In the default `delivery = "notify"` mode, at-most-once: an event published while a bus's LISTEN connection is down is lost
//! for that bus. Events from one publishing task arrive in publish order (PostgreSQL
//! delivers notifications in commit order). Malformed notifications are counted in
//! `malformed`, skipped, and logged within a rate limit
//! ([`event_bus_core::log_limit`]). `close()` stops the LISTEN connection before the
//! dispatcher: every event the bus received is delivered or counted in `dropped`.
//!
//! # Example
//!
//! ```no_run
//! use event_bus_core::{Event, EventBus, EventBusExt, EventType};
//! use event_bus_postgres::{PostgresConfig, PostgresEventBus};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), event_bus_core::Error> {
//! let config = PostgresConfig::new("host=127.0.0.1 user=postgres dbname=app")
//!     .with_channel_prefix("shop");
//! let bus = PostgresEventBus::new(config)?;
//! bus.connect().await?;
//! let sub = bus.subscribe("orders:*", |e: Event| async move {
//!     println!("{} on {}", e.event_type, e.topic);
//!     Ok::<(), std::io::Error>(())
//! }).await?;
//! bus.publish(Event::new(EventType::Created, "orders:eu", serde_json::json!({"id": 1}))).await?;
//! bus.flush().await?;
//! sub.cancel().await;
//! bus.close().await?;
//! # Ok(()) }
//! ```

mod bus;
pub mod channel;
mod config;
mod connect;
pub mod durable;
mod large;
mod listener;
mod outgoing;
mod publisher;
mod receive;
mod redact;
mod tls;

pub use bus::PostgresEventBus;
pub use config::PostgresConfig;
pub use connect::{RawConnection, connect_raw};
pub use durable::{DeadLetterEntry, DeliveryMode, DurableConfig, DurableGroupStats, DurableHealth};
pub use large::NOTIFY_PAYLOAD_LIMIT;
/// The driver, re-exported so that [`PostgresEventBus::publish_in`] callers need no
/// separate dependency.
pub use tokio_postgres;

// What applications need besides the bus itself, so that this crate alone is enough.
pub use event_bus_core::prelude::*;

/// The bus, its config and everything applications use: `use event_bus_postgres::prelude::*;`.
pub mod prelude {
    pub use crate::{PostgresConfig, PostgresEventBus};
    pub use event_bus_core::prelude::*;
}
