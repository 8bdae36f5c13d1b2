//! The Redis fault suite: closing with a backlog, killed publishing connections,
//! the byte-bounded receive buffer, oversized events and hostile prefixes. Each case
//! is bounded in events and time, works in its own namespace, and kills only its own
//! bus's connections.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use integration_tests::{
    conformance::{event, gated},
    redis_server::{OwnRedisServer, kill_connections},
    support::{DEADLINE, Recorder, assert_once_unless_unknown, namespace, wait_until},
};
use multibus::{
    Config, Error, Event, EventBus, EventBusExt, EventType, PostgresConfig, PublishOutcome,
    RedisConfig, RedisEventBus, create_event_bus,
};
use serde_json::json;

use super::{config, connected};

/// delivered + dropped, the two fates of a received event.
fn accounted(bus: &RedisEventBus) -> u64 {
    let m = bus.metrics();
    m.delivered + m.dropped
}

/// Closing a bus whose slow subscriber has a backlog of 10,000 received events
/// delivers or counts every one of them.
#[tokio::test]
async fn close_with_a_backlog_delivers_or_counts_every_received_event() {
    let ns = namespace();
    let mut sub_config = config(&ns).await;
    sub_config.dispatcher.queue_maxsize = 1000;
    sub_config.dispatcher.shutdown_timeout_seconds = 0.5;
    let subscriber = connected(sub_config).await;
    let publisher = connected(config(&ns).await).await;
    let topic = format!("{ns}:backlog");
    subscriber
        .subscribe(&topic, |_: Event| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap();
    let total = 10_000u64;
    for chunk in (0..total).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk.iter().map(|&i| event(&topic, i)).collect();
        publisher.publish_batch(batch).await.unwrap();
    }
    // Every PUBLISH has returned: the server has sent all of them to the subscriber.
    subscriber.close().await.unwrap();
    let m = subscriber.metrics();
    assert_eq!(
        m.delivered + m.dropped,
        total,
        "delivered {} + dropped {} of {total}",
        m.delivered,
        m.dropped
    );
    assert!(
        m.dropped > 0,
        "the backlog should outlast the deadline: {m:?}"
    );
    assert_eq!((m.malformed, m.buffered, m.buffered_bytes), (0, 0, 0));
    publisher.close().await.unwrap();
}

/// Subscribe, publish one event, close at once: the event is delivered or counted,
/// every time, whether the bus published it itself or another one did (then it is
/// still on its way to the closing bus when `close()` starts).
#[tokio::test]
async fn publish_one_then_close_at_once_always_accounts_for_it() {
    let ns = namespace();
    let topic = format!("{ns}:t");
    let other = connected(config(&ns).await).await;
    for attempt in 0..30 {
        let bus = connected(config(&ns).await).await;
        let r = Recorder::new();
        bus.subscribe(&topic, r.handler()).await.unwrap();
        let publisher = if attempt % 2 == 0 { &bus } else { &other };
        publisher.publish(event(&topic, attempt)).await.unwrap();
        bus.close().await.unwrap();
        let m = bus.metrics();
        assert_eq!(m.delivered + m.dropped, 1, "attempt {attempt}: {m:?}");
        assert_eq!(r.len() as u64, m.delivered);
    }
    other.close().await.unwrap();
}

