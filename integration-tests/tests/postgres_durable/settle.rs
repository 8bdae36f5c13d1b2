//! Settling on the server: retries with the server's attempt count, dead letters,
//! redrive, and fencing by the lease token.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use integration_tests::{
    postgres_server,
    support::{DEADLINE, namespace, wait_until, wait_until_async},
};
use multibus::{Event, EventBus, EventBusExt, RetryPolicy, SubscribeOptions, dead_letter};
use tokio::sync::Semaphore;

use super::{bus, count_rows, drop_tables, event, number};

fn retrying(group: &str, attempts: u32) -> SubscribeOptions {
    SubscribeOptions::new()
        .group(group)
        .retry(RetryPolicy::exponential(
            attempts,
            Duration::from_millis(20),
            Duration::from_millis(50),
        ))
        .keep_on_failures()
}

#[tokio::test]
async fn retries_then_dead_letters_with_attempt_counts_then_redrive() {
    let ns = namespace();
    let bus = bus(&ns).await;
    let attempts_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = attempts_seen.clone();
    let fail_poison = move |e: Event| {
        let seen = seen.clone();
        async move {
            let attempt = multibus::Delivery::current().map_or(0, |d| d.attempt());
            seen.lock().unwrap().push((number(&e), attempt));
            if e.topic.ends_with(":poison") {
                return Err(std::io::Error::other("poisoned"));
            }
            Ok(())
        }
    };
    let ok_count = || {
        attempts_seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| *n < 100)
            .count()
    };
    bus.subscribe_with(&format!("{ns}:*"), retrying("jobs", 3), fail_poison)
        .await
        .unwrap();
    for i in 0..5 {
        bus.publish(event(&format!("{ns}:ok"), i)).await.unwrap();
    }
    bus.publish(event(&format!("{ns}:poison"), 100))
        .await
        .unwrap();
    bus.publish(event(&format!("{ns}:poison"), 101))
        .await
        .unwrap();
    assert!(wait_until(DEADLINE, || ok_count() == 5).await);
    let dead = || async { bus.dead_letters("jobs", 10).await.unwrap() };
    assert!(wait_until_async(DEADLINE, || async { dead().await.len() == 2 }).await);
    let letters = dead().await;
    assert_eq!(
        letters.iter().map(|l| l.attempts).collect::<Vec<_>>(),
        [3, 3]
    );
    for l in &letters {
        let e = l.event.as_ref().expect("the letter decodes");
        assert_eq!(e.metadata[dead_letter::ATTEMPTS], "3");
        assert_eq!(
            l.last_error.as_deref(),
            Some(e.metadata[dead_letter::ERROR].as_str())
        );
        assert!(l.topic.ends_with(":poison"));
    }
    let poison_attempts: Vec<u32> = attempts_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| *n == 100)
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(poison_attempts, [1, 2, 3], "the server's attempt numbers");
    let stats = bus.durable_stats().await.unwrap();
    let jobs = stats.iter().find(|s| s.group == "jobs").unwrap();
    assert_eq!(
        (jobs.acked, jobs.retried, jobs.dead_lettered),
        (5, 4, 2),
        "{jobs:?}"
    );
    assert_eq!(count_rows(&ns, "deliveries").await, 0);
    // Redrive one, then the rest: each comes back with fresh attempts.
    let first = letters[0].event_id;
    assert_eq!(bus.redrive("jobs", Some(&[first])).await.unwrap(), 1);
    assert!(
        wait_until_async(DEADLINE, || async {
            let l = dead().await;
            l.len() == 2 && l.iter().any(|x| x.event_id == first)
        })
        .await
    );
    let runs = attempts_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| *n == 100)
        .count();
    assert_eq!(runs, 6, "redriven: three more attempts");
    assert_eq!(bus.redrive("jobs", None).await.unwrap(), 2);
    bus.close().await.unwrap();
    drop_tables(&ns).await;
}

