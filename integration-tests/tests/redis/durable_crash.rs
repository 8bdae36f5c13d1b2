//! Crashes in the durable mode: consumer processes killed with SIGKILL, and a private
//! persistent server restarted with pending entries.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use integration_tests::{
    conformance::event,
    crash_worker::{Records, Worker},
    redis_server::{self, OwnRedisServer},
    support::{namespace, wait_until, wait_until_async},
};
use multibus::{Event, EventBus, EventBusExt, RedisEventBus, SubscribeOptions};
use tokio::sync::Semaphore;

use super::durable::{cleanup, durable, durable_config};

const WORKER: &str = env!("CARGO_BIN_EXE_durable_worker");

async fn publish_n(bus: &RedisEventBus, ns: &str, n: u64) {
    let events: Vec<Event> = (0..n).map(|i| event(format!("{ns}:work"), i)).collect();
    for chunk in events.chunks(500) {
        bus.publish_batch(chunk.to_vec()).await.unwrap();
    }
}

/// In flight with a worker: its queue (10) + one read batch (10) + acknowledgements not
/// sent yet (at most what it handled since the last batch, bounded by the same).
const IN_FLIGHT: usize = 40;

/// SIGKILL of a consumer mid-stream, then a restart under the same consumer name: it
/// first takes back its own pending entries; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_loses_nothing() {
    let ns = namespace();
    let url = redis_server::url().await;
    let records = Records::new(&ns);
    let bus = durable(&ns).await;
    // The group exists before the events.
    bus.subscribe_with(
        &format!("{ns}:*"),
        SubscribeOptions::new().group("g"),
        |_e: Event| async { Ok::<(), std::io::Error>(()) },
    )
    .await
    .unwrap()
    .cancel()
    .await;
    publish_n(&bus, &ns, 3000).await;
    let mut worker = Worker::start(WORKER, &url, &ns, "g", &records.file("w1"));
    assert!(
        wait_until(Duration::from_secs(20), || records.handled(&["w1"]).len()
            >= 800)
        .await
    );
    worker.kill();
    let before = records.handled(&["w1"]).len();
    assert!(before < 3000, "killed too late to be mid-stream");
    let _worker = Worker::start(WORKER, &url, &ns, "g", &records.file("w1"));
    records
        .assert_complete(&["w1"], 3000, IN_FLIGHT, "sigkill + restart")
        .await;
    let groups = bus.groups().await.unwrap();
    assert!(
        wait_until_async(Duration::from_secs(10), || async {
            bus.groups().await.unwrap().iter().all(|g| g.pending == 0)
        })
        .await,
        "{groups:?}"
    );
    bus.close().await.unwrap();
    cleanup(&bus, &[]).await;
}

/// Two processes in one group share the events: disjoint shares, every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_group() {
    let ns = namespace();
    let url = redis_server::url().await;
    let records = Records::new(&ns);
    let bus = durable(&ns).await;
    let _one = Worker::start(WORKER, &url, &ns, "g", &records.file("one"));
    let _two = Worker::start(WORKER, &url, &ns, "g", &records.file("two"));
    publish_n(&bus, &ns, 2000).await;
    records
        .assert_complete(&["one", "two"], 2000, 0, "two processes")
        .await;
    let one: HashSet<u64> = records.handled(&["one"]).into_iter().collect();
    let two: HashSet<u64> = records.handled(&["two"]).into_iter().collect();
    eprintln!("two processes: shares {} + {}", one.len(), two.len());
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both members get a share"
    );
    assert!(one.is_disjoint(&two));
    bus.close().await.unwrap();
    cleanup(&bus, &[]).await;
}

/// SIGKILL of one of two members: the other takes its pending entries over after the
/// lease; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_takeover_by_another_member() {
    let ns = namespace();
    let url = redis_server::url().await;
    let records = Records::new(&ns);
    let bus = durable(&ns).await;
    bus.subscribe_with(
        &format!("{ns}:*"),
        SubscribeOptions::new().group("g"),
        |_e: Event| async { Ok::<(), std::io::Error>(()) },
    )
    .await
    .unwrap()
    .cancel()
    .await;
    publish_n(&bus, &ns, 3000).await;
    let workers = ["victim", "survivor"];
    let mut victim = Worker::start(WORKER, &url, &ns, "g", &records.file("victim"));
    let _survivor = Worker::start(WORKER, &url, &ns, "g", &records.file("survivor"));
    assert!(
        wait_until(Duration::from_secs(20), || records.handled(&workers).len()
            >= 800)
        .await
    );
    victim.kill();
    records
        .assert_complete(&workers, 3000, IN_FLIGHT, "sigkill + takeover")
        .await;
    bus.close().await.unwrap();
    cleanup(&bus, &[]).await;
}

/// A private `redis-server --appendonly yes` killed and restarted while entries are
/// pending and unread: all are delivered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_server_restart_keeps_pending_entries() {
    let mut server = OwnRedisServer::start_persistent().await;
    let ns = namespace();
    let mut config = durable_config(&ns).await;
    config.url = Some(server.url());
    config.command_timeout_seconds = 1.0;
    config.dispatcher.consumer_error_sleep_seconds = 0.2;
    let bus = RedisEventBus::new(config).unwrap();
    bus.connect().await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (g, s) = (gate.clone(), seen.clone());
    let handler = move |e: Event| {
        let (g, s) = (g.clone(), s.clone());
        async move {
            let _ = g.acquire().await.map(|p| p.forget());
            s.lock().unwrap().push(e.payload.as_u64().unwrap());
            Ok::<(), std::io::Error>(())
        }
    };
    let _sub = bus
        .subscribe_with(
            &format!("{ns}:*"),
            SubscribeOptions::new().group("g").queue_maxsize(5),
            handler,
        )
        .await
        .unwrap();
    publish_n(&bus, &ns, 100).await;
    // Some entries are now pending with the consumer (read, not acknowledged).
    assert!(
        wait_until_async(Duration::from_secs(10), || async {
            bus.groups()
                .await
                .map(|g| g.iter().any(|g| g.pending > 0))
                .unwrap_or(false)
        })
        .await
    );
    server.kill();
    server.spawn().await;
    gate.add_permits(1_000_000);
    let done = wait_until(Duration::from_secs(30), || {
        seen.lock().unwrap().iter().collect::<HashSet<_>>().len() >= 100
    })
    .await;
    let unique: HashSet<u64> = seen.lock().unwrap().iter().copied().collect();
    assert!(done, "{} of 100 after the restart", unique.len());
    assert_eq!(unique, (0..100).collect());
    eprintln!(
        "restart: {} deliveries for 100 events",
        seen.lock().unwrap().len()
    );
    bus.close().await.unwrap();
}
