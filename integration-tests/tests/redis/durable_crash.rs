//! Crashes in the durable mode: consumer processes killed with SIGKILL, and a private
//! persistent server restarted with pending entries.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use integration_tests::{
    conformance::event,
    redis_server::{self, OwnRedisServer},
    support::{namespace, wait_until, wait_until_async},
};
use multibus::{Event, EventBus, EventBusExt, RedisEventBus, SubscribeOptions};
use tokio::sync::Semaphore;

use super::durable::{cleanup, durable, durable_config};

/// A `durable_worker` child process; killed (SIGKILL) and reaped on drop.
struct Worker(Child);

impl Worker {
    fn start(url: &str, ns: &str, group: &str, name: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_durable_worker"))
            .args([url, ns, group, name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start durable_worker");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read ready line");
        assert_eq!(line.trim(), "ready", "worker did not start");
        Self(child)
    }

    /// SIGKILL: no shutdown, no acknowledgement of anything in flight.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The payloads the workers recorded (one per handled delivery).
async fn handled(ns: &str) -> Vec<u64> {
    recorded(&format!("{ns}:handled")).await
}

/// The payloads recorded in `list`.
async fn recorded(list: &str) -> Vec<u64> {
    let mut conn = redis_server::client().await;
    let items: Vec<String> = redis::cmd("LRANGE")
        .arg(list)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    items.iter().map(|s| s.parse().unwrap()).collect()
}

async fn publish_n(bus: &RedisEventBus, ns: &str, n: u64) {
    let events: Vec<Event> = (0..n).map(|i| event(format!("{ns}:work"), i)).collect();
    for chunk in events.chunks(500) {
        bus.publish_batch(chunk.to_vec()).await.unwrap();
    }
}

/// Checks that every event was handled, and that duplicates stay within `bound`.
async fn assert_complete(ns: &str, n: u64, bound: usize, what: &str) {
    let complete = wait_until_async(Duration::from_secs(30), || async {
        handled(ns).await.into_iter().collect::<HashSet<_>>().len() as u64 >= n
    })
    .await;
    let all = handled(ns).await;
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert!(complete, "{what}: {} of {n} handled", unique.len());
    assert_eq!(unique, (0..n).collect(), "{what}: lost events");
    let duplicates = all.len() - unique.len();
    eprintln!("{what}: {n} events, {duplicates} duplicates (bound {bound})");
    assert!(
        duplicates <= bound,
        "{what}: {duplicates} duplicates > {bound}"
    );
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
    let mut worker = Worker::start(&url, &ns, "g", "w1");
    assert!(
        wait_until_async(Duration::from_secs(20), || async {
            handled(&ns).await.len() >= 800
        })
        .await
    );
    worker.kill();
    let before = handled(&ns).await.len();
    assert!(before < 3000, "killed too late to be mid-stream");
    let _worker = Worker::start(&url, &ns, "g", "w1");
    assert_complete(&ns, 3000, IN_FLIGHT, "sigkill + restart").await;
    let groups = bus.groups().await.unwrap();
    assert!(
        wait_until_async(Duration::from_secs(10), || async {
            bus.groups().await.unwrap().iter().all(|g| g.pending == 0)
        })
        .await,
        "{groups:?}"
    );
    bus.close().await.unwrap();
    remove_keys(&bus, &ns, &["w1"]).await;
}

/// Deletes what a crash test left: the stream and the workers' lists.
async fn remove_keys(bus: &RedisEventBus, ns: &str, workers: &[&str]) {
    cleanup(bus, &[]).await;
    let mut keys = vec![format!("{ns}:handled")];
    keys.extend(workers.iter().map(|w| format!("{ns}:by:{w}")));
    let mut conn = redis_server::client().await;
    let _: i64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Two processes in one group share the events: disjoint shares, every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_group() {
    let ns = namespace();
    let url = redis_server::url().await;
    let bus = durable(&ns).await;
    let _one = Worker::start(&url, &ns, "g", "one");
    let _two = Worker::start(&url, &ns, "g", "two");
    publish_n(&bus, &ns, 2000).await;
    assert_complete(&ns, 2000, 0, "two processes").await;
    let one: HashSet<u64> = recorded(&format!("{ns}:by:one"))
        .await
        .into_iter()
        .collect();
    let two: HashSet<u64> = recorded(&format!("{ns}:by:two"))
        .await
        .into_iter()
        .collect();
    eprintln!("two processes: shares {} + {}", one.len(), two.len());
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both members get a share"
    );
    assert!(one.is_disjoint(&two));
    bus.close().await.unwrap();
    remove_keys(&bus, &ns, &["one", "two"]).await;
}

/// SIGKILL of one of two members: the other takes its pending entries over after the
/// lease; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_takeover_by_another_member() {
    let ns = namespace();
    let url = redis_server::url().await;
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
    let mut victim = Worker::start(&url, &ns, "g", "victim");
    let _survivor = Worker::start(&url, &ns, "g", "survivor");
    assert!(
        wait_until_async(Duration::from_secs(20), || async {
            handled(&ns).await.len() >= 800
        })
        .await
    );
    victim.kill();
    assert_complete(&ns, 3000, IN_FLIGHT, "sigkill + takeover").await;
    bus.close().await.unwrap();
    remove_keys(&bus, &ns, &["victim", "survivor"]).await;
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
