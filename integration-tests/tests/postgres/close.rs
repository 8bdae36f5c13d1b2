//! Closing: every event the bus received is, when `close()` returns, delivered or
//! counted in `dropped`.

use std::time::Duration;

use integration_tests::{conformance::test_dispatcher, support::namespace};
use multibus::{DispatcherConfig, Event, EventBus, EventBusExt, OverflowPolicy};

use super::{bus, config, connected, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_right_after_publish_delivers_or_counts_the_event() {
    for attempt in 0..30 {
        let ns = namespace();
        let bus = bus(&ns).await;
        let topic = format!("{ns}:t");
        bus.subscribe(&topic, |_: Event| async { Ok::<(), std::io::Error>(()) })
            .await
            .unwrap();
        bus.publish(event(&topic, 1)).await.unwrap();
        bus.close().await.unwrap();
        let m = bus.metrics();
        assert_eq!(m.delivered + m.dropped, 1, "attempt {attempt}: {m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_a_backlog_delivers_or_counts_everything_received() {
    const EVENTS: u64 = 500;
    let ns = namespace();
    let mut slow = config(&ns).await.with_dispatcher(DispatcherConfig {
        queue_maxsize: 10,
        overflow: OverflowPolicy::Block,
        handler_timeout_seconds: 30.0,
        shutdown_timeout_seconds: 1.0,
        ..test_dispatcher()
    });
    slow.command_timeout_seconds = 5.0;
    let subscriber = connected(slow).await;
    let topic = format!("{ns}:t");
    subscriber
        .subscribe(&topic, |_: Event| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap();
    let publisher = bus(&ns).await;
    for n in 0..EVENTS {
        publisher.publish(event(&topic, n)).await.unwrap();
    }
    subscriber.close().await.unwrap();
    let m = subscriber.metrics();
    assert_eq!(m.delivered + m.dropped, m.received, "{m:?}");
    assert_eq!(m.received, EVENTS, "every event was read: {m:?}");
    assert!(m.dropped > 0, "the backlog outlived the deadline: {m:?}");
    publisher.close().await.unwrap();
}
