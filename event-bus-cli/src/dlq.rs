//! `eventbus dlq list|redrive`: the dead letters of a consumer group on a durable
//! backend. Each backend's store is one variant of [`Store`]; the subcommands only
//! call its `list` and `redrive`.

use std::io::Write;

use event_bus::{Config, EventBus, envelope};

use crate::{backend::BackendArgs, failure::Failure, output::notice};

/// Arguments of `eventbus dlq`.
#[derive(clap::Args, Debug)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Print a group's dead letters, one per line (`--json`: their envelopes).
    List {
        /// The consumer group.
        #[arg(long, value_name = "NAME")]
        group: String,
        /// Print at most this many.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// Print each dead letter as its wire envelope, one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Put a group's dead letters back into its live deliveries, attempts reset.
    Redrive {
        /// The consumer group.
        #[arg(long, value_name = "NAME")]
        group: String,
        /// Only these dead letters (ids as `dlq list` prints them); default: all.
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
    },
}

/// A backend's dead-letter store.
enum Store {
    Postgres(event_bus::PostgresEventBus),
}

/// One dead letter, as printed.
struct Letter {
    id: String,
    topic: String,
    attempts: u32,
    error: Option<String>,
    envelope: Option<String>,
}

impl Store {
    fn open(config: Config) -> Result<Self, Failure> {
        match config {
            Config::Postgres(c) if c.delivery == event_bus::postgres::DeliveryMode::Table => {
                Ok(Self::Postgres(event_bus::PostgresEventBus::new(c)?))
            }
            _ => Err(Failure::usage(
                "dead letters are kept by durable backends only: use --config with \
                 backend = \"postgres\" and delivery = \"table\"",
            )),
        }
    }

    async fn list(&self, group: &str, limit: usize) -> Result<Vec<Letter>, Failure> {
        match self {
            Self::Postgres(bus) => Ok(bus
                .dead_letters(group, limit)
                .await?
                .into_iter()
                .map(|l| Letter {
                    id: l.event_id.to_string(),
                    topic: l.topic,
                    attempts: l.attempts,
                    error: l.last_error,
                    envelope: l.event.as_ref().and_then(|e| envelope::encode(e).ok()),
                })
                .collect()),
        }
    }

    async fn redrive(&self, group: &str, ids: &[String]) -> Result<u64, Failure> {
        match self {
            Self::Postgres(bus) => {
                let ids: Vec<i64> = ids
                    .iter()
                    .map(|s| {
                        s.parse().map_err(|_| {
                            Failure::usage(format!("--id {s:?}: not a dead-letter id"))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                let only = (!ids.is_empty()).then_some(ids.as_slice());
                Ok(bus.redrive(group, only).await?)
            }
        }
    }

    async fn close(self) -> Result<(), Failure> {
        match self {
            Self::Postgres(bus) => Ok(bus.close().await?),
        }
    }
}

/// Runs `eventbus dlq`.
pub(crate) async fn run(args: DlqArgs, backend: &BackendArgs) -> Result<(), Failure> {
    let store = Store::open(backend.select()?.parse()?)?;
    let result = match &args.action {
        Action::List { group, limit, json } => store.list(group, *limit).await.map(|letters| {
            let mut out = std::io::stdout().lock();
            for l in &letters {
                let line = match (&l.envelope, json) {
                    (Some(envelope), true) => envelope.clone(),
                    _ => format!(
                        "{}\t{}\tattempts={}\t{}",
                        l.id,
                        l.topic,
                        l.attempts,
                        l.error.as_deref().unwrap_or("")
                    ),
                };
                if writeln!(out, "{line}").is_err() {
                    break; // stdout closed (e.g. piped into `head`)
                }
            }
            notice(format!("{} dead letter(s) of group {group}", letters.len()));
        }),
        Action::Redrive { group, ids } => store.redrive(group, ids).await.map(|n| {
            notice(format!("{n} dead letter(s) of group {group} put back"));
        }),
    };
    store.close().await?;
    result
}
