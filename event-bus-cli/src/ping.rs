//! `eventbus ping` (alias `check`): print the effective configuration, redacted, then
//! connect and make one round trip through the server, timing both.
//!
//! Exit status: 0 when the server answers (or the backend is memory, which has none),
//! 1 when it does not, 2 when the configuration is invalid.

use std::{io::Write, time::Instant};

use multibus::{Config, EventBus};

use crate::{backend::BackendArgs, failure::Failure};

/// Arguments of `eventbus ping` (none: it checks the bus the global options choose).
#[derive(clap::Args, Debug)]
pub(crate) struct PingArgs {}

/// Prints one line of the report on stdout.
fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// Runs `eventbus ping`.
pub(crate) async fn run(_args: PingArgs, backend: &BackendArgs) -> Result<(), Failure> {
    let selection = backend.select()?;
    let config = selection.parse()?;
    say(format!("config from {}:", selection.origin()));
    // `Debug` of every backend config redacts its secrets (passwords, in URLs too).
    say(format!("{config:#?}"));
    let Some(server) = server_address(&config) else {
        say("server: none (the memory backend lives in this process)");
        return Ok(());
    };
    let bus = multibus::create_event_bus(config)?;
    let result = round_trip(bus.as_ref()).await;
    let _ = bus.close().await;
    let (connect_ms, trip_ms) =
        result.inspect_err(|_| say(format!("server {server}: not answering")))?;
    say(format!(
        "server {server}: answering (connect {connect_ms:.1} ms, round trip {trip_ms:.1} ms)"
    ));
    Ok(())
}

/// The server the config connects to, password redacted; `None` for memory.
fn server_address(config: &Config) -> Option<String> {
    match config {
        Config::Redis(c) => Some(c.redacted_address()),
        Config::Postgres(c) => Some(c.redacted_url()),
        Config::Nats(c) => Some(c.redacted_address()),
        _ => None,
    }
}

/// Connects, then flushes (Redis: a `PING`; PostgreSQL: a `NOTIFY` that comes back to
/// the bus's own `LISTEN` connection; NATS: a message on the bus's private inbox); returns both durations in milliseconds.
async fn round_trip(bus: &dyn EventBus) -> Result<(f64, f64), Failure> {
    let start = Instant::now();
    bus.connect().await?;
    let connected = Instant::now();
    bus.flush().await?;
    let ms = |from: Instant, to: Instant| (to - from).as_secs_f64() * 1e3;
    Ok((ms(start, connected), ms(connected, Instant::now())))
}
