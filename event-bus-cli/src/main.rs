//! `eventbus`: run the demo, publish events, tail a bus and benchmark any backend.
//!
//! ```text
//! eventbus demo
//! eventbus --backend redis --url redis://127.0.0.1 sub 'orders:*'
//! eventbus --backend redis --url redis://127.0.0.1 pub orders:eu '{"id": 42}'
//! eventbus --backend postgres --url postgres://postgres@127.0.0.1/postgres bench
//! ```
//!
//! Exit status: 0 on success, 1 when the bus fails at run time (server unreachable, a
//! publish fails), 2 for usage and configuration errors (the message names the key).

mod backend;
mod bench;
mod demo;
mod publish;
mod tail;

use std::{io::IsTerminal, process::ExitCode};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::backend::{BackendArgs, Failure};

/// Publish, tail and benchmark an event bus (memory, Redis or PostgreSQL).
#[derive(Parser, Debug)]
#[command(name = "eventbus", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the dispatcher at work on the memory backend: a normal, a failing and a
    /// slow handler, priorities under backlog, and the metrics at the end.
    Demo(demo::DemoArgs),
    /// Publish events on a topic.
    Pub(publish::PubArgs),
    /// Subscribe to topic patterns and print each event as it arrives.
    Sub(tail::SubArgs),
    /// Measure throughput and latency of the bus next to its raw transport.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("eventbus: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Pub(args) => publish::run(args, &cli.backend).await,
            Command::Sub(args) => tail::run(args, &cli.backend).await,
            Command::Bench(args) => bench::run(args, &cli.backend).await,
        }
    });
    // Handler tasks of a closed bus may still be parked; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("eventbus: {failure}");
            failure.exit_code()
        }
    }
}

/// Logs go to stderr; `RUST_LOG` picks the level (default `warn`).
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Exits with a usage failure if `result` is an error; for parse helpers.
pub(crate) fn usage<T, E: std::fmt::Display>(
    result: Result<T, E>,
    what: &str,
) -> Result<T, Failure> {
    result.map_err(|e| Failure::usage(format!("{what}: {e}")))
}
