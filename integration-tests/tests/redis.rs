//! Redis-specific tests against the real server: cross-instance delivery, namespaces,
//! the wire format, authentication, TLS settings, and real connection faults.

use std::time::{Duration, Instant};

use integration_tests::{
    conformance::{event, test_dispatcher},
    proxy::TcpProxy,
    redis_server::{self, OwnRedisServer, kill_pubsub_connections},
    servers,
    support::{DEADLINE, Recorder, namespace, wait_until, wait_until_async},
};
use multibus::{
    Config, Error, Event, EventBus, EventBusExt, EventType, Priority, PublishOutcome, RedisConfig,
    RedisEventBus, create_event_bus,
};
use redis::AsyncCommands;
use serde_json::json;

#[path = "redis/durable.rs"]
mod durable;
#[path = "redis/durable_crash.rs"]
mod durable_crash;
#[path = "redis/faults.rs"]
mod faults;

/// Test settings in namespace `ns` on the test server (or `url`).
async fn config_at(ns: &str, url: String) -> RedisConfig {
    RedisConfig {
        channel_prefix: ns.to_owned(),
        command_timeout_seconds: 2.0,
        dispatcher: test_dispatcher(),
        ..RedisConfig::from_url(url).unwrap()
    }
}

async fn config(ns: &str) -> RedisConfig {
    config_at(ns, redis_server::url().await).await
}

async fn connected(config: RedisConfig) -> RedisEventBus {
    let bus = RedisEventBus::new(config).unwrap();
    bus.connect().await.unwrap();
    bus
}

