//! The durable mode (`delivery = "jetstream"`) against the real server: groups, shares,
//! retries, dead letters and redrive, offline backlog, start position, leases,
//! connection cuts.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use integration_tests::{
    nats_server,
    proxy::TcpProxy,
    support::{DEADLINE, namespace, wait_until},
};
use multibus::{
    DeadLetterInfo, Delivery, Event, EventBus, EventBusExt, NatsConfig, NatsEventBus, RetryPolicy,
    SubscribeOptions,
    nats::{DeliveryMode, StartPosition},
};

use super::{config, event};

/// Durable test settings in namespace `ns`: a short lease so takeovers are quick.
pub(crate) async fn durable_config(ns: &str) -> NatsConfig {
    let mut config = config(ns).await;
    config.delivery = DeliveryMode::Jetstream;
    config.jetstream.lease_seconds = 1.0;
    config.dispatcher.handler_timeout_seconds = 5.0;
    config
}

pub(crate) async fn durable(ns: &str) -> NatsEventBus {
    let bus = NatsEventBus::new(durable_config(ns).await).unwrap();
    bus.connect().await.unwrap();
    bus
}

/// Deletes the streams of namespace `ns` (events and auxiliary).
pub(crate) async fn cleanup(ns: &str) {
    cleanup_at(&nats_server::url().await, ns).await;
}

/// Deletes the streams of namespace `ns` on the server at `url`.
pub(crate) async fn cleanup_at(url: &str, ns: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for stream in [format!("eventbus_{ns}"), format!("eventbus_{ns}-aux")] {
        let _ = js.delete_stream(&stream).await;
    }
}

/// Payload numbers a handler saw, shared.
#[derive(Clone, Default)]
pub(crate) struct Seen(Arc<Mutex<Vec<u64>>>);

impl Seen {
    pub(crate) fn handler(&self) -> impl multibus::Handler + use<> {
        let seen = self.0.clone();
        move |e: Event| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(e.payload["n"].as_u64().unwrap());
                Ok::<(), std::io::Error>(())
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub(crate) fn set(&self) -> HashSet<u64> {
        self.0.lock().unwrap().iter().copied().collect()
    }
}

pub(crate) async fn publish_n(bus: &NatsEventBus, ns: &str, range: std::ops::Range<u64>) {
    let events: Vec<Event> = range.map(|n| event(&format!("{ns}:work"), n)).collect();
    for chunk in events.chunks(200) {
        bus.publish_batch(chunk.to_vec()).await.unwrap();
    }
}

/// Every group receives every event; each event once per group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_receive_everything() {
    let ns = namespace();
    let bus = durable(&ns).await;
    let (a, b) = (Seen::default(), Seen::default());
    let pattern = format!("{ns}:*");
    let _sa = bus
        .subscribe_with(&pattern, SubscribeOptions::new().group("a"), a.handler())
        .await
        .unwrap();
    let _sb = bus
        .subscribe_with(&pattern, SubscribeOptions::new().group("b"), b.handler())
        .await
        .unwrap();
    publish_n(&bus, &ns, 0..300).await;
    bus.flush().await.unwrap();
    assert_eq!((a.len(), b.len()), (300, 300));
    assert_eq!(a.set(), (0..300).collect());
    assert_eq!(b.set(), (0..300).collect());
    let all_acked = wait_until(DEADLINE, || bus.jetstream_metrics().acked == 600).await;
    assert!(all_acked, "{:?}", bus.jetstream_metrics());
    let groups = bus.groups().await.unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(groups.iter().all(|g| g.pending == 0), "{groups:?}");
    assert!(
        wait_until_groups_acked(&bus).await,
        "{:?}",
        bus.groups().await
    );
    bus.close().await.unwrap();
    cleanup(&ns).await;
}

