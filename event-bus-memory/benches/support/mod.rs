//! What both memory benches share: the runtime, the bus, and the timed publish loop.

use std::time::{Duration, Instant};

use event_bus_core::{DispatcherConfig, Event, EventBus};
use event_bus_memory::{MemoryConfig, MemoryEventBus};
use tokio::runtime::Runtime;

/// Events per measured iteration.
pub(crate) const BATCH: u64 = 10_000;
/// Queue bound: a whole batch fits, so the publisher never blocks.
pub(crate) const CAPACITY: usize = 16_384;

pub(crate) fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A memory bus whose queues hold a whole batch, with no metrics log line.
pub(crate) fn bus() -> MemoryEventBus {
    MemoryEventBus::new(MemoryConfig {
        dispatcher: DispatcherConfig {
            queue_maxsize: CAPACITY,
            metrics_log_interval_seconds: 0.0,
            ..Default::default()
        },
    })
    .expect("bus")
}

/// Time for `iters` rounds of publishing [`BATCH`] clones of `event` and flushing.
///
/// The publishing loop is a task on the runtime, as a service's publishers are, not the
/// thread that calls `block_on`: that would make three busy threads (caller and two
/// workers) share the two cores, and whether the subscription's worker then parks and
/// is woken across cores for every few events, or drains long runs, depends on how the
/// scheduler places them, which gave runs in separate clusters.
pub(crate) fn time_batches(
    rt: &Runtime,
    bus: &MemoryEventBus,
    event: &Event,
    iters: u64,
) -> Duration {
    let (bus, event) = (bus.clone(), event.clone());
    let timed = rt.spawn(async move {
        let start = Instant::now();
        for _ in 0..iters {
            for _ in 0..BATCH {
                bus.publish(event.clone()).await.expect("publish");
            }
            bus.flush().await.expect("flush");
        }
        start.elapsed()
    });
    rt.block_on(timed).expect("the timed task ran")
}
