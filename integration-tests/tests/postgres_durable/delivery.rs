//! Who gets what: groups, members, offline consumers, transactional and batch publish,
//! hostile input.

use std::collections::BTreeSet;

use event_bus_postgres::PostgresEventBus;
use integration_tests::{
    postgres_server,
    support::{DEADLINE, Recorder, namespace},
};
use multibus::{Error, EventBus, EventBusExt, SubscribeOptions};

use super::{bus, config, count_rows, drop_tables, event, number};

fn numbers(r: &Recorder) -> Vec<u64> {
    r.events().iter().map(number).collect()
}

#[tokio::test]
async fn two_groups_each_get_everything_and_members_share_disjointly() {
    let ns = namespace();
    let (a, b, publisher) = (bus(&ns).await, bus(&ns).await, bus(&ns).await);
    let (a1, b1, other) = (Recorder::new(), Recorder::new(), Recorder::new());
    let pattern = format!("{ns}:*");
    let group = |g: &str| SubscribeOptions::new().group(g);
    a.subscribe_with(&pattern, group("billing"), a1.handler())
        .await
        .unwrap();
    b.subscribe_with(&pattern, group("billing"), b1.handler())
        .await
        .unwrap();
    b.subscribe_with(&pattern, group("audit"), other.handler())
        .await
        .unwrap();
    let n = 400_u64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let events = chunk
            .iter()
            .map(|&i| event(&format!("{ns}:o"), i))
            .collect();
        publisher.publish_batch(events).await.unwrap();
    }
    // A non-matching topic reaches nobody.
    publisher.publish(event("elsewhere", 999)).await.unwrap();
    other.wait_for(n as usize, DEADLINE).await;
    wait_total(&[&a1, &b1], n as usize).await;
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    let (sa, sb) = (numbers(&a1), numbers(&b1));
    let (set_a, set_b): (BTreeSet<u64>, BTreeSet<u64>) =
        (sa.iter().copied().collect(), sb.iter().copied().collect());
    assert_eq!(
        sa.len() + sb.len(),
        n as usize,
        "no duplicates in the group"
    );
    assert!(set_a.is_disjoint(&set_b));
    assert_eq!(set_a.union(&set_b).count(), n as usize);
    let mut audit = numbers(&other);
    audit.sort_unstable();
    assert_eq!(
        audit,
        (0..n).collect::<Vec<_>>(),
        "the other group got everything once"
    );
    let stats = a.durable_stats().await.unwrap();
    assert!(stats.iter().all(|s| s.lag == 0), "{stats:?}");
    for bus in [a, b, publisher] {
        bus.close().await.unwrap();
    }
    drop_tables(&ns).await;
}

/// Waits until the recorders hold `n` events together.
pub(crate) async fn wait_total(recorders: &[&Recorder], n: usize) {
    let ok = integration_tests::support::wait_until(DEADLINE, || {
        recorders.iter().map(|r| r.len()).sum::<usize>() >= n
    })
    .await;
    let got: usize = recorders.iter().map(|r| r.len()).sum();
    assert!(ok, "waited for {n} events, got {got}");
}

#[tokio::test]
async fn offline_group_receives_what_was_published_while_away() {
    let ns = namespace();
    let opts = || SubscribeOptions::new().group("mailer");
    let consumer = bus(&ns).await;
    let r = Recorder::new();
    let sub = consumer
        .subscribe_with(&format!("{ns}:*"), opts(), r.handler())
        .await
        .unwrap();
    sub.cancel().await;
    consumer.close().await.unwrap();
    let publisher = bus(&ns).await;
    for chunk in (0..1000_u64).collect::<Vec<_>>().chunks(100) {
        let events = chunk
            .iter()
            .map(|&i| event(&format!("{ns}:m"), i))
            .collect();
        publisher.publish_batch(events).await.unwrap();
    }
    let health = publisher.durable_health().await.unwrap();
    assert!(health.oldest_unacked.is_some(), "{health:?}");
    let back = bus(&ns).await;
    let again = Recorder::new();
    back.subscribe_with(&format!("{ns}:*"), opts(), again.handler())
        .await
        .unwrap();
    again.wait_for(1000, DEADLINE).await;
    back.flush().await.unwrap();
    let mut got = numbers(&again);
    got.sort_unstable();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    assert!(r.is_empty());
    let health = back.durable_health().await.unwrap();
    assert_eq!(health.oldest_unacked, None, "{health:?}");
    back.close().await.unwrap();
    publisher.close().await.unwrap();
    drop_tables(&ns).await;
}