/// Whether every group's acknowledgements reach the server within the deadline.
async fn wait_until_groups_acked(bus: &NatsEventBus) -> bool {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        let groups = bus.groups().await.unwrap();
        if groups.iter().all(|g| g.ack_pending == 0 && g.pending == 0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Two members of one group (two buses) share the events: disjoint, covering all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_share_disjoint_covering_shares() {
    let ns = namespace();
    let (one, two) = (durable(&ns).await, durable(&ns).await);
    let (a, b) = (Seen::default(), Seen::default());
    let pattern = format!("{ns}:*");
    let options = SubscribeOptions::new().group("workers").queue_maxsize(10);
    let _sa = one
        .subscribe_with(&pattern, options.clone(), a.handler())
        .await
        .unwrap();
    let _sb = two
        .subscribe_with(&pattern, options, b.handler())
        .await
        .unwrap();
    publish_n(&one, &ns, 0..1000).await;
    assert!(wait_until(DEADLINE, || a.len() + b.len() >= 1000).await);
    one.flush().await.unwrap();
    two.flush().await.unwrap();
    let (sa, sb) = (a.set(), b.set());
    assert_eq!(a.len() + b.len(), 1000, "duplicates without any failure");
    assert!(sa.is_disjoint(&sb));
    assert_eq!(sa.union(&sb).count(), 1000);
    eprintln!("shares: {} + {}", sa.len(), sb.len());
    one.close().await.unwrap();
    two.close().await.unwrap();
    cleanup(&ns).await;
}

/// A member of a group subscribing with another pattern is refused, naming the key:
/// one group, one filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_serves_one_pattern() {
    let ns = namespace();
    let bus = durable(&ns).await;
    let seen = Seen::default();
    let _sub = bus
        .subscribe_with(
            &format!("{ns}:orders:*"),
            SubscribeOptions::new().group("g"),
            seen.handler(),
        )
        .await
        .unwrap();
    let err = bus
        .subscribe_with(
            &format!("{ns}:users:*"),
            SubscribeOptions::new().group("g"),
            seen.handler(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`options.group`") && err.contains("orders:*"),
        "{err}"
    );
    bus.close().await.unwrap();
    cleanup(&ns).await;
}

/// A handler failing on poison events: they are retried with the server's attempt
/// count, then dead-lettered with it; a redrive delivers them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_dead_letters_then_redrive() {
    let ns = namespace();
    let bus = durable(&ns).await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (log, cure) = (attempts.clone(), healed.clone());
    let handler = move |e: Event| {
        let (log, cure) = (log.clone(), cure.clone());
        async move {
            let n = e.payload["n"].as_u64().unwrap();
            let attempt = Delivery::current().map(|d| d.attempt()).unwrap_or(0);
            log.lock().unwrap().push((n, attempt));
            if n % 10 == 7 && !cure.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other(format!("poison {n}")));
            }
            Ok(())
        }
    };
    let options = SubscribeOptions::new()
        .group("billing")
        .keep_on_failures()
        .retry(RetryPolicy::exponential(
            3,
            Duration::from_millis(20),
            Duration::from_millis(50),
        ));
    let _sub = bus
        .subscribe_with(&format!("{ns}:*"), options, handler)
        .await
        .unwrap();
    publish_n(&bus, &ns, 0..30).await;
    assert!(
        wait_until(DEADLINE, || bus.metrics().dead_lettered >= 3).await,
        "{:?}",
        bus.metrics()
    );
    let letters = bus.dead_letters("billing", 100).await.unwrap();
    let mut poison: Vec<u64> = letters
        .iter()
        .map(|(_, e)| e.payload["n"].as_u64().unwrap())
        .collect();
    poison.sort();
    assert_eq!(poison, vec![7, 17, 27]);
    for (_, letter) in &letters {
        let info = DeadLetterInfo::of(letter).unwrap();
        assert_eq!(info.attempts, 3);
        assert_eq!(info.group.as_deref(), Some("billing"));
        assert_eq!(info.topic, format!("{ns}:work"));
        assert!(info.error.starts_with("poison"), "{info:?}");
    }
    {
        let log = attempts.lock().unwrap();
        let seen_7: Vec<u32> = log
            .iter()
            .filter(|(n, _)| *n == 7)
            .map(|(_, a)| *a)
            .collect();
        assert_eq!(seen_7, vec![1, 2, 3], "server attempt counts");
        assert_eq!(log.iter().filter(|(n, _)| n % 10 != 7).count(), 27);
    }
    assert_eq!(bus.metrics().retried, 6);
    assert_eq!(
        bus.jetstream_metrics().redelivered,
        0,
        "retries are not lease expiries"
    );
    healed.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = attempts.lock().unwrap().len();
    assert_eq!(bus.redrive("billing", 100).await.unwrap(), 3);
    assert!(bus.dead_letters("billing", 100).await.unwrap().is_empty());
    bus.flush().await.unwrap();
    let log = attempts.lock().unwrap().clone();
    let mut again: Vec<u64> = log[before..].iter().map(|(n, _)| *n).collect();
    again.sort();
    assert!(
        log[before..].iter().all(|(_, a)| *a == 1),
        "a redrive starts over: {log:?}"
    );
    assert_eq!(
        again,
        vec![7, 17, 27],
        "redriven events delivered once more"
    );
    bus.close().await.unwrap();
    cleanup(&ns).await;
}

