//! The raw PostgreSQL queue, next to the durable mode (`delivery = "table"`): a table
//! of (id, subscriber, envelope); publishers insert one row per subscriber per event
//! (one statement per batch); each subscriber loops on a transaction that claims up to
//! the bus's `durable.claim_batch_size` (default [`CLAIM`]) of its rows with
//! `FOR UPDATE SKIP LOCKED`, decodes them, and deletes them.
//! Connections are made like the bus's (see [`raw_postgres`](super::raw_postgres)), and
//! the transport's name says whether they use TLS.

use std::{sync::Arc, time::Duration};

use multibus::envelope;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::{
    Collector, Source, Workload, finish,
    raw_postgres::{conninfo, encrypted},
    rounds::Path,
};
use crate::failure::{Failure, chain};

/// Rows one claim takes unless the config sets `durable.claim_batch_size` (the durable
/// mode's default).
const CLAIM: i64 = 100;

/// The raw queue path against the server of `config` (TLS as the bus), on a table of
/// its own (dropped at the end of each round), claiming as many rows at a time as the
/// bus does.
///
/// # Errors
/// A usage failure if the config has no server URL.
pub(crate) fn path(config: &Value) -> Result<Path, Failure> {
    let conninfo = conninfo(config)?;
    let claim = config
        .get("durable")
        .and_then(|d| d.get("claim_batch_size"))
        .and_then(Value::as_i64)
        .unwrap_or(CLAIM);
    Ok(Box::new(move |w, c| {
        Box::pin(run(conninfo.clone(), claim, w, c))
    }))
}

fn failed(what: &str) -> impl Fn(tokio_postgres::Error) -> Failure + '_ {
    move |e| Failure::runtime(format!("raw postgres queue: {what}: {}", chain(&e)))
}

async fn connect(conninfo: &str, tasks: &mut Vec<JoinHandle<()>>) -> Result<Client, Failure> {
    let (client, task) = super::raw_postgres::connect(conninfo, None).await?;
    tasks.push(task);
    Ok(client)
}

async fn run(
    conninfo: String,
    claim: i64,
    w: Workload,
    c: Arc<Collector>,
) -> Result<(Duration, String), Failure> {
    let table = format!("\"{}\"", w.topic);
    let mut tasks = Vec::new();
    let admin = connect(&conninfo, &mut tasks).await?;
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigserial PRIMARY KEY, sub int NOT NULL, envelope text NOT NULL); CREATE INDEX ON {table} (sub, id)"
        ))
        .await
        .map_err(failed("create table"))?;
    for i in 0..w.subscribers {
        let client = connect(&conninfo, &mut tasks).await?;
        let (c, table) = (c.clone(), table.clone());
        tasks.push(tokio::spawn(async move {
            // An error ends this consumer; what it did not receive is reported as lost.
            let _ = consume(client, &table, i, claim, &c).await;
        }));
    }
    let mut publishers_clients = Vec::new();
    for _ in 0..w.publishers {
        publishers_clients.push(connect(&conninfo, &mut tasks).await?);
    }
    let subs = i32::try_from(w.subscribers).unwrap_or(i32::MAX);
    let start = tokio::time::Instant::now();
    let publishers = publishers_clients
        .into_iter()
        .enumerate()
        .map(|(p, client)| {
            let (c, table, source) = (c.clone(), table.clone(), w.source(p));
            tokio::spawn(async move { publish(&client, &table, subs, source, &c).await })
        })
        .collect();
    let elapsed = finish(&c, publishers, start, w.timeout).await;
    let tls = encrypted(&admin).await?;
    admin
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .map_err(failed("drop table"))?;
    drop(admin);
    for task in tasks {
        task.abort();
    }
    let mode = if tls { "TLS" } else { "plain" };
    Ok((
        elapsed?,
        format!("postgres insert + SKIP LOCKED claim + delete ({mode})"),
    ))
}

async fn publish(
    client: &Client,
    table: &str,
    subs: i32,
    mut source: Source,
    c: &Collector,
) -> Result<(), String> {
    let insert = client
        .prepare(&format!(
            "INSERT INTO {table} (sub, envelope) SELECT s, e FROM unnest($1::text[]) AS t(e), generate_series(0, $2 - 1) AS s"
        ))
        .await
        .map_err(|e| chain(&e))?;
    while let Some((seqs, events)) = source.next().await {
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

async fn consume(
    mut client: Client,
    table: &str,
    sub: usize,
    claim_rows: i64,
    c: &Collector,
) -> Result<(), String> {
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
            .query(&claim, &[&sub_id, &claim_rows])
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
    let (client, task) = super::raw_postgres::connect(&conninfo(config)?, None).await?;
    let tables = ["schema", "events", "groups", "deliveries", "dead_letters"]
        .map(|t| format!("\"{prefix}_{t}\""))
        .join(", ");
    let dropped = client
        .batch_execute(&format!("DROP TABLE IF EXISTS {tables}"))
        .await
        .map_err(failed("drop the durable tables"));
    drop(client);
    task.abort();
    dropped
}
