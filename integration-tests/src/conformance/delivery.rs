//! Who receives what.

use std::{sync::Arc, time::Duration};

use multibus::{Event, EventBusExt};
use tokio::sync::Semaphore;

use super::{bus, bus_with, event, patient_dispatcher};
use crate::{
    factories::Factory,
    support::{DEADLINE, Recorder},
};

/// Each event reaches every subscription whose pattern matches, and no other.
pub async fn delivers_to_every_matching_subscription_and_no_other(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let (exact, pattern, other) = (Recorder::new(), Recorder::new(), Recorder::new());
    bus.subscribe(&format!("{ns}:orders:eu"), exact.handler())
        .await
        .unwrap();
    bus.subscribe(&format!("{ns}:orders:*"), pattern.handler())
        .await
        .unwrap();
    bus.subscribe(&format!("{ns}:users:*"), other.handler())
        .await
        .unwrap();
    bus.publish(event(format!("{ns}:orders:eu"), 1))
        .await
        .unwrap();
    bus.publish(event(format!("{ns}:orders:us"), 2))
        .await
        .unwrap();
    bus.publish(event(format!("{ns}:payments:eu"), 3))
        .await
        .unwrap();
    bus.flush().await.unwrap();
    assert_eq!(exact.topics(), [format!("{ns}:orders:eu")]);
    assert_eq!(
        pattern.topics(),
        [format!("{ns}:orders:eu"), format!("{ns}:orders:us")]
    );
    assert!(other.is_empty());
    bus.close().await.unwrap();
}

/// Exact and pattern subscriptions on one bus that all match get one delivery each.
pub async fn overlapping_subscriptions_each_get_one_delivery(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let recorders: Vec<Recorder> = (0..4).map(|_| Recorder::new()).collect();
    let patterns = [
        format!("{ns}:a:b"),
        format!("{ns}:a:b"),
        format!("{ns}:a:*"),
        format!("{ns}:*"),
    ];
    for (p, r) in patterns.iter().zip(&recorders) {
        bus.subscribe(p, r.handler()).await.unwrap();
    }
    bus.publish(event(format!("{ns}:a:b"), 1)).await.unwrap();
    bus.flush().await.unwrap();
    for r in &recorders {
        assert_eq!(r.len(), 1, "{:?}", r.topics());
    }
    assert_eq!(bus.metrics().delivered, 4);
    bus.close().await.unwrap();
}

/// An event published right after `subscribe` returns is delivered.
pub async fn subscription_is_live_when_subscribe_returns(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    for i in 0..5 {
        let r = Recorder::new();
        bus.subscribe(&format!("{ns}:live:{i}"), r.handler())
            .await
            .unwrap();
        bus.publish(event(format!("{ns}:live:{i}"), i))
            .await
            .unwrap();
        r.wait_for(1, DEADLINE).await;
    }
    bus.close().await.unwrap();
}

/// A subscription sees only events published after it was made.
pub async fn no_replay_of_earlier_events(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let topic = format!("{ns}:replay");
    bus.publish(event(&topic, 1)).await.unwrap();
    bus.flush().await.unwrap();
    let r = Recorder::new();
    bus.subscribe(&topic, r.handler()).await.unwrap();
    bus.publish(event(&topic, 2)).await.unwrap();
    bus.flush().await.unwrap();
    let got: Vec<_> = r.events().iter().map(|e| e.payload.clone()).collect();
    assert_eq!(got, [serde_json::json!(2)]);
    bus.close().await.unwrap();
}

/// `publish_batch` delivers every event, in order.
pub async fn publish_batch_delivers_in_order(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let topic = format!("{ns}:batch");
    let r = Recorder::new();
    bus.subscribe(&topic, r.handler()).await.unwrap();
    bus.publish_batch((0..100).map(|i| event(&topic, i)).collect())
        .await
        .unwrap();
    let got: Vec<u64> = r
        .wait_for(100, DEADLINE)
        .await
        .iter()
        .map(|e| e.payload.as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    let bad = vec![event(&topic, 100), event("", 101)];
    assert!(bus.publish_batch(bad).await.is_err());
    bus.flush().await.unwrap();
    assert_eq!(
        r.len(),
        100,
        "an invalid topic in a batch publishes nothing"
    );
    bus.close().await.unwrap();
}

/// `publish` returns while the handler is still blocked.
pub async fn publish_does_not_wait_for_handlers(factory: Factory) {
    let (ns, bus) = bus_with(factory, patient_dispatcher()).await;
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    bus.subscribe(&format!("{ns}:slow"), move |_e: Event| {
        let g = g.clone();
        async move {
            let _ = g.acquire().await;
            Ok::<(), std::io::Error>(())
        }
    })
    .await
    .unwrap();
    for i in 0..3 {
        tokio::time::timeout(
            Duration::from_secs(5),
            bus.publish(event(format!("{ns}:slow"), i)),
        )
        .await
        .expect("publish must not wait for the handler")
        .unwrap();
    }
    gate.add_permits(3);
    bus.flush().await.unwrap();
    assert_eq!(bus.metrics().delivered, 3);
    bus.close().await.unwrap();
}
