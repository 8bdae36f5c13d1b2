//! PostgreSQL backend tests beyond the conformance suite: channel layout, identifiers,
//! large payloads, the wire format, transactions, TLS and faults, against a real server
//! (see `integration_tests::postgres_server`).

#[path = "postgres/close.rs"]
mod close;
#[path = "postgres/delivery.rs"]
mod delivery;
#[path = "postgres/faults.rs"]
mod faults;
#[path = "postgres/payloads.rs"]
mod payloads;
#[path = "postgres/recovery.rs"]
mod recovery;
#[path = "postgres/setup.rs"]
mod setup;
#[path = "postgres/wire.rs"]
mod wire;

use std::sync::Arc;

use integration_tests::{conformance::test_dispatcher, postgres_server};
use multibus::{DispatcherConfig, Event, EventBus, EventType, PostgresConfig, PostgresEventBus};
use serde_json::json;

/// A config for prefix `ns` on the test server, with short timeouts.
async fn config(ns: &str) -> PostgresConfig {
    config_for(&postgres_server::url().await, ns)
}

fn config_for(url: &str, ns: &str) -> PostgresConfig {
    let mut c = PostgresConfig::new(url)
        .with_channel_prefix(ns)
        .with_dispatcher(DispatcherConfig {
            consumer_error_sleep_seconds: 0.3,
            ..test_dispatcher()
        });
    c.command_timeout_seconds = 1.0;
    c
}

/// A connected bus for prefix `ns`.
async fn bus(ns: &str) -> Arc<PostgresEventBus> {
    connected(config(ns).await).await
}

async fn connected(config: PostgresConfig) -> Arc<PostgresEventBus> {
    let bus = PostgresEventBus::new(config).expect("valid config");
    bus.connect().await.expect("connect");
    Arc::new(bus)
}

fn event(topic: &str, n: u64) -> Event {
    Event::new(EventType::Created, topic, json!(n))
}

/// Drops the large-payload table of prefix `ns`, if a test created one.
async fn drop_large_table(ns: &str) {
    let client = postgres_server::client().await;
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{ns}_large_payloads\""))
        .await
        .expect("drop the large-payload table");
}
