//! A three-node NATS cluster of private `nats-server` processes on loopback: events
//! published through one node reach subscribers on the others, and when one node is
//! killed mid-run, delivery resumes through the survivors, with losses only in the
//! failover window, counted. With JetStream (each node storing in its own temporary
//! directory) and a stream of three replicas, the durable mode loses nothing.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use integration_tests::{nats_server::PrivateServer, ports::free_port};
use multibus::{
    DispatcherConfig, Event, EventBus, EventBusExt, EventType, NatsConfig, NatsEventBus,
};
use tokio::time::Instant;

/// Events published in the run; one every millisecond or so.
const EVENTS: u64 = 3000;
/// The node is killed after this many.
const KILL_AT: u64 = 1000;

async fn node(port: u16, cluster_ports: [u16; 3], me: usize) -> PrivateServer {
    let routes: Vec<String> = cluster_ports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
        .collect();
    let cluster = format!("nats://127.0.0.1:{}", cluster_ports[me]);
    PrivateServer::start_on(
        port,
        &[
            "--cluster_name",
            "eventbus_test",
            "--cluster",
            &cluster,
            "--routes",
            &routes.join(","),
        ],
    )
    .await
}

async fn bus(url: String, ns: &str) -> NatsEventBus {
    let bus = NatsEventBus::new(NatsConfig {
        url,
        channel_prefix: ns.to_owned(),
        command_timeout_seconds: 2.0,
        ping_interval_seconds: 1.0,
        dispatcher: DispatcherConfig {
            consumer_error_sleep_seconds: 0.2,
            ..DispatcherConfig::default()
        },
        ..NatsConfig::default()
    })
    .expect("valid config");
    bus.connect().await.expect("connect");
    bus
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u64>>>);

impl Seen {
    fn handler(&self) -> impl multibus::Handler + use<> {
        let seen = self.clone();
        move |event: Event| {
            let seen = seen.clone();
            async move {
                let n = event.payload["n"].as_u64().unwrap_or(u64::MAX);
                seen.0.lock().unwrap().push(n);
                Ok::<(), std::convert::Infallible>(())
            }
        }
    }

    fn all(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }

    fn has(&self, n: u64) -> bool {
        self.0.lock().unwrap().contains(&n)
    }
}

