//! `eventbus`: run the demo, publish events, tail a bus, check a server and benchmark
//! any backend.
//!
//! ```text
//! eventbus demo
//! eventbus --url redis://127.0.0.1 sub 'orders:*'
//! eventbus --url redis://127.0.0.1 sub --group billing 'orders:*'
//! eventbus --url redis://127.0.0.1 dlq list --group billing
//! eventbus --url redis://127.0.0.1 pub orders:eu '{"id": 42}'
//! eventbus --url postgres://postgres@127.0.0.1/postgres ping
//! eventbus --url postgres://postgres@127.0.0.1/postgres bench
//! ```
//!
//! Exit status: 0 on success, 1 when the bus fails at run time (server unreachable, a
//! publish fails), 2 for usage and configuration errors (the message names the option
//! or key), 130/143 when Ctrl-C/SIGTERM interrupts `pub` before it is done.

mod backend;
mod bench;
mod demo;
mod dlq;
mod failure;
mod output;
mod ping;
mod publish;
mod signal;
mod tail;

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::{
    backend::{BackendArgs, GLOBAL_OPTIONS},
    failure::Failure,
};

/// Publish, tail, check and benchmark an event bus (memory, Redis, PostgreSQL or NATS).
#[derive(Parser, Debug)]
#[command(name = "eventbus", version)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,
    /// Print only results, warnings and errors: no notes, progress or summaries.
    #[arg(short, long, global = true, help_heading = GLOBAL_OPTIONS)]
    quiet: bool,
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
    /// Print the effective configuration and check that the server answers.
    #[command(visible_alias = "check")]
    Ping(ping::PingArgs),
    /// Measure throughput and latency of the bus next to its raw transport.
    Bench(bench::BenchArgs),
    /// List or redrive the dead letters of a consumer group (durable modes).
    Dlq(dlq::DlqArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    Completions(CompletionsArgs),
}

/// Arguments of `eventbus completions`.
#[derive(clap::Args, Debug)]
struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL")]
    shell: clap_complete::Shell,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    cli.backend.note_sources(&matches);
    output::set_quiet(cli.quiet);
    init_tracing();
    let result = match cli.command {
        Command::Completions(args) => completions(args.shell),
        command => run_async(command, &cli.backend),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("eventbus: {failure}");
            failure.exit_code()
        }
    }
}

fn run_async(command: Command, backend: &BackendArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async move {
        match command {
            Command::Demo(args) => demo::run(args, backend).await,
            Command::Pub(args) => publish::run(args, backend).await,
            Command::Sub(args) => tail::run(args, backend).await,
            Command::Ping(args) => ping::run(args, backend).await,
            Command::Bench(args) => bench::run(args, backend).await,
            Command::Dlq(args) => dlq::run(args, backend).await,
            Command::Completions(_) => Ok(()),
        }
    });
    // Handler tasks of a closed bus may still be parked; do not wait for them.
    runtime.shutdown_background();
    result
}

/// Writes the completion script for `shell` on stdout.
fn completions(shell: clap_complete::Shell) -> Result<(), Failure> {
    // Generated into memory first: the generator panics on a write error, and a
    // closed pipe (`| head`) is no reason to panic.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "eventbus", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::runtime(format!("writing the script: {e}")))
        }
        _ => Ok(()),
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

/// Turns an error into a usage failure saying what was being read.
pub(crate) fn usage<T, E: std::fmt::Display>(
    result: Result<T, E>,
    what: &str,
) -> Result<T, Failure> {
    result.map_err(|e| Failure::usage(format!("{what}: {e}")))
}
