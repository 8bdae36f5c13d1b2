//! Dispatch with 10,000 subscriptions (mostly exact topics, some wildcard patterns)
//! where each event matches one subscription, next to the same bus with that single
//! subscription. Run: `cargo bench -p event-bus-memory --bench pattern_dispatch`.

#![allow(missing_docs)]

mod support;

use std::{convert::Infallible, future::ready, time::Duration};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use event_bus_core::{Event, EventBus, EventBusExt, EventType};
use tokio::runtime::Runtime;

use support::{BATCH, runtime, time_batches};

const SUBSCRIPTIONS: usize = 10_000;
/// One in this many subscriptions is a wildcard pattern.
const PATTERN_EVERY: usize = 20;

/// Subscription `i`: an exact topic `orders:<i>`, or for every 20th a wildcard pattern
/// that matches none of the benchmarked topics (`orders:<i>:*`, `invoices:[abc]<i>`,
/// `users:<i>?`). Their literal prefixes do not start the event's topic, so an indexed
/// registry need not try them.
fn pattern(i: usize) -> String {
    if i % PATTERN_EVERY != 0 {
        return format!("orders:{i}");
    }
    match (i / PATTERN_EVERY) % 3 {
        0 => format!("orders:{i}:*"),
        1 => format!("invoices:[abc]{i}"),
        _ => format!("users:{i}?"),
    }
}

fn bench_with(c: &mut Criterion, rt: &Runtime, total: usize) {
    let bus = support::bus();
    let target = "orders:4241"; // an exact subscription
    rt.block_on(async {
        for i in 0..total {
            let p = if total == 1 {
                target.to_owned()
            } else {
                pattern(i)
            };
            bus.subscribe(&p, |_e: Event| ready(Ok::<(), Infallible>(())))
                .await
                .expect("subscribe");
        }
    });
    let event = Event::new(EventType::Updated, target, serde_json::json!({"qty": 1}));
    let mut group = c.benchmark_group("dispatch_one_match");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function(BenchmarkId::new("subscriptions", total), |b| {
        b.iter_custom(|iters| time_batches(rt, &bus, &event, iters))
    });
    group.finish();
    assert_eq!(bus.metrics().delivered % BATCH, 0);
    rt.block_on(bus.close()).expect("close");
}

fn pattern_dispatch(c: &mut Criterion) {
    let rt = runtime();
    bench_with(c, &rt, 1);
    bench_with(c, &rt, SUBSCRIPTIONS);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = pattern_dispatch
}
criterion_main!(benches);
