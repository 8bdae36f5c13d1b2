//! What arrives over the wire from elsewhere: raw pg_notify calls, malformed messages,
//! and events published inside a caller's transaction.

use integration_tests::{
    postgres_server,
    support::{DEADLINE, Recorder, namespace, wait_until},
};
use multibus::{EventBus, EventBusExt, EventType};

use super::{bus, drop_large_table, event};

/// The channel of `topic` under `ns`, computed in SQL as docs/wire-format.md says.
async fn sql_channel(client: &tokio_postgres::Client, ns: &str, topic: &str) -> String {
    client
        .query_one(
            "SELECT $1 || '_' || left(encode(sha256(convert_to($2, 'UTF8')), 'hex'), 32)",
            &[&ns, &topic],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_psql_style_foreign_message_is_accepted() {
    let ns = namespace();
    let bus = bus(&ns).await;
    let topic = format!("{ns}:orders:eu");
    let (exact, pattern) = (Recorder::new(), Recorder::new());
    bus.subscribe(&topic, exact.handler()).await.unwrap();
    bus.subscribe(&format!("{ns}:orders:*"), pattern.handler())
        .await
        .unwrap();
    let client = postgres_server::client().await;
    let channel = sql_channel(&client, &ns, &topic).await;
    assert_eq!(
        channel,
        event_bus_postgres::channel::topic_channel(&ns, &topic).unwrap()
    );
    let message =
        format!(r#"{{"v":1,"type":"order_placed","topic":"{topic}","payload":{{"id":42}}}}"#);
    client
        .execute(
            "SELECT pg_notify($1, $3), pg_notify($2, $3)",
            &[&channel, &format!("{ns}_all"), &message],
        )
        .await
        .unwrap();
    let got = exact.wait_for(1, DEADLINE).await;
    assert_eq!(got[0].event_type, EventType::custom("order_placed"));
    assert_eq!(got[0].payload["id"], 42);
    assert_eq!(pattern.wait_for(1, DEADLINE).await[0].topic, topic);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn malformed_notifications_are_counted_and_do_not_stop_the_listener() {
    let ns = namespace();
    let bus = bus(&ns).await;
    let topic = format!("{ns}:t");
    let (exact, pattern) = (Recorder::new(), Recorder::new());
    bus.subscribe(&topic, exact.handler()).await.unwrap();
    bus.subscribe(&format!("{ns}:*"), pattern.handler())
        .await
        .unwrap();
    let client = postgres_server::client().await;
    let channel = sql_channel(&client, &ns, &topic).await;
    let all = format!("{ns}_all");
    let bad = [
        (channel.as_str(), "not json".to_owned()),
        (
            channel.as_str(),
            format!(r#"{{"v":2,"type":"created","topic":"{topic}"}}"#),
        ),
        (channel.as_str(), format!(r#"{{"v":1,"topic":"{topic}"}}"#)),
        (
            channel.as_str(),
            format!(r#"{{"v":1,"type":"created","topic":"{ns}:other"}}"#),
        ),
        (
            channel.as_str(),
            format!(
                r#"{{"v":1,"ref":"{}","topic":"{topic}"}}"#,
                uuid::Uuid::new_v4()
            ),
        ),
        (
            all.as_str(),
            format!(r#"{{"v":1,"ref":"not-a-uuid","topic":"{topic}"}}"#),
        ),
        (all.as_str(), "[1,2,3]".to_owned()),
    ];
    for (ch, payload) in &bad {
        client
            .execute("SELECT pg_notify($1, $2)", &[ch, payload])
            .await
            .unwrap();
    }
    bus.publish(event(&topic, 1)).await.unwrap();
    exact.wait_for(1, DEADLINE).await;
    pattern.wait_for(1, DEADLINE).await;
    assert!(
        wait_until(DEADLINE, || bus.metrics().malformed == bad.len() as u64).await,
        "{:?}",
        bus.metrics()
    );
    assert_eq!(exact.len(), 1);
    assert_eq!(pattern.len(), 1);
    bus.close().await.unwrap();
    drop_large_table(&ns).await;
}

#[tokio::test]
async fn publish_in_a_transaction_delivers_on_commit_only() {
    let ns = namespace();
    let bus = bus(&ns).await;
    let topic = format!("{ns}:tx");
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:*"), r.handler())
        .await
        .unwrap();
    let big = multibus::Event::new(
        EventType::Created,
        &topic,
        serde_json::json!("x".repeat(20_000)),
    );
    let mut client = postgres_server::client().await;

    let tx = client.transaction().await.unwrap();
    bus.publish_in(&tx, event(&topic, 1)).await.unwrap();
    bus.publish_in(&tx, big.clone()).await.unwrap();
    bus.flush().await.unwrap();
    assert!(r.is_empty(), "delivered before commit: {:?}", r.topics());
    tx.commit().await.unwrap();
    let got = r.wait_for(2, DEADLINE).await;
    assert_eq!(got[0].payload, 1);
    assert_eq!(got[1], big);

    let tx = client.transaction().await.unwrap();
    bus.publish_in(&tx, event(&topic, 2)).await.unwrap();
    bus.publish_in(&tx, big.clone().with_id(uuid::Uuid::new_v4()))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // Outside a transaction, a client publishes at once.
    bus.publish_in(&client, event(&topic, 3)).await.unwrap();
    let got = r.wait_for(3, DEADLINE).await;
    bus.flush().await.unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(got[2].payload, 3);
    let stored: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{ns}_large_payloads\""),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "the rolled-back large event left no row");
    bus.close().await.unwrap();
    drop_large_table(&ns).await;
}
