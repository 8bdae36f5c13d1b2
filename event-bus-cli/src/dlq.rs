//! `eventbus dlq list|redrive GROUP`: the dead letters of a consumer group of the Redis
//! durable mode, and moving them back to the stream; and the durable selection that
//! `eventbus sub --group` uses.

use event_bus::{Config, DeadLetterInfo, DeliveryMode, RedisEventBus, envelope};
use serde_json::Value;

use crate::{
    backend::{BackendArgs, Selection},
    failure::Failure,
    output::notice,
    tail::human_line,
};

/// Arguments of `eventbus dlq`.
#[derive(clap::Args, Debug)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(clap::Subcommand, Debug)]
enum DlqCommand {
    /// Print the dead letters of GROUP, oldest first: entry id, attempts, error, event.
    List {
        /// The consumer group.
        group: String,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 100)]
        count: usize,
        /// Print each dead letter as its wire envelope, one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Move up to N dead letters of GROUP back to the stream, for GROUP only, under
    /// their original topic.
    Redrive {
        /// The consumer group.
        group: String,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        count: usize,
    },
}

/// Makes `selection` the Redis durable mode (`delivery = "streams"`); `option` names
/// what asked for it in the error for another backend.
///
/// # Errors
/// A usage failure when the selected backend is not Redis.
pub(crate) fn durable(selection: &mut Selection, option: &str) -> Result<(), Failure> {
    if selection.backend() != "redis" {
        return Err(Failure::usage(format!(
            "{option}: consumer groups on the server need the Redis durable mode \
             (--url redis://HOST:6379), not {}",
            selection.backend()
        )));
    }
    if let Value::Object(map) = &mut selection.value {
        map.insert("delivery".into(), "streams".into());
    }
    Ok(())
}

/// Runs `eventbus dlq`.
pub(crate) async fn run(args: DlqArgs, backend: &BackendArgs) -> Result<(), Failure> {
    let mut selection = backend.select()?;
    durable(&mut selection, "dlq")?;
    let Config::Redis(mut config) = selection.parse()? else {
        return Err(Failure::usage("dlq: needs the redis backend"));
    };
    config.delivery = DeliveryMode::Streams;
    let bus = RedisEventBus::new(config)?;
    let result = match args.command {
        DlqCommand::List { group, count, json } => list(&bus, &group, count, json).await,
        DlqCommand::Redrive { group, count } => {
            let moved = bus.redrive(&group, count).await?;
            notice(format!("redrove {moved} dead letter(s) of group {group}"));
            Ok(())
        }
    };
    let _ = event_bus::EventBus::close(&bus).await;
    result
}

async fn list(bus: &RedisEventBus, group: &str, count: usize, json: bool) -> Result<(), Failure> {
    use std::io::Write;
    let letters = bus.dead_letters(group, count).await?;
    let mut out = std::io::stdout().lock();
    for (id, letter) in &letters {
        let line = if json {
            envelope::encode(letter)?
        } else {
            let info = DeadLetterInfo::of(letter);
            let (attempts, error) = info.map_or((0, String::new()), |i| (i.attempts, i.error));
            format!(
                "{id} attempts={attempts} error={error:?} {}",
                human_line(letter)
            )
        };
        if writeln!(out, "{line}").is_err() {
            return Ok(()); // stdout closed
        }
    }
    drop(out);
    notice(format!("{} dead letter(s) in group {group}", letters.len()));
    Ok(())
}
