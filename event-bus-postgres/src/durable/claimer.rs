//! The claimer of one consumer group in one bus: claims batches of the group's visible
//! deliveries, hands each to one of the bus's member subscriptions (taking turns), and
//! extends the leases of the events still being handled.
//!
//! A claim is one statement (`FOR UPDATE SKIP LOCKED`, a fresh lease token, visibility
//! pushed by the lease, attempts incremented); the handler never runs inside it. A full
//! batch is followed at once by the next claim; otherwise the claimer waits for a
//! wake-up (a NOTIFY naming its group) or the jittered poll interval.

use std::{sync::Arc, time::Duration};

use event_bus_core::{
    Dispatcher, Error, SubscriptionId, durable::DurableDelivery, envelope::decode,
};
use tokio::sync::{Notify, watch};

use super::{
    Shared,
    settle::{Counters, Held, PgSettle},
};

/// What a claimer needs.
pub(crate) struct Claimer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) dispatcher: Dispatcher,
    /// This bus's live subscriptions of the group.
    pub(crate) members: Arc<std::sync::Mutex<Vec<SubscriptionId>>>,
    pub(crate) group: Arc<str>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) counters: Arc<Counters>,
    /// Counts claims that left nothing visible (fewer rows than a batch, all handed
    /// over): a flush waits for one that started after it.
    pub(crate) passes: watch::Sender<u64>,
    /// The events claimed here and not yet settled.
    pub(crate) held: Arc<Held>,
}

/// One claimed row.
struct Claimed {
    event_id: i64,
    attempts: i32,
    envelope: String,
    reclaimed: bool,
    priority: i32,
}

impl Claimer {
    /// Whether a member here is live (claiming for none would only hold events back).
    fn has_member(&self) -> bool {
        let members = self
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        members.iter().any(|id| self.dispatcher.is_subscribed(*id))
    }

    /// The next live member to hand an event to, taking turns; `None` when none is.
    fn member(&self, turn: &mut usize) -> Option<SubscriptionId> {
        let mut members = self
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        members.retain(|id| self.dispatcher.is_subscribed(*id));
        if members.is_empty() {
            return None;
        }
        *turn = turn.wrapping_add(1);
        Some(members[*turn % members.len()])
    }

