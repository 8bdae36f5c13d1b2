//! The NATS backend against real `nats-server` processes: the shared test server
//! (`EVENT_BUS_NATS_URL`, else 127.0.0.1:4222) and private ones for authentication,
//! TLS errors and a three-node cluster. Each test uses its own channel prefix.

#![allow(missing_docs, unreachable_pub)]

#[path = "../../integration-tests/src/nats_server.rs"]
mod nats_server;
#[allow(dead_code)]
#[path = "../../integration-tests/src/proxy.rs"]
mod proxy;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use event_bus_core::{
    DispatcherConfig, Event, EventBus, EventBusExt, EventType, OverflowPolicy, Secret,
};
use event_bus_nats::{NatsConfig, NatsEventBus};
use nats_server::PrivateServer;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(10);

fn namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

async fn config(ns: &str) -> NatsConfig {
    NatsConfig {
        channel_prefix: ns.to_owned(),
        ..NatsConfig::from_url(nats_server::url().await).expect("valid NATS URL")
    }
}

async fn bus(config: NatsConfig) -> NatsEventBus {
    let bus = NatsEventBus::new(config).expect("valid config");
    bus.connect().await.expect("connect");
    bus
}

fn event(topic: &str, n: u64) -> Event {
    Event::new(EventType::Created, topic, serde_json::json!({ "n": n }))
}

async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Records the `n` of every event received.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u64>>>);

