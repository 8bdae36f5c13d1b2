//! The subscription model on the dispatcher alone: retries and backoff (with paused
//! time), dead letters, removal and pause, streams, groups, per-subscription options and
//! the lifecycle. The conformance suite runs the same behaviours on every backend.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use tokio::time::Instant;

use super::{
    Dispatcher,
    tests::{sub, sub_with},
};
use crate::{
    DeadLetter, DeadLetterInfo, Delivery, DispatcherConfig, EndReason, Error, Event, EventType,
    OverflowPolicy, Pattern, Priority, RetryPolicy, SubscribeOptions, Subscriber, handler::Handler,
};

fn dispatcher() -> Dispatcher {
    Dispatcher::new(DispatcherConfig {
        metrics_log_interval_seconds: 0.0,
        ..DispatcherConfig::default()
    })
    .unwrap()
}

fn ev(topic: &str, n: u64) -> Event {
    Event::new(EventType::Created, topic, serde_json::json!(n))
}

/// (payload, attempt, when) of every call.
type Calls = Arc<Mutex<Vec<(u64, u32, Instant)>>>;

/// A handler that records each call and fails the first `fail_first` attempts of every
/// event whose payload is odd (even payloads always succeed).
fn flaky(fail_first: u32) -> (Arc<impl Handler>, Calls) {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let handler = Arc::new(move |e: Event| {
        let seen = seen.clone();
        async move {
            let attempt = Delivery::current().expect("inside a call").attempt();
            let n = e.payload.as_u64().unwrap();
            seen.lock().unwrap().push((n, attempt, Instant::now()));
            if n % 2 == 1 && attempt <= fail_first {
                return Err(format!("attempt {attempt} of {n} failed"));
            }
            Ok(())
        }
    });
    (handler, calls)
}

fn no_jitter(max_attempts: u32, initial_ms: u64) -> RetryPolicy {
    RetryPolicy {
        jitter: false,
        ..RetryPolicy::exponential(
            max_attempts,
            Duration::from_millis(initial_ms),
            Duration::from_secs(60),
        )
    }
}

#[tokio::test(start_paused = true)]
async fn retry_succeeds_on_attempt_n_after_its_backoff() {
    let d = dispatcher();
    let (handler, calls) = flaky(2);
    sub_with(
        &d,
        "t",
        &SubscribeOptions::new().retry(no_jitter(5, 100)),
        handler,
    );
    let event = ev("t", 1);
    d.dispatch(event.clone()).await.unwrap();
    d.flush().await;
    let calls = calls.lock().unwrap().clone();
    let attempts: Vec<u32> = calls.iter().map(|c| c.1).collect();
    assert_eq!(attempts, [1, 2, 3], "called exactly 3 times");
    assert_eq!(calls[1].2 - calls[0].2, Duration::from_millis(100));
    assert_eq!(calls[2].2 - calls[1].2, Duration::from_millis(200));
    let m = d.metrics().snapshot();
    assert_eq!((m.delivered, m.failed, m.retried), (1, 2, 2));
}

