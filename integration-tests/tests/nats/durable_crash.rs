//! Crashes in the durable mode: consumer processes killed with SIGKILL mid-stream.

use std::{collections::HashSet, time::Duration};

use integration_tests::{
    conformance::event,
    crash_worker::{Records, Worker},
    nats_server,
    support::{namespace, wait_until},
};
use multibus::{Event, EventBus, EventBusExt, NatsEventBus, SubscribeOptions};

use super::durable::{cleanup, durable};

const WORKER: &str = env!("CARGO_BIN_EXE_durable_worker");

async fn publish_n(bus: &NatsEventBus, ns: &str, n: u64) {
    let events: Vec<Event> = (0..n).map(|i| event(format!("{ns}:work"), i)).collect();
    for chunk in events.chunks(500) {
        bus.publish_batch(chunk.to_vec()).await.unwrap();
    }
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
    let mut one = Worker::start(WORKER, &url, &ns, "g", &records.file("one"));
    let _two = Worker::start(WORKER, &url, &ns, "g", &records.file("two"));
    assert!(
        wait_until(Duration::from_secs(20), || records
            .handled(&["one", "two"])
            .len()
            >= 800)
        .await
    );
    one.kill();
    records
        .assert_complete(&["one", "two"], 3000, IN_FLIGHT, "sigkill + takeover")
        .await;
    bus.close().await.unwrap();
    cleanup(&ns).await;
}
