//! A fixed publish -> handler workload for counting instructions under callgrind (see
//! `scripts/instructions.sh`): `instructions <path> <events>` runs `<events>` events
//! through one path on a single-threaded runtime, in rounds of [`ROUND`] followed by a
//! wait until all were handled. Paths:
//!
//! * `bus`: the memory backend, one subscription whose handler does an atomic add;
//! * `bus-retry`: the same with a retry policy configured (never used: the handler
//!   always succeeds);
//! * `raw`: a `tokio::sync::broadcast` channel carrying the same `Event` values to one
//!   receiver task that does the same atomic add.
//!
//! * `bus-mt`: the `bus` workload on a multi-threaded runtime (two worker threads),
//!   published from the thread that calls `block_on`, as the criterion bench
//!   `end_to_end` does: not for instruction counts (threads make them vary) but for
//!   counting wake-ups per event, e.g. under `perf stat -e context-switches` or
//!   `strace -f -c -e trace=futex` (see docs/benchmarks.md, "The bimodal results").
//!   Env `PUBLISH_SPIN=<n>`: `n` turns of an empty loop after each publish, to slow
//!   the publisher down until the worker keeps up.
//!
//! The script runs each path twice with different event counts and divides the
//! difference in instructions by the difference in events, so setup cost cancels out.

#![allow(missing_docs)]

use std::{
    convert::Infallible,
    future::ready,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use event_bus_core::{DispatcherConfig, Event, EventBus, EventBusExt, EventType};
use event_bus_memory::{MemoryConfig, MemoryEventBus};
use tokio::sync::{broadcast, mpsc};

/// Events published before each wait for the handler to catch up.
const ROUND: u64 = 1_000;
/// Queue bound: a whole round fits, so the publisher never blocks.
const CAPACITY: usize = 4_096;

fn sample_event() -> Event {
    let payload = serde_json::json!({
        "order_id": 123_456, "customer": "c-0042", "currency": "EUR", "total": 1234.5,
        "note": "deliver after 18:00, ring twice",
    });
    Event::new(EventType::Created, "orders:eu", payload)
}

async fn bus(events: u64, retry: bool) {
    let bus = MemoryEventBus::new(MemoryConfig {
        dispatcher: DispatcherConfig {
            queue_maxsize: CAPACITY,
            ..Default::default()
        },
    })
    .expect("bus");
    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    let handler = move |_e: Event| {
        counter.fetch_add(1, Ordering::Relaxed);
        ready(Ok::<(), Infallible>(()))
    };
    if retry {
        subscribe_retrying(&bus, handler).await;
    } else {
        bus.subscribe("orders:eu", handler)
            .await
            .expect("subscribe");
    }
    let event = sample_event();
    // `bus-mt` only: busy work between publishes (env `PUBLISH_SPIN`, loop turns), so
    // that a worker on another thread keeps up and finds its queue empty.
    let spin: u64 = std::env::var("PUBLISH_SPIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for _ in 0..events / ROUND {
        if spin == 0 {
            for _ in 0..ROUND {
                bus.publish(event.clone()).await.expect("publish");
            }
        } else {
            for _ in 0..ROUND {
                bus.publish(event.clone()).await.expect("publish");
                for i in 0..spin {
                    std::hint::black_box(i);
                }
            }
        }
        bus.flush().await.expect("flush");
    }
    bus.close().await.expect("close");
    assert_eq!(handled.load(Ordering::Relaxed), events / ROUND * ROUND);
}

async fn subscribe_retrying(
    bus: &MemoryEventBus,
    handler: impl Fn(Event) -> std::future::Ready<Result<(), Infallible>> + Send + Sync + 'static,
) {
    use event_bus_core::{RetryPolicy, SubscribeOptions};
    use std::time::Duration;
    let retry = RetryPolicy::exponential(5, Duration::from_millis(10), Duration::from_secs(1));
    let options = SubscribeOptions::new().retry(retry);
    bus.subscribe_with("orders:eu", options, handler)
        .await
        .expect("subscribe");
}

async fn raw(events: u64) {
    let (tx, mut rx) = broadcast::channel::<Event>(CAPACITY);
    let (done_tx, mut done) = mpsc::unbounded_channel::<()>();
    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    let receiver = tokio::spawn(async move {
        while let Ok(event) = rx.recv().await {
            std::hint::black_box(&event);
            if (counter.fetch_add(1, Ordering::Relaxed) + 1) % ROUND == 0
                && done_tx.send(()).is_err()
            {
                return;
            }
        }
    });
    let event = sample_event();
    for _ in 0..events / ROUND {
        for _ in 0..ROUND {
            tx.send(event.clone()).expect("receiver alive");
        }
        done.recv().await.expect("receiver alive");
    }
    drop(tx);
    receiver.await.expect("receiver");
    assert_eq!(handled.load(Ordering::Relaxed), events / ROUND * ROUND);
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let (Some(path), Some(events)) = (args.next(), args.next()) else {
        // `cargo bench` runs every bench without arguments: nothing to do then.
        eprintln!("usage: instructions <bus|bus-retry|raw|bus-mt> <events>");
        return;
    };
    let events: u64 = events.parse().expect("events: a number");
    let rt = if path.ends_with("-mt") {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("runtime");
    match path.as_str() {
        "bus-mt" => rt.block_on(bus(events, false)),
        "bus" => rt.block_on(bus(events, false)),
        "bus-retry" => rt.block_on(bus(events, true)),
        "raw" => rt.block_on(raw(events)),
        other => panic!("unknown path {other:?}: expected bus, bus-retry, raw or bus-mt"),
    }
}
