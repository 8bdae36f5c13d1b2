//! The subscription model: per-subscription options, retries with backoff, dead
//! letters, removal and pause, streams, consumer groups.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use multibus::{
    DeadLetter, DeadLetterInfo, Delivery, EndReason, Event, EventBusExt, OverflowPolicy,
    RetryPolicy, SubscribeOptions,
};

use super::{bus, bus_with, event, patient_dispatcher};
use crate::{
    factories::Factory,
    support::{DEADLINE, Recorder, wait_until},
};

/// (event id, payload, attempt, when) of every call.
type Calls = Arc<Mutex<Vec<(uuid::Uuid, u64, u32, Instant)>>>;

/// A handler that records each call and fails the first `fail_first` attempts of every
/// event with an odd payload (even payloads succeed at once).
fn flaky(fail_first: u32) -> (impl multibus::Handler, Calls) {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let handler = move |e: Event| {
        let seen = seen.clone();
        async move {
            let attempt = Delivery::current().map_or(0, |d| d.attempt());
            let n = e.payload.as_u64().unwrap_or(0);
            seen.lock()
                .unwrap()
                .push((e.id, n, attempt, Instant::now()));
            if n % 2 == 1 && attempt <= fail_first {
                return Err(format!("attempt {attempt} of event {n} failed"));
            }
            Ok(())
        }
    };
    (handler, calls)
}

fn no_jitter(max_attempts: u32, initial: Duration) -> RetryPolicy {
    RetryPolicy {
        jitter: false,
        ..RetryPolicy::exponential(max_attempts, initial, Duration::from_secs(10))
    }
}

/// A failing call is retried with the same event until attempt N succeeds: called exactly
/// N times, attempt numbers 1..N, never before its backoff.
pub async fn retry_succeeds_on_attempt_n_after_its_backoff(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let (handler, calls) = flaky(2);
    let options = SubscribeOptions::new().retry(no_jitter(5, Duration::from_millis(100)));
    bus.subscribe_with(&format!("{ns}:retry"), options, handler)
        .await
        .unwrap();
    let sent = event(format!("{ns}:retry"), 1);
    bus.publish(sent.clone()).await.unwrap();
    bus.flush().await.unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.iter().map(|c| c.2).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(
        calls.iter().all(|c| c.0 == sent.id),
        "same event every time"
    );
    assert!(calls[1].3 - calls[0].3 >= Duration::from_millis(100));
    assert!(calls[2].3 - calls[1].3 >= Duration::from_millis(200));
    let m = bus.metrics();
    assert_eq!((m.delivered, m.failed, m.retried), (1, 2, 2));
    bus.close().await.unwrap();
}