impl Seen {
    fn handler(&self) -> impl event_bus_core::Handler + use<> {
        let seen = self.clone();
        move |event: Event| {
            let seen = seen.clone();
            async move {
                let n = event.payload["n"].as_u64().unwrap_or(u64::MAX);
                seen.0.lock().unwrap().push(n);
                Ok::<(), std::convert::Infallible>(())
            }
        }
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn all(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn topics_with_reserved_characters_reach_exactly_their_subscriptions() {
    let ns = namespace();
    let publisher = bus(config(&ns).await).await;
    let receiver = bus(config(&ns).await).await;
    let exact = Seen::default();
    let wildcard = Seen::default();
    let class = Seen::default();
    let other = Seen::default();
    let _s1 = receiver
        .subscribe("v1.2:a*b:>", exact.handler())
        .await
        .unwrap();
    let _s2 = receiver
        .subscribe("v1.2:*", wildcard.handler())
        .await
        .unwrap();
    let _s3 = receiver
        .subscribe("v1.2:a[*]b:?", class.handler())
        .await
        .unwrap();
    let _s4 = receiver
        .subscribe("v1%2E2:*", other.handler())
        .await
        .unwrap();
    for n in 0..20 {
        publisher.publish(event("v1.2:a*b:>", n)).await.unwrap();
    }
    publisher.publish(event("v1%2E2:x", 99)).await.unwrap();
    assert!(wait_until(DEADLINE, || wildcard.len() == 20 && other.len() == 1).await);
    receiver.flush().await.unwrap();
    assert_eq!(exact.all(), (0..20).collect::<Vec<_>>());
    assert_eq!(class.all(), (0..20).collect::<Vec<_>>());
    assert_eq!(wildcard.all(), (0..20).collect::<Vec<_>>());
    assert_eq!(other.all(), [99]);
    assert_eq!(receiver.metrics().malformed, 0);
    publisher.close().await.unwrap();
    receiver.close().await.unwrap();
}

#[tokio::test]
async fn flush_returns_after_own_events_are_handled() {
    let ns = namespace();
    let bus = bus(config(&ns).await).await;
    let seen = Seen::default();
    let _sub = bus.subscribe("a:*", seen.handler()).await.unwrap();
    let _same = bus.subscribe("a:*", seen.handler()).await.unwrap();
    for n in 0..500 {
        bus.publish(event("a:b", n)).await.unwrap();
    }
    bus.flush().await.unwrap();
    assert_eq!(
        seen.len(),
        1000,
        "each of two subscriptions gets each event once"
    );
    bus.close().await.unwrap();
}

#[tokio::test]
async fn malformed_messages_are_counted_and_skipped() {
    let ns = namespace();
    let bus = bus(config(&ns).await).await;
    let seen = Seen::default();
    let _sub = bus.subscribe("x:*", seen.handler()).await.unwrap();
    let raw = async_nats::connect(nats_server::url().await).await.unwrap();
    raw.publish(format!("{ns}.x.y"), "not json".into())
        .await
        .unwrap();
    // A valid envelope on the subject of another topic.
    let misplaced = event_bus_core::envelope::encode(&event("x:z", 1)).unwrap();
    raw.publish(format!("{ns}.x.y"), misplaced.into())
        .await
        .unwrap();
    raw.publish(format!("{ns}.x.y"), "x".repeat(10_000).into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    assert!(wait_until(DEADLINE, || bus.metrics().malformed == 3).await);
    bus.publish(event("x:y", 7)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(seen.all(), [7]);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn close_delivers_or_counts_every_received_event() {
    let ns = namespace();
    let bus = bus(NatsConfig {
        dispatcher: DispatcherConfig {
            shutdown_timeout_seconds: 0.2,
            ..DispatcherConfig::default()
        },
        ..config(&ns).await
    })
    .await;
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let _sub = bus
        .subscribe("c:*", move |_event: Event| {
            let counter = counter.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<(), std::convert::Infallible>(())
            }
        })
        .await
        .unwrap();
    let events: Vec<Event> = (0..1000).map(|n| event("c:d", n)).collect();
    bus.publish_batch(events).await.unwrap();
    bus.close().await.unwrap();
    let m = bus.metrics();
    let after_close = handled.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        after_close,
        "no call after close"
    );
    assert_eq!(m.delivered + m.dropped, m.received, "{m:?}");
    assert!(bus.publish(event("c:d", 0)).await.is_err());
}

#[tokio::test]
async fn cancel_ends_the_server_subscription_and_a_new_one_starts_clean() {
    let ns = namespace();
    let bus = bus(config(&ns).await).await;
    let first = Seen::default();
    let sub = bus.subscribe("k:*", first.handler()).await.unwrap();
    bus.publish(event("k:1", 1)).await.unwrap();
    bus.flush().await.unwrap();
    sub.cancel().await;
    bus.publish(event("k:1", 2)).await.unwrap();
    bus.flush().await.unwrap();
    let second = Seen::default();
    let _sub = bus.subscribe("k:*", second.handler()).await.unwrap();
    bus.publish(event("k:1", 3)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!((first.all(), second.all()), (vec![1], vec![3]));
    bus.close().await.unwrap();
}

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
    let payload = event_bus_core::envelope::encode(&event("s:t", 0)).unwrap();
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
async fn user_password_and_token_authenticate_and_stay_secret() {
    let server = PrivateServer::start(&["--user", "app", "--pass", "pw-s3cret"]).await;
    let ns = namespace();
    let good = bus(NatsConfig {
        url: format!("nats://app:pw-s3cret@127.0.0.1:{}", server.port()),
        channel_prefix: ns.clone(),
        ..NatsConfig::default()
    })
    .await;
    let seen = Seen::default();
    let _sub = good.subscribe("a:*", seen.handler()).await.unwrap();
    good.publish(event("a:b", 1)).await.unwrap();
    good.flush().await.unwrap();
    assert_eq!(seen.all(), [1]);
    assert!(!format!("{good:?}").contains("pw-s3cret"));
    good.close().await.unwrap();

    let bad = NatsEventBus::new(NatsConfig {
        url: server.url(),
        username: Some("app".into()),
        password: Some(Secret::new("wrong-s3cret")),
        command_timeout_seconds: 2.0,
        ..NatsConfig::default()
    })
    .unwrap();
    let err = bad.connect().await.unwrap_err().to_string();
    assert!(
        err.contains("authorization") && err.contains("check the user name"),
        "{err}"
    );
    assert!(!err.contains("wrong-s3cret"), "{err}");
    let health = format!("{:?}", bad.health().await);
    assert!(!health.contains("wrong-s3cret"), "{health}");

    let server = PrivateServer::start(&["--auth", "tok-s3cret"]).await;
    let token = bus(NatsConfig {
        url: server.url(),
        token: Some(Secret::new("tok-s3cret")),
        ..NatsConfig::default()
    })
    .await;
    token.flush().await.unwrap();
    token.close().await.unwrap();
    let in_url =
        bus(
            NatsConfig::from_url(format!("nats://tok-s3cret@127.0.0.1:{}", server.port())).unwrap(),
        )
        .await;
    assert!(in_url.health().await.is_healthy());
    in_url.close().await.unwrap();
}

#[tokio::test]
async fn tls_against_a_plain_server_fails_clearly() {
    let server = PrivateServer::start(&[]).await;
    let bus = NatsEventBus::new(NatsConfig {
        url: format!("tls://u:tls-s3cret@127.0.0.1:{}", server.port()),
        command_timeout_seconds: 2.0,
        ..NatsConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let err = bus.connect().await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.contains("TLS"), "{err}");
    assert!(
        err.contains(&format!("tls://u:***@127.0.0.1:{}", server.port())),
        "{err}"
    );
    assert!(!err.contains("tls-s3cret"), "{err}");
}

#[tokio::test]
async fn events_above_the_server_max_payload_travel_in_parts() {
    let ns = namespace();
    let publisher = bus(config(&ns).await).await;
    let receiver = bus(config(&ns).await).await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let _sub = receiver
        .subscribe("big:*", move |event: Event| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(event);
                Ok::<(), std::convert::Infallible>(())
            }
        })
        .await
        .unwrap();
    let body: String = (0..3 << 20)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let big = Event::new(
        EventType::Created,
        "big:one",
        serde_json::json!({ "body": body }),
    );
    let small = event("big:two", 1);
    publisher.publish(big.clone()).await.unwrap();
    publisher.publish(small.clone()).await.unwrap();
    assert!(wait_until(DEADLINE, || got.lock().unwrap().len() == 2).await);
    assert_eq!(*got.lock().unwrap(), [big, small]);
    assert_eq!(receiver.metrics().malformed, 0);
    publisher.close().await.unwrap();
    receiver.close().await.unwrap();
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
    assert!(
        matches!(err, event_bus_core::Error::Timeout { .. }),
        "{err}"
    );
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

#[tokio::test]
async fn dead_letters_travel_through_the_server_to_other_buses() {
    use event_bus_core::{DeadLetter, RetryPolicy, SubscribeOptions};
    let ns = namespace();
    let failing = bus(config(&ns).await).await;
    let watcher = bus(config(&ns).await).await;
    let dead = Seen::default();
    let _watch = watcher
        .subscribe("dead_letter:*", dead.handler())
        .await
        .unwrap();
    let options = SubscribeOptions::new()
        .retry(RetryPolicy::exponential(
            2,
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .dead_letter(DeadLetter::Derived);
    let _sub = failing
        .subscribe_with("d:*", options, |_event: Event| async {
            Err::<(), _>(std::io::Error::other("always fails"))
        })
        .await
        .unwrap();
    failing.publish(event("d:x", 5)).await.unwrap();
    failing.flush().await.unwrap();
    assert!(wait_until(DEADLINE, || dead.len() == 1).await);
    assert_eq!(dead.all(), [5]);
    assert_eq!(failing.metrics().dead_lettered, 1);
    failing.close().await.unwrap();
    watcher.close().await.unwrap();
}
