//! Dispatcher behaviour that does not depend on a backend: overflow policies, flush and
//! the close deadline. (The conformance suite covers the rest on every backend.)

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use futures_util::FutureExt;
use tokio::sync::Semaphore;

use super::Dispatcher;
use crate::{
    DispatcherConfig, Error, Event, EventType, OverflowPolicy, Pattern, Priority, SubscribeOptions,
    Subscriber, Subscription, handler::Handler,
};

/// A handler shared by several subscriptions (or kept by the test).
pub(super) struct Shared<H>(pub(super) Arc<H>);

impl<H: Handler> Handler for Shared<H> {
    type Future = H::Future;

    fn call(&self, event: Event) -> Self::Future {
        self.0.call(event)
    }
}

/// Subscribes `handler` to `pattern` with `options`.
pub(super) fn sub_with(
    d: &Dispatcher,
    pattern: &str,
    options: &SubscribeOptions,
    handler: Arc<impl Handler>,
) -> Subscription {
    d.subscribe(
        Pattern::parse(pattern).unwrap(),
        options,
        Subscriber::handler(Shared(handler)),
    )
    .unwrap()
}

/// Subscribes `handler` to `pattern` with the dispatcher's settings.
pub(super) fn sub(d: &Dispatcher, pattern: &str, handler: Arc<impl Handler>) -> Subscription {
    sub_with(d, pattern, &SubscribeOptions::new(), handler)
}

fn ev(n: u64, p: Priority) -> Event {
    Event::new(EventType::Created, "t", serde_json::json!(n)).with_priority(p)
}

fn dispatcher(queue_maxsize: usize, overflow: OverflowPolicy) -> Dispatcher {
    Dispatcher::new(DispatcherConfig {
        queue_maxsize,
        overflow,
        metrics_log_interval_seconds: 0.0,
        shutdown_timeout_seconds: 0.2,
        ..DispatcherConfig::default()
    })
    .unwrap()
}

/// Payloads a handler saw, in order.
type Seen = Arc<Mutex<Vec<u64>>>;

/// A handler that records payloads and waits for a gate permit before each call.
fn gated() -> (Arc<impl Handler>, Arc<Semaphore>, Seen) {
    let gate = Arc::new(Semaphore::new(0));
    let seen: Seen = Arc::default();
    let (g, s) = (gate.clone(), seen.clone());
    let handler = Arc::new(move |e: Event| {
        let (g, s) = (g.clone(), s.clone());
        async move {
            g.acquire().await.map(|p| p.forget()).ok();
            s.lock().unwrap().push(e.payload.as_u64().unwrap());
            Ok::<(), std::io::Error>(())
        }
    });
    (handler, gate, seen)
}

/// Fills a queue of 2 behind a busy handler: event 0 runs, 1 and 2 wait.
async fn fill(d: &Dispatcher) -> (Arc<Semaphore>, Seen) {
    let (handler, gate, seen) = gated();
    sub(d, "t", handler);
    d.dispatch(ev(0, Priority::NORMAL)).await.unwrap();
    while d.metrics().snapshot().in_flight == 0 {
        tokio::task::yield_now().await;
    }
    d.dispatch(ev(1, Priority::NORMAL)).await.unwrap();
    d.dispatch(ev(2, Priority::LOW)).await.unwrap();
    (gate, seen)
}

#[tokio::test]
async fn reject_hands_the_event_back() {
    let d = dispatcher(2, OverflowPolicy::Reject);
    let (gate, seen) = fill(&d).await;
    let err = d.dispatch(ev(3, Priority::CRITICAL)).await.unwrap_err();
    assert!(matches!(&err, Error::QueueFull { .. }));
    assert_eq!(err.into_event().unwrap().payload, 3);
    gate.add_permits(10);
    d.flush().await;
    assert_eq!(*seen.lock().unwrap(), [0, 1, 2]);
    let m = d.metrics().snapshot();
    assert_eq!((m.rejected, m.dropped), (1, 0));
}

