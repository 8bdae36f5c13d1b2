//! Delivery on NATS: subject mapping end to end, flush, malformed messages, close,
//! cancel, events above `max_payload`, dead letters through the server.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use integration_tests::{
    nats_server,
    support::{DEADLINE, namespace, wait_until},
};
use multibus::{DispatcherConfig, Event, EventBus, EventBusExt, EventType, NatsConfig};

use super::{Seen, bus, config, event};

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
    // Enough that the receive path holds many messages when the round trip returns
    // (a drain that stopped early under Tokio's cooperative budget failed this).
    for n in 0..5000 {
        bus.publish(event("a:b", n)).await.unwrap();
    }
    bus.flush().await.unwrap();
    assert_eq!(
        seen.len(),
        10_000,
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
    let misplaced = multibus::envelope::encode(&event("x:z", 1)).unwrap();
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
async fn dead_letters_travel_through_the_server_to_other_buses() {
    use multibus::{DeadLetter, RetryPolicy, SubscribeOptions};
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
