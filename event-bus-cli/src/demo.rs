//! `eventbus demo`: what the dispatcher does, shown on the memory backend — a normal
//! handler, a failing handler that is unsubscribed automatically, a handler that times
//! out, priorities under backlog — then the metrics.

use std::{
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use multibus::{
    Config, Event, EventBus, EventBusExt, EventType, MetricsSnapshot, Priority, create_event_bus,
};
use serde_json::json;
use tokio::sync::Notify;

use crate::{backend::BackendArgs, failure::Failure};

/// Arguments of `eventbus demo` (none yet; the demo always runs on memory).
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {}

/// The demo's dispatcher settings: a short handler timeout so it ends in seconds.
const CONFIG: &str = r#"{"backend": "memory", "dispatcher": {
    "handler_timeout_seconds": 0.2, "handler_max_failures": 3, "metrics_log_interval_seconds": 0}}"#;

/// Prints one line of the demo's story on stdout.
fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

fn tick(n: u32, slow: bool) -> Event {
    Event::new(
        EventType::Updated,
        "market:tick",
        json!({"n": n, "pair": "XRP/USD", "slow": slow}),
    )
    .with_source("demo")
}

/// Runs `eventbus demo`.
pub(crate) async fn run(_args: DemoArgs, backend: &BackendArgs) -> Result<(), Failure> {
    let given = backend.on_command_line();
    if !given.is_empty() {
        return Err(Failure::usage(format!(
            "the demo always runs on the memory backend: drop {}",
            given.join(" and ")
        )));
    }
    let bus = create_event_bus(Config::from_json_str(CONFIG)?)?;
    bus.connect().await?;
    say("eventbus demo: failing, slow and busy handlers on the memory backend");
    say("config: dispatcher.handler_timeout_seconds = 0.2, dispatcher.handler_max_failures = 3");
    say("");
    let failing = subscribe_market_handlers(bus.as_ref()).await?;

    say("1. three ticks: the failing handler fails on each one");
    for n in 1..=3 {
        bus.publish(tick(n, false)).await?;
        bus.flush().await?;
    }
    say(format!(
        "   -> failing handler still subscribed? {} (unsubscribed automatically after 3 consecutive failures)",
        if failing.is_active() { "yes" } else { "no" }
    ));
    bus.publish(tick(4, false)).await?;
    bus.flush().await?;
    say("   -> tick 4 reached only the normal and slow handlers");
    say("");

    say("2. a tick the slow handler takes 10 s over");
    bus.publish(tick(5, true)).await?;
    bus.flush().await?;
    say("   -> the slow call was cancelled at 0.2 s and counted as timed out (a failure)");
    say("");

    say("3. priorities under backlog: the ledger is busy while five orders arrive");
    priorities(bus.as_ref()).await?;
    say("");

    let metrics = bus.metrics();
    bus.close().await?;
    say("metrics");
    say(metrics_table(&metrics));
    Ok(())
}

/// The normal, failing and slow handlers on `market:*`; returns the failing one.
async fn subscribe_market_handlers(bus: &dyn EventBus) -> Result<multibus::Subscription, Failure> {
    bus.subscribe("market:*", |e: Event| async move {
        say(format!("   [normal]  {} {}", e.topic, e.payload));
        Ok::<(), std::io::Error>(())
    })
    .await?;
    let failures = Arc::new(AtomicU32::new(0));
    let failing = bus
        .subscribe("market:*", move |e: Event| {
            let k = failures.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                say(format!(
                    "   [failing] {} n={}: returns an error (failure {k} of 3)",
                    e.topic, e.payload["n"]
                ));
                Err("exchange feed rejected the tick")
            }
        })
        .await?;
    bus.subscribe("market:tick", |e: Event| async move {
        if e.payload["slow"] == true {
            say(format!(
                "   [slow]    {} n={}: starts a 10 s call",
                e.topic, e.payload["n"]
            ));
            tokio::time::sleep(Duration::from_secs(10)).await;
            say("   [slow]    finished (never printed: the call is cancelled)");
        } else {
            say(format!(
                "   [slow]    {} n={}: quick this time",
                e.topic, e.payload["n"]
            ));
        }
        Ok::<(), std::io::Error>(())
    })
    .await?;
    say(
        "subscribed: normal handler on market:*, failing handler on market:*, slow handler on market:tick",
    );
    Ok(failing)
}

/// A busy subscriber receives the urgent events first, equal priorities in order.
async fn priorities(bus: &dyn EventBus) -> Result<(), Failure> {
    let started = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let order = Arc::new(Mutex::new(Vec::new()));
    let (s, g, o) = (started.clone(), gate.clone(), order.clone());
    let ledger = bus
        .subscribe("orders:*", move |e: Event| {
            let (s, g, o) = (s.clone(), g.clone(), o.clone());
            async move {
                if e.topic == "orders:warmup" {
                    s.notify_one();
                    g.notified().await;
                    return Ok::<(), std::io::Error>(());
                }
                let label = format!(
                    "{} ({})",
                    e.payload["order"].as_str().unwrap_or("?"),
                    e.priority
                );
                say(format!("   [ledger]  handles {label}"));
                o.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(label);
                Ok(())
            }
        })
        .await?;
    let order_event = |name: &str, priority| {
        Event::new(EventType::Created, "orders:filled", json!({"order": name}))
            .with_priority(priority)
    };
    bus.publish(Event::new(EventType::Created, "orders:warmup", json!({})))
        .await?;
    started.notified().await;
    for (name, priority) in [
        ("A", Priority::LOW),
        ("B", Priority::NORMAL),
        ("C", Priority::HIGH),
        ("D", Priority::CRITICAL),
        ("E", Priority::NORMAL),
    ] {
        say(format!("   publish order {name} ({priority})"));
        bus.publish(order_event(name, priority)).await?;
    }
    gate.notify_one();
    bus.flush().await?;
    let handled = order
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .join(", ");
    say(format!("   -> handled in order: {handled}"));
    say("      (most urgent first; B before E: equal priorities keep publish order)");
    ledger.cancel().await;
    Ok(())
}

/// The metrics snapshot as a two-column table.
pub(crate) fn metrics_table(m: &MetricsSnapshot) -> String {
    let bound = |q: f64| {
        m.latency
            .quantile_upper_bound(q)
            .map_or_else(|| "-".to_owned(), |d| format!("<= {d:?}"))
    };
    let rows = [
        ("published", m.published.to_string()),
        ("received", m.received.to_string()),
        ("delivered", m.delivered.to_string()),
        ("failed", m.failed.to_string()),
        ("timed_out", m.timed_out.to_string()),
        ("panicked", m.panicked.to_string()),
        ("dropped", m.dropped.to_string()),
        ("auto_unsubscribed", m.auto_unsubscribed.to_string()),
        ("subscriptions", m.subscriptions.to_string()),
        ("latency p50", bound(0.5)),
        ("latency p99", bound(0.99)),
    ];
    let mut out = String::from("  metric               value\n  -------------------  ----------");
    for (name, value) in rows {
        out.push_str(&format!("\n  {name:<19}  {value}"));
    }
    out
}