#[tokio::test]
async fn drop_oldest_discards_the_first_queued() {
    let d = dispatcher(2, OverflowPolicy::DropOldest);
    let (gate, seen) = fill(&d).await;
    d.dispatch(ev(3, Priority::LOW)).await.unwrap();
    gate.add_permits(10);
    d.flush().await;
    assert_eq!(*seen.lock().unwrap(), [0, 2, 3]);
    assert_eq!(d.metrics().snapshot().dropped, 1);
}

#[tokio::test]
async fn drop_lowest_priority_keeps_the_urgent() {
    let d = dispatcher(2, OverflowPolicy::DropLowestPriority);
    let (gate, seen) = fill(&d).await;
    d.dispatch(ev(3, Priority::HIGH)).await.unwrap(); // evicts 2 (low)
    d.dispatch(ev(4, Priority::LOW)).await.unwrap(); // least urgent itself: dropped
    gate.add_permits(10);
    d.flush().await;
    assert_eq!(*seen.lock().unwrap(), [0, 3, 1]);
    assert_eq!(d.metrics().snapshot().dropped, 2);
}

#[tokio::test]
async fn block_waits_for_room() {
    let d = dispatcher(2, OverflowPolicy::Block);
    let (gate, seen) = fill(&d).await;
    let blocked = {
        let d = d.clone();
        tokio::spawn(async move { d.dispatch(ev(3, Priority::NORMAL)).await })
    };
    tokio::task::yield_now().await;
    assert!(!blocked.is_finished());
    gate.add_permits(10);
    blocked.await.unwrap().unwrap();
    d.flush().await;
    assert_eq!(*seen.lock().unwrap(), [0, 1, 2, 3]);
    assert_eq!(d.metrics().snapshot().dropped, 0);
}

#[tokio::test]
async fn close_deadline_counts_what_it_discards() {
    let d = dispatcher(10, OverflowPolicy::Block);
    let (_gate, seen) = fill(&d).await;
    // Never released: close cancels the queued events at the 0.2 s deadline, then waits
    // for the running call up to its timeout.
    let started = tokio::time::Instant::now();
    tokio::time::pause();
    d.close().await;
    tokio::time::resume();
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    let m = d.metrics().snapshot();
    assert_eq!(m.dropped, 2, "the two queued events are counted");
    assert_eq!(m.timed_out, 1, "the running call hit its timeout");
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(d.metrics().snapshot().queue_depth, 0);
    assert!(matches!(
        d.dispatch(ev(9, Priority::NORMAL)).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn flush_waits_for_every_handler() {
    let d = dispatcher(1000, OverflowPolicy::Block);
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    sub(
        &d,
        "*",
        Arc::new(move |_e: Event| {
            let c = c.clone();
            async move {
                tokio::task::yield_now().await;
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<(), std::io::Error>(())
            }
        }),
    );
    for i in 0..500 {
        d.dispatch(ev(i, Priority::NORMAL)).await.unwrap();
    }
    d.flush().await;
    assert_eq!(count.load(Ordering::SeqCst), 500);
}

#[tokio::test]
async fn invalid_config_names_the_key() {
    let err = Dispatcher::new(DispatcherConfig {
        queue_maxsize: 0,
        ..DispatcherConfig::default()
    })
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("dispatcher.queue_maxsize"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_concurrency_is_bounded() {
    let d = Dispatcher::new(DispatcherConfig {
        max_concurrent_handlers: 2,
        metrics_log_interval_seconds: 0.0,
        ..DispatcherConfig::default()
    })
    .unwrap();
    let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    for _ in 0..5 {
        let (running, peak) = (running.clone(), peak.clone());
        let handler = Arc::new(move |_e: Event| {
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<(), std::io::Error>(())
            }
        });
        sub(&d, "*", handler);
    }
    for i in 0..4 {
        d.dispatch(ev(i, Priority::NORMAL)).await.unwrap();
    }
    d.flush().await;
    assert_eq!(d.metrics().snapshot().delivered, 20);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "never more than 2 calls at once"
    );
}

/// Handlers that finish on their first poll take the worker's fast path, where a worker
/// keeps its concurrency slot between calls while nobody waits: the cap still holds
/// across subscriptions, and a worker that parks gives its slot back (otherwise the
/// other subscriptions would wait forever and the flush would not return).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_cap_holds_for_calls_that_finish_at_once() {
    let d = Dispatcher::new(DispatcherConfig {
        max_concurrent_handlers: 1,
        metrics_log_interval_seconds: 0.0,
        ..DispatcherConfig::default()
    })
    .unwrap();
    let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    for topic in ["a", "b", "c"] {
        let (running, peak) = (running.clone(), peak.clone());
        let handler = Arc::new(move |_e: Event| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            // Long enough for another worker thread to try a call meanwhile.
            for _ in 0..200 {
                std::hint::spin_loop();
                std::thread::yield_now();
            }
            running.fetch_sub(1, Ordering::SeqCst);
            std::future::ready(Ok::<(), std::io::Error>(()))
        });
        sub(&d, topic, handler);
    }
    // One subscription at a time first (each worker parks afterwards, with nobody
    // waiting for a slot), then all three at once.
    for topics in [&["a"][..], &["b"], &["c"], &["a", "b", "c"]] {
        for i in 0..100 {
            for topic in topics {
                let event = ev(i, Priority::NORMAL).with_topic(*topic);
                d.dispatch(event).await.unwrap();
            }
        }
        tokio::time::timeout(std::time::Duration::from_secs(30), d.flush())
            .await
            .unwrap_or_else(|_| panic!("{topics:?}: a parked worker kept its slot"));
    }
    assert_eq!(d.metrics().snapshot().delivered, 600);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "never more than 1 call at once"
    );
}

