//! `eventbus pub`: publish one event, the same event several times, or JSON lines from
//! standard input.

use std::io::{IsTerminal, Read};

use multibus::{Event, EventBus, EventType, Priority, envelope};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    backend::BackendArgs,
    failure::Failure,
    output::notice,
    signal::{Stop, StopSignals},
    usage,
};

/// Arguments of `eventbus pub`.
#[derive(clap::Args, Debug)]
pub(crate) struct PubArgs {
    /// Topic to publish on, e.g. `orders:eu`. Optional with `--lines` when every line is
    /// a full envelope.
    #[arg(required_unless_present = "lines", value_name = "TOPIC")]
    topic: Option<String>,
    /// Payload as JSON (`'{"id": 42}'`, `'"text"'`, `7`). Read from standard input when
    /// omitted or `-`; `null` when omitted and standard input is a terminal.
    #[arg(value_name = "PAYLOAD")]
    payload: Option<String>,
    /// Event type: created, updated, deleted, activated, deactivated, error, or any
    /// other name for a custom type.
    #[arg(long = "type", value_name = "TYPE", default_value = "created")]
    event_type: String,
    /// Priority: critical, high, normal, low or a number 0-255 (lower is more urgent).
    #[arg(long, value_name = "PRIORITY", default_value = "normal")]
    priority: String,
    /// Source of the event (who produced it).
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Correlation id tying related events together.
    #[arg(long, value_name = "ID")]
    correlation_id: Option<String>,
    /// Metadata entry; repeat for several.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Publish the event this many times (each copy gets its own id).
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "lines",
          value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// Read JSON lines from standard input. A line that is an object with a `"v"` key is
    /// a full wire envelope, published as is (its own topic, type, priority, ...); any
    /// other line is a payload, published on TOPIC with the flags above.
    #[arg(long, conflicts_with = "payload")]
    lines: bool,
    /// Publish in the backend's durable mode, which `sub --group` reads: Redis
    /// `delivery = "streams"` (instead of pub/sub), PostgreSQL `delivery = "table"`,
    /// NATS `delivery = "jetstream"` (also chosen by a config file that sets it).
    #[arg(long)]
    durable: bool,
}

/// The flags shared by every event this invocation publishes.
struct Template {
    topic: Option<String>,
    event_type: EventType,
    priority: Priority,
    source: Option<String>,
    correlation_id: Option<String>,
    meta: Vec<(String, String)>,
}

impl Template {
    fn from_args(args: &PubArgs) -> Result<Self, Failure> {
        let meta = args
            .meta
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => Err(Failure::usage(format!("--meta {kv:?}: expected KEY=VALUE"))),
            })
            .collect::<Result<_, _>>()?;
        if let Some(topic) = &args.topic {
            multibus::topic::validate_topic(topic)?;
        }
        let Ok(event_type) = args.event_type.parse();
        Ok(Self {
            topic: args.topic.clone(),
            event_type,
            priority: args.priority.parse()?,
            source: args.source.clone(),
            correlation_id: args.correlation_id.clone(),
            meta,
        })
    }

    fn event(&self, payload: Value) -> Result<Event, Failure> {
        let topic = self.topic.as_deref().ok_or_else(|| {
            Failure::usage("a payload line needs the TOPIC argument (or send full envelopes)")
        })?;
        let mut event =
            Event::new(self.event_type.clone(), topic, payload).with_priority(self.priority);
        if let Some(source) = &self.source {
            event = event.with_source(source.as_str());
        }
        if let Some(id) = &self.correlation_id {
            event = event.with_correlation_id(id.as_str());
        }
        for (k, v) in &self.meta {
            event = event.with_metadata(k.as_str(), v.as_str());
        }
        Ok(event)
    }
}

/// Runs `eventbus pub`.
pub(crate) async fn run(args: PubArgs, backend: &BackendArgs) -> Result<(), Failure> {
    let template = Template::from_args(&args)?;
    let payload = if args.lines {
        None
    } else {
        Some(read_payload(args.payload.as_deref())?)
    };
    let mut selection = backend.select()?;
    if args.durable {
        crate::dlq::durable(&mut selection, "--durable", true)?;
    }
    let total = (!args.lines).then_some(args.repeat);
    let mut stop = StopSignals::listen()?;
    let bus = match stop.or_stop(selection.connect()).await {
        Ok(bus) => bus?,
        Err(signal) => return Err(interrupted(signal, 0, total)),
    };
    selection.notice_if_memory("nothing else receives these events");
    let mut sent = 0;
    let outcome = stop
        .or_stop(async {
            match payload {
                Some(payload) => {
                    publish_repeated(bus.as_ref(), &template, payload, args.repeat, &mut sent).await
                }
                None => publish_lines(bus.as_ref(), &template, &mut sent).await,
            }
        })
        .await;
    let closed = bus.close().await;
    match outcome {
        Ok(result) => {
            result?;
            closed?;
            notice(format!("published {sent} event(s)"));
            Ok(())
        }
        Err(signal) => {
            closed?;
            Err(interrupted(signal, sent, total))
        }
    }
}

