//! Publish error kinds under killed publishing sessions, and recovery after a restart
//! of a private server.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use integration_tests::{
    postgres_server::{self, OwnPostgresServer},
    support::{DEADLINE, Recorder, assert_once_unless_unknown, namespace, wait_until},
};
use multibus::{EventBus, EventBusExt, PublishOutcome};
use serde_json::json;
use tokio::time::Instant;

use super::{bus, config_for, connected, event};

/// Terminating the bus's publishing sessions during publishes: an error saying "not
/// sent" is safe to retry (nothing lost, nothing doubled); only "outcome unknown" may
/// leave a delivered event behind.
#[tokio::test]
async fn terminated_publishing_sessions_tell_retryable_errors_apart() {
    let ns = namespace();
    let publisher = bus(&ns).await;
    let subscriber = bus(&ns).await;
    let topic = format!("{ns}:kill");
    let r = Recorder::new();
    subscriber.subscribe(&topic, r.handler()).await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let killer = {
        let (done, kills) = (done.clone(), kills.clone());
        let name = format!("eventbus-publish-{ns}");
        tokio::spawn(async move {
            let client = postgres_server::client().await;
            while !done.load(Ordering::SeqCst) && kills.load(Ordering::SeqCst) < 15 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let rows = client
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1",
                        &[&name],
                    )
                    .await
                    .unwrap();
                kills.fetch_add(rows.len() as u64, Ordering::SeqCst);
            }
        })
    };
    let total = 300u64;
    let (mut not_sent, mut unknown) = (0u64, HashSet::new());
    let deadline = Instant::now() + DEADLINE * 3;
    for n in 0..total {
        let mut next = event(&topic, n);
        loop {
            assert!(Instant::now() < deadline, "publishing never recovered");
            match publisher.publish(next).await {
                Ok(()) => break,
                Err(e) => match e.publish_outcome() {
                    Some(PublishOutcome::NotSent) => {
                        not_sent += 1;
                        next = e.into_event().expect("the event is handed back");
                    }
                    Some(PublishOutcome::Unknown) => {
                        unknown.insert(n);
                        break;
                    }
                    _ => panic!("not a publish error: {e}"),
                },
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    killer.await.unwrap();
    subscriber.flush().await.unwrap();
    publisher.publish(event(&topic, total)).await.unwrap();
    assert!(
        wait_until(DEADLINE, || r
            .events()
            .iter()
            .any(|e| e.payload == json!(total)))
        .await
    );
    subscriber.flush().await.unwrap();
    assert_once_unless_unknown(&r, total, &unknown);
    let kills = kills.load(Ordering::SeqCst);
    eprintln!(
        "postgres: publishing sessions terminated {kills} times: {not_sent} not-sent errors \
         retried, {} outcome-unknown errors",
        unknown.len()
    );
    assert!(kills > 0, "no publishing session was terminated");
    assert_eq!(
        publisher.metrics().publish_failed,
        not_sent + unknown.len() as u64
    );
    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
}

/// Recovery after a restart of a private server, with the default backoff cap (5 s)
/// and a 3 s outage: prints how soon after the server accepts connections again the
/// subscription is back (figures in `docs/operations.md`). The bound asserted is loose
/// (a loaded machine must not fail it); the target is 0.5 s.
#[tokio::test]
async fn recovery_after_a_server_restart_is_prompt() {
    let ns = namespace();
    let mut server = OwnPostgresServer::start().await;
    let mut config = config_for(&server.url(), &ns);
    config.dispatcher.consumer_error_sleep_seconds = 5.0;
    let bus = connected(config).await;
    let topic = format!("{ns}:r");
    let r = Recorder::new();
    bus.subscribe(&topic, r.handler()).await.unwrap();
    bus.publish(event(&topic, 0)).await.unwrap();
    r.wait_for(1, DEADLINE).await;

    server.stop();
    let deadline = Instant::now() + DEADLINE;
    while bus.health().await.connected {
        assert!(
            Instant::now() < deadline,
            "the bus never noticed the outage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let err = bus.publish(event(&topic, 1)).await.unwrap_err();
    let failed_in = started.elapsed();
    assert_eq!(
        err.publish_outcome(),
        Some(PublishOutcome::NotSent),
        "{err}"
    );
    // The outage itself (not synchronisation): long enough for the backoff to grow.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let restarted = Instant::now();
    server.spawn().await;
    let starting = restarted.elapsed();
    let back = Instant::now();
    assert!(
        wait_until(DEADLINE, || bus.metrics().reconnects >= 1).await,
        "the subscriber never reconnected"
    );
    let subscriber_back = back.elapsed();
    let deadline = Instant::now() + DEADLINE;
    while bus.publish(event(&topic, 2)).await.is_err() {
        assert!(Instant::now() < deadline, "publishing never recovered");
    }
    let publisher_back = back.elapsed();
    r.wait_for(2, DEADLINE).await;
    eprintln!(
        "postgres recovery: a publish during the outage failed in {:.1} ms; after the server \
         answered (its start took {:.0} ms) the subscription resumed in {:.0} ms and publishing in \
         {:.0} ms",
        failed_in.as_secs_f64() * 1e3,
        starting.as_secs_f64() * 1e3,
        subscriber_back.as_secs_f64() * 1e3,
        publisher_back.as_secs_f64() * 1e3,
    );
    assert!(
        subscriber_back < Duration::from_secs(2),
        "{subscriber_back:?}"
    );
    bus.close().await.unwrap();
}
