//! NATS faults: a cut connection (reconnect, renewed subscriptions, no duplicates), a
//! black-holed one (noticed by pings), a slow consumer (counted, not silent).

use std::{collections::HashSet, sync::Arc, time::Duration};

use integration_tests::{
    nats_server, proxy,
    support::{DEADLINE, namespace, wait_until},
};
use multibus::{DispatcherConfig, Event, EventBus, EventBusExt, NatsConfig, OverflowPolicy};
use tokio::time::Instant;

use super::{Seen, bus, config, event};

#[tokio::test]
async fn reconnect_renews_subscriptions_without_duplicates() {
    let ns = namespace();
    let proxy = proxy::TcpProxy::start(nats_server::addr().await).await;
    let via_proxy = bus(NatsConfig {
        dispatcher: DispatcherConfig {
            consumer_error_sleep_seconds: 0.2,
            ..DispatcherConfig::default()
        },
        ..NatsConfig {
            url: format!("nats://{}", proxy.addr()),
            ..config(&ns).await
        }
    })
    .await;
    let publisher = bus(config(&ns).await).await;
    let seen = Seen::default();
    let _sub = via_proxy.subscribe("r:*", seen.handler()).await.unwrap();
    for n in 0..50 {
        publisher.publish(event("r:x", n)).await.unwrap();
    }
    assert!(wait_until(DEADLINE, || seen.len() == 50).await);
    proxy.cut();
    assert!(wait_until(DEADLINE, || via_proxy.metrics().reconnects >= 1).await);
    // The round trip goes after the renewed subscriptions: they are live afterwards.
    via_proxy.flush().await.unwrap();
    assert!(via_proxy.health().await.is_healthy());
    for n in 50..100 {
        publisher.publish(event("r:x", n)).await.unwrap();
    }
    assert!(wait_until(DEADLINE, || seen.all().contains(&99)).await);
    via_proxy.flush().await.unwrap();
    let all = seen.all();
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "duplicates: {all:?}");
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    publisher.close().await.unwrap();
    via_proxy.close().await.unwrap();
}

#[tokio::test]
async fn slow_consumers_are_counted_not_silent() {
    let ns = namespace();
    let bus = bus(NatsConfig {
        subscription_capacity: 8,
        dispatcher: DispatcherConfig {
            queue_maxsize: 1,
            overflow: OverflowPolicy::Block,
            ..DispatcherConfig::default()
        },
        ..config(&ns).await
    })
    .await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let wait = gate.clone();
    let _sub = bus
        .subscribe("s:*", move |_event: Event| {
            let wait = wait.clone();
            async move {
                let _ = wait.acquire().await;
                Ok::<(), std::convert::Infallible>(())
            }
        })
        .await
        .unwrap();
    let raw = async_nats::connect(nats_server::url().await).await.unwrap();
    let payload = multibus::envelope::encode(&event("s:t", 0)).unwrap();
    for _ in 0..200 {
        raw.publish(format!("{ns}.s.t"), payload.clone().into())
            .await
            .unwrap();
    }
    raw.flush().await.unwrap();
    assert!(
        wait_until(DEADLINE, || bus.metrics().dropped > 0).await,
        "{:?}",
        bus.metrics()
    );
    gate.add_permits(1000);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_black_holed_connection_is_noticed_and_replaced() {
    let ns = namespace();
    let proxy = proxy::TcpProxy::start(nats_server::addr().await).await;
    let bus = bus(NatsConfig {
        url: format!("nats://{}", proxy.addr()),
        ping_interval_seconds: 0.2,
        command_timeout_seconds: 1.0,
        dispatcher: DispatcherConfig {
            consumer_error_sleep_seconds: 0.2,
            ..DispatcherConfig::default()
        },
        ..config(&ns).await
    })
    .await;
    let seen = Seen::default();
    let _sub = bus.subscribe("h:*", seen.handler()).await.unwrap();
    proxy.stall(true);
    let err = bus.flush().await.unwrap_err();
    assert!(matches!(err, multibus::Error::Timeout { .. }), "{err}");
    let mut health = bus.health().await;
    let deadline = Instant::now() + DEADLINE;
    while health.connected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        health = bus.health().await;
    }
    assert!(
        !health.connected && health.last_error.is_some(),
        "{health:?}"
    );
    proxy.stall(false);
    assert!(wait_until(DEADLINE, || bus.metrics().reconnects >= 1).await);
    bus.flush().await.unwrap();
    bus.publish(event("h:1", 1)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(seen.all(), [1]);
    bus.close().await.unwrap();
}
