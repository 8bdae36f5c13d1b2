//! Operations of the durable mode: the health report, and maintenance removing the own
//! groups of subscriptions whose bus died.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use integration_tests::{
    postgres_server,
    support::{DEADLINE, Recorder, namespace, wait_until, wait_until_async},
};
use multibus::{Event, EventBus, EventBusExt, PostgresConfig, PostgresEventBus, SubscribeOptions};
use tokio::sync::Semaphore;

use super::{config, connected, count_rows, drop_tables, event};

#[tokio::test]
async fn health_reports_dead_tuples_and_the_oldest_unacknowledged_delivery() {
    let ns = namespace();
    let bus = connected(config(&ns).await).await;
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let handler = {
        let (gate, calls) = (gate.clone(), calls.clone());
        move |_: Event| {
            let (gate, calls) = (gate.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                Ok::<(), std::io::Error>(())
            }
        }
    };
    bus.subscribe_with(
        &format!("{ns}:*"),
        SubscribeOptions::new().group("g"),
        handler,
    )
    .await
    .unwrap();
    let idle = bus.health().await;
    assert!(idle.is_healthy(), "{idle:?}");
    assert!(idle.figures.contains_key("durable_dead_tuples"), "{idle:?}");
    assert!(
        !idle.figures.contains_key("durable_oldest_unacked_ms"),
        "nothing is pending yet: {idle:?}"
    );
    bus.publish(event(&format!("{ns}:x"), 1)).await.unwrap();
    assert!(wait_until(DEADLINE, || calls.load(Ordering::SeqCst) == 1).await);
    // The event is claimed and its handler runs: it is unacknowledged.
    let busy = bus.health().await;
    assert!(busy.is_healthy(), "{busy:?}");
    let oldest = busy.figures.get("durable_oldest_unacked_ms").copied();
    assert!(
        oldest.is_some_and(|ms| ms < 600_000),
        "the pending delivery is reported: {busy:?}"
    );
    gate.add_permits(1);
    bus.flush().await.unwrap();
    assert!(
        wait_until_async(DEADLINE, || async {
            !bus.health()
                .await
                .figures
                .contains_key("durable_oldest_unacked_ms")
        })
        .await,
        "acknowledged: nothing pending"
    );
    // Figures that cannot be read are a warning, not a failure.
    postgres_server::client()
        .await
        .batch_execute(&format!("DROP TABLE \"{ns}_deliveries\""))
        .await
        .unwrap();
    let broken = bus.health().await;
    assert!(broken.is_healthy(), "{broken:?}");
    assert!(
        broken
            .warnings
            .iter()
            .any(|w| w.contains("durable mode's health")),
        "{broken:?}"
    );
    bus.close().await.unwrap();
    drop_tables(&ns).await;
    // The default mode has no durable figures.
    let plain = PostgresEventBus::new(
        PostgresConfig::new(postgres_server::url().await).with_channel_prefix(&ns),
    )
    .unwrap();
    plain.connect().await.unwrap();
    let health = plain.health().await;
    assert!(
        health.figures.is_empty() && health.warnings.is_empty(),
        "{health:?}"
    );
    plain.close().await.unwrap();
}

#[tokio::test]
async fn maintenance_removes_the_own_groups_of_dead_buses_only() {
    let ns = namespace();
    let mut c = config(&ns).await;
    c.durable.maintenance_interval_seconds = 0.2;
    let bus = connected(c).await;
    let r = Recorder::new();
    // A live subscription without a group (its own group) starts the maintenance.
    bus.subscribe(&format!("{ns}:*"), r.handler())
        .await
        .unwrap();
    // A crashed bus left its subscription's own group and that group's deliveries; a
    // named group nobody runs is kept however long it has been idle.
    let client = postgres_server::client().await;
    client
        .batch_execute(&format!(
            "INSERT INTO \"{ns}_groups\" (name, pattern, regex, max_attempts, seen_at) VALUES
               ('_sub_dead', 'x', '^x$', 3, now() - interval '1 hour'),
               ('idle_named', 'x', '^x$', 3, now() - interval '1 hour');
             INSERT INTO \"{ns}_deliveries\" (group_name, event_id, priority) VALUES
               ('_sub_dead', 1, 0), ('_sub_dead', 2, 0), ('idle_named', 1, 0);"
        ))
        .await
        .unwrap();
    let rows_of = |group: &'static str| {
        let (client, ns) = (&client, &ns);
        async move {
            client
                .query_one(
                    &format!("SELECT count(*) FROM \"{ns}_deliveries\" WHERE group_name = $1"),
                    &[&group],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let groups = || async {
        let rows = client
            .query(
                &format!("SELECT name FROM \"{ns}_groups\" ORDER BY name"),
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until_async(DEADLINE, || async {
            !groups().await.contains(&"_sub_dead".to_owned())
        })
        .await,
        "{:?}",
        groups().await
    );
    assert_eq!(rows_of("_sub_dead").await, 0, "its deliveries went with it");
    assert_eq!(
        rows_of("idle_named").await,
        1,
        "a named group keeps its rows"
    );
    let left = groups().await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&"idle_named".to_owned()), "{left:?}");
    assert!(
        left.iter().any(|g| g.starts_with("_sub_")),
        "the live subscription's own group stays: {left:?}"
    );
    // The live subscription still gets events.
    bus.publish(event(&format!("{ns}:after"), 7)).await.unwrap();
    r.wait_for(1, DEADLINE).await;
    assert_eq!(count_rows(&ns, "dead_letters").await, 0);
    bus.close().await.unwrap();
    drop_tables(&ns).await;
}
