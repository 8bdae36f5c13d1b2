//! The durable mode (`delivery = "streams"`) against the real server: groups, shares,
//! retries, dead letters and redrive, offline backlog, retention, connection kills.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use integration_tests::{
    conformance::event,
    redis_server::{self, kill_connections},
    support::{DEADLINE, namespace, wait_until, wait_until_async},
};
use multibus::{
    DeadLetterInfo, Delivery, DeliveryMode, Event, EventBus, EventBusExt, RedisConfig,
    RedisEventBus, RetryPolicy, StartPosition, SubscribeOptions,
};

use super::config;

/// Durable test settings in namespace `ns`: a short lease so takeovers are quick.
pub(crate) async fn durable_config(ns: &str) -> RedisConfig {
    let mut config = config(ns).await;
    config.delivery = DeliveryMode::Streams;
    config.streams.lease_seconds = 1.0;
    config.dispatcher.handler_timeout_seconds = 5.0;
    config
}

pub(crate) async fn durable(ns: &str) -> RedisEventBus {
    let bus = RedisEventBus::new(durable_config(ns).await).unwrap();
    bus.connect().await.unwrap();
    bus
}

/// Deletes the keys of namespace `ns` (its stream and the dead letters of `groups`).
pub(crate) async fn cleanup(bus: &RedisEventBus, groups: &[&str]) {
    let mut conn = redis_server::client().await;
    let mut keys = vec![bus.stream_key()];
    keys.extend(groups.iter().map(|g| bus.dead_letter_key(g)));
    let _: i64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Payload numbers an handler saw, shared.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u64>>>);

impl Seen {
    fn handler(&self) -> impl multibus::Handler + use<> {
        let seen = self.0.clone();
        move |e: Event| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(e.payload.as_u64().unwrap());
                Ok::<(), std::io::Error>(())
            }
        }
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn set(&self) -> HashSet<u64> {
        self.0.lock().unwrap().iter().copied().collect()
    }
}

async fn publish_n(bus: &RedisEventBus, ns: &str, range: std::ops::Range<u64>) {
    let events: Vec<Event> = range.map(|n| event(format!("{ns}:work"), n)).collect();
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
    // Acknowledgements are sent in batches, after the handlers return.
    let all_acked = wait_until(DEADLINE, || bus.stream_metrics().acked == 600).await;
    assert!(all_acked, "{:?}", bus.stream_metrics());
    let groups = bus.groups().await.unwrap();
    assert!(
        groups.iter().all(|g| g.pending == 0 && g.lag == Some(0)),
        "{groups:?}"
    );
    bus.close().await.unwrap();
    cleanup(&bus, &[]).await;
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
    cleanup(&one, &[]).await;
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
            let n = e.payload.as_u64().unwrap();
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
        .map(|(_, e)| e.payload.as_u64().unwrap())
        .collect();
    poison.sort();
    assert_eq!(poison, vec![7, 17, 27]);
    for (_, letter) in &letters {
        let info = DeadLetterInfo::of(letter).unwrap();
        assert_eq!(info.attempts, 3);
        assert_eq!(info.group.as_deref(), Some("billing"));
        assert_eq!(info.topic, format!("{ns}:work"));
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
    cleanup(&bus, &["billing"]).await;
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
    cleanup(&bus, &[]).await;
}

/// A group that starts at `earliest` receives what was published before it existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earliest_group_receives_what_came_before() {
    let ns = namespace();
    let mut config = durable_config(&ns).await;
    config.streams.start = StartPosition::Earliest;
    let bus = RedisEventBus::new(config).unwrap();
    bus.connect().await.unwrap();
    publish_n(&bus, &ns, 0..50).await;
    let seen = Seen::default();
    let _sub = bus
        .subscribe_with(
            &format!("{ns}:*"),
            SubscribeOptions::new().group("audit"),
            seen.handler(),
        )
        .await
        .unwrap();
    bus.flush().await.unwrap();
    assert_eq!(seen.set(), (0..50).collect());
    bus.close().await.unwrap();
    cleanup(&bus, &[]).await;
}