/// Pattern subscriptions (`psub` in `CLIENT LIST`) of the connection named `name`.
async fn client_patterns(name: &str) -> i64 {
    let mut conn = redis_server::client().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    list.lines()
        .find(|line| line.split(' ').any(|f| f == format!("name={name}")))
        .and_then(|line| line.split(' ').find_map(|f| f.strip_prefix("psub=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Number of server-side subscribers of `channel`.
async fn numsub(channel: &str) -> i64 {
    let mut conn = redis_server::client().await;
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut conn)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn two_instances_deliver_each_others_events() {
    let ns = namespace();
    let (a, b) = (
        connected(config(&ns).await).await,
        connected(config(&ns).await).await,
    );
    let (ra, rb) = (Recorder::new(), Recorder::new());
    a.subscribe(&format!("{ns}:*"), ra.handler()).await.unwrap();
    b.subscribe(&format!("{ns}:to-b"), rb.handler())
        .await
        .unwrap();
    b.publish(event(format!("{ns}:to-a"), 1)).await.unwrap();
    a.publish(event(format!("{ns}:to-b"), 2)).await.unwrap();
    assert_eq!(ra.wait_for(2, DEADLINE).await.len(), 2); // its own event too
    assert_eq!(rb.wait_for(1, DEADLINE).await[0].payload, json!(2));
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    assert_eq!((ra.len(), rb.len()), (2, 1));
    assert_eq!(a.metrics().published, 1);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn different_prefixes_are_isolated() {
    let (ns1, ns2) = (namespace(), namespace());
    let one = connected(config(&ns1).await).await;
    let two = connected(config(&ns2).await).await;
    let r = Recorder::new();
    two.subscribe("*", r.handler()).await.unwrap();
    two.subscribe("shared:topic", r.handler()).await.unwrap();
    one.publish(event("shared:topic", 1)).await.unwrap();
    // Published after `one`'s event was accepted by the server, so it arrives after it
    // would have: if only the marker arrives, the other prefix's event never will.
    two.publish(event("marker", 2)).await.unwrap();
    two.flush().await.unwrap();
    assert_eq!(r.topics(), ["marker"]);
    one.close().await.unwrap();
    two.close().await.unwrap();
}

#[tokio::test]
async fn malformed_messages_are_counted_and_never_stop_delivery() {
    let ns = namespace();
    let bus = connected(RedisConfig {
        max_message_bytes: 4096,
        ..config(&ns).await
    })
    .await;
    let topic = format!("{ns}:orders");
    let r = Recorder::new();
    bus.subscribe(&topic, r.handler()).await.unwrap();
    bus.subscribe(&format!("{ns}:*"), r.handler())
        .await
        .unwrap();
    let channel = bus.channel_for(&topic);
    let big = format!(
        r#"{{"v":1,"type":"created","topic":"{topic}","payload":"{}"}}"#,
        "x".repeat(5000)
    );
    let bad = [
        "not json at all".to_owned(),
        format!(r#"{{"v":2,"type":"created","topic":"{topic}"}}"#),
        format!(r#"{{"v":1,"topic":"{topic}"}}"#),
        r#"{"v":1,"type":"created","topic":"elsewhere:orders"}"#.to_owned(),
        big,
    ];
    let mut raw = redis_server::client().await;
    for message in &bad {
        let _: i64 = raw.publish(&channel, message).await.unwrap();
    }
    bus.publish(event(&topic, 7)).await.unwrap();
    let got = r.wait_for(2, DEADLINE).await; // exact + pattern subscription
    assert!(got.iter().all(|e| e.payload == json!(7)));
    bus.flush().await.unwrap();
    // Each bad message reached both server subscriptions.
    assert_eq!(bus.metrics().malformed, 2 * bad.len() as u64);
    assert_eq!(r.len(), 2);
    assert!(bus.health().await.is_healthy());
    bus.close().await.unwrap();
}

#[tokio::test]
async fn foreign_clients_can_publish_and_read_plain_json() {
    let ns = namespace();
    let bus = connected(config(&ns).await).await;
    let topic = format!("{ns}:orders:eu");
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:orders:*"), r.handler())
        .await
        .unwrap();

    // What docs/wire-format.md tells a Python or redis-cli user to send.
    let foreign = json!({
        "v": 1, "type": "order_placed", "topic": topic, "payload": {"id": 7},
        "source": "python", "metadata": {"tenant": "acme"}, "priority": 64,
        "timestamp": "2026-01-02T03:04:05.123456+00:00"
    });
    let mut raw = redis_server::client().await;
    let _: i64 = raw
        .publish(format!("{ns}:{topic}"), foreign.to_string())
        .await
        .unwrap();
    let got = r.wait_for(1, DEADLINE).await;
    assert_eq!(got[0].event_type, EventType::custom("order_placed"));
    assert_eq!(got[0].payload, json!({"id": 7}));
    assert_eq!(got[0].source.as_deref(), Some("python"));
    assert_eq!(
        got[0].metadata.get("tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(got[0].priority, Priority::new(64));
    assert_eq!(
        got[0].timestamp.to_rfc3339(),
        "2026-01-02T03:04:05.123456+00:00"
    );

    // And they can read ours: a plain SUBSCRIBE sees the documented envelope.
    let mut pubsub = redis::Client::open(redis_server::url().await)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.subscribe(format!("{ns}:{topic}")).await.unwrap();
    let sent = Event::new(EventType::Updated, &topic, json!([1, "two"]))
        .with_correlation_id("c-1")
        .with_priority(Priority::HIGH);
    bus.publish(sent.clone()).await.unwrap();
    let msg = tokio::time::timeout(
        DEADLINE,
        futures_util::StreamExt::next(&mut pubsub.on_message()),
    )
    .await
    .unwrap()
    .unwrap();
    let text: String = msg.get_payload().unwrap();
    let wire: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(wire["v"], 1);
    assert_eq!(wire["id"], sent.id.to_string());
    assert_eq!(wire["type"], "updated");
    assert_eq!(wire["topic"], topic);
    assert_eq!(wire["payload"], json!([1, "two"]));
    assert_eq!(wire["correlation_id"], "c-1");
    assert_eq!(wire["priority"], json!(Priority::HIGH.value()));
    assert!(wire["timestamp"].as_str().unwrap().ends_with('Z'));
    bus.close().await.unwrap();
}

/// A random ACL user on the shared server, deleted again on drop (even if the test
/// fails). `requirepass` of the shared server is never touched.
struct AclUser {
    name: String,
    password: String,
}

impl AclUser {
    /// A user with the permissions docs/backends/redis.md lists, for channels `{ns}:*`.
    async fn create(ns: &str) -> Self {
        let user = Self {
            name: format!("eventbus-{}", namespace()),
            password: uuid::Uuid::new_v4().simple().to_string(),
        };
        let mut conn = redis_server::client().await;
        redis::cmd("ACL")
            .arg(&["SETUSER", &user.name, "on", &format!(">{}", user.password)][..])
            .arg(
                &[
                    "resetchannels",
                    &format!("&{ns}:*"),
                    "+@pubsub",
                    "+@connection",
                ][..],
            )
            .exec_async(&mut conn)
            .await
            .unwrap();
        user
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Synchronous, so cleanup happens even while a failed test unwinds.
        let cleanup = std::thread::spawn(move || {
            let url = servers::url(&redis_server::SERVER);
            let mut conn = redis::Client::open(url)?.get_connection()?;
            redis::cmd("ACL").arg("DELUSER").arg(&name).exec(&mut conn)
        });
        let _ = cleanup.join();
    }
}

#[tokio::test]
async fn password_authentication_with_an_acl_user() {
    let ns = namespace();
    let user = AclUser::create(&ns).await;
    let addr = redis_server::addr().await;
    let keyed = RedisConfig {
        url: None,
        host: addr.ip().to_string(),
        port: addr.port(),
        username: Some(user.name.clone()),
        password: Some(user.password.clone().into()),
        ..config(&ns).await
    };
    let bus = connected(keyed.clone()).await;
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:auth"), r.handler())
        .await
        .unwrap();
    let via_url = config_at(
        &ns,
        format!("redis://{}:{}@{addr}/0", user.name, user.password),
    )
    .await;
    let other = connected(via_url).await;
    other.publish(event(format!("{ns}:auth"), 1)).await.unwrap();
    r.wait_for(1, DEADLINE).await;

    let wrong = RedisEventBus::new(RedisConfig {
        password: Some("not-the-password".into()),
        ..keyed
    })
    .unwrap();
    let err = wrong.connect().await.unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "{err}");
    let text = format!("{err} {err:?} {wrong:?}");
    assert!(
        !text.contains("not-the-password") && !text.contains(&user.password),
        "{text}"
    );
    bus.close().await.unwrap();
    other.close().await.unwrap();
}

#[tokio::test]
async fn tls_settings_fail_clearly_against_a_plain_server() {
    let ns = namespace();
    let addr = redis_server::addr().await;
    for config in [
        config_at(&ns, format!("rediss://{addr}")).await,
        RedisConfig {
            url: None,
            host: addr.ip().to_string(),
            port: addr.port(),
            ssl: true,
            ..config(&ns).await
        },
    ] {
        assert!(config.uses_tls());
        let bus = RedisEventBus::new(RedisConfig {
            command_timeout_seconds: 0.5,
            ..config
        })
        .unwrap();
        let started = Instant::now();
        let err = bus.connect().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        let text = err.to_string();
        assert!(matches!(err, Error::Connection { .. }), "{text}");
        assert!(text.contains(&format!("rediss://{}", addr.ip())), "{text}");
        assert!(text.contains("TLS"), "{text}");
        let err = bus.publish(event(format!("{ns}:x"), 1)).await.unwrap_err();
        assert!(err.into_event().is_some());
    }
}

#[tokio::test]
async fn built_from_json_config_through_the_facade() {
    let ns = namespace();
    let json = json!({
        "backend": "redis", "url": redis_server::url().await, "channel_prefix": ns,
        "dispatcher": {"metrics_log_interval_seconds": 0}
    });
    let bus = create_event_bus(Config::from_json_value(json).unwrap()).unwrap();
    bus.connect().await.unwrap();
    assert_eq!(bus.backend(), "redis");
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:x"), r.handler())
        .await
        .unwrap();
    bus.publish(event(format!("{ns}:x"), 1)).await.unwrap();
    r.wait_for(1, DEADLINE).await;
    bus.close().await.unwrap();
    let err = Config::from_json_str(r#"{"backend": "redis", "prot": 1}"#).unwrap_err();
    assert!(err.to_string().contains("prot"), "{err}");
    let err = Config::from_json_str(r#"{"backend": "redis", "channel_prefix": ""}"#).unwrap_err();
    assert!(err.to_string().contains("channel_prefix"), "{err}");
}

#[tokio::test]
async fn server_subscriptions_are_shared_and_released() {
    let ns = namespace();
    let bus = connected(config(&ns).await).await;
    let topic = format!("{ns}:shared");
    let channel = bus.channel_for(&topic);
    let (r1, r2) = (Recorder::new(), Recorder::new());
    let s1 = bus.subscribe(&topic, r1.handler()).await.unwrap();
    let s2 = bus.subscribe(&topic, r2.handler()).await.unwrap();
    assert_eq!(numsub(&channel).await, 1);
    bus.publish(event(&topic, 1)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!((r1.len(), r2.len()), (1, 1));
    s1.cancel().await;
    assert_eq!(numsub(&channel).await, 1);
    s2.cancel().await;
    assert_eq!(numsub(&channel).await, 0);

    // A subscription the dispatcher drops after repeated failures is released too.
    let failing = format!("{ns}:failing");
    bus.subscribe(&failing, |_e: Event| async {
        Err::<(), _>(std::io::Error::other("no"))
    })
    .await
    .unwrap();
    assert_eq!(numsub(&bus.channel_for(&failing)).await, 1);
    for n in 0..3 {
        bus.publish(event(&failing, n)).await.unwrap();
    }
    bus.flush().await.unwrap();
    assert_eq!(bus.metrics().auto_unsubscribed, 1);
    let channel = bus.channel_for(&failing);
    let mut released = false;
    for _ in 0..200 {
        if numsub(&channel).await == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        released,
        "server subscription still there after auto-unsubscribe"
    );
    bus.close().await.unwrap();
}

#[tokio::test]
async fn dropping_a_stream_or_a_set_unsubscribes_on_the_server() {
    let ns = namespace();
    let bus = connected(config(&ns).await).await;
    let channel = bus.channel_for(&format!("{ns}:s"));
    let stream = bus.subscribe_stream(&format!("{ns}:s")).await.unwrap();
    assert_eq!(numsub(&channel).await, 1);
    drop(stream);
    assert!(
        wait_until_async(DEADLINE, || async { numsub(&channel).await == 0 }).await,
        "PUBSUB NUMSUB still counts the dropped stream"
    );
    let mut set = multibus::SubscriptionSet::new();
    set.insert(
        bus.subscribe(&format!("{ns}:*"), Recorder::new().handler())
            .await
            .unwrap(),
    );
    let name = bus.pubsub_client_name().to_owned();
    assert_eq!(client_patterns(&name).await, 1);
    drop(set);
    assert!(
        wait_until_async(DEADLINE, || async { client_patterns(&name).await == 0 }).await,
        "the bus's connection still has the dropped set's pattern subscription"
    );
    bus.close().await.unwrap();
}

#[tokio::test]
async fn patterns_where_redis_globs_differ_deliver_exactly_once() {
    let ns = namespace();
    let bus = connected(config(&ns).await).await;
    // Pairs of patterns with the same Redis glob, an exact subscription next to them,
    // multi-byte characters under `?` and negated classes, and Redis-special characters.
    let patterns = [
        "k:[abc]*",
        "k:[cba]*",
        "k:a*",
        "k:a",
        "k:?",
        "k:[!x]",
        "k:[]^\\-]*",
        "k:\\**",
        "k:[é-ü]",
        "k:[!a]",
    ];
    let topics = [
        "k:a", "k:é", "k:ö", "k:^x", "k:-", "k:]", "k:*a", "k:x", "k:ab", "k:€",
    ];
    let recorders: Vec<Recorder> = patterns.iter().map(|_| Recorder::new()).collect();
    for (p, r) in patterns.iter().zip(&recorders) {
        bus.subscribe(&format!("{ns}:{p}"), r.handler())
            .await
            .unwrap();
    }
    for (n, t) in topics.iter().enumerate() {
        bus.publish(event(format!("{ns}:{t}"), n as u64))
            .await
            .unwrap();
    }
    bus.flush().await.unwrap();
    for (p, r) in patterns.iter().zip(&recorders) {
        let pattern = multibus::Pattern::parse(&format!("{ns}:{p}")).unwrap();
        let expected: Vec<String> = topics
            .iter()
            .map(|t| format!("{ns}:{t}"))
            .filter(|t| pattern.matches(t))
            .collect();
        assert_eq!(r.topics(), expected, "pattern {p:?}");
    }
    bus.close().await.unwrap();
}

#[tokio::test]
async fn reconnects_after_client_kill_and_resubscribes_once() {
    let ns = namespace();
    let bus = connected(config(&ns).await).await;
    let publisher = connected(config(&ns).await).await;
    let (exact, pattern) = (Recorder::new(), Recorder::new());
    bus.subscribe(&format!("{ns}:k"), exact.handler())
        .await
        .unwrap();
    bus.subscribe(&format!("{ns}:*"), pattern.handler())
        .await
        .unwrap();
    assert_eq!(kill_pubsub_connections(bus.pubsub_client_name()).await, 1);
    assert!(wait_until(DEADLINE, || bus.metrics().reconnects == 1).await);
    assert!(bus.health().await.is_healthy());
    for n in 0..2 {
        publisher
            .publish(event(format!("{ns}:k"), n))
            .await
            .unwrap();
    }
    exact.wait_for(2, DEADLINE).await;
    pattern.wait_for(2, DEADLINE).await;
    bus.flush().await.unwrap();
    assert_eq!((exact.len(), pattern.len()), (2, 2));
    assert_eq!(numsub(&bus.channel_for(&format!("{ns}:k"))).await, 1);
    assert_eq!(bus.metrics().reconnects, 1);
    bus.close().await.unwrap();
    publisher.close().await.unwrap();
}

/// Waits until `bus` reports its pub/sub connection down.
async fn wait_disconnected(bus: &RedisEventBus) {
    let deadline = Instant::now() + DEADLINE;
    while bus.health().await.connected {
        assert!(
            Instant::now() < deadline,
            "the bus never noticed the outage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `bus` reports the outage: still open, disconnected, with the error.
async fn wait_reported_down(bus: &RedisEventBus) {
    wait_disconnected(bus).await;
    let health = bus.health().await;
    assert!(
        health.open && !health.connected && health.last_error.is_some(),
        "{health:?}"
    );
}

/// Publishing `sent` during an outage fails within 3 s with `Error::Publish`, which
/// hands the event back.
async fn publish_fails_fast(bus: &RedisEventBus, sent: Event) {
    let started = Instant::now();
    let err = bus.publish(sent.clone()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Publish { .. }), "{err}");
    assert_eq!(err.into_event().unwrap(), sent);
}

/// Publishes `event`, retrying while the error says it was not sent (the publishing
/// connection is still coming back), for up to [`DEADLINE`]. Returns how long it took.
async fn publish_retrying(bus: &RedisEventBus, mut event: Event) -> Duration {
    let started = Instant::now();
    loop {
        match bus.publish(event).await {
            Ok(()) => return started.elapsed(),
            Err(e) if e.publish_outcome() == Some(PublishOutcome::NotSent) => {
                assert!(
                    started.elapsed() < DEADLINE,
                    "publishing never recovered: {e}"
                );
                event = e.into_event().expect("the event is handed back");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("publish failed: {e}"),
        }
    }
}

/// A bus connected through a fault-injecting proxy, with a short backoff.
async fn proxied(ns: &str) -> (TcpProxy, RedisEventBus) {
    let proxy = TcpProxy::start(redis_server::addr().await).await;
    let mut config = config_at(ns, redis_server::url_via(proxy.addr()).await).await;
    config.dispatcher.consumer_error_sleep_seconds = 0.2;
    config.command_timeout_seconds = 1.0;
    (proxy, connected(config).await)
}

#[tokio::test]
async fn reconnects_after_a_proxy_cut() {
    let ns = namespace();
    let (proxy, bus) = proxied(&ns).await;
    let publisher = connected(config(&ns).await).await;
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:p:*"), r.handler())
        .await
        .unwrap();
    proxy.cut();
    assert!(wait_until(DEADLINE, || bus.metrics().reconnects == 1).await);
    publisher
        .publish(event(format!("{ns}:p:1"), 1))
        .await
        .unwrap();
    r.wait_for(1, DEADLINE).await;
    // The cut publishing connection is replaced too (the first publish may fail).
    let deadline = Instant::now() + DEADLINE;
    while bus.publish(event(format!("{ns}:p:2"), 2)).await.is_err() {
        assert!(Instant::now() < deadline, "publishing never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.wait_for(2, DEADLINE).await;
    bus.flush().await.unwrap();
    assert_eq!(r.len(), 2);
    bus.close().await.unwrap();
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn publishing_during_an_outage_fails_within_the_timeout() {
    let ns = namespace();
    let (proxy, bus) = proxied(&ns).await;
    // A black hole: connections stay open but nothing gets through.
    proxy.stall(true);
    let sent = event(format!("{ns}:lost"), 1);
    publish_fails_fast(&bus, sent.clone()).await;
    // The timed-out connection may be stalled: it is replaced, and until then publishes
    // fail at once, saying the event was not sent.
    let started = Instant::now();
    let err = bus.publish(sent.clone()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        err.publish_outcome(),
        Some(PublishOutcome::NotSent),
        "{err}"
    );
    // The server is gone: connections are refused.
    proxy.refuse(true);
    proxy.cut();
    proxy.stall(false);
    for _ in 0..3 {
        publish_fails_fast(&bus, sent.clone()).await;
    }
    wait_reported_down(&bus).await;
    assert!(bus.flush().await.is_err());
    proxy.refuse(false);
    assert!(wait_until(DEADLINE, || bus.metrics().reconnects >= 1).await);
    assert!(bus.health().await.is_healthy());
    bus.close().await.unwrap();
}

#[tokio::test]
async fn subscriptions_changed_during_an_outage_are_right_afterwards() {
    let ns = namespace();
    let (proxy, bus) = proxied(&ns).await;
    let publisher = connected(config(&ns).await).await;
    let (kept, cancelled, added_same, added_new) = (
        Recorder::new(),
        Recorder::new(),
        Recorder::new(),
        Recorder::new(),
    );
    let topic = format!("{ns}:o:1");
    bus.subscribe(&topic, kept.handler()).await.unwrap();
    let to_cancel = bus
        .subscribe(&format!("{ns}:o:*"), cancelled.handler())
        .await
        .unwrap();

    proxy.refuse(true);
    proxy.cut();
    wait_disconnected(&bus).await;
    to_cancel.cancel().await;
    // Subscribing waits for the connection to come back (up to the command timeout).
    let (b1, b2) = (bus.clone(), bus.clone());
    let (h1, h2) = (added_same.handler(), added_new.handler());
    let (t1, t2) = (topic.clone(), format!("{ns}:o:[0-9]"));
    let same = tokio::spawn(async move { b1.subscribe(&t1, h1).await });
    let new = tokio::spawn(async move { b2.subscribe(&t2, h2).await });
    tokio::time::sleep(Duration::from_millis(200)).await; // let both start waiting
    proxy.refuse(false);
    same.await.unwrap().unwrap();
    new.await.unwrap().unwrap();
    assert_eq!(bus.metrics().reconnects, 1);

    publisher.publish(event(&topic, 1)).await.unwrap();
    publisher
        .publish(event(format!("{ns}:o:x"), 2))
        .await
        .unwrap();
    kept.wait_for(1, DEADLINE).await;
    bus.flush().await.unwrap();
    assert_eq!(
        (
            kept.len(),
            added_same.len(),
            added_new.len(),
            cancelled.len()
        ),
        (1, 1, 1, 0)
    );
    assert_eq!(numsub(&bus.channel_for(&topic)).await, 1);
    bus.close().await.unwrap();
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn concurrent_and_batch_publishing_deliver_everything() {
    let ns = namespace();
    let bus = connected(config(&ns).await).await;
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:c:*"), r.handler())
        .await
        .unwrap();
    let tasks: Vec<_> = (0..64u64)
        .map(|n| {
            let bus = bus.clone();
            let topic = format!("{ns}:c:{}", n % 4);
            tokio::spawn(async move { bus.publish(event(topic, n)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let batch: Vec<Event> = (100..164).map(|n| event(format!("{ns}:c:b"), n)).collect();
    bus.publish_batch(batch).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(r.len(), 128);
    let batch_order: Vec<u64> = r
        .events()
        .iter()
        .filter(|e| e.topic.ends_with(":b"))
        .map(|e| e.payload.as_u64().unwrap())
        .collect();
    assert_eq!(batch_order, (100..164).collect::<Vec<_>>());
    assert_eq!(bus.metrics().published, 128);
    bus.close().await.unwrap();
    assert!(matches!(
        bus.publish(event(format!("{ns}:c:1"), 1)).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn survives_a_server_restart() {
    let ns = namespace();
    let mut server = OwnRedisServer::start().await;
    let mut config = config_at(&ns, server.url()).await;
    config.dispatcher.consumer_error_sleep_seconds = 0.2;
    config.command_timeout_seconds = 1.0;
    let bus = connected(config).await;
    let (exact, pattern) = (Recorder::new(), Recorder::new());
    let topic = format!("{ns}:r");
    bus.subscribe(&topic, exact.handler()).await.unwrap();
    bus.subscribe(&format!("{ns}:*"), pattern.handler())
        .await
        .unwrap();
    bus.publish(event(&topic, 1)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!((exact.len(), pattern.len()), (1, 1));

    server.kill();
    let lost = event(&topic, 2);
    publish_fails_fast(&bus, lost).await;
    wait_reported_down(&bus).await;

    // Not synchronisation: the outage itself, longer than a few reconnect attempts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!bus.health().await.connected);
    server.spawn().await;
    let deadline = Instant::now() + DEADLINE;
    while !(bus.metrics().reconnects >= 1 && bus.health().await.connected) {
        assert!(Instant::now() < deadline, "the bus never reconnected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(bus.health().await.is_healthy());
    publish_retrying(&bus, event(&topic, 3)).await;
    exact.wait_for(2, DEADLINE).await;
    pattern.wait_for(2, DEADLINE).await;
    bus.flush().await.unwrap();
    let payloads =
        |r: &Recorder| -> Vec<_> { r.events().iter().map(|e| e.payload.clone()).collect() };
    assert_eq!(payloads(&exact), [json!(1), json!(3)]);
    assert_eq!(payloads(&pattern), [json!(1), json!(3)]);
    assert_eq!(bus.metrics().reconnects, 1);
    bus.close().await.unwrap();
}

/// A subscriber that cannot keep up does not buffer without bound: past 64 ×
/// `queue_maxsize` waiting messages, received events are dropped and counted, and
/// every event is either delivered or counted.
#[tokio::test]
async fn a_slow_subscriber_drops_and_counts_instead_of_buffering_forever() {
    let ns = namespace();
    let mut sub_config = config(&ns).await;
    sub_config.dispatcher.queue_maxsize = 2; // receive buffer: 128 messages
    sub_config.dispatcher.handler_timeout_seconds = 30.0;
    let subscriber = connected(sub_config).await;
    let publisher = connected(config(&ns).await).await;
    let topic = format!("{ns}:flood");
    let (r, gate) = integration_tests::conformance::gated(&subscriber, &topic).await;
    let total = 2000u64;
    publisher
        .publish_batch((0..total).map(|i| event(&topic, i)).collect())
        .await
        .unwrap();
    assert!(
        wait_until(DEADLINE, || subscriber.metrics().dropped > 0).await,
        "nothing was dropped: the receive buffer is not bounded"
    );
    gate.add_permits(total as usize);
    let accounted = || {
        let m = subscriber.metrics();
        m.delivered + m.dropped
    };
    assert!(
        wait_until(DEADLINE, || accounted() == total).await,
        "delivered + dropped = {} of {total}",
        accounted()
    );
    subscriber.flush().await.unwrap();
    let m = subscriber.metrics();
    assert_eq!(r.len() as u64, m.delivered);
    assert_eq!(m.delivered + m.dropped, total);
    // At least the receive buffer's worth got through; the rest of the burst did not
    // fit while the handler was held.
    assert!(m.dropped > 0 && m.delivered >= 128, "{m:?}");
    let payloads: Vec<u64> = r
        .events()
        .iter()
        .map(|e| e.payload.as_u64().unwrap())
        .collect();
    assert!(
        payloads.windows(2).all(|w| w[0] < w[1]),
        "order kept: {payloads:?}"
    );
    subscriber.close().await.unwrap();
    publisher.close().await.unwrap();
}