/// Killing the publishing connection during publishes: an error saying "not sent"
/// is safe to retry (retrying loses nothing and duplicates nothing); only an error
/// saying "outcome unknown" may leave a delivered event behind.
#[tokio::test]
async fn killed_publishing_connections_tell_retryable_errors_apart() {
    let ns = namespace();
    let mut pub_config = config(&ns).await;
    pub_config.dispatcher.consumer_error_sleep_seconds = 0.2;
    let publisher = connected(pub_config).await;
    let subscriber = connected(config(&ns).await).await;
    let topic = format!("{ns}:kill");
    let r = Recorder::new();
    subscriber.subscribe(&topic, r.handler()).await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let killer = {
        let (done, kills) = (done.clone(), kills.clone());
        let name = publisher.publish_client_name().to_owned();
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) && kills.load(Ordering::SeqCst) < 20 {
                tokio::time::sleep(Duration::from_millis(15)).await;
                kills.fetch_add(kill_connections(&name).await as u64, Ordering::SeqCst);
            }
        })
    };
    let total = 2000u64;
    let (mut not_sent, mut unknown) = (0u64, HashSet::new());
    let deadline = tokio::time::Instant::now() + DEADLINE * 3;
    for n in 0..total {
        let mut next = event(&topic, n);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishing never recovered"
            );
            match publisher.publish(next).await {
                Ok(()) => break,
                Err(e) => match e.publish_outcome() {
                    Some(PublishOutcome::NotSent) => {
                        not_sent += 1;
                        next = e.into_event().expect("the event is handed back");
                        tokio::time::sleep(Duration::from_millis(2)).await;
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
    let failed = publisher.metrics().publish_failed;
    // A marker after everything, once the connection is back from the last kill.
    super::publish_retrying(&publisher, event(&topic, total)).await;
    assert!(
        wait_until(DEADLINE, || r
            .events()
            .iter()
            .any(|e| e.payload == json!(total)))
        .await
    );
    subscriber.flush().await.unwrap();

    let seen = assert_once_unless_unknown(&r, total, &unknown);
    let kills = kills.load(Ordering::SeqCst);
    let reached = unknown.iter().filter(|n| seen.contains_key(n)).count();
    eprintln!(
        "publishing connection killed {kills} times: {not_sent} not-sent errors retried, \
         {} outcome-unknown errors ({reached} of those events were delivered anyway)",
        unknown.len()
    );
    assert!(
        kills > 0,
        "nothing was killed: the publishing connection's name is wrong"
    );
    assert!(
        not_sent + unknown.len() as u64 > 0,
        "no publish ever failed"
    );
    assert_eq!(failed, not_sent + unknown.len() as u64);
    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
}

/// The same with 16 tasks publishing at once, so most publishes travel in the
/// auto-pipeline (queued behind the one in flight) when the connection is killed:
/// each caller still gets its own outcome, "not sent" loses nothing when retried and
/// only "outcome unknown" may leave a delivered event behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_publishing_connections_under_concurrent_publishes() {
    let ns = namespace();
    let publisher = Arc::new(connected(config(&ns).await).await);
    let subscriber = connected(config(&ns).await).await;
    let topic = format!("{ns}:kill-concurrent");
    let r = Recorder::new();
    subscriber.subscribe(&topic, r.handler()).await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let killer = {
        let (done, kills) = (done.clone(), kills.clone());
        let name = publisher.publish_client_name().to_owned();
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) && kills.load(Ordering::SeqCst) < 20 {
                tokio::time::sleep(Duration::from_millis(15)).await;
                kills.fetch_add(kill_connections(&name).await as u64, Ordering::SeqCst);
            }
        })
    };
    let (tasks, per_task) = (16u64, 250u64);
    let deadline = tokio::time::Instant::now() + DEADLINE * 3;
    let publishers: Vec<_> = (0..tasks)
        .map(|t| {
            let (publisher, topic) = (publisher.clone(), topic.clone());
            tokio::spawn(async move {
                let (mut not_sent, mut unknown) = (0u64, Vec::new());
                for n in t * per_task..(t + 1) * per_task {
                    let mut next = event(&topic, n);
                    loop {
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "publishing never recovered"
                        );
                        match publisher.publish(next).await {
                            Ok(()) => break,
                            Err(e) => match e.publish_outcome() {
                                Some(PublishOutcome::NotSent) => {
                                    not_sent += 1;
                                    next = e.into_event().expect("the event is handed back");
                                    assert_eq!(next.payload, json!(n), "another caller's event");
                                    tokio::time::sleep(Duration::from_millis(2)).await;
                                }
                                Some(PublishOutcome::Unknown) => {
                                    unknown.push(n);
                                    break;
                                }
                                _ => panic!("not a publish error: {e}"),
                            },
                        }
                    }
                }
                (not_sent, unknown)
            })
        })
        .collect();
    let (mut not_sent, mut unknown) = (0u64, HashSet::new());
    for task in publishers {
        let (n, u) = task.await.unwrap();
        not_sent += n;
        unknown.extend(u);
    }
    done.store(true, Ordering::SeqCst);
    killer.await.unwrap();
    let total = tasks * per_task;
    // A marker after everything. The last kill may not have been noticed yet, so its
    // publish may also fail with "outcome unknown" (a duplicate marker is harmless).
    let marker_deadline = tokio::time::Instant::now() + DEADLINE;
    while let Err(e) = publisher.publish(event(&topic, total)).await {
        assert!(e.publish_outcome().is_some(), "not a publish error: {e}");
        assert!(
            tokio::time::Instant::now() < marker_deadline,
            "publishing never recovered: {e}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
        "{tasks} concurrent publishers, connection killed {kills} times: {not_sent} not-sent \
         errors retried, {} outcome-unknown errors",
        unknown.len()
    );
    assert!(kills > 0, "nothing was killed");
    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
}

