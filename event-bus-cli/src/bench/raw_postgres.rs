//! The raw PostgreSQL transport: `pg_notify` of the wire envelope (encoded at send time,
//! as the bus does) on one connection per publisher, one `LISTEN` connection per
//! subscriber decoding every notification. Connections are made like the bus's, with
//! the same `sslmode` (TLS when the bus would use it), and the transport's name says
//! which: `(TLS)` or `(plain)`.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use multibus::envelope;
use serde_json::Value;
use tokio_postgres::{AsyncMessage, Client};

use super::{Collector, Source, Workload, finish, rounds::Path};
use crate::failure::{Failure, chain};

/// NOTIFY payloads must be shorter than this many bytes.
const NOTIFY_LIMIT: usize = 8000;

/// The raw NOTIFY/LISTEN path against the server of `config` (TLS as the bus), on a
/// channel of its own; `None` (skipped) when the payloads of `w` exceed NOTIFY's size
/// limit.
///
/// # Errors
/// A usage failure if the config has no server URL.
pub(crate) fn path(config: &Value, w: &Workload) -> Result<Option<Path>, Failure> {
    let conninfo = conninfo(config)?;
    if w.pad_len() + 400 >= NOTIFY_LIMIT {
        crate::output::notice(format!(
            "raw postgres skipped: payloads do not fit in one NOTIFY ({NOTIFY_LIMIT} bytes)"
        ));
        return Ok(None);
    }
    Ok(Some(Box::new(move |w, c| {
        Box::pin(run(conninfo.clone(), w, c))
    })))
}

/// The server URL of a postgres config.
///
/// # Errors
/// A usage failure if it is missing.
pub(crate) fn conninfo(config: &Value) -> Result<String, Failure> {
    ["url", "connection_string"]
        .into_iter()
        .find_map(|key| config.get(key).and_then(Value::as_str))
        .map(str::to_owned)
        .ok_or_else(|| Failure::usage("raw postgres: the server URL is missing"))
}

fn failed(what: &str) -> impl Fn(tokio_postgres::Error) -> Failure + '_ {
    move |e| Failure::runtime(format!("raw postgres: {what}: {}", chain(&e)))
}

/// Opens a connection whose notifications are decoded and recorded for subscriber `sub`
/// (`None`: a connection that only runs statements).
pub(super) async fn connect(
    conninfo: &str,
    sub: Option<(usize, Arc<Collector>)>,
) -> Result<(Client, tokio::task::JoinHandle<()>), Failure> {
    let (client, mut connection) = event_bus_postgres::connect_raw(conninfo)
        .await
        .map_err(|e| Failure::runtime(format!("raw postgres: {}", chain(&e))))?;
    let task = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let (AsyncMessage::Notification(n), Some((i, c))) = (message, &sub)
                && let Ok(event) = envelope::decode(n.payload().as_bytes(), usize::MAX)
            {
                c.record(*i, &event.payload);
            }
        }
    });
    Ok((client, task))
}

async fn run(
    conninfo: String,
    w: Workload,
    c: Arc<Collector>,
) -> Result<(Duration, String), Failure> {
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for i in 0..w.subscribers {
        let (client, task) = connect(&conninfo, Some((i, c.clone()))).await?;
        client
            .batch_execute(&format!("LISTEN \"{}\"", w.topic))
            .await
            .map_err(failed("LISTEN"))?;
        tasks.push(task);
        clients.push(client); // dropping it would close the listening connection
    }
    let mut publishers_clients = Vec::new();
    for _ in 0..w.publishers {
        let (client, task) = connect(&conninfo, None).await?;
        tasks.push(task);
        publishers_clients.push(client);
    }
    let start = tokio::time::Instant::now();
    let publishers = publishers_clients
        .into_iter()
        .enumerate()
        .map(|(p, client)| {
            let (c, channel, source) = (c.clone(), w.topic.clone(), w.source(p));
            tokio::spawn(async move { publish(&client, &channel, source, &c).await })
        })
        .collect();
    let elapsed = finish(&c, publishers, start, w.timeout).await;
    let tls = match clients.first() {
        Some(client) => encrypted(client).await?,
        None => false,
    };
    drop(clients);
    for task in tasks {
        task.abort();
    }
    let mode = if tls { "TLS" } else { "plain" };
    Ok((elapsed?, format!("postgres pg_notify/LISTEN ({mode})")))
}

/// Whether the session of `client` is encrypted, as the server reports it.
pub(super) async fn encrypted(client: &Client) -> Result<bool, Failure> {
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(failed("pg_stat_ssl"))?;
    Ok(row.get(0))
}

async fn publish(
    client: &Client,
    channel: &str,
    mut source: Source,
    c: &Collector,
) -> Result<(), String> {
    let one = client
        .prepare("SELECT pg_notify($1, $2)")
        .await
        .map_err(|e| chain(&e))?;
    let many = client
        .prepare(
            "SELECT pg_notify($1, m) FROM unnest($2::text[]) WITH ORDINALITY AS t(m, i) ORDER BY i",
        )
        .await
        .map_err(|e| chain(&e))?;
    while let Some((seqs, events)) = source.next().await {
        c.stamp(seqs);
        let texts = events
            .iter()
            .map(envelope::encode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| chain(&e))?;
        let result = match texts.as_slice() {
            [text] => client.execute(&one, &[&channel, text]).await,
            _ => client.execute(&many, &[&channel, &texts]).await,
        };
        result.map_err(|e| chain(&e))?;
    }
    Ok(())
}
