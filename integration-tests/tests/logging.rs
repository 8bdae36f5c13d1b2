//! What the buses write to the log: nothing at warn or above while idle, the periodic
//! metrics line, never a password, and a bounded volume under hostile input. One test
//! binary with a process-wide subscriber capturing the log
//! ([`integration_tests::log_capture`]), so these tests run one after another (a
//! mutex) and read only their own lines.

use std::time::Duration;

use integration_tests::{
    conformance::test_dispatcher,
    factories::{self, Factory},
    log_capture::capture,
    support::{Recorder, namespace},
};
use multibus::{DispatcherConfig, EventBusExt};

/// A subscribed, idle bus writes nothing at warn or error.
async fn idle_bus_logs_no_warnings(factory: Factory) {
    let (log, _serial) = capture().await;
    let ns = namespace();
    let bus = factory(ns.clone(), test_dispatcher()).await;
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:idle"), r.handler())
        .await
        .unwrap();
    bus.subscribe(&format!("{ns}:idle:*"), r.handler())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await; // idling is the behaviour under test
    bus.close().await.unwrap();
    let text = log.take();
    assert!(
        !text.contains("WARN") && !text.contains("ERROR"),
        "an idle {} bus logged:\n{text}",
        bus.backend()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_memory_bus_logs_no_warnings() {
    idle_bus_logs_no_warnings(factories::memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_redis_bus_logs_no_warnings() {
    idle_bus_logs_no_warnings(factories::redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_postgres_bus_logs_no_warnings() {
    idle_bus_logs_no_warnings(factories::postgres).await;
}

/// `metrics_log_interval_seconds` writes the metrics line at that interval; `0` writes none.
#[tokio::test(start_paused = true)]
async fn metrics_line_follows_the_interval() {
    let (log, _serial) = capture().await;
    let every_second = DispatcherConfig {
        metrics_log_interval_seconds: 1.0,
        ..test_dispatcher()
    };
    let bus = factories::memory(namespace(), every_second).await;
    bus.publish(integration_tests::conformance::event("m:x", 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await; // paused clock: instant
    bus.close().await.unwrap();
    let text = log.take();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("event bus metrics"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for key in [
        "queue_depth=0",
        "published=1",
        "processed=0",
        "failed=0",
        "dropped=0",
    ] {
        assert!(lines[0].contains(key), "{key} missing in {}", lines[0]);
    }

    let silent = factories::memory(namespace(), test_dispatcher()).await; // interval 0
    silent
        .publish(integration_tests::conformance::event("m:x", 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    silent.close().await.unwrap();
    assert!(!log.take().contains("event bus metrics"));
}

#[path = "logging/secrets.rs"]
mod secrets;

#[path = "logging/hostile.rs"]
mod hostile;
