//! Throughput probe: the bus next to the raw `redis` crate, end to end (PUBLISH →
//! SUBSCRIBE → counted), 1 publisher and 1 subscriber, ~200-byte payloads.
//!
//! ```sh
//! cargo run --release -p event-bus-redis --example throughput -- [redis-url] [events]
//! ```
//!
//! Modes: one publish awaited at a time; 64 publishes in flight (64 tasks); batches of
//! 64 (one pipeline each). Not the official benchmark (`eventbus bench` is); a quick
//! check that the bus keeps up with the transport.
#![allow(clippy::print_stdout)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use event_bus_core::{Event, EventBus, EventBusExt, EventType, envelope::encode};
use event_bus_redis::{RedisConfig, RedisEventBus};
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

const IN_FLIGHT: usize = 64;

#[derive(Clone, Copy, Debug)]
enum Mode {
    OneAtATime,
    InFlight,
    Batch,
}

/// Counts received messages and wakes a waiter when a target is reached.
#[derive(Default)]
struct Counter {
    seen: AtomicUsize,
    changed: Notify,
}

impl Counter {
    fn add(&self) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    async fn wait_for(&self, n: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.seen.load(Ordering::Relaxed) >= n {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
        }
    }
}

fn sample(topic: &str, n: usize) -> Event {
    let body: String = "x".repeat(200);
    Event::new(
        EventType::Created,
        topic,
        serde_json::json!({"n": n, "body": body}),
    )
}

async fn raw(url: &str, mode: Mode, events: usize) -> f64 {
    let client = redis::Client::open(url).expect("url");
    let channel = format!("probe-raw:{}", uuid::Uuid::new_v4().simple());
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(&channel).await.expect("subscribe");
    let counter = Arc::new(Counter::default());
    let c = counter.clone();
    let reader = tokio::spawn(async move {
        let mut stream = pubsub.into_on_message();
        while let Some(_msg) = futures_util::StreamExt::next(&mut stream).await {
            c.add();
        }
    });
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let payload = encode(&sample("probe:raw", 0)).expect("encode");
    let started = Instant::now();
    match mode {
        Mode::OneAtATime => publish_raw(conn, &channel, &payload, events).await,
        Mode::InFlight => {
            let tasks: Vec<_> = (0..IN_FLIGHT)
                .map(|_| {
                    let (conn, channel, payload) = (conn.clone(), channel.clone(), payload.clone());
                    tokio::spawn(async move {
                        publish_raw(conn, &channel, &payload, events / IN_FLIGHT).await
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
        }
        Mode::Batch => {
            let mut conn = conn;
            for _ in 0..events / IN_FLIGHT {
                let mut pipe = redis::pipe();
                for _ in 0..IN_FLIGHT {
                    pipe.cmd("PUBLISH").arg(&channel).arg(&payload).ignore();
                }
                pipe.exec_async(&mut conn).await.expect("pipeline");
            }
        }
    }
    counter.wait_for(events / IN_FLIGHT * IN_FLIGHT).await;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    reader.abort();
    rate
}

async fn publish_raw(mut conn: MultiplexedConnection, channel: &str, payload: &str, n: usize) {
    for _ in 0..n {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .exec_async(&mut conn)
            .await
            .expect("publish");
    }
}

async fn bus(url: &str, mode: Mode, events: usize) -> f64 {
    let prefix = format!("probe{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let config = RedisConfig {
        channel_prefix: prefix,
        ..RedisConfig::from_url(url).expect("url")
    };
    let publisher = RedisEventBus::new(config.clone()).expect("config");
    let subscriber = RedisEventBus::new(config).expect("config");
    publisher.connect().await.expect("connect");
    let counter = Arc::new(Counter::default());
    let c = counter.clone();
    subscriber
        .subscribe("probe:bus", move |_e: Event| {
            c.add();
            async { Ok::<(), std::convert::Infallible>(()) }
        })
        .await
        .expect("subscribe");
    // Events are built before the clock starts: the probe measures the bus, not
    // `Event::new` (a random UUID and a clock read per event).
    let mut prepared: Vec<Event> = (0..events).map(|n| sample("probe:bus", n)).collect();
    let started = Instant::now();
    match mode {
        Mode::OneAtATime => {
            for event in prepared {
                publisher.publish(event).await.expect("publish");
            }
        }
        Mode::InFlight => {
            let per_task = events / IN_FLIGHT;
            let tasks: Vec<_> = (0..IN_FLIGHT)
                .map(|_| {
                    let publisher = publisher.clone();
                    let mine: Vec<Event> = prepared.drain(..per_task).collect();
                    tokio::spawn(async move {
                        for event in mine {
                            publisher.publish(event).await.expect("publish");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
        }
        Mode::Batch => {
            while prepared.len() >= IN_FLIGHT {
                let batch: Vec<Event> = prepared.drain(..IN_FLIGHT).collect();
                publisher.publish_batch(batch).await.expect("batch");
            }
        }
    }
    let published = started.elapsed();
    counter.wait_for(events / IN_FLIGHT * IN_FLIGHT).await;
    if std::env::var_os("PROBE_VERBOSE").is_some() {
        println!(
            "  bus {mode:?}: published in {published:?}, received in {:?}",
            started.elapsed()
        );
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    publisher.close().await.expect("close");
    subscriber.close().await.expect("close");
    rate
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let events: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    println!("{events} events of ~200-byte payload, end to end, events/s");
    for mode in [Mode::OneAtATime, Mode::InFlight, Mode::Batch] {
        let n = if matches!(mode, Mode::OneAtATime) {
            events / 4
        } else {
            events
        };
        // Interleave to share the machine's noise; keep the best of three.
        let (mut best_raw, mut best_bus) = (0f64, 0f64);
        for _ in 0..3 {
            best_raw = best_raw.max(raw(&url, mode, n).await);
            best_bus = best_bus.max(bus(&url, mode, n).await);
        }
        println!(
            "{mode:<12?} raw {best_raw:>9.0}  bus {best_bus:>9.0}  ratio {:.2}",
            best_bus / best_raw
        );
    }
}
