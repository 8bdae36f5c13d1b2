//! The raw Redis Streams transport, next to the bus's durable mode: `XADD` of the wire
//! envelope (pipelined per batch), and per subscriber one consumer group read with
//! `XREADGROUP ... COUNT 100 BLOCK` (the bus's default `streams.read_count`) on its own
//! connection, each read acknowledged with one `XACK`.

use std::{sync::Arc, time::Duration};

use multibus::envelope;
use redis::{AsyncConnectionConfig, Value as RedisValue};
use serde_json::Value;

use super::{Collector, Workload, finish, raw_redis::server_url, rounds::Path};
use crate::failure::{Failure, chain};

/// Entries per read, as the bus's default `streams.read_count`.
const READ_COUNT: usize = 100;

/// The raw Streams path against the server of `config`, on a stream of its own.
///
/// # Errors
/// A usage failure if the server URL is unusable.
pub(crate) fn path(config: &Value) -> Result<Path, Failure> {
    let client = client(config)?;
    Ok(Box::new(move |w, c| Box::pin(run(client.clone(), w, c))))
}

fn client(config: &Value) -> Result<redis::Client, Failure> {
    redis::Client::open(server_url(config).as_str())
        .map_err(|e| Failure::usage(format!("raw redis: not a usable url ({:?})", e.kind())))
}

/// The stream key of the raw path of a workload.
fn key(w: &Workload) -> String {
    format!("{{{}}}:raw", w.topic)
}

/// Deletes the streams a durable run left: the bus's `{prefix}:stream` and the raw one.
pub(crate) async fn cleanup(config: &Value, prefix: &str, raw: &Workload) -> Result<(), Failure> {
    let mut conn = client(config)?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| Failure::runtime(format!("cleanup: {}", chain(&e))))?;
    redis::cmd("DEL")
        .arg(format!("{{{prefix}}}:stream"))
        .arg(key(raw))
        .exec_async(&mut conn)
        .await
        .map_err(|e| Failure::runtime(format!("cleanup: {}", chain(&e))))
}

fn failed(what: &str) -> impl Fn(redis::RedisError) -> Failure + '_ {
    move |e| Failure::runtime(format!("raw redis streams: {what}: {}", chain(&e)))
}

async fn run(
    client: redis::Client,
    w: Workload,
    c: Arc<Collector>,
) -> Result<(Duration, String), Failure> {
    let key = key(&w);
    let blocking = AsyncConnectionConfig::new().set_response_timeout(None);
    let mut readers = Vec::new();
    for i in 0..w.subscribers {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&blocking)
            .await
            .map_err(failed("connect"))?;
        let group = format!("g{i}");
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(&group)
            .arg("$")
            .arg("MKSTREAM")
            .exec_async(&mut conn)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(failed("XGROUP CREATE")(e));
        }
        let (c, key) = (c.clone(), key.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let reply: RedisValue = match redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&group)
                    .arg("c")
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut conn)
                    .await
                {
                    Ok(reply) => reply,
                    Err(_) => return,
                };
                let ids = record(&reply, i, &c);
                if !ids.is_empty() {
                    let mut ack = redis::cmd("XACK");
                    ack.arg(&key).arg(&group).arg(&ids);
                    if ack.exec_async(&mut conn).await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    let mut connections = Vec::new();
    for _ in 0..w.publishers {
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(failed("connect"))?;
        connections.push(connection);
    }
    let start = tokio::time::Instant::now();
    let publishers = connections
        .into_iter()
        .enumerate()
        .map(|(p, mut connection)| {
            let (c, key, topic, mut source) =
                (c.clone(), key.clone(), w.topic.clone(), w.source(p));
            tokio::spawn(async move {
                while let Some((seqs, events)) = source.next().await {
                    c.stamp(seqs);
                    let mut pipe = redis::pipe();
                    for event in &events {
                        let text = envelope::encode(event).map_err(|e| chain(&e))?;
                        pipe.cmd("XADD")
                            .arg(&key)
                            .arg("*")
                            .arg("topic")
                            .arg(&topic)
                            .arg("envelope")
                            .arg(text)
                            .ignore();
                    }
                    pipe.query_async::<()>(&mut connection)
                        .await
                        .map_err(|e| chain(&e))?;
                }
                Ok(())
            })
        })
        .collect();
    let elapsed = finish(&c, publishers, start, w.timeout).await;
    for reader in readers {
        reader.abort();
    }
    Ok((elapsed?, "redis XADD/XREADGROUP/XACK".to_owned()))
}

/// Records every entry of an `XREADGROUP` reply for subscriber `i`; returns their ids.
fn record(reply: &RedisValue, i: usize, c: &Collector) -> Vec<Vec<u8>> {
    let entries = match reply {
        RedisValue::Array(streams) => match streams.first() {
            Some(RedisValue::Array(stream)) => stream.get(1),
            _ => None,
        },
        RedisValue::Map(streams) => streams.first().map(|(_, entries)| entries),
        _ => None,
    };
    let Some(RedisValue::Array(entries)) = entries else {
        return Vec::new();
    };
    let mut ids = Vec::with_capacity(entries.len());
    for entry in entries {
        let RedisValue::Array(parts) = entry else {
            continue;
        };
        let (Some(RedisValue::BulkString(id)), Some(RedisValue::Array(fields))) =
            (parts.first(), parts.get(1))
        else {
            continue;
        };
        ids.push(id.clone());
        if let Some(RedisValue::BulkString(text)) = fields.get(3)
            && let Ok(event) = envelope::decode(text, usize::MAX)
        {
            c.record(i, &event.payload);
        }
    }
    ids
}
