//! Slow, failing and panicking handlers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use multibus::{Event, EventBusExt};

use super::{bus, event};
use crate::{
    factories::Factory,
    support::{DEADLINE, Recorder, wait_until},
};

/// A handler past `handler_timeout_seconds` is cancelled and counted as timed out.
pub async fn slow_handler_times_out_and_counts(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    bus.subscribe(&format!("{ns}:slow"), move |_e: Event| {
        let f = f.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(30)).await; // far beyond the 0.3 s timeout
            f.fetch_add(1, Ordering::SeqCst);
            Ok::<(), std::io::Error>(())
        }
    })
    .await
    .unwrap();
    bus.publish(event(format!("{ns}:slow"), 1)).await.unwrap();
    assert!(wait_until(DEADLINE, || bus.metrics().timed_out == 1).await);
    bus.flush().await.unwrap();
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the timed-out call was not cancelled"
    );
    assert_eq!(bus.metrics().in_flight, 0);
    bus.close().await.unwrap();
}

/// A handler failing `handler_max_failures` (3) times in a row is unsubscribed.
pub async fn auto_unsubscribe_after_consecutive_failures(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let sub = bus
        .subscribe(&format!("{ns}:fail"), move |_e: Event| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("always fails")
            }
        })
        .await
        .unwrap();
    for i in 0..3 {
        bus.publish(event(format!("{ns}:fail"), i)).await.unwrap();
    }
    assert!(wait_until(DEADLINE, || bus.metrics().auto_unsubscribed == 1).await);
    assert!(!sub.is_active());
    bus.publish(event(format!("{ns}:fail"), 3)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let m = bus.metrics();
    assert_eq!((m.failed, m.subscriptions), (3, 0));
    bus.close().await.unwrap();
}

/// A success between failures resets the count: fail, fail, ok, fail, fail keeps the
/// subscription; one more failure removes it.
pub async fn success_resets_the_failure_count(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let topic = format!("{ns}:flaky");
    let sub = bus
        .subscribe(&topic, |e: Event| async move {
            if e.payload == "ok" {
                Ok(())
            } else {
                Err("told to fail")
            }
        })
        .await
        .unwrap();
    for p in ["fail", "fail", "ok", "fail", "fail"] {
        bus.publish(multibus::Event::new(
            multibus::EventType::Updated,
            &topic,
            p.into(),
        ))
        .await
        .unwrap();
    }
    bus.flush().await.unwrap();
    assert!(sub.is_active());
    assert_eq!(bus.metrics().auto_unsubscribed, 0);
    bus.publish(event(&topic, 0)).await.unwrap();
    assert!(wait_until(DEADLINE, || bus.metrics().auto_unsubscribed == 1).await);
    assert!(!sub.is_active());
    assert_eq!(bus.metrics().failed, 5);
    bus.close().await.unwrap();
}

/// A panicking handler is counted as failed and hurts no other subscription.
pub async fn panicking_handler_is_isolated(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let topic = format!("{ns}:panic");
    let healthy = Recorder::new();
    bus.subscribe(&topic, |e: Event| async move {
        if e.payload.as_u64() == Some(1) {
            panic!("handler bug");
        }
        Ok::<(), std::io::Error>(())
    })
    .await
    .unwrap();
    bus.subscribe(&topic, healthy.handler()).await.unwrap();
    for i in 0..4 {
        bus.publish(event(&topic, i)).await.unwrap();
    }
    healthy.wait_for(4, DEADLINE).await;
    bus.flush().await.unwrap();
    let m = bus.metrics();
    assert_eq!((m.panicked, m.delivered), (1, 7));
    bus.close().await.unwrap();
}

/// A subscription stuck in a slow handler does not hold up another subscription.
pub async fn slow_subscription_does_not_delay_others(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let topic = format!("{ns}:iso");
    let slow = bus
        .subscribe(&topic, |_e: Event| async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap();
    let fast = Recorder::new();
    bus.subscribe(&topic, fast.handler()).await.unwrap();
    for i in 0..20 {
        bus.publish(event(&topic, i)).await.unwrap();
    }
    // The slow one needs 20 × 250 ms; the fast one must not wait for it.
    fast.wait_for(20, Duration::from_secs(3)).await;
    slow.cancel().await; // discards its backlog so that close need not drain it
    bus.close().await.unwrap();
}
