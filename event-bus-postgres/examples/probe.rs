//! Throughput probe: the bus next to raw `pg_notify` -> LISTEN, end to end (publish
//! until the last notification/event is received). Not a test; prints rates.
//!
//! `cargo run --release -p event-bus-postgres --example probe -- "host=127.0.0.1 user=postgres dbname=test sslmode=disable"`
//! (raw uses no TLS, so pass `sslmode=disable` for a like-for-like comparison).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use event_bus_core::{DispatcherConfig, Event, EventBus, EventBusExt, EventType};
use event_bus_postgres::{PostgresConfig, PostgresEventBus, tokio_postgres};
use futures_util::future::poll_fn;
use tokio_postgres::{AsyncMessage, NoTls};

const SINGLES: usize = 3_000;
const BATCHES: usize = 200;
const PER_BATCH: usize = 100;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "host=127.0.0.1 user=postgres dbname=test".to_owned());
    let raw_single = raw(&url, SINGLES, 1, 100).await?;
    let bus_single = bus(&url, SINGLES, 1, 100).await?;
    let raw_batch = raw(&url, BATCHES, PER_BATCH, 100).await?;
    let bus_batch = bus(&url, BATCHES, PER_BATCH, 100).await?;
    let bus_7000 = bus(&url, 40, PER_BATCH, 7_000).await?;
    let bus_9000 = bus(&url, 40, PER_BATCH, 9_000).await?;
    report("single publish", bus_single, raw_single, 0.8);
    report("batch publish (100/statement)", bus_batch, raw_batch, 0.5);
    report(
        "9,000-byte events vs 7,000-byte (batches)",
        bus_9000,
        bus_7000,
        0.25,
    );
    Ok(())
}

#[allow(clippy::print_stdout)] // a probe reports on stdout
fn report(what: &str, ours: f64, reference: f64, target: f64) {
    let ratio = ours / reference;
    let verdict = if ratio >= target {
        "ok"
    } else {
        "BELOW TARGET"
    };
    println!("{what}: {ours:.0}/s vs {reference:.0}/s = {ratio:.2} (target {target}) {verdict}");
}

/// Raw: one LISTEN connection, one publishing connection, `batches` statements of `per`.
async fn raw(
    url: &str,
    batches: usize,
    per: usize,
    size: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let channel = format!("probe_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let received = Arc::new(AtomicUsize::new(0));
    let (listener, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    let counter = received.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = poll_fn(|cx| conn.poll_message(cx)).await {
            if let AsyncMessage::Notification(_) = m {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    listener.batch_execute(&format!("LISTEN {channel}")).await?;
    let (publisher, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    // The same bytes the bus sends: an envelope with a `size`-character payload.
    let sample = Event::new(
        EventType::Created,
        "probe:topic",
        serde_json::json!("x".repeat(size)),
    );
    let payload = event_bus_core::envelope::encode(&sample)?;
    let one = publisher.prepare("SELECT pg_notify($1, $2)").await?;
    let many = publisher
        .prepare("SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)")
        .await?;
    let started = Instant::now();
    for i in 0..batches {
        if per == 1 {
            let p = format!("{i}{payload}");
            publisher.execute(&one, &[&channel, &p]).await?;
        } else {
            let channels = vec![channel.as_str(); per];
            let payloads: Vec<String> = (0..per).map(|j| format!("{i}-{j}{payload}")).collect();
            publisher.execute(&many, &[&channels, &payloads]).await?;
        }
    }
    wait(&received, batches * per).await;
    Ok((batches * per) as f64 / started.elapsed().as_secs_f64())
}

/// The bus: one publishing bus, one subscribing bus with one exact subscription.
async fn bus(
    url: &str,
    batches: usize,
    per: usize,
    size: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let prefix = format!("probe{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let config = PostgresConfig::new(url)
        .with_channel_prefix(&prefix)
        .with_dispatcher(DispatcherConfig {
            metrics_log_interval_seconds: 0.0,
            queue_maxsize: 100_000,
            ..DispatcherConfig::default()
        });
    let (publisher, subscriber) = (
        PostgresEventBus::new(config.clone())?,
        PostgresEventBus::new(config)?,
    );
    publisher.connect().await?;
    subscriber.connect().await?;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    subscriber
        .subscribe("probe:topic", move |_e: Event| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok::<(), std::io::Error>(()) }
        })
        .await?;
    let payload = serde_json::json!("x".repeat(size));
    let make = || Event::new(EventType::Created, "probe:topic", payload.clone());
    let started = Instant::now();
    for _ in 0..batches {
        if per == 1 {
            publisher.publish(make()).await?;
        } else {
            publisher
                .publish_batch((0..per).map(|_| make()).collect())
                .await?;
        }
    }
    wait(&received, batches * per).await;
    let rate = (batches * per) as f64 / started.elapsed().as_secs_f64();
    publisher.close().await?;
    subscriber.close().await?;
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{prefix}_large_payloads\""))
        .await?;
    Ok(rate)
}

async fn wait(received: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} arrived",
            received.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