    /// Runs until the bus closes or the group's last member here is released (which
    /// aborts it).
    pub(crate) async fn run(self) {
        let held = self.held.clone();
        let heartbeat = tokio::spawn(heartbeat(
            self.shared.clone(),
            self.group.clone(),
            held.clone(),
        ));
        let _stop_heartbeat = AbortOnDrop(heartbeat);
        let batch = self.shared.config.claim_batch_size;
        let mut failures = 0_u32;
        let mut turn = 0_usize;
        let batch_len = batch as usize;
        while !self.dispatcher.is_closed() {
            // At most one batch in flight (claimed, not settled): that bounds the
            // duplicates a crash causes. Claim again once half of it is settled.
            held.wait_below(batch_len / 2).await;
            if !self.has_member() {
                // Nothing to hand over here: a flush need not wait for this group.
                self.passes.send_modify(|n| *n += 1);
                self.idle(self.shared.config.poll_interval()).await;
                continue;
            }
            let room = batch_len - held.in_flight();
            let token: Arc<str> = uuid::Uuid::new_v4().to_string().into();
            let rows = match self.claim(&token, room).await {
                Ok(rows) => {
                    failures = 0;
                    rows
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(group = %self.group, error = %e, failures, "claiming durable deliveries failed; retrying");
                    }
                    self.idle(Duration::from_millis(100 * u64::from(failures.min(10))))
                        .await;
                    continue;
                }
            };
            let full = rows.len() >= room;
            held.add(&token, rows.len());
            let mut rows = rows.into_iter();
            while let Some(row) = rows.next() {
                // No live member here right now (the last one is being released, which
                // stops this claimer): the rest wait on the server for their lease.
                let Some(member) = self.member(&mut turn) else {
                    held.forget(&token, 1 + rows.len());
                    break;
                };
                if !self.deliver(member, row, &token, &held).await {
                    return;
                }
            }
            if full {
                continue;
            }
            self.passes.send_modify(|n| *n += 1);
            let poll = self.shared.config.poll_interval();
            self.idle(jitter(poll)).await;
        }
    }

    /// Waits for a wake-up or `after`.
    async fn idle(&self, after: Duration) {
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(after) => {}
        }
    }

    async fn claim(&self, token: &Arc<str>, room: usize) -> Result<Vec<Claimed>, Error> {
        let sql = &self.shared.sql.claim;
        let group: &str = &self.group;
        let token: &str = token;
        let limit = i64::try_from(room).unwrap_or(i64::MAX);
        let lease = self.shared.config.lease_seconds;
        let rows = self
            .shared
            .pool
            .query_prepared(
                "claiming durable deliveries",
                sql,
                &[&group, &limit, &token, &lease],
            )
            .await
            .map_err(|e| Error::connection("claiming durable deliveries", e.source))?;
        let mut claimed = rows
            .iter()
            .map(|r| {
                Ok(Claimed {
                    event_id: r.try_get(0)?,
                    attempts: r.try_get(1)?,
                    envelope: r.try_get(2)?,
                    reclaimed: r.try_get(3)?,
                    priority: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(|e| Error::connection("reading claimed deliveries", e))?;
        // An UPDATE returns rows in no particular order: keep the claim's order.
        claimed.sort_by_key(|c| (c.priority, c.event_id));
        Ok(claimed)
    }

    /// Hands one claimed row to `member`'s worker. `false` once the bus has closed. A
    /// row the member no longer takes stays claimed until its lease passes.
    async fn deliver(
        &self,
        member: SubscriptionId,
        row: Claimed,
        token: &Arc<str>,
        held: &Arc<Held>,
    ) -> bool {
        if row.reclaimed {
            self.counters
                .reclaimed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let settle = Box::new(PgSettle {
            shared: self.shared.clone(),
            group: self.group.clone(),
            event_id: row.event_id,
            token: token.clone(),
            held: held.clone(),
            counters: self.counters.clone(),
        });
        let event = match decode(row.envelope.as_bytes(), self.shared.max_bytes) {
            Ok(event) => event,
            Err(e) => {
                // Unreadable: it can never be handled; keep it as a dead letter.
                self.dispatcher.metrics().add_malformed(1);
                tracing::warn!(group = %self.group, event_id = row.event_id, error = %e, "stored durable event is malformed: dead-lettered");
                let _ = settle.dead_letter_raw(&row.envelope, &e.to_string()).await;
                return true;
            }
        };
        let attempt = u32::try_from(row.attempts).unwrap_or(1);
        let delivery = DurableDelivery { attempt, settle };
        !matches!(
            self.dispatcher.deliver_to(member, event, delivery).await,
            Err(Error::Closed)
        )
    }
}

/// Every third of a lease: extends the leases of the events this claimer still holds,
/// and marks the group as seen (a subscription's own group that nobody marks for long
/// is removed, see [`super::stats::maintain`]).
async fn heartbeat(shared: Arc<Shared>, group: Arc<str>, held: Arc<Held>) {
    let every = shared.config.lease() / 3;
    loop {
        tokio::time::sleep(every).await;
        let group: &str = &group;
        if let Err(e) = shared
            .pool
            .execute_prepared("marking a group seen", &shared.sql.touch_group, &[&group])
            .await
        {
            tracing::debug!(%group, error = %e.source, "marking a durable group seen failed");
        }
        let tokens = held.tokens();
        if tokens.is_empty() {
            continue;
        }
        let lease = shared.config.lease_seconds;
        if let Err(e) = shared
            .pool
            .execute_prepared(
                "extending leases",
                &shared.sql.heartbeat,
                &[&group, &tokens, &lease],
            )
            .await
        {
            tracing::debug!(%group, error = %e.source, "extending durable leases failed");
        }
    }
}

/// `d` moved by up to a quarter either way, so claimers do not poll in step.
fn jitter(d: Duration) -> Duration {
    let r = f64::from(uuid::Uuid::new_v4().as_u128() as u16) / f64::from(u16::MAX);
    d.mul_f64(0.75 + r / 2.0)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
