//! Crashes in the durable mode: consumer processes killed with SIGKILL mid-stream.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use integration_tests::{
    conformance::event,
    nats_server,
    support::{namespace, wait_until},
};
use multibus::{Event, EventBus, EventBusExt, NatsEventBus, SubscribeOptions};

use super::durable::{cleanup, durable};

/// A `nats_durable_worker` child process; killed (SIGKILL) and reaped on drop.
struct Worker(Child);

impl Worker {
    fn start(url: &str, ns: &str, group: &str, file: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nats_durable_worker"))
            .args([url, ns, group, &file.display().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats_durable_worker");
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

/// Record files of one test, removed on drop.
struct Records(PathBuf);

impl Records {
    fn new(ns: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("eventbus-crash-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, worker: &str) -> PathBuf {
        self.0.join(worker)
    }

    /// The payloads recorded by `workers` (one per handled delivery).
    fn handled(&self, workers: &[&str]) -> Vec<u64> {
        workers
            .iter()
            .flat_map(|w| {
                std::fs::read_to_string(self.file(w))
                    .unwrap_or_default()
                    .lines()
                    .map(|l| l.parse::<u64>().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn publish_n(bus: &NatsEventBus, ns: &str, n: u64) {
    let events: Vec<Event> = (0..n).map(|i| event(format!("{ns}:work"), i)).collect();
    for chunk in events.chunks(500) {
        bus.publish_batch(chunk.to_vec()).await.unwrap();
    }
}

/// Checks that every event was handled, and that duplicates stay within `bound`.
async fn assert_complete(records: &Records, workers: &[&str], n: u64, bound: usize, what: &str) {
    let complete = wait_until(Duration::from_secs(30), || {
        records
            .handled(workers)
            .into_iter()
            .collect::<HashSet<_>>()
            .len() as u64
            >= n
    })
    .await;
    let all = records.handled(workers);
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

/// In flight with a worker: its queue (10) + one pull batch (10) + acknowledgements
/// still in the client's buffer when it died (bounded by the same).
const IN_FLIGHT: usize = 40;

/// Creates the group before the events exist (it starts at `latest`).
async fn create_group(bus: &NatsEventBus, ns: &str) {
    bus.subscribe_with(
        &format!("{ns}:*"),
        SubscribeOptions::new().group("g"),
        |_e: Event| async { Ok::<(), std::io::Error>(()) },
    )
    .await
    .unwrap()
    .cancel()
    .await;
}

/// SIGKILL of a consumer mid-stream, then a restart: what it held comes back after the
/// lease; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_loses_nothing() {
    let ns = namespace();
    let url = nats_server::url().await;
    let records = Records::new(&ns);
    let bus = durable(&ns).await;
    create_group(&bus, &ns).await;
    publish_n(&bus, &ns, 3000).await;
    let mut worker = Worker::start(&url, &ns, "g", &records.file("w1"));
    assert!(
        wait_until(Duration::from_secs(20), || records.handled(&["w1"]).len()
            >= 800)
        .await
    );
    worker.kill();
    let before = records.handled(&["w1"]).len();
    assert!(before < 3000, "killed too late to be mid-stream");
    let _worker = Worker::start(&url, &ns, "g", &records.file("w1"));
    assert_complete(&records, &["w1"], 3000, IN_FLIGHT, "sigkill + restart").await;
    let settled = wait_until_groups_settled(&bus).await;
    assert!(settled, "{:?}", bus.groups().await);
    bus.close().await.unwrap();
    cleanup(&ns).await;
}

/// Whether the group's consumer has nothing left to deliver or acknowledge.
async fn wait_until_groups_settled(bus: &NatsEventBus) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let groups = bus.groups().await.unwrap();
        if groups.iter().all(|g| g.pending == 0 && g.ack_pending == 0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Two processes in one group share the events: disjoint shares, every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_group() {
    let ns = namespace();
    let url = nats_server::url().await;
    let records = Records::new(&ns);
    let bus = durable(&ns).await;
    let _one = Worker::start(&url, &ns, "g", &records.file("one"));
    let _two = Worker::start(&url, &ns, "g", &records.file("two"));
    publish_n(&bus, &ns, 2000).await;
    assert_complete(&records, &["one", "two"], 2000, 0, "two processes").await;
    let one: HashSet<u64> = records.handled(&["one"]).into_iter().collect();
    let two: HashSet<u64> = records.handled(&["two"]).into_iter().collect();
    eprintln!("two processes: shares {} + {}", one.len(), two.len());
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both members get a share"
    );
    assert!(one.is_disjoint(&two));
    bus.close().await.unwrap();
    cleanup(&ns).await;
}

/// SIGKILL of one of two members: the other gets what it held after the lease;
/// nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_takeover_by_another_member() {
    let ns = namespace();
    let url = nats_server::url().await;
    let records = Records::new(&ns);
    let bus = durable(&ns).await;
    create_group(&bus, &ns).await;
    publish_n(&bus, &ns, 3000).await;
    let mut one = Worker::start(&url, &ns, "g", &records.file("one"));
    let _two = Worker::start(&url, &ns, "g", &records.file("two"));
    assert!(
        wait_until(Duration::from_secs(20), || records
            .handled(&["one", "two"])
            .len()
            >= 800)
        .await
    );
    one.kill();
    assert_complete(
        &records,
        &["one", "two"],
        3000,
        IN_FLIGHT,
        "sigkill + takeover",
    )
    .await;
    bus.close().await.unwrap();
    cleanup(&ns).await;
}
