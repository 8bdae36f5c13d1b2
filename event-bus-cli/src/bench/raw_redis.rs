//! The raw Redis transport: `PUBLISH` of the wire envelope (encoded at send time, as the
//! bus does) on multiplexed connections, one `SUBSCRIBE` connection per subscriber
//! decoding every message. The URL is the bus's, so TLS (`rediss://`) is used on both
//! sides or neither; the transport's name says which.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use multibus::envelope;
use serde_json::Value;

use super::{Collector, Workload, finish, rounds::Path};
use crate::failure::{Failure, chain};

/// The raw Redis pub/sub path against the server of `config`, on a channel of its own.
///
/// # Errors
/// A usage failure if the server URL is unusable.
pub(crate) fn path(config: &Value) -> Result<Path, Failure> {
    let url = server_url(config);
    let client = redis::Client::open(url.as_str())
        .map_err(|e| Failure::usage(format!("raw redis: not a usable url ({:?})", e.kind())))?;
    let mode = if url.starts_with("rediss://") {
        "TLS"
    } else {
        "plain"
    };
    let name = format!("redis PUBLISH/SUBSCRIBE ({mode})");
    Ok(Box::new(move |w, c| {
        Box::pin(run(client.clone(), name.clone(), w, c))
    }))
}

/// The server URL of a redis config: its `url`, or one built from `host`, `port`,
/// `ssl`, `username`, `password` and `db` (the same defaults as the backend).
pub(super) fn server_url(config: &Value) -> String {
    if let Some(url) = config.get("url").and_then(Value::as_str) {
        return url.to_owned();
    }
    let text = |key: &str| config.get(key).and_then(Value::as_str);
    let scheme = if config.get("ssl").and_then(Value::as_bool) == Some(true) {
        "rediss"
    } else {
        "redis"
    };
    let auth = match (text("username"), text("password")) {
        (Some(user), Some(pass)) => format!("{user}:{pass}@"),
        (None, Some(pass)) => format!(":{pass}@"),
        (Some(user), None) => format!("{user}@"),
        (None, None) => String::new(),
    };
    let host = text("host").unwrap_or("localhost");
    let port = config.get("port").and_then(Value::as_u64).unwrap_or(6379);
    let db = config.get("db").and_then(Value::as_u64).unwrap_or(0);
    format!("{scheme}://{auth}{host}:{port}/{db}")
}

fn failed(what: &str) -> impl Fn(redis::RedisError) -> Failure + '_ {
    move |e| Failure::runtime(format!("raw redis: {what}: {}", chain(&e)))
}

async fn run(
    client: redis::Client,
    name: String,
    w: Workload,
    c: Arc<Collector>,
) -> Result<(Duration, String), Failure> {
    let mut receivers = Vec::new();
    for i in 0..w.subscribers {
        let mut pubsub = client.get_async_pubsub().await.map_err(failed("connect"))?;
        pubsub
            .subscribe(&w.topic)
            .await
            .map_err(failed("SUBSCRIBE"))?;
        let c = c.clone();
        receivers.push(tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                if let Ok(event) = envelope::decode(message.get_payload_bytes(), usize::MAX) {
                    c.record(i, &event.payload);
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
            let (c, channel, mut source) = (c.clone(), w.topic.clone(), w.source(p));
            tokio::spawn(async move {
                while let Some((seqs, events)) = source.next().await {
                    c.stamp(seqs);
                    let mut pipe = redis::pipe();
                    for event in &events {
                        let text = envelope::encode(event).map_err(|e| chain(&e))?;
                        pipe.cmd("PUBLISH").arg(&channel).arg(text).ignore();
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
    for receiver in receivers {
        receiver.abort();
    }
    Ok((elapsed?, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_url_from_config_keys() {
        let v = serde_json::json!({"backend": "redis", "host": "h", "password": "p", "db": 2});
        assert_eq!(server_url(&v), "redis://:p@h:6379/2");
        let v = serde_json::json!({"backend": "redis", "url": "redis://x"});
        assert_eq!(server_url(&v), "redis://x");
    }
}