/// The failure of a `pub` stopped by a signal, saying how far it got.
fn interrupted(stop: Stop, sent: u64, of: Option<u64>) -> Failure {
    let of = of.map_or(String::new(), |total| format!(" of {total}"));
    Failure::with_code(
        stop.exit_code(),
        format!(
            "interrupted by {} after publishing {sent}{of} event(s)",
            stop.name()
        ),
    )
}

fn read_payload(arg: Option<&str>) -> Result<Value, Failure> {
    let text = match arg {
        Some(text) if text != "-" => text.to_owned(),
        None if std::io::stdin().is_terminal() => return Ok(Value::Null),
        _ => {
            let mut text = String::new();
            usage(
                std::io::stdin().read_to_string(&mut text),
                "reading standard input",
            )?;
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            text
        }
    };
    usage(
        serde_json::from_str(&text),
        "PAYLOAD is not valid JSON (quote text as '\"text\"')",
    )
}

/// Publishes `repeat` copies of the event, counting each one sent in `sent`.
async fn publish_repeated(
    bus: &dyn EventBus,
    template: &Template,
    payload: Value,
    repeat: u64,
    sent: &mut u64,
) -> Result<(), Failure> {
    if repeat > 1 {
        notice(format!(
            "publishing {repeat} events on {}; Ctrl-C to stop",
            template.topic.as_deref().unwrap_or_default()
        ));
    }
    for _ in 0..repeat {
        let event = template.event(payload.clone())?;
        if repeat == 1 {
            notice(format!("publishing event {} on {}", event.id, event.topic));
        }
        bus.publish(event).await?;
        *sent += 1;
        // A publish that never waits (memory, no subscriber) must still let a stop
        // signal in.
        tokio::task::consume_budget().await;
    }
    Ok(())
}

/// Publishes one event per line of standard input, counting each one sent in `sent`.
async fn publish_lines(
    bus: &dyn EventBus,
    template: &Template,
    sent: &mut u64,
) -> Result<(), Failure> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut number = 0u64;
    while let Some(line) = usage(lines.next_line().await, "reading standard input")? {
        number += 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let event = line_event(line, template)
            .map_err(|e| Failure::usage(format!("line {number}: {e}")))?;
        bus.publish(event).await?;
        *sent += 1;
    }
    Ok(())
}

/// One `--lines` line: a full envelope (an object with `"v"`) or a payload.
fn line_event(line: &str, template: &Template) -> Result<Event, Failure> {
    let value: Value = usage(serde_json::from_str(line), "not valid JSON")?;
    if value.get("v").is_some() {
        return Ok(envelope::decode(line.as_bytes(), usize::MAX)?);
    }
    template.event(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(topic: Option<&str>) -> Template {
        Template {
            topic: topic.map(str::to_owned),
            event_type: EventType::Updated,
            priority: Priority::HIGH,
            source: Some("cli".into()),
            correlation_id: None,
            meta: vec![("k".into(), "v".into())],
        }
    }

    #[test]
    fn lines_are_payloads_or_envelopes() {
        let t = template(Some("orders:eu"));
        let e = line_event(r#"{"id": 1}"#, &t).unwrap();
        assert_eq!(
            (e.topic.as_str(), e.priority, &e.payload["id"]),
            ("orders:eu", Priority::HIGH, &serde_json::json!(1))
        );
        assert_eq!(e.metadata["k"], "v");
        let e = line_event(
            r#"{"v":1,"type":"deleted","topic":"users:x","priority":0}"#,
            &t,
        )
        .unwrap();
        assert_eq!(
            (e.topic.as_str(), e.priority),
            ("users:x", Priority::CRITICAL)
        );
        assert!(line_event("42", &template(None)).is_err());
        assert!(line_event("{oops", &t).is_err());
    }
}
