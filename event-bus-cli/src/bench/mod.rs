//! `eventbus bench`: publish N events to S subscribers through the bus, then through the
//! raw transport underneath it doing the same work in the same run, and compare
//! throughput and end-to-end latency (publish to handler).
//!
//! Raw transports: memory — a `tokio::sync::broadcast` channel carrying the same `Event`
//! values; redis — `PUBLISH` of the wire envelope to S `SUBSCRIBE` connections (in the
//! durable mode, `--durable`: `XADD`, and S consumer groups reading with `XREADGROUP` and
//! acknowledging each read with `XACK`); postgres — `pg_notify` of the wire envelope to S
//! `LISTEN` connections; nats — `async-nats` publishes of the wire envelope to S
//! subscribing connections (in the durable mode: JetStream publishes awaiting the
//! stream's acknowledgement, and S durable pull consumers acknowledging every message). Every run uses
//! a fresh channel prefix, so benchmarks never see each other's (or an app's) events.
//!
//! Each path first runs one unmeasured warm-up round (at most
//! [`WARMUP_EVENTS`](rounds::WARMUP_EVENTS) events), then measured rounds of the whole workload, bus and raw taking turns, until each has
//! `--min-seconds` of measured time: a small `--events` still gives figures that repeat
//! from run to run, and a busy machine slows both paths alike rather than whichever ran
//! second. A run measured for less than [`MEANINGFUL_SECONDS`] gets a warning.

mod bus_path;
mod collector;
mod histogram;
mod raw_jetstream;
mod raw_memory;
mod raw_nats;
mod raw_postgres;
mod raw_postgres_queue;
mod raw_redis;
mod raw_streams;
mod report;
mod rounds;
mod source;

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use tokio::task::JoinHandle;

use self::{collector::Collector, report::PathResult, rounds::Path, source::Source};
use crate::{
    backend::BackendArgs,
    failure::Failure,
    output::{self, warning},
};

/// Measured time below which a path's figures vary too much from run to run to compare.
const MEANINGFUL_SECONDS: f64 = 0.5;

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
    /// Measure each path for at least this long, repeating the workload in rounds
    /// (after one warm-up round); `0` measures one round.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_min_seconds)]
    min_seconds: f64,
    /// Give up on a round after this many seconds (what has not arrived counts as lost).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Pace the publishers to this many events per second in all (paced latency); the
    /// paths are first measured unpaced, which gives each one's saturation rate.
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Print the report as JSON (and no progress bar).
    #[arg(long)]
    json: bool,
    /// Measure the backend's durable mode (also chosen by a config file that sets it):
    /// Redis `delivery = "streams"` next to raw `XADD`/`XREADGROUP`/`XACK`, PostgreSQL
    /// `delivery = "table"` next to a raw queue table, NATS `delivery = "jetstream"`
    /// next to raw JetStream publish, pull and ack.
    #[arg(long)]
    durable: bool,
}

/// What each path does: the same for the bus and the raw transport.
#[derive(Clone, Debug)]
pub(crate) struct Workload {
    pub(crate) events: u64,
    pub(crate) subscribers: usize,
    pub(crate) publishers: usize,
    pub(crate) batch: usize,
    pub(crate) timeout: Duration,
    /// Measured time to reach before the rounds stop.
    pub(crate) min_time: Duration,
    /// Topic (bus) or channel (raw) unique to this run.
    pub(crate) topic: String,
    /// Events per second over all publishers (`None`: as fast as possible).
    pub(crate) rate: Option<f64>,
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

    /// The events of publisher `p`, in batches of `batch`, built as they are sent and
    /// paced to its share of the workload's rate.
    pub(crate) fn source(&self, p: usize) -> Source {
        let rate = self.rate.map(|rate| rate / self.publishers as f64);
        Source::new(
            self.share(p),
            self.batch,
            &self.topic,
            self.pad.clone(),
            rate,
        )
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (1.0..=1e9).contains(&rate) => Ok(rate),
        _ => Err("expected events per second, from 1 to 1000000000".to_owned()),
    }
}

fn parse_min_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.0..=3600.0).contains(&secs) => Ok(secs),
        _ => Err("expected a number of seconds from 0 to 3600".to_owned()),
    }
}