/// A panic and a timeout are retried like an error.
pub async fn panics_and_timeouts_are_retried(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let options = SubscribeOptions::new()
        .retry(no_jitter(3, Duration::from_millis(10)))
        .handler_timeout(Duration::from_millis(200));
    bus.subscribe_with(&format!("{ns}:p"), options, move |_e: Event| {
        let seen = seen.clone();
        async move {
            let attempt = Delivery::current().map_or(0, |d| d.attempt());
            seen.lock().unwrap().push(attempt);
            match attempt {
                1 => panic!("first attempt panics"),
                2 => tokio::time::sleep(Duration::from_secs(30)).await,
                _ => {}
            }
            Ok::<(), std::io::Error>(())
        }
    })
    .await
    .unwrap();
    bus.publish(event(format!("{ns}:p"), 0)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    let m = bus.metrics();
    assert_eq!((m.panicked, m.timed_out, m.delivered), (1, 1, 1));
    bus.close().await.unwrap();
}

/// The dead-letter topic receives exactly the poison events, intact, with failure
/// metadata.
pub async fn dead_letters_receive_exactly_the_poison_events(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let (handler, _) = flaky(u32::MAX);
    let options = SubscribeOptions::new()
        .retry(no_jitter(2, Duration::from_millis(10)))
        .dead_letter(DeadLetter::Derived)
        .keep_on_failures();
    let failing = bus
        .subscribe_with(&format!("{ns}:orders:*"), options, handler)
        .await
        .unwrap();
    let letters = Recorder::new();
    bus.subscribe(&format!("dead_letter:{ns}:*"), letters.handler())
        .await
        .unwrap();
    let sent: Vec<Event> = (0..6)
        .map(|n| event(format!("{ns}:orders:eu"), n).with_metadata("tenant", "acme"))
        .collect();
    bus.publish_batch(sent.clone()).await.unwrap();
    letters.wait_for(3, DEADLINE).await;
    bus.flush().await.unwrap();
    let letters = letters.events();
    let poison: Vec<&Event> = sent
        .iter()
        .filter(|e| e.payload.as_u64().unwrap() % 2 == 1)
        .collect();
    assert_eq!(letters.len(), poison.len(), "exactly the poison events");
    for (letter, original) in letters.iter().zip(poison) {
        assert_eq!(
            (letter.id, &letter.payload),
            (original.id, &original.payload)
        );
        assert_eq!(letter.metadata["tenant"], "acme");
        assert_eq!(letter.topic, format!("dead_letter:{ns}:orders:eu"));
        let info = DeadLetterInfo::of(letter).expect("failure metadata");
        assert_eq!(info.topic, format!("{ns}:orders:eu"));
        assert_eq!(info.attempts, 2);
        assert_eq!(info.pattern, format!("{ns}:orders:*"));
        assert_eq!(info.subscription, Some(failing.id()));
        assert!(info.error.contains("failed"), "{}", info.error);
    }
    assert_eq!(bus.metrics().dead_lettered, 3);
    bus.close().await.unwrap();
}

/// Consecutive final failures remove the subscription; its handle learns why.
pub async fn removal_after_consecutive_final_failures(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let (handler, calls) = flaky(u32::MAX);
    let options = SubscribeOptions::new()
        .retry(no_jitter(2, Duration::from_millis(10)))
        .remove_after(2);
    let sub = bus
        .subscribe_with(&format!("{ns}:rm"), options, handler)
        .await
        .unwrap();
    let ended = sub.ended();
    for n in [1, 3] {
        bus.publish(event(format!("{ns}:rm"), n)).await.unwrap();
    }
    let reason = tokio::time::timeout(DEADLINE, ended)
        .await
        .expect("removed in time");
    assert_eq!(reason, EndReason::Removed { failures: 2 });
    assert!(!sub.is_active());
    bus.publish(event(format!("{ns}:rm"), 5)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(
        calls.lock().unwrap().len(),
        4,
        "2 events x 2 attempts, then nothing"
    );
    assert_eq!(bus.metrics().auto_unsubscribed, 1);
    bus.close().await.unwrap();
}

/// A paused subscription stops for its cool-down, then resumes with what queued.
pub async fn pause_then_resume(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let (handler, calls) = flaky(1);
    let pause = Duration::from_millis(500);
    let sub = bus
        .subscribe_with(
            &format!("{ns}:pz"),
            SubscribeOptions::new().pause_after(1, pause),
            handler,
        )
        .await
        .unwrap();
    bus.publish(event(format!("{ns}:pz"), 1)).await.unwrap();
    bus.publish(event(format!("{ns}:pz"), 2)).await.unwrap();
    bus.flush().await.unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.iter().map(|c| c.1).collect::<Vec<_>>(), [1, 2]);
    assert!(calls[1].3 - calls[0].3 >= pause, "waited for the cool-down");
    assert!(sub.is_active(), "paused, not removed");
    assert_eq!(bus.metrics().paused, 1);
    bus.close().await.unwrap();
}

/// A stream subscription receives its events in order.
pub async fn stream_receives_in_order(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let mut stream = bus.subscribe_stream(&format!("{ns}:s:*")).await.unwrap();
    let sent: Vec<Event> = (0..20).map(|n| event(format!("{ns}:s:x"), n)).collect();
    bus.publish_batch(sent.clone()).await.unwrap();
    for expected in &sent {
        let got = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("in time")
            .expect("open stream");
        assert_eq!(got.id, expected.id);
    }
    let ended = stream.subscription().unwrap().ended();
    stream.cancel().await;
    assert_eq!(ended.await, EndReason::Cancelled);
    assert_eq!(bus.metrics().subscriptions, 0);
    bus.close().await.unwrap();
}

/// Dropping a stream unsubscribes at once: later events are not queued for it.
pub async fn dropping_a_stream_unsubscribes(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let stream = bus.subscribe_stream(&format!("{ns}:d")).await.unwrap();
    let ended = stream.subscription().unwrap().ended();
    drop(stream);
    assert_eq!(ended.await, EndReason::Dropped);
    assert_eq!(bus.metrics().subscriptions, 0);
    let others = Recorder::new();
    bus.subscribe(&format!("{ns}:d"), others.handler())
        .await
        .unwrap();
    bus.publish(event(format!("{ns}:d"), 1)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(others.len(), 1);
    assert_eq!(
        bus.metrics().queue_depth,
        0,
        "nothing queued for the dropped stream"
    );
    bus.close().await.unwrap();
}

/// Members of one group each get a disjoint share; together, everything.
pub async fn group_members_share_the_events(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let members: Vec<Recorder> = (0..3).map(|_| Recorder::new()).collect();
    for member in &members {
        bus.subscribe_with(
            &format!("{ns}:jobs:*"),
            SubscribeOptions::new().group("workers"),
            member.handler(),
        )
        .await
        .unwrap();
    }
    let everyone = Recorder::new();
    bus.subscribe(&format!("{ns}:jobs:*"), everyone.handler())
        .await
        .unwrap();
    let sent: Vec<Event> = (0..30).map(|n| event(format!("{ns}:jobs:a"), n)).collect();
    bus.publish_batch(sent.clone()).await.unwrap();
    everyone.wait_for(30, DEADLINE).await;
    bus.flush().await.unwrap();
    let mut shared: Vec<uuid::Uuid> = Vec::new();
    for member in &members {
        let share = member.events();
        assert!(!share.is_empty(), "every member gets a share");
        shared.extend(share.iter().map(|e| e.id));
    }
    shared.sort();
    let mut all: Vec<uuid::Uuid> = sent.iter().map(|e| e.id).collect();
    all.sort();
    assert_eq!(shared, all, "disjoint shares whose union is every event");
    bus.close().await.unwrap();
}

/// Per-subscription timeout and queue size override the bus's.
pub async fn per_subscription_options_override_the_bus(factory: Factory) {
    let (ns, bus) = bus_with(factory, patient_dispatcher()).await;
    // The bus allows 30 s; this subscription 100 ms.
    bus.subscribe_with(
        &format!("{ns}:slow"),
        SubscribeOptions::new().handler_timeout(Duration::from_millis(100)),
        |_e: Event| async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            Ok::<(), std::io::Error>(())
        },
    )
    .await
    .unwrap();
    bus.publish(event(format!("{ns}:slow"), 0)).await.unwrap();
    assert!(wait_until(DEADLINE, || bus.metrics().timed_out == 1).await);
    // The bus queues 1000; this subscription 1, dropping the oldest.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let seen = Recorder::new();
    let record = seen.handler();
    bus.subscribe_with(
        &format!("{ns}:small"),
        SubscribeOptions::new()
            .queue_maxsize(1)
            .overflow(OverflowPolicy::DropOldest),
        move |e: Event| {
            let g = g.clone();
            let done = multibus::Handler::call(&record, e);
            async move {
                let _ = g.acquire().await.map(|p| p.forget());
                done.await
            }
        },
    )
    .await
    .unwrap();
    bus.publish_batch((0..10).map(|n| event(format!("{ns}:small"), n)).collect())
        .await
        .unwrap();
    assert!(
        wait_until(DEADLINE, || bus.metrics().dropped >= 8).await,
        "queue of one overflowed"
    );
    gate.add_permits(100);
    bus.flush().await.unwrap();
    let m = bus.metrics();
    assert_eq!(seen.len() as u64 + m.dropped, 10, "delivered or counted");
    bus.close().await.unwrap();
}