/// Large events for a subscriber that cannot keep up, under overflow `block`: the
/// receive buffer stays within `receive_buffer_bytes`, what does not fit is counted in
/// `dropped`, and every event is delivered or counted.
#[tokio::test]
async fn the_receive_buffer_is_bounded_in_bytes() {
    let ns = namespace();
    let bound = 256 * 1024;
    let mut sub_config = config(&ns).await;
    sub_config.dispatcher.queue_maxsize = 2;
    sub_config.dispatcher.handler_timeout_seconds = 30.0;
    sub_config.receive_buffer_bytes = bound;
    let subscriber = connected(sub_config).await;
    let publisher = connected(config(&ns).await).await;
    let topic = format!("{ns}:big");
    let (r, gate) = gated(&subscriber, &topic).await;
    let total = 200u64;
    let body = "x".repeat(16 * 1024);
    let most = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (bus, most) = (subscriber.clone(), most.clone());
        tokio::spawn(async move {
            loop {
                most.fetch_max(bus.metrics().buffered_bytes, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    for n in 0..total {
        let e = Event::new(EventType::Created, &topic, json!({"n": n, "body": body}));
        publisher.publish(e).await.unwrap();
    }
    assert!(
        wait_until(DEADLINE, || subscriber.metrics().dropped > 0).await,
        "nothing dropped: the buffer is not bounded in bytes"
    );
    let held = subscriber.metrics();
    assert!(
        held.buffered > 0 && held.buffered_bytes <= bound as u64,
        "{held:?}"
    );
    gate.add_permits(total as usize);
    assert!(
        wait_until(DEADLINE, || accounted(&subscriber) == total).await,
        "delivered + dropped = {} of {total}",
        accounted(&subscriber)
    );
    subscriber.flush().await.unwrap();
    sampler.abort();
    let m = subscriber.metrics();
    assert_eq!(m.delivered + m.dropped, total);
    assert_eq!(r.len() as u64, m.delivered);
    assert_eq!((m.buffered, m.buffered_bytes), (0, 0));
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= bound as u64,
        "buffered up to {most} bytes, bound {bound}"
    );
    eprintln!(
        "16 KiB events, bound {bound} bytes: at most {most} bytes buffered, {} delivered, {} dropped",
        m.delivered, m.dropped
    );
    subscriber.close().await.unwrap();
    publisher.close().await.unwrap();
}

/// An event larger than `max_message_bytes` is refused at publish, named, never sent.
#[tokio::test]
async fn an_oversized_event_is_refused_at_publish() {
    let ns = namespace();
    let bus = connected(config(&ns).await).await;
    let topic = format!("{ns}:huge");
    let r = Recorder::new();
    bus.subscribe(&topic, r.handler()).await.unwrap();
    // 10 MiB against the default limit of 8 MiB.
    let huge = Event::new(EventType::Created, &topic, json!("x".repeat(10 << 20)));
    let err = bus.publish(huge.clone()).await.unwrap_err();
    let text = err.to_string();
    assert_eq!(
        err.publish_outcome(),
        Some(PublishOutcome::NotSent),
        "{text}"
    );
    assert!(text.contains("max_message_bytes (8388608)"), "{text}");
    assert_eq!(err.into_event().unwrap(), huge);
    // In a batch, it stops the whole batch before anything is sent.
    let small = event(&topic, 1);
    let err = bus
        .publish_batch(vec![small, huge.clone()])
        .await
        .unwrap_err();
    assert_eq!(err.into_event().unwrap().id, huge.id);
    bus.publish(event(&topic, 2)).await.unwrap();
    bus.flush().await.unwrap();
    let m = bus.metrics();
    assert_eq!(r.topics().len(), 1, "only the last event travels");
    assert_eq!((m.published, m.publish_failed, m.malformed), (1, 3, 0));
    bus.close().await.unwrap();
}

/// The same `channel_prefix` rule on Redis and PostgreSQL: a prefix one refuses, the
/// other refuses too, naming the key.
#[tokio::test]
async fn hostile_prefixes_are_refused_by_every_backend() {
    for prefix in ["P:b", "préfixe", "a b", "", "x\ny", "a*", &"p".repeat(31)] {
        let redis = RedisEventBus::new(RedisConfig {
            channel_prefix: prefix.to_owned(),
            ..RedisConfig::default()
        })
        .unwrap_err();
        let postgres = PostgresConfig::new("host=localhost")
            .with_channel_prefix(prefix)
            .validate()
            .unwrap_err();
        for err in [redis, postgres] {
            assert!(
                matches!(&err, Error::Config { key, .. } if key == "channel_prefix"),
                "{prefix:?}: {err}"
            );
        }
        let json = json!({"backend": "redis", "channel_prefix": prefix});
        let err = Config::from_json_value(json)
            .and_then(|c| create_event_bus(c).map(drop))
            .unwrap_err();
        assert!(
            err.to_string().contains("`channel_prefix`"),
            "{prefix:?}: {err}"
        );
    }
}

/// The two prefixes of the reported collision: `P` with topic `b:c` and `P:b` with
/// topic `c` would share channel `P:b:c`; `P:b` is refused, and the nearest valid
/// prefix `P_b` is isolated from `P`.
#[tokio::test]
async fn prefixes_can_no_longer_collide() {
    let base = namespace();
    let err = RedisEventBus::new(RedisConfig {
        channel_prefix: format!("{base}:b"),
        ..config(&base).await
    })
    .unwrap_err();
    assert!(err.to_string().contains("`channel_prefix`"), "{err}");
    let one = connected(config(&base).await).await;
    let two = connected(RedisConfig {
        channel_prefix: format!("{base}_b"),
        ..config(&base).await
    })
    .await;
    let (r1, r2) = (Recorder::new(), Recorder::new());
    one.subscribe("b:*", r1.handler()).await.unwrap();
    two.subscribe("c", r2.handler()).await.unwrap();
    one.publish(event("b:c", 1)).await.unwrap();
    two.publish(event("c", 2)).await.unwrap();
    one.flush().await.unwrap();
    two.flush().await.unwrap();
    assert_eq!(r1.topics(), ["b:c"]);
    assert_eq!(r2.topics(), ["c"]);
    assert_eq!((one.metrics().malformed, two.metrics().malformed), (0, 0));
    assert_ne!(one.channel_for("b:c"), two.channel_for("c"));
    one.close().await.unwrap();
    two.close().await.unwrap();
}

/// A prefix with non-ASCII characters is refused when the bus is built, instead of
/// failing every connect at `CLIENT SETNAME`.
#[tokio::test]
async fn a_non_ascii_prefix_is_refused_before_connecting() {
    let ns = namespace();
    let err = RedisEventBus::new(RedisConfig {
        channel_prefix: format!("{ns}é"),
        ..config(&ns).await
    })
    .unwrap_err();
    assert!(
        matches!(&err, Error::Config { key, .. } if key == "channel_prefix"),
        "{err}"
    );
    // Every valid prefix can connect: the client names built from it are accepted.
    let bus = connected(RedisConfig {
        channel_prefix: format!("{ns}_Z_{}", "9".repeat(30 - ns.len() - 3)),
        ..config(&ns).await
    })
    .await;
    assert!(bus.health().await.is_healthy());
    bus.close().await.unwrap();
}

/// Recovery after a server restart, with the default backoff cap (5 s) and a 3 s
/// outage: prints how fast a publish fails once the bus knows the server is gone, and
/// how soon after the server accepts connections again the subscription and the
/// publisher are back (figures in `docs/operations.md`). The bounds asserted are loose
/// (a loaded machine must not fail it); the targets are 50 ms and 0.5 s.
#[tokio::test]
async fn recovery_after_a_server_restart_is_prompt() {
    let ns = namespace();
    let mut server = OwnRedisServer::start().await;
    let mut bus_config = super::config_at(&ns, server.url()).await;
    bus_config.dispatcher.consumer_error_sleep_seconds = 5.0;
    let bus = connected(bus_config).await;
    let topic = format!("{ns}:r");
    let r = Recorder::new();
    bus.subscribe(&topic, r.handler()).await.unwrap();

    server.kill();
    super::wait_disconnected(&bus).await;
    // The outage itself (not synchronisation): long enough for the backoff to grow.
    let outage = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut slowest_failure = Duration::ZERO;
    let mut failures = 0;
    while tokio::time::Instant::now() < outage {
        let started = tokio::time::Instant::now();
        let err = bus.publish(event(&topic, 0)).await.unwrap_err();
        slowest_failure = slowest_failure.max(started.elapsed());
        failures += 1;
        assert_eq!(
            err.publish_outcome(),
            Some(PublishOutcome::NotSent),
            "{err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let restarted = tokio::time::Instant::now();
    server.spawn().await;
    let starting = restarted.elapsed();
    let back = tokio::time::Instant::now();
    assert!(
        wait_until(DEADLINE, || bus.metrics().reconnects >= 1).await,
        "the subscriber never reconnected"
    );
    let subscriber_back = back.elapsed();
    let publisher_back = back.elapsed() + super::publish_retrying(&bus, event(&topic, 1)).await;
    r.wait_for(1, DEADLINE).await;
    eprintln!(
        "redis recovery: publish during the outage failed in at most {:.1} ms ({failures} tries); \
         after the server answered (its start took {:.0} ms) the subscription resumed in {:.0} ms \
         and publishing in {:.0} ms",
        slowest_failure.as_secs_f64() * 1e3,
        starting.as_secs_f64() * 1e3,
        subscriber_back.as_secs_f64() * 1e3,
        publisher_back.as_secs_f64() * 1e3,
    );
    assert!(
        slowest_failure < Duration::from_millis(500),
        "{slowest_failure:?}"
    );
    assert!(
        subscriber_back < Duration::from_secs(2),
        "{subscriber_back:?}"
    );
    bus.close().await.unwrap();
}