/// A redrive is for the group it names: another group skips the redriven events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_reaches_only_its_group() {
    let ns = namespace();
    let bus = durable(&ns).await;
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (seen, other) = (Seen::default(), Seen::default());
    let (flag, record) = (fail.clone(), seen.0.clone());
    let handler = move |e: Event| {
        let (flag, record) = (flag.clone(), record.clone());
        async move {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("down"));
            }
            record
                .lock()
                .unwrap()
                .push(e.payload["n"].as_u64().unwrap());
            Ok(())
        }
    };
    let options = SubscribeOptions::new()
        .group("failing")
        .keep_on_failures()
        .retry(RetryPolicy::none());
    let pattern = format!("{ns}:*");
    let _a = bus
        .subscribe_with(&pattern, options, handler)
        .await
        .unwrap();
    let _b = bus
        .subscribe_with(
            &pattern,
            SubscribeOptions::new().group("other"),
            other.handler(),
        )
        .await
        .unwrap();
    publish_n(&bus, &ns, 0..5).await;
    assert!(wait_until(DEADLINE, || bus.metrics().dead_lettered >= 5).await);
    bus.flush().await.unwrap();
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(bus.redrive("failing", 100).await.unwrap(), 5);
    bus.flush().await.unwrap();
    assert_eq!(seen.set(), (0..5).collect());
    assert_eq!(other.len(), 5, "the other group got each event once");
    assert_eq!(bus.jetstream_metrics().skipped, 5);
    bus.close().await.unwrap();
    cleanup(&ns).await;
}

/// A group whose only member is away keeps its events: the 1,000 published meanwhile
/// are all delivered when it subscribes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_subscriber_receives_the_backlog() {
    let ns = namespace();
    let publisher = durable(&ns).await;
    let pattern = format!("{ns}:*");
    let first = Seen::default();
    {
        let bus = durable(&ns).await;
        let sub = bus
            .subscribe_with(
                &pattern,
                SubscribeOptions::new().group("late"),
                first.handler(),
            )
            .await
            .unwrap();
        sub.cancel().await;
        bus.close().await.unwrap();
    }
    publish_n(&publisher, &ns, 0..1000).await;
    let bus = durable(&ns).await;
    let later = Seen::default();
    let _sub = bus
        .subscribe_with(
            &pattern,
            SubscribeOptions::new().group("late"),
            later.handler(),
        )
        .await
        .unwrap();
    assert!(
        wait_until(DEADLINE, || later.len() >= 1000).await,
        "{}",
        later.len()
    );
    bus.flush().await.unwrap();
    assert_eq!(later.len(), 1000);
    assert_eq!(later.set(), (0..1000).collect());
    assert_eq!(first.len(), 0);
    bus.close().await.unwrap();
    publisher.close().await.unwrap();
    cleanup(&ns).await;
}

/// A group that starts at `earliest` receives what was published before it existed;
/// one at `latest` (the default) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earliest_group_receives_what_came_before() {
    let ns = namespace();
    let mut config = durable_config(&ns).await;
    config.jetstream.start = StartPosition::Earliest;
    let bus = NatsEventBus::new(config).unwrap();
    bus.connect().await.unwrap();
    publish_n(&bus, &ns, 0..50).await;
    let (seen, latest) = (Seen::default(), Seen::default());
    let _sub = bus
        .subscribe_with(
            &format!("{ns}:*"),
            SubscribeOptions::new().group("audit"),
            seen.handler(),
        )
        .await
        .unwrap();
    let other = durable(&ns).await;
    let _late = other
        .subscribe_with(
            &format!("{ns}:*"),
            SubscribeOptions::new().group("new"),
            latest.handler(),
        )
        .await
        .unwrap();
    bus.flush().await.unwrap();
    other.flush().await.unwrap();
    assert_eq!(seen.set(), (0..50).collect());
    assert_eq!(latest.len(), 0);
    bus.close().await.unwrap();
    other.close().await.unwrap();
    cleanup(&ns).await;
}

