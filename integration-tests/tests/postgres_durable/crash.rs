//! SIGKILL of a consumer process mid-stream: a child process (this test binary, run
//! as the ignored `crash::child_consumer` test) handles events and appends each one's
//! number to a file; the test kills it, starts another, and checks the file: every
//! event handled, duplicates no more than one claim batch.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use integration_tests::support::{DEADLINE, namespace, wait_until_async};
use multibus::{Event, EventBus, EventBusExt, SubscribeOptions};

use super::{bus, config, connected, count_rows, drop_tables, event, number};

const NS_VAR: &str = "EVENT_BUS_DURABLE_CHILD_NS";
const OUT_VAR: &str = "EVENT_BUS_DURABLE_CHILD_OUT";
const BATCH: u32 = 25;

/// The child: consumes group `crash` until killed. Does nothing when run normally.
#[tokio::test]
#[ignore = "run by crash tests as a child process"]
async fn child_consumer() {
    let (Ok(ns), Ok(out)) = (std::env::var(NS_VAR), std::env::var(OUT_VAR)) else {
        return;
    };
    let mut c = config(&ns).await;
    c.durable.lease_seconds = 1.0;
    c.durable.claim_batch_size = BATCH;
    let bus = connected(c).await;
    let file = std::sync::Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .unwrap(),
    ));
    bus.subscribe_with(
        &format!("{ns}:*"),
        SubscribeOptions::new().group("crash"),
        move |e: Event| {
            let file = file.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                use std::io::Write;
                writeln!(file.lock().unwrap(), "{}", number(&e)).unwrap();
                Ok::<(), std::io::Error>(())
            }
        },
    )
    .await
    .unwrap();
    std::future::pending::<()>().await;
}

/// Starts the child consumer on the server this process uses (passed by URL, so that
/// under `EVENT_BUS_TEST_SERVERS=containers` it does not start a container of its own).
async fn spawn_child(ns: &str, out: &Path) -> Child {
    let url = integration_tests::postgres_server::url().await;
    Command::new(std::env::current_exe().unwrap())
        .env("EVENT_BUS_POSTGRES_URL", url)
        .env_remove("EVENT_BUS_TEST_SERVERS")
        .args([
            "--exact",
            "crash::child_consumer",
            "--ignored",
            "--nocapture",
        ])
        .env(NS_VAR, ns)
        .env(OUT_VAR, out)
        .spawn()
        .expect("start the child consumer")
}

fn handled(out: &Path) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(out).unwrap_or_default().lines() {
        if let Ok(n) = line.parse::<u64>() {
            *counts.entry(n).or_default() += 1;
        }
    }
    counts
}

async fn group_registered(ns: &str) -> bool {
    let client = integration_tests::postgres_server::client().await;
    client
        .query_one(
            &format!("SELECT count(*) FROM \"{ns}_groups\" WHERE name = 'crash'"),
            &[],
        )
        .await
        .map(|r| r.get::<_, i64>(0) == 1)
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_consumer_loses_nothing_and_a_restart_takes_over() {
    let ns = namespace();
    let out: PathBuf = std::env::temp_dir().join(format!("{ns}-handled.txt"));
    let mut first = spawn_child(&ns, &out).await;
    assert!(
        wait_until_async(DEADLINE * 3, || group_registered(&ns)).await,
        "child subscribed"
    );
    let publisher = bus(&ns).await;
    let n = 3000_u64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let events = chunk
            .iter()
            .map(|&i| event(&format!("{ns}:c"), i))
            .collect();
        publisher.publish_batch(events).await.unwrap();
    }
    assert!(
        wait_until_async(DEADLINE, || async { handled(&out).len() >= 500 }).await,
        "the child is handling events"
    );
    first.kill().expect("SIGKILL the child"); // std sends SIGKILL on Unix
    first.wait().unwrap();
    let at_kill = handled(&out).len();
    assert!(
        at_kill < n as usize,
        "killed mid-stream ({at_kill} handled)"
    );
    let mut second = spawn_child(&ns, &out).await;
    let done = wait_until_async(DEADLINE * 6, || async { handled(&out).len() == n as usize }).await;
    let counts = handled(&out);
    let drained = wait_until_async(DEADLINE, || async {
        count_rows(&ns, "deliveries").await == 0
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
    let _ = std::fs::remove_file(&out);
    let missing: Vec<u64> = (0..n)
        .filter(|i| !counts.contains_key(i))
        .take(10)
        .collect();
    assert!(done, "lost events, e.g. {missing:?}");
    assert!(drained, "every delivery acknowledged");
    let duplicates: u32 = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "killed after {at_kill} handled; {n} events; duplicates {duplicates} (bound {BATCH})"
    );
    assert!(
        duplicates <= BATCH,
        "duplicates {duplicates} exceed the claim batch {BATCH}"
    );
    publisher.close().await.unwrap();
    drop_tables(&ns).await;
}
