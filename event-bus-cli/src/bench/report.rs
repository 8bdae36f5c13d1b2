//! The benchmark report: per-path throughput and latency percentiles, the bus/raw
//! ratios, as a table or as JSON.

use std::{io::Write, time::Duration};

use serde::Serialize;

use super::{Collector, Workload, collector, histogram::Histogram};

/// The parameters of a run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Params {
    pub(crate) events: u64,
    pub(crate) subscribers: u32,
    pub(crate) payload_bytes: usize,
    pub(crate) publishers: u32,
    pub(crate) batch: u32,
    pub(crate) min_seconds: f64,
    /// Paced rate in events/s (`--rate`), or `None`: as fast as possible.
    pub(crate) rate: Option<f64>,
}

/// End-to-end latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

/// What one path (bus or raw transport) achieved.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PathResult {
    /// What carried the events, e.g. `multibus (memory)`, `tokio::sync::broadcast`.
    pub(crate) transport: String,
    /// Measured rounds of the whole workload (after the warm-up round).
    pub(crate) rounds: u32,
    /// Deliveries expected (events x subscribers x rounds) and made.
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    /// Deliveries that did not arrive before the timeout or were reported lost.
    pub(crate) lost: u64,
    /// Measured time: from the first publish to the last delivery, summed over the rounds.
    pub(crate) seconds: f64,
    /// Events fully delivered per second (deliveries / subscribers / seconds).
    pub(crate) events_per_s: f64,
    /// Handler calls per second.
    pub(crate) deliveries_per_s: f64,
    pub(crate) latency_us: Latency,
    /// Resident memory of the whole process when a round's last delivery arrived, the
    /// largest over this path's rounds, in MiB (the harness itself holds about 10 MiB).
    pub(crate) rss_mib: f64,
    /// With `--rate`: this path's events/s when publishing as fast as it can (measured
    /// first, the same way), and the paced rate as a fraction of it.
    pub(crate) saturation_events_per_s: Option<f64>,
    pub(crate) load_fraction: Option<f64>,
}

/// The measured rounds of one path, summed.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) rounds: u32,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) elapsed: Duration,
    /// Latencies in nanoseconds, of every round.
    latencies: Histogram,
    /// Largest resident memory at the end of a round, in bytes.
    rss: u64,
}

impl Totals {
    /// Adds a round that took `elapsed` and recorded into `c`.
    pub(crate) fn add(&mut self, c: &Collector, elapsed: Duration) {
        self.rounds += 1;
        self.expected += c.expected();
        self.delivered += c.delivered();
        self.elapsed += elapsed;
        self.latencies.add(&c.latencies);
        self.rss = self.rss.max(c.rss());
    }
}

impl PathResult {
    /// Summarises the measured rounds of a path.
    pub(crate) fn new(transport: String, w: &Workload, totals: &Totals) -> Self {
        let h = &totals.latencies;
        let pick = |q: f64| h.quantile(q) as f64 / 1e3;
        let secs = totals.elapsed.as_secs_f64().max(1e-9);
        let delivered = totals.delivered;
        Self {
            transport,
            rounds: totals.rounds,
            expected: totals.expected,
            delivered,
            lost: totals.expected - delivered.min(totals.expected),
            seconds: secs,
            events_per_s: delivered as f64 / w.subscribers as f64 / secs,
            deliveries_per_s: delivered as f64 / secs,
            latency_us: Latency {
                p50: pick(0.5),
                p90: pick(0.9),
                p99: pick(0.99),
                max: h.max() as f64 / 1e3,
            },
            rss_mib: totals.rss as f64 / (1024.0 * 1024.0),
            saturation_events_per_s: None,
            load_fraction: None,
        }
    }

    /// Notes the path's saturation rate (`events_per_s` of an unpaced run) and the
    /// paced `rate` as a fraction of it.
    pub(crate) fn set_saturation(&mut self, saturation: f64, rate: f64) {
        self.saturation_events_per_s = Some(saturation);
        self.load_fraction = Some(div(rate, saturation));
    }
}

/// Bus divided by raw: throughput below 1 and latencies above 1 mean overhead.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Ratio {
    pub(crate) throughput: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

