//! `eventbus dlq list|redrive`: the dead letters of a consumer group on a durable
//! backend. Each backend's store is one variant of [`Store`]; the subcommands only
//! call its `list` and `redrive`. Also the durable selection that `sub --group`,
//! `pub --durable` and `bench --durable` use.

use std::io::Write;

use multibus::{Config, DeadLetterInfo, EventBus, envelope};
use serde_json::Value;

use crate::{
    backend::{BackendArgs, Selection},
    failure::Failure,
    output::notice,
};

/// Arguments of `eventbus dlq`.
#[derive(clap::Args, Debug)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Print a group's dead letters, oldest first, one per line (`--json`: their
    /// envelopes).
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
    /// Put a group's dead letters back into its live deliveries, attempts reset, for
    /// that group only and under their original topic.
    Redrive {
        /// The consumer group.
        #[arg(long, value_name = "NAME")]
        group: String,
        /// Only these dead letters (ids as `dlq list` prints them; PostgreSQL only);
        /// default: all.
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
    },
}

/// The durable mode of each backend that has one: the value of its `delivery` key.
fn durable_delivery(backend: &str) -> Option<&'static str> {
    match backend {
        "redis" => Some("streams"),
        "postgres" => Some("table"),
        "nats" => Some("jetstream"),
        _ => None,
    }
}

/// Makes `selection` its backend's durable mode (Redis `delivery = "streams"`,
/// PostgreSQL `delivery = "table"`, NATS `delivery = "jetstream"`) and returns whether it has one; `option` names
/// what asked for it in the error when `required` and the backend has none.
///
/// # Errors
/// A usage failure when `required` and the selected backend has no durable mode.
pub(crate) fn durable(
    selection: &mut Selection,
    option: &str,
    required: bool,
) -> Result<bool, Failure> {
    let Some(delivery) = durable_delivery(selection.backend()) else {
        return if required {
            Err(Failure::usage(format!(
                "{option}: the {} backend has no durable mode; use Redis \
                 (--url redis://HOST:6379), PostgreSQL (--url postgres://USER@HOST/DB) or \
                 NATS (--url nats://HOST:4222)",
                selection.backend()
            )))
        } else {
            Ok(false)
        };
    };
    if let Value::Object(map) = &mut selection.value {
        map.insert("delivery".into(), delivery.into());
    }
    Ok(true)
}

/// A backend's dead-letter store.
enum Store {
    Redis(multibus::RedisEventBus),
    Postgres(multibus::PostgresEventBus),
    Nats(multibus::NatsEventBus),
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
    fn open(mut selection: Selection) -> Result<Self, Failure> {
        durable(&mut selection, "dlq", true)?;
        match selection.parse()? {
            Config::Redis(c) => Ok(Self::Redis(multibus::RedisEventBus::new(c)?)),
            Config::Postgres(c) => Ok(Self::Postgres(multibus::PostgresEventBus::new(c)?)),
            Config::Nats(c) => Ok(Self::Nats(multibus::NatsEventBus::new(c)?)),
            _ => Err(Failure::usage(
                "dlq: dead letters are kept by the durable modes of redis, postgres and nats only",
            )),
        }
    }

    async fn list(&self, group: &str, limit: usize) -> Result<Vec<Letter>, Failure> {
        match self {
            Self::Redis(bus) => Ok(bus
                .dead_letters(group, limit)
                .await?
                .into_iter()
                .map(|(id, letter)| {
                    let info = DeadLetterInfo::of(&letter);
                    Letter {
                        id,
                        topic: info
                            .as_ref()
                            .map_or_else(|| letter.topic.clone(), |i| i.topic.clone()),
                        attempts: info.as_ref().map_or(0, |i| i.attempts),
                        error: info.map(|i| i.error),
                        envelope: envelope::encode(&letter).ok(),
                    }
                })
                .collect()),
            Self::Nats(bus) => Ok(bus
                .dead_letters(group, limit)
                .await?
                .into_iter()
                .map(|(id, letter)| {
                    let info = DeadLetterInfo::of(&letter);
                    Letter {
                        id: id.to_string(),
                        topic: info
                            .as_ref()
                            .map_or_else(|| letter.topic.clone(), |i| i.topic.clone()),
                        attempts: info.as_ref().map_or(0, |i| i.attempts),
                        error: info.map(|i| i.error),
                        envelope: envelope::encode(&letter).ok(),
                    }
                })
                .collect()),
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
            Self::Redis(_) if !ids.is_empty() => Err(Failure::usage(
                "--id: the Redis durable mode redrives all of a group's dead letters, \
                 oldest first; give no --id",
            )),
            Self::Nats(_) if !ids.is_empty() => Err(Failure::usage(
                "--id: the NATS durable mode redrives all of a group's dead letters, \
                 oldest first; give no --id",
            )),
            // All of them: the count only bounds one listing of the dead letters.
            Self::Nats(bus) => Ok(bus
                .redrive(group, usize::try_from(i64::MAX).unwrap_or(usize::MAX))
                .await? as u64),
            // All of them: the count only bounds one read of the dead-letter stream.
            Self::Redis(bus) => Ok(bus
                .redrive(group, usize::try_from(i64::MAX).unwrap_or(usize::MAX))
                .await? as u64),
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
            Self::Redis(bus) => Ok(bus.close().await?),
            Self::Postgres(bus) => Ok(bus.close().await?),
            Self::Nats(bus) => Ok(bus.close().await?),
        }
    }
}

/// Runs `eventbus dlq`.
pub(crate) async fn run(args: DlqArgs, backend: &BackendArgs) -> Result<(), Failure> {
    let store = Store::open(backend.select()?)?;
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