/// Entries whose topic the pattern does not match are acknowledged unseen and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_topics_are_skipped_and_counted() {
    let ns = namespace();
    let bus = durable(&ns).await;
    let seen = Seen::default();
    let _sub = bus
        .subscribe_with(
            &format!("{ns}:orders:*"),
            SubscribeOptions::new(),
            seen.handler(),
        )
        .await
        .unwrap();
    for n in 0..20 {
        let topic = if n % 2 == 0 {
            format!("{ns}:orders:eu")
        } else {
            format!("{ns}:users")
        };
        bus.publish(event(topic, n)).await.unwrap();
    }
    bus.flush().await.unwrap();
    assert_eq!(seen.set(), (0..20).filter(|n| n % 2 == 0).collect());
    assert_eq!(bus.stream_metrics().skipped, 10);
    let groups = bus.groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        groups[0].name,
        format!("{ns}:orders:*"),
        "a subscription without a group has its own, named after its pattern"
    );
    assert_eq!(groups[0].pending, 0);
    bus.close().await.unwrap();
    cleanup(&bus, &[]).await;
}

/// Killing the reading connections while events flow loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_the_reader_loses_nothing() {
    let ns = namespace();
    let mut config = durable_config(&ns).await;
    config.streams.read_count = 50;
    let bus = RedisEventBus::new(config).unwrap();
    let seen = Seen::default();
    let _sub = bus
        .subscribe_with(
            &format!("{ns}:*"),
            SubscribeOptions::new().group("g").queue_maxsize(50),
            seen.handler(),
        )
        .await
        .unwrap();
    let name = format!("eventbus:{ns}:streams:");
    for round in 0..5u64 {
        publish_n(&bus, &ns, round * 200..round * 200 + 200).await;
        // The readers reconnect with backoff: kill them once they are back.
        let killed =
            wait_until_async(DEADLINE, || async { kill_connections(&name).await > 0 }).await;
        assert!(killed, "round {round}: no connection to kill");
    }
    assert!(
        wait_until(Duration::from_secs(20), || seen.set().len() >= 1000).await,
        "{}",
        seen.set().len()
    );
    bus.flush().await.unwrap();
    assert_eq!(seen.set(), (0..1000).collect());
    let duplicates = seen.len() - 1000;
    let metrics = bus.stream_metrics();
    eprintln!("client kill: {duplicates} duplicates for 1000 events, {metrics:?}");
    // At most what was in flight at each of the 5 kills: a queue and a read batch.
    assert!(duplicates <= 5 * 100, "{duplicates} duplicates");
    bus.close().await.unwrap();
    cleanup(&bus, &[]).await;
}

async fn xlen(bus: &RedisEventBus) -> u64 {
    let mut conn = redis_server::client().await;
    redis::cmd("XLEN")
        .arg(bus.stream_key())
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Trimming keeps everything a lagging group still needs; only the `max_len` cap trims
/// it, and then every trimmed entry is counted as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_trims_a_lagging_group_silently() {
    let ns = namespace();
    let pattern = format!("{ns}:*");
    let mut config = durable_config(&ns).await;
    config.streams.max_len = 10;
    let capped = RedisEventBus::new(config).unwrap();
    let bus = durable(&ns).await;
    let (fast, slow) = (Seen::default(), Seen::default());
    let _fast = bus
        .subscribe_with(
            &pattern,
            SubscribeOptions::new().group("fast"),
            fast.handler(),
        )
        .await
        .unwrap();
    let away = bus
        .subscribe_with(
            &pattern,
            SubscribeOptions::new().group("slow"),
            slow.handler(),
        )
        .await
        .unwrap();
    away.cancel().await;
    publish_n(&bus, &ns, 0..100).await;
    bus.flush().await.unwrap();
    assert!(wait_until(DEADLINE, || bus.stream_metrics().acked == 100).await);
    let groups = bus.groups().await.unwrap();
    let lag = |name: &str| groups.iter().find(|g| g.name == name).and_then(|g| g.lag);
    assert_eq!(
        (lag("fast"), lag("slow")),
        (Some(0), Some(100)),
        "{groups:?}"
    );
    // `slow` has read nothing: nothing may go.
    assert_eq!(bus.trim().await.unwrap(), 0);
    assert_eq!(xlen(&bus).await, 100);
    assert_eq!(bus.stream_metrics().lost, 0);
    // The cap trims anyway, and counts every entry `slow` never got.
    let trimmed = capped.trim().await.unwrap();
    assert_eq!(trimmed, 90);
    assert_eq!(capped.stream_metrics().lost, 90);
    assert_eq!(xlen(&bus).await, 10);
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
    // Once every group has acknowledged, trimming removes all but the last entry.
    assert!(wait_until(DEADLINE, || bus.stream_metrics().acked == 110).await);
    bus.trim().await.unwrap();
    assert!(xlen(&bus).await <= 1);
    bus.close().await.unwrap();
    capped.close().await.unwrap();
    cleanup(&bus, &[]).await;
}

