//! One function per backend that builds a connected bus in a namespace.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use multibus::{DispatcherConfig, EventBus};

/// Builds a connected bus for namespace `ns` (channel prefix for network backends) with
/// the given dispatcher settings. Two calls with the same `ns` on a network backend give
/// two buses that see each other's events.
pub type Factory =
    fn(ns: String, dispatcher: DispatcherConfig) -> BoxFuture<'static, Arc<dyn EventBus>>;

/// The in-process backend (the namespace is irrelevant: each bus is its own world).
pub fn memory(_ns: String, dispatcher: DispatcherConfig) -> BoxFuture<'static, Arc<dyn EventBus>> {
    Box::pin(async move {
        let bus = multibus::MemoryEventBus::new(multibus::MemoryConfig { dispatcher })
            .expect("valid memory config");
        bus.connect().await.expect("memory connect");
        Arc::new(bus) as Arc<dyn EventBus>
    })
}

/// PostgreSQL: channel prefix `ns` on the server [`postgres_server`](crate::postgres_server)
/// finds.
pub fn postgres(ns: String, dispatcher: DispatcherConfig) -> BoxFuture<'static, Arc<dyn EventBus>> {
    Box::pin(async move {
        let config = multibus::PostgresConfig::new(crate::postgres_server::url().await)
            .with_channel_prefix(ns)
            .with_dispatcher(dispatcher);
        let bus = multibus::PostgresEventBus::new(config).expect("valid postgres config");
        bus.connect().await.expect("postgres connect");
        Arc::new(bus) as Arc<dyn EventBus>
    })
}

/// PostgreSQL in the durable mode (`delivery = "table"`): tables under prefix `ns`,
/// polling every 200 ms (NOTIFY wakes claimers sooner). Each test's tables stay in
/// the test database under its own prefix; `.ci/run` drops those of earlier runs.
pub fn postgres_table(
    ns: String,
    dispatcher: DispatcherConfig,
) -> BoxFuture<'static, Arc<dyn EventBus>> {
    Box::pin(async move {
        let mut config = multibus::PostgresConfig::new(crate::postgres_server::url().await)
            .with_channel_prefix(ns)
            .with_delivery(event_bus_postgres::DeliveryMode::Table)
            .with_dispatcher(dispatcher);
        config.durable.poll_interval_seconds = 0.2;
        let bus = multibus::PostgresEventBus::new(config).expect("valid postgres config");
        bus.connect().await.expect("postgres connect");
        Arc::new(bus) as Arc<dyn EventBus>
    })
}

/// Redis: channel prefix `ns` on the server [`redis_server`](crate::redis_server) finds.
pub fn redis(ns: String, dispatcher: DispatcherConfig) -> BoxFuture<'static, Arc<dyn EventBus>> {
    Box::pin(async move {
        let config = multibus::RedisConfig {
            channel_prefix: ns,
            dispatcher,
            ..multibus::RedisConfig::from_url(crate::redis_server::url().await)
                .expect("valid Redis URL")
        };
        let bus = multibus::RedisEventBus::new(config).expect("valid redis config");
        bus.connect().await.expect("redis connect");
        Arc::new(bus) as Arc<dyn EventBus>
    })
}

/// Redis in the durable mode (`delivery = "streams"`): stream `{ns}:stream` on the
/// server [`redis_server`](crate::redis_server) finds, with a 1 s lease.
pub fn redis_streams(
    ns: String,
    dispatcher: DispatcherConfig,
) -> BoxFuture<'static, Arc<dyn EventBus>> {
    Box::pin(async move {
        let mut config = multibus::RedisConfig {
            channel_prefix: ns,
            dispatcher,
            delivery: multibus::DeliveryMode::Streams,
            ..multibus::RedisConfig::from_url(crate::redis_server::url().await)
                .expect("valid Redis URL")
        };
        config.streams.lease_seconds = 1.0;
        let bus = multibus::RedisEventBus::new(config).expect("valid redis config");
        bus.connect().await.expect("redis connect");
        Arc::new(bus) as Arc<dyn EventBus>
    })
}

/// NATS: channel prefix `ns` on the server [`nats_server`](crate::nats_server) finds.
pub fn nats(ns: String, dispatcher: DispatcherConfig) -> BoxFuture<'static, Arc<dyn EventBus>> {
    Box::pin(async move {
        let config = multibus::NatsConfig {
            channel_prefix: ns,
            dispatcher,
            ..multibus::NatsConfig::from_url(crate::nats_server::url().await)
                .expect("valid NATS URL")
        };
        let bus = multibus::NatsEventBus::new(config).expect("valid nats config");
        bus.connect().await.expect("nats connect");
        Arc::new(bus) as Arc<dyn EventBus>
    })
}

/// NATS in the durable mode (`delivery = "jetstream"`): streams `eventbus_{ns}` and
/// `eventbus_{ns}-aux` on the server [`nats_server`](crate::nats_server) finds, with a
/// 1 s lease. The streams are kept in memory with a 10-minute age limit, so each test's
/// events are gone soon after it (and its empty streams at the server's next restart).
pub fn nats_jetstream(
    ns: String,
    dispatcher: DispatcherConfig,
) -> BoxFuture<'static, Arc<dyn EventBus>> {
    Box::pin(async move {
        let mut config = multibus::NatsConfig {
            channel_prefix: ns,
            dispatcher,
            delivery: multibus::nats::DeliveryMode::Jetstream,
            ..multibus::NatsConfig::from_url(crate::nats_server::url().await)
                .expect("valid NATS URL")
        };
        config.jetstream.lease_seconds = 1.0;
        config.jetstream.memory_storage = true;
        config.jetstream.max_age_seconds = 600.0;
        let bus = multibus::NatsEventBus::new(config).expect("valid nats config");
        bus.connect().await.expect("nats connect");
        Arc::new(bus) as Arc<dyn EventBus>
    })
}
