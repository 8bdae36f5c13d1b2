//! Settling one claimed delivery on the server, fenced by its lease token.
//!
//! Acknowledgements are coalesced per bus ([`Acks`]): an ack that finds none in flight
//! is sent at once; those that arrive meanwhile (from any group of the bus) are sent
//! together in one `DELETE` when it returns, each still fenced by its own lease token
//! and each caller learning whether its own row was deleted. The subscription's
//! worker does not wait for the answer ([`Settle::ack_in_background`]): a task of its
//! own does, so one subscription's acknowledgements travel together too.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use async_trait::async_trait;
use event_bus_core::{
    Error, Event,
    coalesce::{Coalescer, SendBatch},
    durable::Settle,
    envelope::encode,
};

use super::Shared;
use crate::publisher::Pool;

/// Most acknowledgements settled in one statement.
pub(crate) const MAX_ACK_BATCH: usize = 1000;

/// The acknowledgements of one bus, coalesced.
pub(crate) type Acks = Coalescer<AckRequest, AckOutcome, AckSender>;

/// One acknowledgement: the delivery and the lease token it was claimed with.
pub(crate) struct AckRequest {
    group: Arc<str>,
    event_id: i64,
    token: Arc<str>,
}

/// Whether the delivery was deleted (`false`: its lease had passed to another claim),
/// or why the statement failed.
pub(crate) type AckOutcome = Result<bool, Arc<str>>;

/// Sends a batch of acknowledgements as one fenced `DELETE` on the claim connections.
pub(crate) struct AckSender {
    pub(crate) pool: Arc<Pool>,
    /// The prefix's [`ack_many`](super::schema::Sql::ack_many) statement.
    pub(crate) sql: String,
}

#[async_trait]
impl SendBatch<AckRequest, AckOutcome> for AckSender {
    async fn send(&self, items: Vec<AckRequest>) -> Vec<AckOutcome> {
        let groups: Vec<&str> = items.iter().map(|r| &*r.group).collect();
        let ids: Vec<i64> = items.iter().map(|r| r.event_id).collect();
        let tokens: Vec<&str> = items.iter().map(|r| &*r.token).collect();
        let what = "acknowledging durable deliveries";
        let mut result = self
            .pool
            .query_prepared(what, &self.sql, &[&groups, &ids, &tokens])
            .await;
        // Rows of one batch are locked in no set order, so a multi-row statement next
        // to another one (a heartbeat) can deadlock; the server then rolls it back,
        // and running it again is safe (each row is still fenced by its token).
        if result.as_ref().is_err_and(|e| is_deadlock(&*e.source)) {
            result = self
                .pool
                .query_prepared(what, &self.sql, &[&groups, &ids, &tokens])
                .await;
        }
        match result {
            Ok(rows) => {
                let deleted: HashSet<(&str, i64, &str)> = rows
                    .iter()
                    .filter_map(|r| {
                        Some((r.try_get(0).ok()?, r.try_get(1).ok()?, r.try_get(2).ok()?))
                    })
                    .collect();
                items
                    .iter()
                    .map(|r| Ok(deleted.contains(&(&*r.group, r.event_id, &*r.token))))
                    .collect()
            }
            Err(e) => {
                let why: Arc<str> = error_chain(&*e.source).into();
                items.iter().map(|_| Err(why.clone())).collect()
            }
        }
    }
}

/// SQLSTATE `deadlock_detected`: the statement was rolled back and may be run again.
fn is_deadlock(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|c| *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
}

/// `e` and its sources, `: `-separated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Refusal of a settle whose lease passed to another consumer.
const FENCED: &str =
    "the lease expired and the event was claimed again: this consumer no longer holds it";

/// Per-group counters of the durable mode (see [`DurableGroupStats`](super::DurableGroupStats)).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) acked: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    /// Settles refused because the lease had passed to another consumer.
    pub(crate) fenced: AtomicU64,
}

/// The lease tokens of claims whose events are still being handled here, with how
/// many of each claim's events are left: the heartbeat extends these, and the claimer
/// keeps their total (the events in flight) within one batch.
#[derive(Default)]
pub(crate) struct Held {
    tokens: Mutex<HashMap<Arc<str>, usize>>,
    released: tokio::sync::Notify,
}

impl Held {
    pub(crate) fn add(&self, token: &Arc<str>, events: usize) {
        if events > 0 {
            *lock(&self.tokens).entry(token.clone()).or_default() += events;
        }
    }

    fn release(&self, token: &Arc<str>) {
        self.forget(token, 1);
    }