/// `health()` reports an eviction policy that could evict the streams, and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_warns_when_the_server_may_evict() {
    let server = integration_tests::redis_server::OwnRedisServer::start().await;
    let ns = namespace();
    let mut config = durable_config(&ns).await;
    config.url = Some(server.url());
    let bus = RedisEventBus::new(config).unwrap();
    bus.connect().await.unwrap();
    let health = bus.health().await;
    assert!(
        health.is_healthy() && health.warnings.is_empty(),
        "{health:?}"
    );
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut conn)
        .await
        .unwrap();
    let health = bus.health().await;
    assert!(health.is_healthy(), "{health:?}");
    assert!(
        health
            .warnings
            .iter()
            .any(|w| w.contains("allkeys-lru") && w.contains("noeviction")),
        "{health:?}"
    );
    bus.close().await.unwrap();
}

/// A handler running for several leases keeps its event: its lease is extended, so the
/// other member of the group never takes it over.
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
                    .push((bus, e.payload.as_u64().unwrap()));
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
    one.publish(event(format!("{ns}:job"), 1)).await.unwrap();
    assert!(wait_until(DEADLINE, || !calls.lock().unwrap().is_empty()).await);
    tokio::time::sleep(Duration::from_secs(4)).await; // observe: no takeover happens
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "{:?}",
        calls.lock().unwrap()
    );
    assert_eq!(
        one.stream_metrics().reclaimed + two.stream_metrics().reclaimed,
        0
    );
    one.close().await.unwrap();
    two.close().await.unwrap();
    cleanup(&one, &[]).await;
}

/// Idle consumers are removed only when they have nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_consumers_are_removed_only_with_nothing_pending() {
    let ns = namespace();
    let mut config = durable_config(&ns).await;
    config.streams.consumer_idle_seconds = 0.05;
    // Only the explicit `trim` below removes consumers.
    config.streams.trim_interval_seconds = 3600.0;
    let bus = RedisEventBus::new(config).unwrap();
    bus.connect().await.unwrap();
    let seen = Seen::default();
    let sub = bus
        .subscribe_with(
            &format!("{ns}:*"),
            SubscribeOptions::new().group("g"),
            seen.handler(),
        )
        .await
        .unwrap();
    let consumers = || async {
        let mut conn = redis_server::client().await;
        let rows: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(bus.stream_key())
            .arg("g")
            .query_async(&mut conn)
            .await
            .unwrap();
        rows.len()
    };
    // The bus's consumer exists once its reader has read from the group.
    assert!(wait_until_async(DEADLINE, || async { consumers().await == 1 }).await);
    sub.cancel().await;
    publish_n(&bus, &ns, 0..1).await;
    // A consumer that takes the entry and never acknowledges it.
    let mut conn = redis_server::client().await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(bus.stream_key())
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(consumers().await, 2);
    tokio::time::sleep(Duration::from_millis(100)).await; // let both become idle
    bus.trim().await.unwrap();
    assert_eq!(
        consumers().await,
        1,
        "the idle consumer without pending entries is gone"
    );
    let groups = bus.groups().await.unwrap();
    assert_eq!(groups[0].pending, 1, "the ghost and its pending entry stay");
    bus.close().await.unwrap();
    cleanup(&bus, &[]).await;
}
