//! `eventbus sub`: subscribe to patterns and print each event as one line.

use std::{
    collections::{HashSet, VecDeque},
    io::Write,
};

use multibus::{Event, EventBusExt, SubscribeOptions, envelope};
use tokio::sync::{mpsc, oneshot};

use crate::{backend::BackendArgs, failure::Failure, output::notice, signal::StopSignals};

/// Arguments of `eventbus sub`.
#[derive(clap::Args, Debug)]
pub(crate) struct SubArgs {
    /// Topic patterns: `*` and `?` wildcards, `[abc]`/`[!abc]` sets, `\` escapes.
    #[arg(required = true, value_name = "PATTERN")]
    patterns: Vec<String>,
    /// Print each event as its wire envelope, one JSON object per line (for `jq`).
    #[arg(long)]
    json: bool,
    /// Consume as a member of this consumer group. On Redis, PostgreSQL and NATS this is
    /// a durable tail (their durable mode, `delivery = "streams"`, `"table"` or
    /// `"jetstream"`): the group
    /// receives every matching event, shared among its members, keeps what is published
    /// while none runs, and each event is acknowledged once printed, so what was not
    /// printed is delivered again.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Exit after printing this many events (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

/// A received event, and for a durable tail the acknowledgement to give once printed.
type Received = (Event, Option<oneshot::Sender<()>>);

/// How many recent event ids are remembered so that an event matching several of the
/// patterns is printed once.
const SEEN_WINDOW: usize = 4096;

/// Runs `eventbus sub`.
pub(crate) async fn run(args: SubArgs, backend: &BackendArgs) -> Result<(), Failure> {
    let mut selection = backend.select()?;
    let durable = args.group.is_some() && crate::dlq::durable(&mut selection, "--group", false)?;
    let mut stop = StopSignals::listen()?;
    let Ok(bus) = stop.or_stop(selection.connect()).await else {
        return Ok(()); // stopped while connecting: nothing to undo
    };
    let bus = bus?;
    selection.notice_if_memory("nothing published elsewhere arrives here");
    let (tx, mut rx) = mpsc::channel::<Received>(1024);
    let mut subscriptions = Vec::new();
    let options = match &args.group {
        Some(group) => SubscribeOptions::new().group(group.clone()),
        None => SubscribeOptions::new(),
    };
    for pattern in &args.patterns {
        let tx = tx.clone();
        let handler = move |event: Event| {
            let tx = tx.clone();
            async move {
                let (printed, acked) = if durable {
                    let (printed, acked) = oneshot::channel();
                    (Some(printed), Some(acked))
                } else {
                    (None, None)
                };
                // The receiver only goes away while we are unsubscribing.
                let _ = tx.send((event, printed)).await;
                match acked {
                    // Not printed: fail the attempt, so the server delivers it again.
                    Some(acked) => acked.await.map_err(|_| NotPrinted),
                    None => Ok(()),
                }
            }
        };
        match bus.subscribe_with(pattern, options.clone(), handler).await {
            Ok(sub) => subscriptions.push(sub),
            Err(e) => {
                let _ = bus.close().await;
                return Err(e.into());
            }
        }
    }
    drop(tx);
    notice(format!(
        "subscribed to {} on {}; Ctrl-C to stop",
        args.patterns.join(" "),
        selection.backend()
    ));
    let result = stop
        .or_stop(print_events(&mut rx, &args))
        .await
        .unwrap_or_else(|signal| {
            notice(format!("{}: unsubscribing", signal.name()));
            Ok(())
        });
    for sub in subscriptions {
        sub.cancel().await;
    }
    bus.close().await?;
    notice(format!("unsubscribed from {}", args.patterns.join(" ")));
    result
}

/// A durable tail stopped before printing an event.
#[derive(Debug)]
struct NotPrinted;

impl std::fmt::Display for NotPrinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the tail stopped before printing the event")
    }
}

impl std::error::Error for NotPrinted {}

async fn print_events(rx: &mut mpsc::Receiver<Received>, args: &SubArgs) -> Result<(), Failure> {
    let mut seen = HashSet::new();
    let mut order = VecDeque::new();
    let mut printed = 0u64;
    while let Some((event, ack)) = rx.recv().await {
        if !seen.insert(event.id) {
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
            continue;
        }
        order.push_back(event.id);
        if order.len() > SEEN_WINDOW
            && let Some(old) = order.pop_front()
        {
            seen.remove(&old);
        }
        let line = if args.json {
            envelope::encode(&event)?
        } else {
            human_line(&event)
        };
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(()); // stdout closed (e.g. piped into `head`)
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
        printed += 1;
        if args.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
    }
    Ok(())
}

/// `2026-01-02T10:00:00.123Z orders:eu created normal {"id":42} source=checkout tenant=acme`.
pub(crate) fn human_line(event: &Event) -> String {
    let mut line = format!(
        "{} {} {} {} {}",
        event.timestamp.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        event.topic,
        event.event_type,
        event.priority,
        event.payload
    );
    if let Some(source) = &event.source {
        line.push_str(&format!(" source={source}"));
    }
    if let Some(id) = &event.correlation_id {
        line.push_str(&format!(" correlation_id={id}"));
    }
    for (key, value) in &event.metadata {
        line.push_str(&format!(" {key}={value}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use multibus::{EventType, Priority};

    #[test]
    fn human_line_shows_every_field_that_is_set() {
        let event = Event::new(
            EventType::Updated,
            "orders:eu",
            serde_json::json!({"id": 1}),
        )
        .with_priority(Priority::HIGH)
        .with_source("checkout")
        .with_metadata("tenant", "acme");
        let line = human_line(&event);
        assert!(
            line.ends_with(r#"orders:eu updated high {"id":1} source=checkout tenant=acme"#),
            "{line}"
        );
    }
}