    /// `events` of the claim `token` are no longer handled here.
    pub(crate) fn forget(&self, token: &Arc<str>, events: usize) {
        let mut held = lock(&self.tokens);
        if let Some(n) = held.get_mut(token) {
            *n = n.saturating_sub(events);
            if *n == 0 {
                held.remove(token);
            }
        }
        drop(held);
        // The claimer, a flush and a close may all be waiting.
        self.released.notify_waiters();
    }

    /// Events claimed here and not yet settled.
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.tokens).values().sum()
    }

    /// Waits until at most `limit` events are in flight.
    pub(crate) async fn wait_below(&self, limit: usize) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.in_flight() <= limit {
                return;
            }
            released.await;
        }
    }

    pub(crate) fn tokens(&self) -> Vec<String> {
        lock(&self.tokens).keys().map(|t| t.to_string()).collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Settles one delivery. Dropping it without settling stops extending its lease, so
/// the event is claimed again once the lease passes.
pub(crate) struct PgSettle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) group: Arc<str>,
    pub(crate) event_id: i64,
    pub(crate) token: Arc<str>,
    pub(crate) held: Arc<Held>,
    pub(crate) counters: Arc<Counters>,
}

impl Drop for PgSettle {
    fn drop(&mut self) {
        self.held.release(&self.token);
    }
}

impl PgSettle {
    /// Runs a fenced statement; zero rows means another consumer holds the event now.
    async fn fenced(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), Error> {
        let changed = self
            .shared
            .pool
            .execute_prepared(what, sql, params)
            .await
            .map_err(|e| Error::connection(what, e.source))?;
        if changed == 0 {
            self.counters.fenced.fetch_add(1, Relaxed);
            return Err(Error::connection(what, FENCED));
        }
        Ok(())
    }
}

impl PgSettle {
    /// Moves an event whose stored envelope cannot be read to the dead letters as it
    /// is, under the topic `(malformed)`.
    pub(crate) async fn dead_letter_raw(self, envelope: &str, error: &str) -> Result<(), Error> {
        let sql = &self.shared.sql.dead_letter;
        let group: &str = &self.group;
        let token: &str = &self.token;
        let error = Some(error);
        self.fenced(
            "dead-lettering a malformed durable delivery",
            sql,
            &[
                &group,
                &self.event_id,
                &token,
                &"(malformed)",
                &envelope,
                &error,
            ],
        )
        .await?;
        self.counters.dead_lettered.fetch_add(1, Relaxed);
        Ok(())
    }
}

#[async_trait]
impl Settle for PgSettle {
    /// Deletes the delivery, fenced by its lease token, coalesced with the bus's
    /// other acknowledgements (see the [module docs](self)).
    async fn ack(self: Box<Self>) -> Result<(), Error> {
        let what = "acknowledging a durable delivery";
        let _under_way = self.shared.acking.enter();
        let request = AckRequest {
            group: self.group.clone(),
            event_id: self.event_id,
            token: self.token.clone(),
        };
        match self.shared.acks.submit(request).await {
            Some(Ok(true)) => {
                self.counters.acked.fetch_add(1, Relaxed);
                Ok(())
            }
            Some(Ok(false)) => {
                self.counters.fenced.fetch_add(1, Relaxed);
                Err(Error::connection(what, FENCED))
            }
            Some(Err(why)) => Err(Error::connection(what, why.to_string())),
            None => Err(Error::connection(
                what,
                "the acknowledgement was not sent (the runtime is shutting down)",
            )),
        }
    }

    /// `true`: acknowledgements are coalesced, so the worker goes on while this one is
    /// on its way. It stays counted in [`Held`] until answered (this settle is dropped
    /// then): the claimer's bound on events in flight, `flush` and `close` wait for it.
    fn ack_in_background(&self) -> bool {
        true
    }

    async fn retry(self: Box<Self>, delay: Duration, error: &str) -> Result<(), Error> {
        let sql = &self.shared.sql.retry;
        let group: &str = &self.group;
        let token: &str = &self.token;
        let secs = delay.as_secs_f64();
        self.fenced(
            "scheduling a durable retry",
            sql,
            &[&group, &self.event_id, &token, &secs, &error],
        )
        .await?;
        self.counters.retried.fetch_add(1, Relaxed);
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, letter: Event) -> Result<(), Error> {
        let sql = &self.shared.sql.dead_letter;
        let group: &str = &self.group;
        let token: &str = &self.token;
        let envelope = encode(&letter)?;
        let error = letter
            .metadata
            .get(event_bus_core::dead_letter::ERROR)
            .cloned();
        let topic: &str = &letter.topic;
        self.fenced(
            "dead-lettering a durable delivery",
            sql,
            &[&group, &self.event_id, &token, &topic, &envelope, &error],
        )
        .await?;
        self.counters.dead_lettered.fetch_add(1, Relaxed);
        Ok(())
    }
}