/// Runs `eventbus bench`.
pub(crate) async fn run(args: BenchArgs, backend: &BackendArgs) -> Result<(), Failure> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut selection = backend.select()?;
    let name = selection.backend().to_owned();
    let prefix = format!("eventbus_bench_{run_id}");
    if name != "memory"
        && let Value::Object(map) = &mut selection.value
    {
        map.insert("channel_prefix".into(), prefix.clone().into());
    }
    if args.durable {
        crate::dlq::durable(&mut selection, "--durable", true)?;
    }
    let config = selection.value.clone();
    // A durable mode is compared with its raw queue: Redis `delivery = "streams"` with
    // XADD/XREADGROUP/XACK, PostgreSQL `delivery = "table"` with a raw queue table, NATS
    // `delivery = "jetstream"` with JetStream publish, pull and ack.
    let durable = matches!(
        config.get("delivery").and_then(Value::as_str),
        Some("streams" | "table" | "jetstream")
    );
    let pad_len = args.payload_bytes.saturating_sub(20);
    let workload = Workload {
        events: args.events,
        subscribers: usize::from(args.subscribers),
        publishers: usize::from(args.publishers),
        batch: args.batch as usize,
        timeout: Duration::from_secs(args.timeout.max(1)),
        min_time: Duration::from_secs_f64(args.min_seconds),
        topic: "bench:events".into(),
        rate: None,
        pad: "x".repeat(pad_len).into(),
    };
    let raw_workload = Workload {
        topic: format!("eventbus_bench_raw_{run_id}"),
        ..workload.clone()
    };
    let bus_path: Path = Box::new(move |w, c| Box::pin(bus_path::run(selection.clone(), w, c)));
    let raw_path: Option<Path> = match name.as_str() {
        "memory" => Some(Box::new(|w, c| Box::pin(raw_memory::run(w, c)))),
        "redis" if durable => Some(raw_streams::path(&config)?),
        "redis" => Some(raw_redis::path(&config)?),
        "postgres" if durable => Some(raw_postgres_queue::path(&config)?),
        "postgres" => raw_postgres::path(&config, &raw_workload)?,
        "nats" if durable => Some(raw_jetstream::path(&config)),
        "nats" => Some(raw_nats::path(&config)),
        _ => None,
    };
    let mut paths = vec![(workload, bus_path)];
    paths.extend(raw_path.map(|path| (raw_workload.clone(), path)));
    let hidden = args.json || output::is_quiet();
    let measured = rounds::measure(&mut paths, hidden).await;
    let measured = match (measured, args.rate) {
        (Ok(mut results), Some(rate)) => {
            for (w, _) in &mut paths {
                w.rate = Some(rate);
            }
            match rounds::measure(&mut paths, hidden).await {
                Ok(paced) => {
                    let saturated = std::mem::replace(&mut results, paced);
                    for (paced, saturated) in results.iter_mut().zip(saturated) {
                        paced.set_saturation(saturated.events_per_s, rate);
                    }
                    Ok(results)
                }
                Err(e) => Err(e),
            }
        }
        (measured, _) => measured,
    };
    if durable && name == "redis" {
        // Streams keep their entries: delete what the run added.
        raw_streams::cleanup(&config, &prefix, &raw_workload).await?;
    }
    if durable && name == "nats" {
        // Streams keep their messages: delete the run's streams.
        raw_jetstream::cleanup(&config, &prefix, &raw_workload).await?;
    }
    let mut results = measured?.into_iter();
    let bus = results
        .next()
        .ok_or_else(|| Failure::runtime("the bus path gave no result"))?;
    let raw = results.next();
    warn_if_short(&bus, raw.as_ref());
    let report = report::Report::new(&name, &args_summary(&args), bus, raw);
    report.print(args.json);
    if durable && name == "postgres" {
        raw_postgres_queue::drop_durable_tables(&config).await?;
    }
    Ok(())
}

/// Warns (on stderr) when a path was measured too briefly for its figures to repeat.
fn warn_if_short(bus: &PathResult, raw: Option<&PathResult>) {
    let shortest = raw.map_or(bus.seconds, |raw| raw.seconds.min(bus.seconds));
    if shortest < MEANINGFUL_SECONDS {
        warning(format!(
            "a path was measured for only {shortest:.2} s: runs this short vary widely \
             from one to the next; measure at least {MEANINGFUL_SECONDS} s \
             (--min-seconds, default 1) before comparing figures"
        ));
    }
}

fn args_summary(args: &BenchArgs) -> report::Params {
    report::Params {
        events: args.events,
        subscribers: args.subscribers.into(),
        payload_bytes: args.payload_bytes,
        publishers: args.publishers.into(),
        batch: args.batch,
        min_seconds: args.min_seconds,
        rate: args.rate,
    }
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
