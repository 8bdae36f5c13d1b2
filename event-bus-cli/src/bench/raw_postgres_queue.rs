//! The raw PostgreSQL queue, next to the durable mode (`delivery = "table"`): a table
//! of (id, subscriber, envelope); publishers insert one row per subscriber per event
//! (one statement per batch); each subscriber loops on a transaction that claims up to
//! [`CLAIM`] of its rows with `FOR UPDATE SKIP LOCKED`, decodes them, and deletes them.

use std::{sync::Arc, time::Duration};

use event_bus::envelope;
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use super::{Collector, Workload, finish, rounds::Path};
use crate::failure::{Failure, chain};

/// Rows one claim takes (the durable mode's default claim batch is 100).
const CLAIM: i64 = 100;

/// The raw queue path against the server of `config` (without TLS), on a table of
/// its own (dropped at the end of each round).
///
/// # Errors
/// A usage failure if the config has no server URL.
pub(crate) fn path(config: &Value) -> Result<Path, Failure> {
    let conninfo = super::raw_postgres::conninfo(config)?;
    Ok(Box::new(move |w, c| Box::pin(run(conninfo.clone(), w, c))))
}

fn failed(what: &str) -> impl Fn(tokio_postgres::Error) -> Failure + '_ {
    move |e| Failure::runtime(format!("raw postgres queue: {what}: {}", chain(&e)))
}

async fn connect(conninfo: &str) -> Result<Client, Failure> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(failed("connect"))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn run(
    conninfo: String,
    w: Workload,
    c: Arc<Collector>,
) -> Result<(Duration, String), Failure> {
    let table = format!("\"{}\"", w.topic);
    let admin = connect(&conninfo).await?;
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigserial PRIMARY KEY, sub int NOT NULL, envelope text NOT NULL); CREATE INDEX ON {table} (sub, id)"
        ))
        .await
        .map_err(failed("create table"))?;
    let mut consumers = Vec::new();
    for i in 0..w.subscribers {
        let client = connect(&conninfo).await?;
        let (c, table) = (c.clone(), table.clone());
        consumers.push(tokio::spawn(
            async move { consume(client, &table, i, &c).await },
        ));
    }
    let mut publishers_clients = Vec::new();
    for _ in 0..w.publishers {
        publishers_clients.push(connect(&conninfo).await?);
    }
    let prepared: Vec<_> = (0..w.publishers).map(|p| w.prepare(p)).collect();
    let subs = i32::try_from(w.subscribers).unwrap_or(i32::MAX);
    let start = tokio::time::Instant::now();
    let publishers = prepared
        .into_iter()
        .zip(publishers_clients)
        .map(|(batches, client)| {
            let (c, table) = (c.clone(), table.clone());
            tokio::spawn(async move { publish(&client, &table, subs, batches, &c).await })
        })
        .collect();
    let elapsed = finish(&c, publishers, start, w.timeout).await;
    for task in consumers {
        task.abort();
    }
    admin
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .map_err(failed("drop table"))?;
    Ok((
        elapsed?,
        "postgres insert + SKIP LOCKED claim + delete".to_owned(),
    ))
}

async fn publish(
    client: &Client,
    table: &str,
    subs: i32,
    batches: Vec<(std::ops::Range<u64>, Vec<event_bus::Event>)>,
    c: &Collector,
) -> Result<(), String> {
    let insert = client
        .prepare(&format!(
            "INSERT INTO {table} (sub, envelope) SELECT s, e FROM unnest($1::text[]) AS t(e), generate_series(0, $2 - 1) AS s"
        ))
        .await
        .map_err(|e| chain(&e))?;
    for (seqs, events) in batches {
        c.stamp(seqs);
        let texts = events
            .iter()
            .map(envelope::encode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| chain(&e))?;
        client
            .execute(&insert, &[&texts, &subs])
            .await
            .map_err(|e| chain(&e))?;
    }
    Ok(())
}

async fn consume(mut client: Client, table: &str, sub: usize, c: &Collector) -> Result<(), String> {
    let sub_id = i32::try_from(sub).unwrap_or(i32::MAX);
    let claim = client
        .prepare(&format!(
            "SELECT id, envelope FROM {table} WHERE sub = $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
        ))
        .await
        .map_err(|e| chain(&e))?;
    let delete = client
        .prepare(&format!("DELETE FROM {table} WHERE id = ANY($1)"))
        .await
        .map_err(|e| chain(&e))?;
    loop {
        let tx = client.transaction().await.map_err(|e| chain(&e))?;
        let rows = tx
            .query(&claim, &[&sub_id, &CLAIM])
            .await
            .map_err(|e| chain(&e))?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push(row.get::<_, i64>(0));
            if let Ok(event) = envelope::decode(row.get::<_, &str>(1).as_bytes(), usize::MAX) {
                c.record(sub, &event.payload);
            }
        }
        tx.execute(&delete, &[&ids]).await.map_err(|e| chain(&e))?;
        tx.commit().await.map_err(|e| chain(&e))?;
        if rows.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Drops the durable-mode tables the bus path created under the run's prefix.
///
/// # Errors
/// A runtime failure if the server refuses.
pub(crate) async fn drop_durable_tables(config: &Value) -> Result<(), Failure> {
    let Some(prefix) = config.get("channel_prefix").and_then(Value::as_str) else {
        return Ok(());
    };
    let client = connect(&super::raw_postgres::conninfo(config)?).await?;
    let tables = ["schema", "events", "groups", "deliveries", "dead_letters"]
        .map(|t| format!("\"{prefix}_{t}\""))
        .join(", ");
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {tables}"))
        .await
        .map_err(failed("drop the durable tables"))
}
