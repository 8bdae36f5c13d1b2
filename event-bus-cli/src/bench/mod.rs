//! `eventbus bench`: publish N events to S subscribers through the bus, then through the
//! raw transport underneath it doing the same work in the same run, and compare
//! throughput and end-to-end latency (publish to handler).
//!
//! Raw transports: memory — a `tokio::sync::broadcast` channel carrying the same `Event`
//! values; redis — `PUBLISH` of the wire envelope to S `SUBSCRIBE` connections;
//! postgres — `pg_notify` of the wire envelope to S `LISTEN` connections. Every run uses
//! a fresh channel prefix, so benchmarks never see each other's (or an app's) events.

mod bus_path;
mod collector;
mod raw_memory;
mod raw_postgres;
mod raw_redis;
mod report;

use std::{sync::Arc, time::Duration};

use event_bus::{Event, EventType};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use tokio::task::JoinHandle;

use self::{collector::Collector, report::PathResult};
use crate::backend::{self, BackendArgs, Failure};

/// Arguments of `eventbus bench`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Events to publish.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=2_000_000))]
    events: u64,
    /// Subscribers, each receiving every event.
    #[arg(long, value_name = "S", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    subscribers: u16,
    /// Approximate size of each event's JSON payload, in bytes.
    #[arg(long, value_name = "B", default_value_t = 200)]
    payload_bytes: usize,
    /// Concurrent publishing tasks (each with its own connection on the raw side).
    #[arg(long, value_name = "P", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    publishers: u16,
    /// Events per publish call (`publish_batch`; a pipeline or one statement on the raw side).
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,
    /// Give up on a path after this many seconds (what has not arrived counts as lost).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Print the report as JSON (and no progress bar).
    #[arg(long)]
    json: bool,
}

/// What each path does: the same for the bus and the raw transport.
#[derive(Clone, Debug)]
pub(crate) struct Workload {
    pub(crate) events: u64,
    pub(crate) subscribers: usize,
    pub(crate) publishers: usize,
    pub(crate) batch: usize,
    pub(crate) timeout: Duration,
    /// Topic (bus) or channel (raw) unique to this run.
    pub(crate) topic: String,
    pad: Arc<str>,
}

impl Workload {
    /// Length of the padding in each payload.
    pub(crate) fn pad_len(&self) -> usize {
        self.pad.len()
    }

    /// The sequence numbers publisher `p` sends.
    pub(crate) fn share(&self, p: usize) -> std::ops::Range<u64> {
        let n = self.publishers as u64;
        (self.events * p as u64 / n)..(self.events * (p as u64 + 1) / n)
    }

    /// The events of publisher `p` in batches of `batch`, built before the clock starts,
    /// each batch with the sequence numbers it carries.
    pub(crate) fn prepare(&self, p: usize) -> Vec<(std::ops::Range<u64>, Vec<Event>)> {
        let range = self.share(p);
        (range.start..range.end)
            .step_by(self.batch)
            .map(|s| {
                let seqs = s..(s + self.batch as u64).min(range.end);
                let events = seqs
                    .clone()
                    .map(|seq| {
                        let payload = Collector::payload(seq, &self.pad);
                        Event::new(EventType::Created, self.topic.as_str(), payload)
                    })
                    .collect();
                (seqs, events)
            })
            .collect()
    }
}

/// Runs `eventbus bench`.
pub(crate) async fn run(args: BenchArgs, backend: &BackendArgs) -> Result<(), Failure> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut config = backend.config_value()?;
    let name = backend::backend_of(&config).to_owned();
    if name != "memory"
        && let Value::Object(map) = &mut config
    {
        let prefix = format!("eventbus_bench_{run_id}");
        map.insert("channel_prefix".into(), prefix.into());
    }
    let pad_len = args.payload_bytes.saturating_sub(20);
    let workload = Workload {
        events: args.events,
        subscribers: usize::from(args.subscribers),
        publishers: usize::from(args.publishers),
        batch: args.batch as usize,
        timeout: Duration::from_secs(args.timeout.max(1)),
        topic: "bench:events".into(),
        pad: "x".repeat(pad_len).into(),
    };
    let bus = measure("bus", &workload, args.json, |c| {
        bus_path::run(config.clone(), workload.clone(), c)
    })
    .await?;
    let raw_workload = Workload {
        topic: format!("eventbus_bench_raw_{run_id}"),
        ..workload.clone()
    };
    let raw = match name.as_str() {
        "memory" => measure("raw", &raw_workload, args.json, |c| {
            raw_memory::run(raw_workload.clone(), c)
        })
        .await
        .map(Some)?,
        "redis" => raw_redis::measure(&config, &raw_workload, args.json).await?,
        "postgres" => raw_postgres::measure(&config, &raw_workload, args.json).await?,
        _ => None,
    };
    let report = report::Report::new(&name, &args_summary(&args), bus, raw);
    report.print(args.json);
    Ok(())
}

fn args_summary(args: &BenchArgs) -> report::Params {
    report::Params {
        events: args.events,
        subscribers: args.subscribers.into(),
        payload_bytes: args.payload_bytes,
        publishers: args.publishers.into(),
        batch: args.batch,
    }
}

/// Runs one path with a progress bar and turns its outcome into a [`PathResult`].
/// `path` sets up its subscribers, publishes everything, waits on the collector and
/// returns the elapsed time from the first publish (or an error).
pub(crate) async fn measure<F, Fut>(
    label: &str,
    w: &Workload,
    quiet: bool,
    path: F,
) -> Result<PathResult, Failure>
where
    F: FnOnce(Arc<Collector>) -> Fut,
    Fut: std::future::Future<Output = Result<(Duration, String), Failure>>,
{
    let collector = Arc::new(Collector::new(w.subscribers, w.events));
    let bar = progress_bar(label, collector.expected(), quiet);
    let ticker = {
        let (bar, c) = (bar.clone(), collector.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(c.delivered());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let outcome = path(collector.clone()).await;
    ticker.abort();
    bar.finish_and_clear();
    let (elapsed, transport) = outcome?;
    Ok(PathResult::new(transport, w, &collector, elapsed))
}

fn progress_bar(label: &str, total: u64, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>4} [{bar:40}] {pos}/{len} deliveries {per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_owned());
    bar
}

/// Waits for the publishers, then for every delivery (up to the workload's timeout);
/// returns the time since `start`.
pub(crate) async fn finish(
    c: &Collector,
    publishers: Vec<JoinHandle<Result<(), String>>>,
    start: tokio::time::Instant,
    timeout: Duration,
) -> Result<Duration, Failure> {
    for publisher in publishers {
        match tokio::time::timeout_at(start + timeout, publisher).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(Failure::runtime(format!("publishing failed: {e}"))),
            Ok(Err(e)) => return Err(Failure::runtime(format!("publisher task failed: {e}"))),
            Err(_) => break, // the deadline passed: report what arrived
        }
    }
    let left = timeout.saturating_sub(start.elapsed());
    c.wait(left).await;
    Ok(start.elapsed())
}