#[tokio::test]
async fn publish_in_commit_delivers_and_rollback_does_not() {
    let ns = namespace();
    let bus = bus(&ns).await;
    let r = Recorder::new();
    let opts = SubscribeOptions::new().group("tx");
    bus.subscribe_with(&format!("{ns}:*"), opts, r.handler())
        .await
        .unwrap();
    let mut client = postgres_server::client().await;
    let tx = client.transaction().await.unwrap();
    bus.publish_in(&tx, event(&format!("{ns}:rolled"), 1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let tx = client.transaction().await.unwrap();
    bus.publish_in(&tx, event(&format!("{ns}:committed"), 2))
        .await
        .unwrap();
    // Not visible before commit.
    bus.flush().await.unwrap();
    assert!(r.is_empty(), "{:?}", r.topics());
    tx.commit().await.unwrap();
    r.wait_for(1, DEADLINE).await;
    bus.flush().await.unwrap();
    assert_eq!(r.topics(), [format!("{ns}:committed")]);
    assert_eq!(
        count_rows(&ns, "events").await,
        1,
        "the rolled-back event was never stored"
    );
    bus.close().await.unwrap();
    drop_tables(&ns).await;
}

#[tokio::test]
async fn subscriptions_without_a_group_each_get_everything_and_leave_nothing() {
    let ns = namespace();
    let bus = bus(&ns).await;
    let (x, y) = (Recorder::new(), Recorder::new());
    let sx = bus
        .subscribe(&format!("{ns}:*"), x.handler())
        .await
        .unwrap();
    let sy = bus
        .subscribe(&format!("{ns}:a"), y.handler())
        .await
        .unwrap();
    bus.publish(event(&format!("{ns}:a"), 1)).await.unwrap();
    bus.publish(event(&format!("{ns}:b"), 2)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(numbers(&x), [1, 2]);
    assert_eq!(numbers(&y), [1]);
    sx.cancel().await;
    sy.cancel().await;
    assert_eq!(
        count_rows(&ns, "groups").await,
        0,
        "own groups go with their subscription"
    );
    bus.close().await.unwrap();
    drop_tables(&ns).await;
}

#[tokio::test]
async fn hostile_topics_and_prefixes_never_reach_sql_as_text() {
    let ns = namespace();
    for prefix in ["a\"; DROP TABLE x; --", "a'b", "ev ents", ""] {
        let mut c = config(&ns).await;
        c.channel_prefix = prefix.to_owned();
        let err = PostgresEventBus::new(c).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
    }
    let bus = bus(&ns).await;
    let r = Recorder::new();
    let topics = [
        format!("{ns}:a');DROP_TABLE_x;--"),
        format!("{ns}:\"quoted\""),
        format!("{ns}:$1;text"),
        format!("{ns}:.*[(\\"),
        format!("{ns}:ä€😀"),
    ];
    // The pattern carries regex metacharacters as literals.
    let pattern = format!("{ns}:*");
    bus.subscribe_with(
        &pattern,
        SubscribeOptions::new().group("g'x\"y"),
        r.handler(),
    )
    .await
    .unwrap_err();
    bus.subscribe_with(
        &pattern,
        SubscribeOptions::new().group("g.x-y"),
        r.handler(),
    )
    .await
    .unwrap();
    let literal = Recorder::new();
    bus.subscribe(&format!("{ns}:.\\*\\[(\\\\"), literal.handler())
        .await
        .unwrap();
    for (i, t) in topics.iter().enumerate() {
        bus.publish(event(t, i as u64)).await.unwrap();
    }
    r.wait_for(topics.len(), DEADLINE).await;
    bus.flush().await.unwrap();
    assert_eq!(r.topics(), topics);
    assert_eq!(literal.topics(), [topics[3].clone()]);
    // The tables are all still there.
    assert_eq!(count_rows(&ns, "groups").await, 2);
    bus.close().await.unwrap();
    drop_tables(&ns).await;
}

#[tokio::test]
async fn default_mode_is_untouched_and_durable_api_says_so() {
    let ns = namespace();
    let mut c = config(&ns).await;
    c.delivery = event_bus_postgres::DeliveryMode::Notify;
    let bus = super::connected(c).await;
    let err = bus.dead_letters("g", 10).await.unwrap_err();
    assert!(err.to_string().contains("delivery"), "{err}");
    let client = postgres_server::client().await;
    let exists: Option<String> = client
        .query_one(
            "SELECT to_regclass($1)::text",
            &[&format!("\"{ns}_deliveries\"")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(exists, None, "the default mode creates no tables");
    bus.close().await.unwrap();
}

/// Tables of schema version 1 (primary key `(group_name, event_id)`, a separate claim
/// index, the event index on `event_id` alone) holding a pending delivery are migrated
/// by the first bus that starts: the delivery survives and is received.
#[tokio::test]
async fn tables_of_schema_version_1_are_migrated_with_their_deliveries() {
    let ns = namespace();
    let pattern = format!("{ns}:*");
    let first = bus(&ns).await;
    let sub = first
        .subscribe_with(&pattern, SubscribeOptions::new().group("g"), |_| async {
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap();
    sub.cancel().await;
    first.publish(event(&format!("{ns}:a"), 1)).await.unwrap();
    first.close().await.unwrap();
    // Back to the shape of version 1.
    let client = postgres_server::client().await;
    let d = format!("\"{ns}_deliveries\"");
    client
        .batch_execute(&format!(
            "ALTER TABLE {d} DROP CONSTRAINT \"{ns}_deliveries_pkey\";
             ALTER TABLE {d} ADD PRIMARY KEY (group_name, event_id), RESET (fillfactor);
             CREATE INDEX \"{ns}_deliveries_claim\" ON {d} (group_name, priority, event_id);
             DROP INDEX \"{ns}_deliveries_event\";
             CREATE INDEX \"{ns}_deliveries_event\" ON {d} (event_id);
             UPDATE \"{ns}_schema\" SET version = 1;"
        ))
        .await
        .unwrap();

    let later = bus(&ns).await;
    let got = Recorder::new();
    later
        .subscribe_with(&pattern, SubscribeOptions::new().group("g"), got.handler())
        .await
        .unwrap();
    later.publish(event(&format!("{ns}:a"), 2)).await.unwrap();
    got.wait_for(2, DEADLINE).await;
    let mut received = numbers(&got);
    received.sort_unstable();
    assert_eq!(received, [1, 2]);
    let version: i32 = client
        .query_one(&format!("SELECT max(version) FROM \"{ns}_schema\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
    let indexes: Vec<String> = client
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1 ORDER BY indexname",
            &[&format!("{ns}_deliveries")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0).replace(&ns, "P"))
        .collect();
    assert_eq!(
        indexes,
        [
            "CREATE INDEX P_deliveries_event ON public.P_deliveries USING btree (event_id, group_name)",
            "CREATE UNIQUE INDEX P_deliveries_pkey ON public.P_deliveries USING btree (group_name, priority, event_id)",
        ]
    );
    let options: Option<Vec<String>> = client
        .query_one(
            "SELECT reloptions FROM pg_class WHERE oid = to_regclass($1)",
            &[&d],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(options, Some(vec!["fillfactor=50".to_owned()]));
    later.close().await.unwrap();
    drop_tables(&ns).await;
}

#[tokio::test]
async fn tables_of_a_newer_schema_version_are_refused() {
    let ns = namespace();
    let first = bus(&ns).await;
    first.publish(event(&format!("{ns}:a"), 1)).await.unwrap();
    first.close().await.unwrap();
    let client = postgres_server::client().await;
    client
        .execute(&format!("UPDATE \"{ns}_schema\" SET version = 99"), &[])
        .await
        .unwrap();
    let later = bus(&ns).await;
    let err = later
        .publish(event(&format!("{ns}:a"), 2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("schema version 99"), "{err}");
    later.close().await.unwrap();
    drop_tables(&ns).await;
}