#[tokio::test]
async fn publish_is_lazy_ready_when_queued_and_waits_for_room_under_block() {
    let d = dispatcher(2, OverflowPolicy::Block);
    let (gate, seen) = fill(&d).await;
    // Nothing happens until the first poll.
    let unpolled = d.publish(ev(9, Priority::NORMAL));
    drop(unpolled);
    assert_eq!(d.metrics().snapshot().published, 0);
    // The queue is full: the publish waits (the boxed slow path) and counts when done.
    let mut third = d.publish(ev(3, Priority::NORMAL));
    assert!((&mut third).now_or_never().is_none());
    assert_eq!(d.metrics().snapshot().published, 0);
    gate.add_permits(10);
    tokio::time::timeout(std::time::Duration::from_secs(10), third)
        .await
        .expect("room was made")
        .unwrap();
    d.flush().await;
    assert_eq!(*seen.lock().unwrap(), [0, 1, 2, 3]);
    // With room, a publish finishes on its first poll.
    let mut fourth = d.publish(ev(4, Priority::NORMAL));
    assert!(matches!((&mut fourth).now_or_never(), Some(Ok(()))));
    d.flush().await;
    assert_eq!(d.metrics().snapshot().published, 2);
    // Topic rules and close still apply.
    let bad = Event::new(EventType::Created, "a::b", serde_json::json!(0));
    assert!(matches!(
        d.publish(bad).await,
        Err(Error::InvalidTopic { .. })
    ));
    d.close().await;
    assert!(matches!(
        d.publish(ev(5, Priority::NORMAL)).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn latency_is_sampled_one_event_in_sixteen() {
    let d = dispatcher(1000, OverflowPolicy::Block);
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    sub(
        &d,
        "t",
        Arc::new(move |_e: Event| {
            c.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<(), std::io::Error>(()))
        }),
    );
    for i in 0..40 {
        d.publish(ev(i, Priority::NORMAL)).await.unwrap();
    }
    d.flush().await;
    let m = d.metrics().snapshot();
    assert_eq!((m.delivered, count.load(Ordering::SeqCst)), (40, 40));
    // The 1st, 17th and 33rd events are samples.
    assert_eq!(m.latency.count(), 3);
}
