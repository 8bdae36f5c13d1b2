//! Events at and beyond NOTIFY's 8000-byte payload limit.

use integration_tests::{
    postgres_server,
    support::{DEADLINE, Recorder, namespace},
};
use multibus::{Event, EventBus, EventBusExt, EventType, envelope::encode};
use serde_json::json;

use super::{bus, drop_large_table, event};

/// An event on `topic` whose envelope is exactly `size` bytes.
fn event_of_size(topic: &str, size: usize) -> Event {
    let base = Event::new(EventType::Created, topic, json!(""));
    let overhead = encode(&base).unwrap().len();
    let padding: String = (0..size - overhead)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let sized = Event::new(EventType::Created, topic, json!(padding))
        .with_id(base.id)
        .with_timestamp(base.timestamp);
    assert_eq!(encode(&sized).unwrap().len(), size);
    sized
}

const SIZES: [usize; 5] = [7_900, 7_999, 8_000, 100 * 1024, 1024 * 1024];

#[tokio::test]
async fn events_of_every_size_arrive_intact_one_by_one_and_in_batches() {
    let ns = namespace();
    let (sub_bus, pub_bus) = (bus(&ns).await, bus(&ns).await);
    let topic = format!("{ns}:big");
    let (exact, pattern) = (Recorder::new(), Recorder::new());
    sub_bus.subscribe(&topic, exact.handler()).await.unwrap();
    sub_bus
        .subscribe(&format!("{ns}:*"), pattern.handler())
        .await
        .unwrap();
    let singles: Vec<Event> = SIZES.iter().map(|&s| event_of_size(&topic, s)).collect();
    for e in &singles {
        pub_bus.publish(e.clone()).await.unwrap();
    }
    // A batch mixing inline and stored events keeps its order.
    let mut batch: Vec<Event> = SIZES
        .iter()
        .rev()
        .map(|&s| event_of_size(&topic, s))
        .collect();
    batch.insert(2, event(&topic, 7));
    pub_bus.publish_batch(batch.clone()).await.unwrap();
    let expected: Vec<Event> = singles.into_iter().chain(batch).collect();
    assert_eq!(exact.wait_for(expected.len(), DEADLINE).await, expected);
    assert_eq!(pattern.wait_for(expected.len(), DEADLINE).await, expected);
    sub_bus.flush().await.unwrap();
    assert_eq!(exact.len(), expected.len());
    assert_eq!(sub_bus.metrics().malformed, 0);
    sub_bus.close().await.unwrap();
    pub_bus.close().await.unwrap();
    drop_large_table(&ns).await;
}

#[tokio::test]
async fn expired_stored_payloads_are_deleted_by_publishers() {
    let ns = namespace();
    let bus = bus(&ns).await;
    let topic = format!("{ns}:big");
    let r = Recorder::new();
    bus.subscribe(&topic, r.handler()).await.unwrap();
    bus.publish(event_of_size(&topic, 10_000)).await.unwrap();
    r.wait_for(1, DEADLINE).await;
    let client = postgres_server::client().await;
    let table = format!("\"{ns}_large_payloads\"");
    client
        .execute(
            &format!(
                "INSERT INTO {table} (id, topic, envelope, created_at) \
                 VALUES (gen_random_uuid(), 'old', '{{}}', now() - interval '2 hours')"
            ),
            &[],
        )
        .await
        .unwrap();
    let count = |sql: String| {
        let client = &client;
        async move { client.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count(format!("SELECT count(*) FROM {table}")).await, 2);
    // A fresh bus cleans up after its first large publish (then at most once a minute).
    let other = super::bus(&ns).await;
    other.publish(event_of_size(&topic, 10_000)).await.unwrap();
    r.wait_for(2, DEADLINE).await;
    assert_eq!(
        count(format!("SELECT count(*) FROM {table} WHERE topic = 'old'")).await,
        0
    );
    assert_eq!(count(format!("SELECT count(*) FROM {table}")).await, 2);
    bus.close().await.unwrap();
    other.close().await.unwrap();
    drop_large_table(&ns).await;
}

#[tokio::test]
async fn an_event_over_max_message_bytes_is_handed_back() {
    let ns = namespace();
    let mut config = super::config(&ns).await;
    config.max_message_bytes = 4096;
    let bus = super::connected(config).await;
    let e = event_of_size(&format!("{ns}:t"), 5000);
    let err = bus.publish(e.clone()).await.unwrap_err();
    assert!(err.to_string().contains("max_message_bytes"), "{err}");
    assert_eq!(err.into_event(), Some(e));
    bus.close().await.unwrap();
}
