//! The raw JetStream transport, next to the bus's durable mode: JetStream publishes of
//! the wire envelope (each batch sent, then its acknowledgements awaited, as the bus's
//! `publish_batch` does), and per subscriber one durable pull consumer read with a
//! pull stream of 100-message batches (the bus's default `jetstream.batch_size`), each
//! message acknowledged with `+ACK`.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use multibus::envelope;
use serde_json::Value;

use super::{Collector, Workload, finish, raw_nats::connect, rounds::Path};
use crate::failure::{Failure, chain};

/// Messages per pull batch, as the bus's default `jetstream.batch_size`.
const BATCH: usize = 100;

/// The raw JetStream path against the server of `config`, on a stream of its own.
pub(crate) fn path(config: &Value) -> Path {
    let config = Arc::new(config.clone());
    Box::new(move |w, c| {
        let config = config.clone();
        Box::pin(async move { run(&config, w, c).await })
    })
}

/// Deletes the streams a durable run left: the bus's two and the raw one.
pub(crate) async fn cleanup(config: &Value, prefix: &str, raw: &Workload) -> Result<(), Failure> {
    let js = jetstream::new(connect(config).await?);
    for name in [
        format!("eventbus_{prefix}"),
        format!("eventbus_{prefix}-aux"),
        raw.topic.clone(),
    ] {
        let _ = js.delete_stream(&name).await;
    }
    Ok(())
}

fn failed(what: &str) -> impl Fn(String) -> Failure + '_ {
    move |e| Failure::runtime(format!("raw jetstream: {what}: {e}"))
}

async fn run(
    config: &Value,
    w: Workload,
    c: Arc<Collector>,
) -> Result<(Duration, String), Failure> {
    let js = jetstream::new(connect(config).await?);
    // The stream is named like its subject (a valid name: letters, digits and `_`).
    let stream = js
        .get_or_create_stream(stream::Config {
            name: w.topic.clone(),
            subjects: vec![w.topic.clone()],
            ..Default::default()
        })
        .await
        .map_err(|e| failed("create stream")(chain(&e)))?;
    let mut readers = Vec::new();
    for i in 0..w.subscribers {
        let consumer = stream
            .get_or_create_consumer(
                &format!("g{i}"),
                pull::Config {
                    durable_name: Some(format!("g{i}")),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    deliver_policy: jetstream::consumer::DeliverPolicy::New,
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| failed("create consumer")(chain(&e)))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await
            .map_err(|e| failed("pull")(chain(&e)))?;
        let c = c.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let Ok(event) = envelope::decode(&message.payload, usize::MAX) {
                    c.record(i, &event.payload);
                }
                if message.ack().await.is_err() {
                    return;
                }
            }
        }));
    }
    let mut contexts = Vec::new();
    for _ in 0..w.publishers {
        contexts.push(jetstream::new(connect(config).await?));
    }
    let start = tokio::time::Instant::now();
    let publishers = contexts
        .into_iter()
        .enumerate()
        .map(|(p, js)| {
            let (c, subject, mut source) = (c.clone(), w.topic.clone(), w.source(p));
            tokio::spawn(async move {
                while let Some((seqs, events)) = source.next().await {
                    c.stamp(seqs);
                    let mut acks = Vec::with_capacity(events.len());
                    for event in &events {
                        let text = envelope::encode(event).map_err(|e| e.to_string())?;
                        let ack = js
                            .publish(subject.clone(), text.into())
                            .await
                            .map_err(|e| e.to_string())?;
                        acks.push(ack);
                    }
                    for ack in acks {
                        ack.await.map_err(|e| e.to_string())?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    let elapsed = finish(&c, publishers, start, w.timeout).await;
    for reader in readers {
        reader.abort();
    }
    Ok((
        elapsed?,
        "nats JetStream publish/pull/ack (async-nats)".to_owned(),
    ))
}
