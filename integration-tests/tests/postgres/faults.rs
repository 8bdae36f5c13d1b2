//! Faults injected for real: server-side kills and a TCP proxy that cuts, refuses or
//! stalls.

use std::time::{Duration, Instant};

use integration_tests::{
    postgres_server,
    proxy::TcpProxy,
    support::{DEADLINE, Recorder, namespace, wait_until},
};
use multibus::{Error, EventBus, EventBusExt};

use super::{bus, config_for, connected, event};

#[tokio::test]
async fn reconnects_after_its_listener_is_terminated() {
    let ns = namespace();
    let bus = bus(&ns).await;
    let topic = format!("{ns}:t");
    let (exact, pattern) = (Recorder::new(), Recorder::new());
    bus.subscribe(&topic, exact.handler()).await.unwrap();
    bus.subscribe(&format!("{ns}:*"), pattern.handler())
        .await
        .unwrap();
    let client = postgres_server::client().await;
    let killed: Vec<bool> = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("eventbus-listen-{ns}")],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(killed, [true], "exactly our one listener is terminated");
    assert!(
        wait_until(DEADLINE, || bus.metrics().reconnects == 1).await,
        "{:?}",
        bus.metrics()
    );
    bus.publish(event(&topic, 1)).await.unwrap();
    exact.wait_for(1, DEADLINE).await;
    pattern.wait_for(1, DEADLINE).await;
    bus.flush().await.unwrap();
    assert!(bus.health().await.is_healthy());
    assert_eq!(bus.metrics().reconnects, 1);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn reconnects_after_a_proxy_cut_and_publishes_again() {
    let ns = namespace();
    let proxy = TcpProxy::start(postgres_server::addr().await).await;
    let url = postgres_server::url_via(proxy.addr()).await;
    let bus = connected(config_for(&url, &ns)).await;
    let topic = format!("{ns}:t");
    let r = Recorder::new();
    bus.subscribe(&topic, r.handler()).await.unwrap();
    bus.publish(event(&topic, 1)).await.unwrap();
    r.wait_for(1, DEADLINE).await;
    proxy.cut();
    assert!(
        wait_until(DEADLINE, || bus.metrics().reconnects >= 1).await,
        "{:?}",
        bus.metrics()
    );
    // The pool's connections were cut too: the first publish may find one dead.
    let deadline = Instant::now() + DEADLINE;
    while bus.publish(event(&topic, 2)).await.is_err() {
        assert!(Instant::now() < deadline, "publishing never recovered");
    }
    r.wait_for(2, DEADLINE).await;
    bus.close().await.unwrap();
}

#[tokio::test]
async fn publish_during_an_outage_fails_within_a_deadline() {
    let ns = namespace();
    let proxy = TcpProxy::start(postgres_server::addr().await).await;
    let url = postgres_server::url_via(proxy.addr()).await;
    let bus = connected(config_for(&url, &ns)).await; // command_timeout_seconds = 1
    let topic = format!("{ns}:t");

    // Server unreachable: connections refused.
    proxy.refuse(true);
    proxy.cut();
    let sent = event(&topic, 1);
    let started = Instant::now();
    let err = bus.publish(sent.clone()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Publish { .. }), "{err}");
    assert_eq!(err.into_event(), Some(sent));
    assert!(!bus.health().await.is_healthy());

    // Server black-holed: statements time out.
    proxy.refuse(false);
    let deadline = Instant::now() + DEADLINE;
    while bus.publish(event(&topic, 2)).await.is_err() {
        assert!(Instant::now() < deadline, "publishing never recovered");
    }
    proxy.stall(true);
    let started = Instant::now();
    for n in 0..4 {
        assert!(bus.publish(event(&topic, n)).await.is_err());
    }
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    proxy.stall(false);
    bus.close().await.unwrap();
}