/// Events whose topic the pattern does not match are acknowledged unseen and counted;
/// a subscription without a group has its own, named after its pattern.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_topics_are_skipped_and_counted() {
    let ns = namespace();
    let bus = durable(&ns).await;
    let seen = Seen::default();
    // `orders:e?` subscribes to subject `{ns}.orders.>`; the pattern decides exactly.
    let _sub = bus
        .subscribe_with(
            &format!("{ns}:orders:e?"),
            SubscribeOptions::new(),
            seen.handler(),
        )
        .await
        .unwrap();
    for n in 0..20 {
        let topic = match n % 3 {
            0 => format!("{ns}:orders:eu"),
            1 => format!("{ns}:orders:usa"),
            _ => format!("{ns}:users"),
        };
        bus.publish(event(&topic, n)).await.unwrap();
    }
    bus.flush().await.unwrap();
    assert_eq!(seen.set(), (0..20).filter(|n| n % 3 == 0).collect());
    // `users` never reaches the consumer (its filter); `orders:usa` does and is skipped.
    assert_eq!(bus.jetstream_metrics().skipped, 7);
    let groups = bus.groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, format!("{ns}:orders:e?"));
    assert_eq!(groups[0].pending, 0);
    bus.close().await.unwrap();
    cleanup(&ns).await;
}

/// A handler running for several leases keeps its event: its lease is extended, so the
/// other member of the group never gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_handler_keeps_its_lease() {
    let ns = namespace();
    let (one, two) = (durable(&ns).await, durable(&ns).await);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let handler = |bus: &'static str| {
        let calls = calls.clone();
        move |e: Event| {
            let calls = calls.clone();
            async move {
                calls
                    .lock()
                    .unwrap()
                    .push((bus, e.payload["n"].as_u64().unwrap()));
                // Three leases of 1 s.
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok::<(), std::io::Error>(())
            }
        }
    };
    let options = SubscribeOptions::new()
        .group("slow")
        .handler_timeout(Duration::from_secs(10));
    let pattern = format!("{ns}:*");
    let _a = one
        .subscribe_with(&pattern, options.clone(), handler("one"))
        .await
        .unwrap();
    let _b = two
        .subscribe_with(&pattern, options, handler("two"))
        .await
        .unwrap();
    one.publish(event(&format!("{ns}:job"), 1)).await.unwrap();
    assert!(wait_until(DEADLINE, || !calls.lock().unwrap().is_empty()).await);
    tokio::time::sleep(Duration::from_secs(4)).await; // observe: no takeover happens
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "{:?}",
        calls.lock().unwrap()
    );
    let redelivered = one.jetstream_metrics().redelivered + two.jetstream_metrics().redelivered;
    assert_eq!(redelivered, 0);
    one.close().await.unwrap();
    two.close().await.unwrap();
    cleanup(&ns).await;
}

/// Cutting the connection (through a TCP proxy) while events flow loses nothing:
/// publishes wait for the stream's acknowledgement, and what a consumer held comes
/// back after its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cuts_lose_nothing() {
    let ns = namespace();
    let proxy = TcpProxy::start(nats_server::addr().await).await;
    let mut config = durable_config(&ns).await;
    config.url = format!("nats://{}", proxy.addr());
    config.jetstream.batch_size = 50;
    config.dispatcher.consumer_error_sleep_seconds = 0.5;
    let bus = NatsEventBus::new(config).unwrap();
    bus.connect().await.unwrap();
    let publisher = durable(&ns).await;
    let seen = Seen::default();
    // A little slow, so that every cut finds events in flight.
    let record = seen.0.clone();
    let handler = move |e: Event| {
        let record = record.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            record
                .lock()
                .unwrap()
                .push(e.payload["n"].as_u64().unwrap());
            Ok::<(), std::io::Error>(())
        }
    };
    let _sub = bus
        .subscribe_with(
            &format!("{ns}:*"),
            SubscribeOptions::new().group("g").queue_maxsize(50),
            handler,
        )
        .await
        .unwrap();
    for round in 0..5u64 {
        publish_n(&publisher, &ns, round * 200..round * 200 + 200).await;
        let progress = seen.len();
        let moved = wait_until(DEADLINE, || seen.len() > progress).await;
        assert!(moved, "round {round}: nothing delivered");
        proxy.cut();
    }
    assert!(
        wait_until(Duration::from_secs(30), || seen.set().len() >= 1000).await,
        "{}",
        seen.set().len()
    );
    bus.flush().await.unwrap();
    assert_eq!(seen.set(), (0..1000).collect());
    let duplicates = seen.len() - 1000;
    let metrics = bus.jetstream_metrics();
    eprintln!("connection cuts: {duplicates} duplicates for 1000 events, {metrics:?}");
    // At most what was in flight at each of the 5 cuts: a queue and a pull batch.
    assert!(duplicates <= 5 * 100, "{duplicates} duplicates");
    assert!(bus.metrics().reconnects >= 1, "{:?}", bus.metrics());
    bus.close().await.unwrap();
    publisher.close().await.unwrap();
    cleanup(&ns).await;
}

