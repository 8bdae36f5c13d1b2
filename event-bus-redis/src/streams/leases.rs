//! Leases of what a consumer holds: the entries handed to the dispatcher and not yet
//! settled are kept from other members by extending their lease (`XCLAIM ... JUSTID`)
//! every third of `streams.lease_seconds`.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use event_bus_core::Error;
use redis::Value;

use super::{Streams, consumer::Ctx, entry, lock};

/// Ids of the entries a consumer holds (handed to the dispatcher, not settled yet):
/// their lease is extended while they are held.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<HashSet<String>>);

impl InFlight {
    pub(crate) fn insert(&self, id: &str) -> bool {
        lock(&self.0).insert(id.to_owned())
    }

    pub(crate) fn remove(&self, id: &str) {
        lock(&self.0).remove(id);
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        lock(&self.0).contains(id)
    }

    fn snapshot(&self) -> Vec<String> {
        lock(&self.0).iter().cloned().collect()
    }
}

/// Extends the lease of every held entry still pending with this consumer, every third
/// of the lease.
pub(super) async fn heartbeat_loop(ctx: Arc<Ctx>, lease: Duration) {
    let period = (lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        let Some(streams) = ctx.streams.upgrade() else {
            return;
        };
        let held = ctx.in_flight.snapshot();
        if held.is_empty() {
            continue;
        }
        if let Err(e) = extend(&streams, &ctx, held).await {
            tracing::warn!(group = %ctx.group, consumer = %ctx.name, error = %e, "could not extend leases");
        }
    }
}

async fn extend(streams: &Streams, ctx: &Ctx, held: Vec<String>) -> Result<(), Error> {
    // Only what is still ours: a member that took an entry over keeps it.
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(&ctx.stream).arg(&ctx.group).arg("-").arg("+");
    cmd.arg(held.len() + 10_000).arg(&ctx.name);
    let reply: Value = streams
        .commands
        .run("list own pending entries", &cmd)
        .await?;
    let ours: HashSet<String> = entry::pending_reply(&reply)
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    let ids: Vec<&String> = held.iter().filter(|id| ours.contains(*id)).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut cmd = redis::cmd("XCLAIM");
    cmd.arg(&ctx.stream).arg(&ctx.group).arg(&ctx.name).arg(0);
    cmd.arg(&ids).arg("JUSTID");
    streams.commands.run::<Value>("extend leases", &cmd).await?;
    Ok(())
}
