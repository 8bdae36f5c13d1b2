//! Publish -> handler throughput of the memory backend with 1 and 4 subscribers, next
//! to a raw `tokio::sync::broadcast` channel carrying the same `Event` values (no
//! serialization) in the same run. Run: `cargo bench -p event-bus-memory --bench end_to_end`.

#![allow(missing_docs)]

mod support;

use std::{
    convert::Infallible,
    future::ready,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use event_bus_core::{Event, EventBus, EventBusExt, EventType};
use tokio::{
    runtime::Runtime,
    sync::{broadcast, mpsc},
};

use support::{BATCH, CAPACITY, runtime, time_batches};

/// An order event with a JSON payload of about 200 bytes.
fn sample_event() -> Event {
    let payload = serde_json::json!({
        "order_id": 123_456, "customer": "c-0042", "currency": "EUR", "total": 1234.5,
        "items": [{"sku": "XRP-USD-PERP", "qty": 3, "price": 0.5123},
                  {"sku": "BTC-EUR-SPOT", "qty": 1, "price": 61234.0}],
        "note": "deliver after 18:00, ring twice",
    });
    assert!((180..=240).contains(&payload.to_string().len()));
    Event::new(EventType::Created, "orders:eu", payload)
}

fn bench_bus(c: &mut Criterion, rt: &Runtime, subscribers: usize) {
    let bus = support::bus();
    let handled = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        for _ in 0..subscribers {
            let handled = handled.clone();
            bus.subscribe("orders:eu", move |_e: Event| {
                handled.fetch_add(1, Ordering::Relaxed);
                ready(Ok::<(), Infallible>(()))
            })
            .await
            .expect("subscribe");
        }
    });
    let event = sample_event();
    let mut group = c.benchmark_group("publish_to_handler");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function(BenchmarkId::new("multibus", subscribers), |b| {
        b.iter_custom(|iters| time_batches(rt, &bus, &event, iters))
    });
    group.finish();
    rt.block_on(bus.close()).expect("close");
    assert!(handled.load(Ordering::Relaxed) > 0);
}

fn bench_broadcast(c: &mut Criterion, rt: &Runtime, subscribers: usize) {
    let (tx, _) = broadcast::channel::<Event>(CAPACITY);
    let (done_tx, done) = mpsc::unbounded_channel::<()>();
    let done = Arc::new(tokio::sync::Mutex::new(done));
    let _guard = rt.enter();
    for _ in 0..subscribers {
        let (mut rx, done_tx) = (tx.subscribe(), done_tx.clone());
        tokio::spawn(async move {
            let mut count = 0u64;
            while let Ok(event) = rx.recv().await {
                std::hint::black_box(&event);
                count += 1;
                if count % BATCH == 0 && done_tx.send(()).is_err() {
                    return;
                }
            }
        });
    }
    let event = sample_event();
    let mut group = c.benchmark_group("publish_to_handler");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function(BenchmarkId::new("tokio-broadcast", subscribers), |b| {
        b.iter_custom(|iters| {
            // Published from a task on the runtime, as the bus is (see `time_batches`).
            let (tx, event, done) = (tx.clone(), event.clone(), done.clone());
            let timed = rt.spawn(async move {
                let mut done = done.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..BATCH {
                        tx.send(event.clone()).expect("receivers alive");
                    }
                    for _ in 0..subscribers {
                        done.recv().await.expect("receiver alive");
                    }
                }
                start.elapsed()
            });
            rt.block_on(timed).expect("the timed task ran")
        })
    });
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    let rt = runtime();
    for subscribers in [1, 4] {
        bench_bus(c, &rt, subscribers);
        bench_broadcast(c, &rt, subscribers);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = end_to_end
}
criterion_main!(benches);