/// Publishes probes (negative-free: `u64::MAX - k`) until every recorder has one, so
/// that subscription interest has spread across the cluster.
async fn until_routed(publisher: &NatsEventBus, topic: &str, seen: &[&Seen]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut probe = 0;
    loop {
        probe += 1;
        let e = Event::new(
            EventType::Created,
            topic,
            serde_json::json!({ "n": 1_000_000 + probe }),
        );
        publisher.publish(e).await.expect("probe");
        tokio::time::sleep(Duration::from_millis(50)).await;
        if seen.iter().all(|s| s.all().iter().any(|n| *n > 1_000_000)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cluster did not route probes within 15 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stdout)] // the figures, shown with --nocapture
async fn delivery_resumes_through_survivors_when_a_node_dies() {
    let ports = [free_port(), free_port(), free_port()];
    let cluster_ports = [free_port(), free_port(), free_port()];
    let n1 = node(ports[0], cluster_ports, 0).await;
    let mut n2 = node(ports[1], cluster_ports, 1).await;
    let n3 = node(ports[2], cluster_ports, 2).await;
    let ns = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);

    let publisher = bus(n1.url(), &ns).await;
    // The subscriber on the node that dies learns the survivors from it (the
    // cluster's `connect_urls`), and fails over to one of them.
    let on_victim = bus(n2.url(), &ns).await;
    let on_survivor = bus(n3.url(), &ns).await;
    let victim_seen = Seen::default();
    let survivor_seen = Seen::default();
    let _a = on_victim
        .subscribe("c:*", victim_seen.handler())
        .await
        .unwrap();
    let _b = on_survivor
        .subscribe("c:*", survivor_seen.handler())
        .await
        .unwrap();
    until_routed(&publisher, "c:probe", &[&victim_seen, &survivor_seen]).await;

    let mut killed_at = None;
    for n in 0..EVENTS {
        if n == KILL_AT {
            n2.kill();
            killed_at = Some(Instant::now());
        }
        let e = Event::new(EventType::Created, "c:run", serde_json::json!({ "n": n }));
        publisher.publish(e).await.expect("publish through node 1");
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let killed_at = killed_at.expect("node killed");
    let last = EVENTS - 1;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(victim_seen.has(last) && survivor_seen.has(last)) {
        assert!(
            Instant::now() < deadline,
            "delivery did not resume within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    for (name, seen) in [
        ("victim's subscriber", &victim_seen),
        ("survivor's subscriber", &survivor_seen),
    ] {
        let all: Vec<u64> = seen.all().into_iter().filter(|n| *n < EVENTS).collect();
        let unique: BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "{name}: duplicates");
        let lost: Vec<u64> = (0..EVENTS).filter(|n| !unique.contains(n)).collect();
        println!(
            "{name}: delivered {} of {EVENTS}, lost {} ({:?}..={:?}), checked {:?} after the kill",
            unique.len(),
            lost.len(),
            lost.first(),
            lost.last(),
            killed_at.elapsed()
        );
        // Losses only around the kill: nothing before it, a bounded window after it,
        // and every event from some point on.
        assert!(
            lost.iter().all(|n| *n >= KILL_AT.saturating_sub(50)),
            "{name}: lost before the kill: {lost:?}"
        );
        assert!(
            lost.len() as u64 <= EVENTS - KILL_AT - 500,
            "{name}: lost {} events",
            lost.len()
        );
        if let (Some(first), Some(last_lost)) = (lost.first(), lost.last()) {
            assert!(
                last_lost - first < lost.len() as u64 + 100,
                "{name}: losses not in one window: {lost:?}"
            );
        }
    }
    // The survivor's node and the publisher's node never went down.
    let survivor_lost = (0..EVENTS).filter(|n| !survivor_seen.has(*n)).count();
    assert_eq!(survivor_lost, 0, "the survivor's subscriber lost events");
    assert!(
        on_victim.metrics().reconnects >= 1,
        "{:?}",
        on_victim.metrics()
    );
    for bus in [publisher, on_victim, on_survivor] {
        bus.close().await.unwrap();
    }
    drop((n1, n3));
}

/// A node of a three-node cluster with JetStream, storing in its own temporary
/// directory (the server's working directory).
async fn js_node(port: u16, cluster_ports: [u16; 3], me: usize) -> PrivateServer {
    let routes: Vec<String> = cluster_ports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
        .collect();
    let cluster = format!("nats://127.0.0.1:{}", cluster_ports[me]);
    let name = format!("n{me}_{port}");
    PrivateServer::start_on(
        port,
        &[
            "--server_name",
            &name,
            "-js",
            "--store_dir",
            "jetstream",
            "--cluster_name",
            "eventbus_js_test",
            "--cluster",
            &cluster,
            "--routes",
            &routes.join(","),
        ],
    )
    .await
}

/// A durable bus on `url` whose streams have three replicas; retried until the
/// cluster's JetStream is ready (it elects its leaders after the nodes start).
async fn durable_bus(node: &PrivateServer, ns: &str) -> NatsEventBus {
    let mut config = NatsConfig {
        url: node.url(),
        channel_prefix: ns.to_owned(),
        command_timeout_seconds: 2.0,
        ping_interval_seconds: 1.0,
        delivery: multibus::nats::DeliveryMode::Jetstream,
        dispatcher: DispatcherConfig {
            consumer_error_sleep_seconds: 0.2,
            ..DispatcherConfig::default()
        },
        ..NatsConfig::default()
    };
    config.jetstream.replicas = 3;
    config.jetstream.lease_seconds = 2.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bus = NatsEventBus::new(config.clone()).expect("valid config");
        match bus.connect().await {
            Ok(()) => return bus,
            Err(e) => {
                let _ = bus.close().await;
                assert!(
                    Instant::now() < deadline,
                    "JetStream cluster not ready: {e}\nthe node's log:\n{}",
                    node.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The durable mode on a cluster: a stream with three replicas, published through one
/// node and consumed through another, whose node is killed mid-run: every event is
/// delivered (publishes that fail during the failover are retried; the stream drops
/// the duplicates by event id), duplicates bounded and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stdout)] // the figures, shown with --nocapture
async fn durable_delivery_survives_a_node_kill() {
    let ports = [free_port(), free_port(), free_port()];
    let cluster_ports = [free_port(), free_port(), free_port()];
    let n1 = js_node(ports[0], cluster_ports, 0).await;
    let mut n2 = js_node(ports[1], cluster_ports, 1).await;
    let n3 = js_node(ports[2], cluster_ports, 2).await;
    let ns = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);

    let publisher = durable_bus(&n1, &ns).await;
    let consumer = durable_bus(&n2, &ns).await;
    let seen = Seen::default();
    let _sub = consumer
        .subscribe_with(
            "c:*",
            multibus::SubscribeOptions::new().group("g"),
            seen.handler(),
        )
        .await
        .unwrap();

    let mut retried = 0;
    for n in 0..EVENTS {
        if n == KILL_AT {
            n2.kill();
        }
        let e = Event::new(EventType::Created, "c:run", serde_json::json!({ "n": n }));
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut attempt = e;
        loop {
            match publisher.publish(attempt).await {
                Ok(()) => break,
                Err(multibus::Error::Publish { event, .. }) => {
                    assert!(Instant::now() < deadline, "publish {n} kept failing");
                    retried += 1;
                    attempt = *event;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("publish {n}: {e}"),
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let unique: BTreeSet<u64> = seen.all().into_iter().collect();
        if unique.len() as u64 >= EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivered {} of {EVENTS} within 60 s",
            unique.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = seen.all();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique, (0..EVENTS).collect(), "lost events");
    let duplicates = all.len() - unique.len();
    println!(
        "durable cluster: {EVENTS} events, {duplicates} duplicates, {retried} publish retries, \
         {:?}",
        consumer.jetstream_metrics()
    );
    // What the consumer held when its node died: a pull batch (100), its queue (100),
    // acknowledgements not yet written (at most as many).
    assert!(duplicates <= 300, "{duplicates} duplicates");
    assert!(
        consumer.metrics().reconnects >= 1,
        "{:?}",
        consumer.metrics()
    );
    for bus in [publisher, consumer] {
        bus.close().await.unwrap();
    }
    drop((n1, n3));
}