#[tokio::test]
async fn a_stale_worker_cannot_ack_or_dead_letter_a_row_another_worker_holds() {
    let ns = namespace();
    let (a, b) = (bus(&ns).await, bus(&ns).await);
    let gate_a = Arc::new(Semaphore::new(0));
    let calls_a = Arc::new(AtomicU32::new(0));
    let handler_a = {
        let (gate, calls) = (gate_a.clone(), calls_a.clone());
        move |e: Event| {
            let (gate, calls) = (gate.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                // Fail once (dead-letter attempt: one attempt allowed), succeed once (ack).
                if number(&e) == 1 {
                    Err(std::io::Error::other("late failure"))
                } else {
                    Ok(())
                }
            }
        }
    };
    let one = SubscribeOptions::new()
        .group("g")
        .retry(RetryPolicy::none())
        .handler_timeout(Duration::from_secs(60))
        .keep_on_failures();
    a.subscribe_with(&format!("{ns}:*"), one.clone(), handler_a)
        .await
        .unwrap();
    a.publish(event(&format!("{ns}:x"), 1)).await.unwrap();
    a.publish(event(&format!("{ns}:x"), 2)).await.unwrap();
    assert!(wait_until(DEADLINE, || calls_a.load(Ordering::SeqCst) == 1).await);
    // A stalls past its lease: make both rows visible again, as an expired lease does.
    let client = postgres_server::client().await;
    client
        .execute(
            &format!("UPDATE \"{ns}_deliveries\" SET visible_after = now() - interval '1 second'"),
            &[],
        )
        .await
        .unwrap();
    let gate_b = Arc::new(Semaphore::new(0));
    let done_b = Arc::new(AtomicU32::new(0));
    let handler_b = {
        let (gate, done) = (gate_b.clone(), done_b.clone());
        move |_: Event| {
            let (gate, done) = (gate.clone(), done.clone());
            async move {
                gate.acquire().await.unwrap().forget();
                done.fetch_add(1, Ordering::SeqCst);
                Ok::<(), std::io::Error>(())
            }
        }
    };
    b.subscribe_with(&format!("{ns}:*"), one, handler_b)
        .await
        .unwrap();
    // B now holds both rows (new lease tokens); A wakes up and settles its first.
    let leases = || async {
        client
            .query_one(
                &format!(
                    "SELECT count(DISTINCT lease) FROM \"{ns}_deliveries\" WHERE lease IS NOT NULL"
                ),
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert!(
        wait_until_async(DEADLINE, || async {
            leases().await >= 1
                && b.durable_stats()
                    .await
                    .unwrap()
                    .iter()
                    .any(|s| s.reclaimed == 2)
        })
        .await
    );
    gate_a.add_permits(2);
    assert!(
        wait_until_async(DEADLINE, || async {
            a.durable_stats()
                .await
                .unwrap()
                .iter()
                .any(|s| s.fenced == 2)
        })
        .await,
        "{:?}",
        a.durable_stats().await
    );
    assert_eq!(
        count_rows(&ns, "deliveries").await,
        2,
        "A's ack and dead letter were refused"
    );
    assert_eq!(count_rows(&ns, "dead_letters").await, 0);
    let sa = a.durable_stats().await.unwrap();
    assert_eq!((sa[0].acked, sa[0].dead_lettered), (0, 0), "{sa:?}");
    gate_b.add_permits(2);
    assert!(wait_until(DEADLINE, || done_b.load(Ordering::SeqCst) == 2).await);
    assert!(
        wait_until_async(DEADLINE, || async {
            count_rows(&ns, "deliveries").await == 0
        })
        .await
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
    drop_tables(&ns).await;
}

#[tokio::test]
async fn a_handler_running_past_its_lease_keeps_the_event() {
    let ns = namespace();
    let mut c = super::config(&ns).await;
    c.durable.lease_seconds = 0.3;
    let (a, b) = (super::connected(c.clone()).await, super::connected(c).await);
    let calls = Arc::new(AtomicU32::new(0));
    let slow = |calls: Arc<AtomicU32>| {
        move |_: Event| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Seven leases long: only the heartbeat keeps the event from the other member.
                tokio::time::sleep(Duration::from_millis(2100)).await;
                Ok::<(), std::io::Error>(())
            }
        }
    };
    let opts = SubscribeOptions::new()
        .group("slow")
        .handler_timeout(Duration::from_secs(10));
    a.subscribe_with(&format!("{ns}:*"), opts.clone(), slow(calls.clone()))
        .await
        .unwrap();
    b.subscribe_with(&format!("{ns}:*"), opts, slow(calls.clone()))
        .await
        .unwrap();
    a.publish(event(&format!("{ns}:x"), 1)).await.unwrap();
    assert!(
        wait_until_async(DEADLINE, || async {
            count_rows(&ns, "deliveries").await == 0
        })
        .await,
        "acknowledged"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "handled once, never reclaimed"
    );
    let reclaimed: u64 = a
        .durable_stats()
        .await
        .unwrap()
        .iter()
        .map(|s| s.reclaimed)
        .sum::<u64>()
        + b.durable_stats()
            .await
            .unwrap()
            .iter()
            .map(|s| s.reclaimed)
            .sum::<u64>();
    assert_eq!(reclaimed, 0);
    a.close().await.unwrap();
    b.close().await.unwrap();
    drop_tables(&ns).await;
}
