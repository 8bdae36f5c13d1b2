//! Killed sessions: `pg_terminate_backend` of the claim, publish and listening
//! connections while events flow. Nothing is lost; duplicates are counted.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use integration_tests::{
    postgres_server,
    support::{DEADLINE, namespace, wait_until, wait_until_async},
};
use multibus::{Event, EventBus, EventBusExt, SubscribeOptions};

use super::{config, connected, count_rows, drop_tables, event, number};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_claiming_and_listening_sessions_lose_nothing() {
    let ns = namespace();
    let mut c = config(&ns).await;
    c.durable.lease_seconds = 1.0;
    c.durable.claim_batch_size = 20;
    let consumer = connected(c).await;
    let seen: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let record = seen.clone();
    consumer
        .subscribe_with(
            &format!("{ns}:*"),
            SubscribeOptions::new().group("g"),
            move |e: Event| {
                let record = record.clone();
                async move {
                    *record.lock().unwrap().entry(number(&e)).or_default() += 1;
                    Ok::<(), std::io::Error>(())
                }
            },
        )
        .await
        .unwrap();
    // Published through a plain session (another application_name), so only the
    // consumer's sessions are terminated.
    let publisher = connected(config(&ns).await).await;
    let client = postgres_server::client().await;
    let n = 2000_u64;
    let killer = {
        let ns = ns.clone();
        tokio::spawn(async move {
            let admin = postgres_server::client().await;
            let mut killed = 0_u64;
            for round in 0..8 {
                tokio::time::sleep(Duration::from_millis(120)).await;
                let role = ["claim", "listen", "publish"][round % 3];
                let rows = admin
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                        &[&format!("eventbus-{role}-{ns}")],
                    )
                    .await
                    .unwrap();
                killed += rows.len() as u64;
            }
            killed
        })
    };
    for chunk in (0..n).collect::<Vec<_>>().chunks(20) {
        for &i in chunk {
            publisher
                .publish_in(&client, event(&format!("{ns}:k"), i))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = killer.await.unwrap();
    assert!(killed >= 4, "sessions were terminated: {killed}");
    let all = wait_until(DEADLINE * 3, || seen.lock().unwrap().len() == n as usize).await;
    let seen_now = seen.lock().unwrap().clone();
    let missing: Vec<u64> = (0..n)
        .filter(|i| !seen_now.contains_key(i))
        .take(10)
        .collect();
    assert!(all, "lost events, e.g. {missing:?}");
    assert!(
        wait_until_async(DEADLINE * 3, || async {
            count_rows(&ns, "deliveries").await == 0
        })
        .await,
        "every delivery acknowledged in the end"
    );
    let seen_now = seen.lock().unwrap().clone();
    let duplicates: u32 = seen_now.values().map(|c| c - 1).sum();
    let stats = consumer.durable_stats().await.unwrap();
    eprintln!(
        "terminated sessions: {killed}; events {n}; duplicates {duplicates}; reconnects {}; stats {stats:?}",
        consumer.metrics().reconnects
    );
    consumer.close().await.unwrap();
    publisher.close().await.unwrap();
    drop_tables(&ns).await;
}
