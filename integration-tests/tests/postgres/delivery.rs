//! Channel layout: cross-instance delivery, prefix isolation, hostile and case-differing
//! topics.

use integration_tests::support::{DEADLINE, Recorder, namespace, wait_until_async};
use multibus::{EventBus, EventBusExt};

use super::{bus, event};

#[tokio::test]
async fn events_cross_between_instances_exactly_once_per_subscription() {
    let ns = namespace();
    let (a, b) = (bus(&ns).await, bus(&ns).await);
    let (exact, pattern) = (Recorder::new(), Recorder::new());
    a.subscribe(&format!("{ns}:orders"), exact.handler())
        .await
        .unwrap();
    a.subscribe(&format!("{ns}:*"), pattern.handler())
        .await
        .unwrap();
    b.publish(event(&format!("{ns}:orders"), 1)).await.unwrap();
    b.publish(event(&format!("{ns}:users"), 2)).await.unwrap();
    pattern.wait_for(2, DEADLINE).await;
    a.flush().await.unwrap();
    assert_eq!(exact.topics(), [format!("{ns}:orders")]);
    assert_eq!(pattern.len(), 2);
    assert_eq!(a.metrics().malformed, 0);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn prefixes_are_isolated() {
    let (ns1, ns2) = (namespace(), namespace());
    let (bus1, bus2) = (bus(&ns1).await, bus(&ns2).await);
    let (exact, pattern) = (Recorder::new(), Recorder::new());
    // Same topic on both prefixes.
    bus1.subscribe("shared:topic", exact.handler())
        .await
        .unwrap();
    bus1.subscribe("*", pattern.handler()).await.unwrap();
    bus2.publish(event("shared:topic", 1)).await.unwrap();
    // Notifications are delivered in commit order: once the marker is in, the other
    // prefix's event would have been too.
    bus2.publish(event("shared:topic", 2)).await.unwrap();
    bus1.publish(event("marker", 3)).await.unwrap();
    pattern.wait_for(1, DEADLINE).await;
    bus1.flush().await.unwrap();
    assert!(exact.is_empty(), "{:?}", exact.events());
    assert_eq!(pattern.topics(), ["marker"]);
    bus1.close().await.unwrap();
    bus2.close().await.unwrap();
}

#[tokio::test]
async fn hostile_topics_are_delivered_verbatim() {
    let ns = namespace();
    let bus = bus(&ns).await;
    let long = format!("{ns}:{}", "ä".repeat(100));
    let topics = [
        format!("{ns}:a\";DROP_TABLE_x;--"),
        format!("{ns}:O'Reilly');SELECT/**/pg_sleep(10);--"),
        format!("{ns}:\"quoted\":$1:%s"),
        format!("{ns}:ünïcødé:🚀"),
        format!("{ns}:{}", "x".repeat(64)),
        long,
    ];
    let pattern = Recorder::new();
    bus.subscribe(&format!("{ns}:*"), pattern.handler())
        .await
        .unwrap();
    let mut exact = Vec::new();
    for topic in &topics {
        let r = Recorder::new();
        bus.subscribe(topic, r.handler()).await.unwrap();
        exact.push(r);
    }
    for (i, topic) in topics.iter().enumerate() {
        bus.publish(event(topic, i as u64)).await.unwrap();
    }
    pattern.wait_for(topics.len(), DEADLINE).await;
    bus.flush().await.unwrap();
    assert_eq!(pattern.topics(), topics);
    for (r, topic) in exact.iter().zip(&topics) {
        assert_eq!(r.topics(), std::slice::from_ref(topic));
    }
    bus.close().await.unwrap();
}

#[tokio::test]
async fn topics_differing_in_case_never_share_deliveries() {
    let ns = namespace();
    let (sub_bus, pub_bus) = (bus(&ns).await, bus(&ns).await);
    let (upper, lower) = (Recorder::new(), Recorder::new());
    sub_bus.subscribe("Orders", upper.handler()).await.unwrap();
    sub_bus.subscribe("orders", lower.handler()).await.unwrap();
    pub_bus.publish(event("Orders", 1)).await.unwrap();
    pub_bus.publish(event("orders", 2)).await.unwrap();
    pub_bus.publish(event("ORDERS", 3)).await.unwrap();
    upper.wait_for(1, DEADLINE).await;
    lower.wait_for(1, DEADLINE).await;
    sub_bus.flush().await.unwrap();
    assert_eq!(upper.topics(), ["Orders"]);
    assert_eq!(lower.topics(), ["orders"]);
    sub_bus.close().await.unwrap();
    pub_bus.close().await.unwrap();
}

#[tokio::test]
async fn a_channel_stays_listened_until_its_last_subscription_goes() {
    let ns = namespace();
    let bus = bus(&ns).await;
    let topic = format!("{ns}:t");
    let (first, second) = (Recorder::new(), Recorder::new());
    let s1 = bus.subscribe(&topic, first.handler()).await.unwrap();
    let s2 = bus.subscribe(&topic, second.handler()).await.unwrap();
    s1.cancel().await;
    bus.publish(event(&topic, 1)).await.unwrap();
    second.wait_for(1, DEADLINE).await;
    s2.cancel().await;
    // Subscribing again after the UNLISTEN must LISTEN again.
    let third = Recorder::new();
    bus.subscribe(&topic, third.handler()).await.unwrap();
    bus.publish(event(&topic, 2)).await.unwrap();
    third.wait_for(1, DEADLINE).await;
    bus.flush().await.unwrap();
    assert!(first.is_empty());
    assert_eq!(second.len(), 1);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn dropping_a_stream_or_a_set_unlistens_on_the_server() {
    let ns = namespace();
    let bus = bus(&ns).await;
    let channel = event_bus_postgres_channel(&ns, &format!("{ns}:s"));
    let stream = bus.subscribe_stream(&format!("{ns}:s")).await.unwrap();
    assert_eq!(bus.listening_channels().await, [channel]);
    drop(stream);
    assert!(
        wait_until_async(DEADLINE, || async {
            bus.listening_channels().await.is_empty()
        })
        .await,
        "still listening after the stream was dropped"
    );
    let mut set = multibus::SubscriptionSet::new();
    set.insert(
        bus.subscribe(&format!("{ns}:*"), Recorder::new().handler())
            .await
            .unwrap(),
    );
    assert_eq!(bus.listening_channels().await, [format!("{ns}_all")]);
    drop(set);
    assert!(
        wait_until_async(DEADLINE, || async {
            bus.listening_channels().await.is_empty()
        })
        .await,
        "still listening after the set was dropped"
    );
    bus.close().await.unwrap();
}

fn event_bus_postgres_channel(prefix: &str, topic: &str) -> String {
    event_bus_postgres::channel::topic_channel(prefix, topic).unwrap()
}
