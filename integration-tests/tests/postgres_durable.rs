//! The durable delivery mode of the PostgreSQL backend (`delivery = "table"`) against a
//! real server: groups, retries and dead letters, lease fencing, offline consumers,
//! transactional publish, crashes and killed sessions, hostile input, pattern parity.
//! Every test uses its own prefix and drops its tables at the end.

#[path = "postgres_durable/crash.rs"]
mod crash;
#[path = "postgres_durable/delivery.rs"]
mod delivery;
#[path = "postgres_durable/faults.rs"]
mod faults;
#[path = "postgres_durable/maintenance.rs"]
mod maintenance;
#[path = "postgres_durable/parity.rs"]
mod parity;
#[path = "postgres_durable/settle.rs"]
mod settle;

use std::sync::Arc;

use event_bus_postgres::DeliveryMode;
use integration_tests::{conformance::test_dispatcher, postgres_server};
use multibus::{DispatcherConfig, Event, EventBus, EventType, PostgresConfig, PostgresEventBus};
use serde_json::json;

/// A table-mode config for prefix `ns` on the test server: short poll, short timeouts.
async fn config(ns: &str) -> PostgresConfig {
    let mut c = PostgresConfig::new(postgres_server::url().await)
        .with_channel_prefix(ns)
        .with_delivery(DeliveryMode::Table)
        .with_dispatcher(DispatcherConfig {
            consumer_error_sleep_seconds: 0.3,
            ..test_dispatcher()
        });
    c.command_timeout_seconds = 2.0;
    c.durable.poll_interval_seconds = 0.2;
    c
}

/// A connected table-mode bus.
async fn connected(config: PostgresConfig) -> Arc<PostgresEventBus> {
    let bus = PostgresEventBus::new(config).expect("valid config");
    bus.connect().await.expect("connect");
    Arc::new(bus)
}

async fn bus(ns: &str) -> Arc<PostgresEventBus> {
    connected(config(ns).await).await
}

fn event(topic: &str, n: u64) -> Event {
    Event::new(EventType::Created, topic, json!(n))
}

/// The number an event carries.
fn number(e: &Event) -> u64 {
    e.payload.as_u64().expect("a numbered event")
}

/// Drops every durable table of prefix `ns`.
async fn drop_tables(ns: &str) {
    let client = postgres_server::client().await;
    let names = ["schema", "events", "groups", "deliveries", "dead_letters"]
        .map(|t| format!("\"{ns}_{t}\""))
        .join(", ");
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {names}"))
        .await
        .expect("drop the test's tables");
}

/// Rows of the prefix's table `table` (a test-side count).
async fn count_rows(ns: &str, table: &str) -> i64 {
    let client = postgres_server::client().await;
    client
        .query_one(&format!("SELECT count(*) FROM \"{ns}_{table}\""), &[])
        .await
        .expect("count rows")
        .get(0)
}