/// The whole report (`eventbus bench --json` prints this).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) backend: String,
    pub(crate) date: String,
    pub(crate) version: &'static str,
    pub(crate) cpus: usize,
    /// Load average (1, 5, 15 minutes) when the report was made: other work on the
    /// machine skews wall-clock figures.
    pub(crate) load_average: Option<[f64; 3]>,
    /// Peak resident memory of the process over the whole run, in MiB.
    pub(crate) peak_rss_mib: f64,
    pub(crate) params: Params,
    pub(crate) bus: PathResult,
    pub(crate) raw: Option<PathResult>,
    pub(crate) ratio: Option<Ratio>,
}

fn div(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

impl Report {
    /// Builds the report and the ratios.
    pub(crate) fn new(
        backend: &str,
        params: &Params,
        bus: PathResult,
        raw: Option<PathResult>,
    ) -> Self {
        let ratio = raw.as_ref().map(|raw| Ratio {
            throughput: div(bus.events_per_s, raw.events_per_s),
            p50: div(bus.latency_us.p50, raw.latency_us.p50),
            p90: div(bus.latency_us.p90, raw.latency_us.p90),
            p99: div(bus.latency_us.p99, raw.latency_us.p99),
            max: div(bus.latency_us.max, raw.latency_us.max),
        });
        Self {
            backend: backend.to_owned(),
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            version: env!("CARGO_PKG_VERSION"),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_average: load_average(),
            peak_rss_mib: collector::memory().peak as f64 / (1024.0 * 1024.0),
            params: params.clone(),
            bus,
            raw,
            ratio,
        }
    }

    /// Prints the report on stdout as a table, or as one JSON object.
    pub(crate) fn print(&self, json: bool) {
        let text = if json {
            serde_json::to_string_pretty(self).unwrap_or_default()
        } else {
            self.table()
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
    }

    fn table(&self) -> String {
        let p = &self.params;
        let mut out = format!(
            "backend {}: {} events x {} subscriber(s), ~{} B payload, {} publisher(s), batch {}\n\
             each path: a warm-up round, then rounds (bus and raw in turn) for at least {} s\n",
            self.backend,
            p.events,
            p.subscribers,
            p.payload_bytes,
            p.publishers,
            p.batch,
            p.min_seconds
        );
        if let Some(rate) = p.rate {
            out.push_str(&format!(
                "paced at {rate:.0} events/s (after unpaced rounds that find each path's saturation rate)\n"
            ));
        }
        out.push('\n');
        out.push_str(&format!(
            "{:<28} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}\n",
            "path", "events/s", "deliveries/s", "p50", "p90", "p99", "max", "lost", "rounds"
        ));
        for r in std::iter::once(&self.bus).chain(&self.raw) {
            let l = &r.latency_us;
            out.push_str(&format!(
                "{:<28} {:>12.0} {:>12.0} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}\n",
                r.transport,
                r.events_per_s,
                r.deliveries_per_s,
                us(l.p50),
                us(l.p90),
                us(l.p99),
                us(l.max),
                r.lost,
                r.rounds
            ));
        }
        match &self.ratio {
            Some(q) => out.push_str(&format!(
                "{:<28} {:>11.2}x {:>12} {:>8.2}x {:>8.2}x {:>8.2}x {:>8.2}x\n",
                "ratio bus/raw", q.throughput, "", q.p50, q.p90, q.p99, q.max
            )),
            None => out.push_str("(no raw transport measured)\n"),
        }
        for r in std::iter::once(&self.bus).chain(&self.raw) {
            if let (Some(sat), Some(load)) = (r.saturation_events_per_s, r.load_fraction) {
                out.push_str(&format!(
                    "{}: saturation {sat:.0} events/s, paced load {load:.2} of it\n",
                    r.transport
                ));
            }
        }
        out.push_str(&format!(
            "memory: bus path {:.0} MiB resident at the end of its rounds; process peak {:.0} MiB",
            self.bus.rss_mib, self.peak_rss_mib
        ));
        if let Some([one, five, fifteen]) = self.load_average {
            out.push_str(&format!("; load average {one:.2} {five:.2} {fifteen:.2}"));
        }
        out.push('\n');
        out
    }
}

/// Microseconds for a table cell: `850us`, `12.3ms`, `1.20s`.
fn us(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}ms", v / 1e3)
    } else {
        format!("{v:.0}us")
    }
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`), where available.
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}
