//! Settling one claimed delivery on the server, fenced by its lease token.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use async_trait::async_trait;
use event_bus_core::{Error, Event, durable::Settle, envelope::encode};

use super::Shared;

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
        self.released.notify_one();
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
            return Err(Error::connection(
                what,
                "the lease expired and the event was claimed again: this consumer no longer holds it",
            ));
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
    async fn ack(self: Box<Self>) -> Result<(), Error> {
        let sql = &self.shared.sql.ack;
        let group: &str = &self.group;
        let token: &str = &self.token;
        self.fenced(
            "acknowledging a durable delivery",
            sql,
            &[&group, &self.event_id, &token],
        )
        .await?;
        self.counters.acked.fetch_add(1, Relaxed);
        Ok(())
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