#[tokio::test(start_paused = true)]
async fn jittered_backoff_stays_under_its_bound() {
    let d = dispatcher();
    let (handler, calls) = flaky(u32::MAX);
    let policy =
        RetryPolicy::exponential(6, Duration::from_millis(100), Duration::from_millis(300));
    sub_with(
        &d,
        "t",
        &SubscribeOptions::new().retry(policy.clone()),
        handler,
    );
    d.dispatch(ev("t", 1)).await.unwrap();
    d.flush().await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 6);
    for (i, pair) in calls.windows(2).enumerate() {
        let waited = pair[1].2 - pair[0].2;
        assert!(waited <= policy.backoff_cap(i as u32 + 1), "{waited:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retries_keep_order_and_do_not_block_other_subscriptions() {
    let d = Dispatcher::new(DispatcherConfig {
        max_concurrent_handlers: 1,
        metrics_log_interval_seconds: 0.0,
        ..DispatcherConfig::default()
    })
    .unwrap();
    let (slow, slow_calls) = flaky(2);
    sub_with(
        &d,
        "t",
        &SubscribeOptions::new().retry(no_jitter(3, 1_000)),
        slow,
    );
    let (other, other_calls) = flaky(0);
    sub(&d, "t", other);
    let start = Instant::now();
    d.dispatch(ev("t", 1)).await.unwrap();
    d.dispatch(ev("t", 2)).await.unwrap();
    d.flush().await;
    let slow_calls = slow_calls.lock().unwrap().clone();
    let order: Vec<(u64, u32)> = slow_calls.iter().map(|c| (c.0, c.1)).collect();
    assert_eq!(order, [(1, 1), (1, 2), (1, 3), (2, 1)], "retried in place");
    let other_calls = other_calls.lock().unwrap().clone();
    assert_eq!(other_calls.len(), 2);
    assert!(
        other_calls
            .iter()
            .all(|c| c.2 - start < Duration::from_millis(1_000)),
        "the other subscription was not held up by the backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn panics_and_timeouts_are_retried_like_errors() {
    let d = dispatcher();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let handler = Arc::new(move |e: Event| {
        let seen = seen.clone();
        async move {
            let delivery = Delivery::current().unwrap();
            seen.lock()
                .unwrap()
                .push((e.id, delivery.attempt(), delivery.deadline()));
            match delivery.attempt() {
                1 => panic!("boom"),
                2 => tokio::time::sleep(Duration::from_secs(3600)).await,
                _ => {}
            }
            Ok::<(), std::io::Error>(())
        }
    });
    sub_with(
        &d,
        "t",
        &SubscribeOptions::new()
            .retry(no_jitter(3, 10))
            .handler_timeout(Duration::from_millis(50)),
        handler,
    );
    let event = ev("t", 0);
    d.dispatch(event.clone()).await.unwrap();
    d.flush().await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3);
    assert!(
        calls.iter().all(|c| c.0 == event.id),
        "same event every time"
    );
    assert!(
        calls.iter().all(|c| c.2.is_some()),
        "each call has a deadline"
    );
    let m = d.metrics().snapshot();
    assert_eq!((m.panicked, m.timed_out, m.delivered), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn dead_letters_carry_exactly_the_poison_events() {
    let d = dispatcher();
    let (handler, _) = flaky(u32::MAX);
    let failing = sub_with(
        &d,
        "orders:*",
        &SubscribeOptions::new()
            .retry(no_jitter(2, 10))
            .dead_letter(DeadLetter::Derived)
            .group("billing"),
        handler,
    );
    let letters = Arc::new(Mutex::new(Vec::new()));
    let l = letters.clone();
    sub(
        &d,
        "dead_letter:*",
        Arc::new(move |e: Event| {
            let l = l.clone();
            async move {
                l.lock().unwrap().push(e);
                Ok::<(), std::io::Error>(())
            }
        }),
    );
    let events: Vec<Event> = (0..6).map(|n| ev("orders:eu", n)).collect();
    for e in &events {
        d.dispatch(e.clone()).await.unwrap();
    }
    d.flush().await;
    let letters = letters.lock().unwrap().clone();
    let poison: Vec<_> = events
        .iter()
        .filter(|e| e.payload.as_u64().unwrap() % 2 == 1)
        .collect();
    assert_eq!(letters.len(), poison.len());
    for (letter, original) in letters.iter().zip(poison) {
        assert_eq!(letter.id, original.id);
        assert_eq!(letter.payload, original.payload);
        assert_eq!(letter.topic, "dead_letter:orders:eu");
        let info = DeadLetterInfo::of(letter).unwrap();
        assert_eq!(info.topic, "orders:eu");
        assert_eq!(info.attempts, 2);
        assert_eq!(info.pattern, "orders:*");
        assert_eq!(info.group.as_deref(), Some("billing"));
        assert_eq!(info.subscription, Some(failing.id()));
        assert!(info.error.contains("failed"), "{}", info.error);
    }
    assert_eq!(d.metrics().snapshot().dead_lettered, 3);
}

#[tokio::test(start_paused = true)]
async fn a_failing_catch_all_never_loops_on_its_dead_letters() {
    let d = dispatcher();
    let (handler, calls) = flaky(u32::MAX);
    sub_with(
        &d,
        "*",
        &SubscribeOptions::new()
            .dead_letter(DeadLetter::Derived)
            .keep_on_failures(),
        handler,
    );
    d.dispatch(ev("t", 1)).await.unwrap();
    d.flush().await;
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "its own dead letter is not delivered to it"
    );
    assert_eq!(d.metrics().snapshot().dead_lettered, 1);
}

#[tokio::test(start_paused = true)]
async fn removal_after_consecutive_final_failures_is_reported() {
    let d = dispatcher();
    let (handler, calls) = flaky(u32::MAX);
    let s = sub_with(
        &d,
        "t",
        &SubscribeOptions::new()
            .retry(no_jitter(2, 10))
            .remove_after(2),
        handler,
    );
    let ended = s.ended();
    for n in [1, 3, 5] {
        d.dispatch(ev("t", n)).await.unwrap();
    }
    assert_eq!(ended.await, EndReason::Removed { failures: 2 });
    d.flush().await;
    assert_eq!(
        calls.lock().unwrap().len(),
        4,
        "2 events x 2 attempts, then removed"
    );
    assert!(!s.is_active());
    let m = d.metrics().snapshot();
    assert_eq!((m.auto_unsubscribed, m.dropped, m.subscriptions), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn pause_then_resume() {
    let d = dispatcher();
    let (handler, calls) = flaky(1);
    let s = sub_with(
        &d,
        "t",
        &SubscribeOptions::new().pause_after(1, Duration::from_secs(10)),
        handler,
    );
    let start = Instant::now();
    d.dispatch(ev("t", 1)).await.unwrap();
    d.dispatch(ev("t", 2)).await.unwrap();
    d.flush().await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1].2 - start >= Duration::from_secs(10),
        "paused for 10 s"
    );
    assert!(s.is_active(), "paused, not removed");
    assert_eq!(d.metrics().snapshot().paused, 1);
}

#[tokio::test]
async fn streams_receive_in_priority_then_publish_order() {
    let d = dispatcher();
    let subscription = d
        .subscribe(
            Pattern::parse("t").unwrap(),
            &SubscribeOptions::new(),
            Subscriber::stream(),
        )
        .unwrap();
    let mut stream = crate::EventStream::new(subscription);
    for (n, p) in [
        (1, Priority::LOW),
        (2, Priority::HIGH),
        (3, Priority::LOW),
        (4, Priority::HIGH),
    ] {
        d.dispatch(ev("t", n).with_priority(p)).await.unwrap();
    }
    d.flush().await; // does not wait for the reader
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(stream.next().await.unwrap().payload.as_u64().unwrap());
    }
    assert_eq!(got, [2, 4, 1, 3]);
    let id = stream.id().unwrap();
    d.dispatch(ev("t", 5)).await.unwrap();
    drop(stream);
    assert!(!d.is_subscribed(id), "drop unsubscribes at once");
    assert_eq!(
        d.metrics().snapshot().dropped,
        1,
        "the unread event is counted"
    );
}

#[tokio::test]
async fn streams_apply_their_queue_bound_and_end_after_close() {
    let d = dispatcher();
    let options = SubscribeOptions::new()
        .queue_maxsize(2)
        .overflow(OverflowPolicy::Reject);
    let subscription = d
        .subscribe(Pattern::parse("t").unwrap(), &options, Subscriber::stream())
        .unwrap();
    let mut stream = crate::EventStream::new(subscription);
    d.dispatch(ev("t", 1)).await.unwrap();
    d.dispatch(ev("t", 2)).await.unwrap();
    assert!(matches!(
        d.dispatch(ev("t", 3)).await,
        Err(Error::QueueFull { .. })
    ));
    d.close().await;
    assert_eq!(stream.next().await.unwrap().payload, 1);
    assert_eq!(stream.next().await.unwrap().payload, 2);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn group_members_share_the_events() {
    let d = dispatcher();
    let mut shares = Vec::new();
    for _ in 0..3 {
        let (handler, calls) = flaky(0);
        sub_with(
            &d,
            "jobs:*",
            &SubscribeOptions::new().group("workers"),
            handler,
        );
        shares.push(calls);
    }
    let (outsider, outsider_calls) = flaky(0);
    sub(&d, "jobs:*", outsider);
    for n in 0..30 {
        d.dispatch(ev("jobs:a", n * 2)).await.unwrap();
    }
    d.flush().await;
    let mut all: Vec<u64> = Vec::new();
    for share in &shares {
        let share: Vec<u64> = share.lock().unwrap().iter().map(|c| c.0).collect();
        assert_eq!(share.len(), 10, "round robin");
        all.extend(share);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (0..30).map(|n| n * 2).collect::<Vec<_>>(),
        "disjoint, complete"
    );
    assert_eq!(
        outsider_calls.lock().unwrap().len(),
        30,
        "non-members get everything"
    );
}

#[tokio::test]
async fn per_subscription_queue_and_overflow_override_the_bus() {
    let d = dispatcher();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let handler = Arc::new(move |_: Event| {
        let g = g.clone();
        async move {
            g.acquire().await.map(|p| p.forget()).ok();
            Ok::<(), std::io::Error>(())
        }
    });
    sub_with(
        &d,
        "t",
        &SubscribeOptions::new()
            .queue_maxsize(1)
            .overflow(OverflowPolicy::DropOldest),
        handler,
    );
    for n in 0..5 {
        d.dispatch(ev("t", n)).await.unwrap();
    }
    gate.add_permits(10);
    d.flush().await;
    let m = d.metrics().snapshot();
    assert!(m.dropped >= 3, "a queue of 1 overflowed: {m:?}");
    assert_eq!(m.delivered + m.dropped, 5);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_subscription_waiting_for_a_slot_does_not_hang() {
    let d = Dispatcher::new(DispatcherConfig {
        max_concurrent_handlers: 1,
        metrics_log_interval_seconds: 0.0,
        ..DispatcherConfig::default()
    })
    .unwrap();
    let victim: Arc<Mutex<Option<crate::Subscription>>> = Arc::default();
    let v = victim.clone();
    sub(
        &d,
        "t",
        Arc::new(move |_: Event| {
            let v = v.clone();
            async move {
                // Let the other worker take the event and wait for the slot we hold.
                for _ in 0..5 {
                    tokio::task::yield_now().await;
                }
                let b = v.lock().unwrap().take();
                if let Some(b) = b {
                    b.cancel().await;
                }
                Ok::<(), std::io::Error>(())
            }
        }),
    );
    let (handler, calls) = flaky(0);
    *victim.lock().unwrap() = Some(sub(&d, "t", handler));
    let start = Instant::now();
    d.dispatch(ev("t", 0)).await.unwrap();
    d.flush().await;
    let m = d.metrics().snapshot();
    assert_eq!(
        m.timed_out, 0,
        "the canceller did not hang until its timeout"
    );
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(
        calls.lock().unwrap().is_empty(),
        "never called after cancel"
    );
    assert_eq!(m.dropped, 1, "the event it had taken is counted");
}

#[tokio::test]
async fn cancel_reports_the_end_and_dropping_a_set_unsubscribes() {
    let d = dispatcher();
    let (handler, _) = flaky(0);
    let s = sub(&d, "a", handler.clone());
    let ended = s.ended();
    s.cancel().await;
    assert_eq!(ended.await, EndReason::Cancelled);
    let mut set = crate::SubscriptionSet::new();
    set.insert(sub(&d, "b", handler.clone()));
    set.insert(sub(&d, "c", handler));
    assert_eq!(d.metrics().snapshot().subscriptions, 2);
    drop(set);
    assert_eq!(d.metrics().snapshot().subscriptions, 0);
}

/// What a durable backend was told about each delivery.
#[derive(Clone, Debug, PartialEq)]
enum Settled {
    Ack,
    Retry(Duration),
    DeadLetter(u32),
}

struct Recorded(u64, Arc<Mutex<Vec<(u64, Settled)>>>);

#[async_trait::async_trait]
impl crate::durable::Settle for Recorded {
    async fn ack(self: Box<Self>) -> Result<(), Error> {
        self.1.lock().unwrap().push((self.0, Settled::Ack));
        Ok(())
    }

    async fn retry(self: Box<Self>, delay: Duration, _error: &str) -> Result<(), Error> {
        self.1.lock().unwrap().push((self.0, Settled::Retry(delay)));
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, letter: Event) -> Result<(), Error> {
        let info = DeadLetterInfo::of(&letter).expect("failure metadata");
        self.1
            .lock()
            .unwrap()
            .push((self.0, Settled::DeadLetter(info.attempts)));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn durable_deliveries_are_settled_by_the_server_attempt() {
    let d = dispatcher();
    let (handler, calls) = flaky(u32::MAX);
    let sub = sub_with(
        &d,
        "t",
        &SubscribeOptions::new().retry(no_jitter(3, 100)),
        handler,
    );
    let settled = Arc::new(Mutex::new(Vec::new()));
    // (payload, server attempt): even payloads succeed, odd ones always fail.
    for (n, attempt) in [(2, 1), (1, 1), (3, 3)] {
        let delivery = crate::durable::DurableDelivery {
            attempt,
            settle: Box::new(Recorded(n, settled.clone())),
        };
        assert!(d.deliver_to(sub.id(), ev("t", n), delivery).await.unwrap());
    }
    d.flush().await;
    assert_eq!(
        *settled.lock().unwrap(),
        [
            (2, Settled::Ack),
            (1, Settled::Retry(Duration::from_millis(100))),
            (3, Settled::DeadLetter(3)),
        ]
    );
    let attempts: Vec<u32> = calls.lock().unwrap().iter().map(|c| c.1).collect();
    assert_eq!(attempts, [1, 1, 3], "one call each, numbered by the server");
    let ended = sub.ended();
    d.cancel(sub.entry()).await;
    assert_eq!(ended.await, EndReason::Cancelled);
    let gone = crate::durable::DurableDelivery {
        attempt: 1,
        settle: Box::new(Recorded(9, settled.clone())),
    };
    assert!(
        !d.deliver_to(sub.id(), ev("t", 9), gone).await.unwrap(),
        "a cancelled subscription takes nothing; the server keeps it"
    );
}