/// A group that lags past a retention cap loses what the cap removed, counted and
/// logged, never silently; what is left is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_that_removes_unacknowledged_events_counts_them_as_lost() {
    let ns = namespace();
    let mut config = durable_config(&ns).await;
    config.jetstream.max_msgs = 10;
    let bus = NatsEventBus::new(config).unwrap();
    bus.connect().await.unwrap();
    let pattern = format!("{ns}:*");
    let slow = Seen::default();
    bus.subscribe_with(
        &pattern,
        SubscribeOptions::new().group("slow"),
        slow.handler(),
    )
    .await
    .unwrap()
    .cancel()
    .await;
    publish_n(&bus, &ns, 0..100).await;
    let _back = bus
        .subscribe_with(
            &pattern,
            SubscribeOptions::new().group("slow"),
            slow.handler(),
        )
        .await
        .unwrap();
    bus.flush().await.unwrap();
    assert_eq!(slow.set(), (90..100).collect());
    assert_eq!(bus.jetstream_metrics().lost, 90);
    bus.close().await.unwrap();
    cleanup(&ns).await;
}

/// `health()` warns when the events stream is kept in memory, and when it is gone; a
/// publish without a stream fails as `NotSent` (nothing was stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_warns_about_the_stream_and_a_missing_stream_is_not_sent() {
    let ns = namespace();
    let bus = durable(&ns).await;
    let health = bus.health().await;
    assert!(
        health.is_healthy() && health.warnings.is_empty(),
        "{health:?}"
    );
    let mut config = durable_config(&namespace()).await;
    config.jetstream.memory_storage = true;
    let in_memory = NatsEventBus::new(config.clone()).unwrap();
    in_memory.connect().await.unwrap();
    let health = in_memory.health().await;
    assert!(
        health.warnings.iter().any(|w| w.contains("memory")),
        "{health:?}"
    );
    in_memory.close().await.unwrap();
    cleanup(&config.channel_prefix).await;

    cleanup(&ns).await;
    let health = bus.health().await;
    assert!(
        health.warnings.iter().any(|w| w.contains("cannot be read")),
        "{health:?}"
    );
    let err = bus
        .publish(event(&format!("{ns}:work"), 1))
        .await
        .unwrap_err();
    assert_eq!(
        err.publish_outcome(),
        Some(multibus::PublishOutcome::NotSent),
        "{err}"
    );
    bus.close().await.unwrap();
}

/// A publish retried with the same event (same id) within the duplicate window is
/// stored once: a retry after an `Unknown` outcome delivers nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_published_twice_is_stored_once() {
    let ns = namespace();
    let bus = durable(&ns).await;
    let seen = Seen::default();
    let _sub = bus
        .subscribe_with(
            &format!("{ns}:*"),
            SubscribeOptions::new().group("g"),
            seen.handler(),
        )
        .await
        .unwrap();
    let once = event(&format!("{ns}:work"), 1);
    bus.publish(once.clone()).await.unwrap();
    bus.publish(once).await.unwrap();
    bus.publish_batch(vec![event(&format!("{ns}:work"), 2)])
        .await
        .unwrap();
    bus.flush().await.unwrap();
    assert_eq!(seen.0.lock().unwrap().clone(), vec![1, 2]);
    bus.close().await.unwrap();
    cleanup(&ns).await;
}
