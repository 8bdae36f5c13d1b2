//! Hostile input: 10,000 malformed and oversized messages injected through a raw
//! client. The consumer stays alive, counts every one exactly, and logs a bounded
//! number of bounded lines.

use integration_tests::{
    conformance::{event, test_dispatcher},
    log_capture::{Captured, capture},
    nats_server, postgres_server, redis_server,
    support::{DEADLINE, Recorder, namespace, wait_until},
};
use multibus::{
    EventBus, EventBusExt, NatsConfig, NatsEventBus, PostgresConfig, PostgresEventBus, RedisConfig,
    RedisEventBus,
};

const MESSAGES: usize = 10_000;
/// Bounds on what the bus crates may log for all of them together.
const MAX_LINES: usize = 30;
const MAX_BYTES: usize = 16 * 1024;

/// Message `i` of the attack on topic `topic`: garbage, oversized, an invalid topic
/// that an unbounded log line would echo in full, another wire version, or (where
/// `with_refs`) a large-payload reference to a row that does not exist.
fn hostile(i: usize, topic: &str, oversized: usize, with_refs: bool) -> String {
    match i % 5 {
        0 => format!("garbage {i} \u{1}\u{7f} {}", "ü".repeat(i % 300)),
        1 => format!(
            r#"{{"v":1,"type":"created","topic":"{topic}","payload":"{i}{}"}}"#,
            "x".repeat(oversized)
        ),
        2 => format!(
            r#"{{"v":1,"type":"created","topic":"{topic}:{i} {}"}}"#,
            "a b ".repeat(200)
        ),
        3 if with_refs => format!(
            r#"{{"v":1,"ref":"{}","topic":"{topic}"}}"#,
            uuid::Uuid::new_v4()
        ),
        _ => format!(r#"{{"v":9,"type":"created","topic":"{topic}","n":{i}}}"#),
    }
}

/// Asserts the bus crates' share of the log is small, and reports it (the figure in
/// docs/operations.md).
#[allow(clippy::print_stdout)] // a test-side figure, shown with --nocapture
fn assert_bounded(log: &Captured, backend: &str) {
    let text = log.take();
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("event_bus")).collect();
    let bytes: usize = ours.iter().map(|l| l.len() + 1).sum();
    println!(
        "{backend}: {} lines, {bytes} bytes logged for {MESSAGES} hostile messages",
        ours.len()
    );
    assert!(
        ours.iter().any(|l| l.contains("malformed")),
        "{backend}: the first malformed messages are logged:\n{text}"
    );
    assert!(
        ours.len() <= MAX_LINES && bytes <= MAX_BYTES,
        "{backend}: {} lines, {bytes} bytes:\n{}",
        ours.len(),
        ours.join("\n")
    );
}

/// Waits until `malformed` reaches `MESSAGES`, then checks it stays exact.
async fn assert_counted(bus: &dyn EventBus) {
    assert!(
        wait_until(DEADLINE * 3, || bus.metrics().malformed >= MESSAGES as u64).await,
        "{:?}",
        bus.metrics()
    );
    bus.flush().await.unwrap();
    assert_eq!(bus.metrics().malformed, MESSAGES as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_survives_a_flood_of_malformed_messages_with_bounded_logs() {
    let (log, _serial) = capture().await;
    let ns = namespace();
    let bus = RedisEventBus::new(RedisConfig {
        channel_prefix: ns.clone(),
        max_message_bytes: 4096,
        dispatcher: test_dispatcher(),
        ..RedisConfig::from_url(redis_server::url().await).unwrap()
    })
    .unwrap();
    bus.connect().await.unwrap();
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:*"), r.handler())
        .await
        .unwrap();
    let topic = format!("{ns}:t");
    let channel = bus.channel_for(&topic);
    let mut raw = redis_server::client().await;
    for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.publish(&channel, hostile(i, &topic, 8000, false))
                .ignore();
        }
        let () = pipe.query_async(&mut raw).await.unwrap();
    }
    bus.publish(event(&topic, 1)).await.unwrap();
    r.wait_for(1, DEADLINE).await;
    assert_counted(&bus).await;
    assert_eq!(r.len(), 1);
    bus.close().await.unwrap();
    assert_bounded(&log, "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_a_flood_of_malformed_notifications_with_bounded_logs() {
    let (log, _serial) = capture().await;
    let ns = namespace();
    let mut config = PostgresConfig::new(postgres_server::url().await)
        .with_channel_prefix(&ns)
        .with_dispatcher(test_dispatcher());
    config.max_message_bytes = 1024;
    let bus = PostgresEventBus::new(config).unwrap();
    bus.connect().await.unwrap();
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:*"), r.handler())
        .await
        .unwrap();
    let topic = format!("{ns}:t");
    let all = format!("{ns}_all");
    let raw = postgres_server::client().await;
    for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(500) {
        // Distinct payloads: PostgreSQL folds identical notifications of a transaction.
        let payloads: Vec<String> = chunk
            .iter()
            .map(|&i| hostile(i, &topic, 6000, true))
            .collect();
        raw.execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
            &[&all, &payloads],
        )
        .await
        .unwrap();
    }
    bus.publish(event(&topic, 1)).await.unwrap();
    r.wait_for(1, DEADLINE).await;
    assert_counted(&bus).await;
    assert_eq!(r.len(), 1);
    bus.close().await.unwrap();
    assert_bounded(&log, "postgres");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_survives_a_flood_of_malformed_messages_with_bounded_logs() {
    let (log, _serial) = capture().await;
    let ns = namespace();
    let bus = NatsEventBus::new(NatsConfig {
        channel_prefix: ns.clone(),
        max_message_bytes: 4096,
        dispatcher: test_dispatcher(),
        ..NatsConfig::from_url(nats_server::url().await).unwrap()
    })
    .unwrap();
    bus.connect().await.unwrap();
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:*"), r.handler())
        .await
        .unwrap();
    let topic = format!("{ns}:t");
    let subject = bus.subject_for(&topic);
    let raw = async_nats::connect(nats_server::url().await).await.unwrap();
    for i in 0..MESSAGES {
        raw.publish(subject.clone(), hostile(i, &topic, 8000, false).into())
            .await
            .unwrap();
    }
    raw.flush().await.unwrap();
    bus.publish(event(&topic, 1)).await.unwrap();
    r.wait_for(1, DEADLINE).await;
    assert_counted(&bus).await;
    assert_eq!(r.len(), 1);
    bus.close().await.unwrap();
    assert_bounded(&log, "nats");
}
