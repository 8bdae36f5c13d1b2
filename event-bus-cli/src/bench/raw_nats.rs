//! The raw NATS transport: `PUBLISH` of the wire envelope (encoded at send time, as the
//! bus does) on one client connection per publisher, one subscribing connection per
//! subscriber decoding every message.

use std::{sync::Arc, time::Duration};

use async_nats::{Client, ConnectOptions};
use futures_util::StreamExt;
use multibus::envelope;
use serde_json::Value;

use super::{Collector, Workload, finish, rounds::Path};
use crate::failure::{Failure, chain};

/// The raw core NATS publish/subscribe path against the server of `config`, on a
/// subject of its own.
pub(crate) fn path(config: &Value) -> Path {
    let config = Arc::new(config.clone());
    Box::new(move |w, c| {
        let config = config.clone();
        Box::pin(async move { run(&config, w, c).await })
    })
}

/// A client for a nats config: its `url` (credentials in it are used as given), `tls`,
/// `username`/`password` and `token`.
pub(crate) async fn connect(config: &Value) -> Result<Client, Failure> {
    let text = |key: &str| config.get(key).and_then(Value::as_str).map(str::to_owned);
    let url = text("url").unwrap_or_else(|| "nats://localhost:4222".to_owned());
    let mut options =
        ConnectOptions::new().require_tls(config.get("tls").and_then(Value::as_bool) == Some(true));
    if let (Some(user), Some(password)) = (text("username"), text("password")) {
        options = options.user_and_password(user, password);
    }
    if let Some(token) = text("token") {
        options = options.token(token);
    }
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| Failure::usage(format!("raw nats: not a usable url: {}", chain(&e))))?;
    options
        .connect(servers)
        .await
        .map_err(|e| Failure::runtime(format!("raw nats: connect: {}", chain(&e))))
}

async fn run(
    config: &Value,
    w: Workload,
    c: Arc<Collector>,
) -> Result<(Duration, String), Failure> {
    let mut receivers = Vec::new();
    for i in 0..w.subscribers {
        let client = connect(config).await?;
        let mut subscriber = client
            .subscribe(w.topic.clone())
            .await
            .map_err(|e| Failure::runtime(format!("raw nats: subscribe: {}", chain(&e))))?;
        client
            .flush()
            .await
            .map_err(|e| Failure::runtime(format!("raw nats: flush: {}", chain(&e))))?;
        let c = c.clone();
        receivers.push(tokio::spawn(async move {
            let _client = client;
            while let Some(message) = subscriber.next().await {
                if let Ok(event) = envelope::decode(&message.payload, usize::MAX) {
                    c.record(i, &event.payload);
                }
            }
        }));
    }
    let mut clients = Vec::new();
    for _ in 0..w.publishers {
        clients.push(connect(config).await?);
    }
    // A round trip on every subscriber connection's server makes the subscriptions live.
    for client in &clients {
        let _ = client.flush().await;
    }
    let start = tokio::time::Instant::now();
    let publishers = clients
        .into_iter()
        .enumerate()
        .map(|(p, client)| {
            let (c, subject, mut source) = (c.clone(), w.topic.clone(), w.source(p));
            tokio::spawn(async move {
                while let Some((seqs, events)) = source.next().await {
                    c.stamp(seqs);
                    for event in &events {
                        let text = envelope::encode(event).map_err(|e| e.to_string())?;
                        client
                            .publish(subject.clone(), text.into())
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                client.flush().await.map_err(|e| e.to_string())
            })
        })
        .collect();
    let elapsed = finish(&c, publishers, start, w.timeout).await;
    for receiver in receivers {
        receiver.abort();
    }
    Ok((elapsed?, "nats PUB/SUB (async-nats)".to_owned()))
}
