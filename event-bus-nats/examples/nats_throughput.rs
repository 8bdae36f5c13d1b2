//! Throughput probe: the bus next to raw `async-nats`, end to end (publish → subscriber
//! → counted), 1 publisher and 1 subscriber on separate connections, ~200-byte payloads,
//! the wire envelope encoded at send time and decoded on receipt on both sides.
//!
//! ```sh
//! cargo run --release -p event-bus-nats --example nats_throughput -- [nats-url] [events]
//! ```
//!
//! Modes: one publish awaited at a time; batches of 100 (`publish_batch`). Not the
//! official benchmark (`eventbus bench` is); a quick check that the bus keeps up with
//! the transport.
#![allow(clippy::print_stdout, missing_docs)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use event_bus_core::{
    Event, EventBus, EventBusExt, EventType,
    envelope::{decode, encode},
};
use event_bus_nats::{NatsConfig, NatsEventBus};
use futures_util::StreamExt;

const BATCH: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    OneAtATime,
    Batch,
}

async fn wait_for(seen: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn sample(topic: &str, n: usize) -> Event {
    Event::new(
        EventType::Created,
        topic,
        serde_json::json!({"n": n, "body": "x".repeat(200)}),
    )
}

async fn raw(url: &str, mode: Mode, events: usize) -> f64 {
    let subscriber_client = async_nats::connect(url).await.expect("connect");
    let publisher = async_nats::connect(url).await.expect("connect");
    let subject = format!("probe_raw.{}", uuid::Uuid::new_v4().simple());
    let mut subscriber = subscriber_client
        .subscribe(subject.clone())
        .await
        .expect("subscribe");
    subscriber_client.flush().await.expect("flush");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let reader = tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            if decode(&message.payload, usize::MAX).is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let batch: Vec<Event> = (0..events).map(|n| sample("probe:raw", n)).collect();
    let start = Instant::now();
    for chunk in batch.chunks(if mode == Mode::Batch { BATCH } else { 1 }) {
        for event in chunk {
            let text = encode(event).expect("encode");
            publisher
                .publish(subject.clone(), text.into())
                .await
                .expect("publish");
        }
    }
    wait_for(&seen, events).await;
    let rate = seen.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    reader.abort();
    rate
}

async fn bus(url: &str, mode: Mode, events: usize) -> f64 {
    let ns = format!("probe{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let config = || NatsConfig {
        channel_prefix: ns.clone(),
        ..NatsConfig::from_url(url).expect("url")
    };
    let receiver = NatsEventBus::new(config()).expect("config");
    let publisher = NatsEventBus::new(config()).expect("config");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let _sub = receiver
        .subscribe("probe:*", move |_event: Event| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok::<(), std::convert::Infallible>(()) }
        })
        .await
        .expect("subscribe");
    publisher.connect().await.expect("connect");
    let batch: Vec<Event> = (0..events).map(|n| sample("probe:bus", n)).collect();
    let start = Instant::now();
    match mode {
        Mode::OneAtATime => {
            for event in batch {
                publisher.publish(event).await.expect("publish");
            }
        }
        Mode::Batch => {
            let mut events = batch.into_iter().peekable();
            while events.peek().is_some() {
                let chunk: Vec<Event> = events.by_ref().take(BATCH).collect();
                publisher.publish_batch(chunk).await.expect("publish");
            }
        }
    }
    wait_for(&seen, events).await;
    let rate = seen.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    publisher.close().await.expect("close");
    receiver.close().await.expect("close");
    rate
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let events: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(50_000);
    for mode in [Mode::OneAtATime, Mode::Batch] {
        let raw_rate = raw(&url, mode, events).await;
        let bus_rate = bus(&url, mode, events).await;
        println!(
            "{mode:?}: bus {bus_rate:.0}/s, raw {raw_rate:.0}/s, ratio {:.2}",
            bus_rate / raw_rate
        );
    }
}
