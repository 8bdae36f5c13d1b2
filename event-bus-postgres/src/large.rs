//! Events too large for a NOTIFY payload, stored in a table and sent by reference.
//!
//! PostgreSQL refuses NOTIFY payloads of 8000 bytes or more. An envelope of that size
//! is inserted into the table `"{channel_prefix}_large_payloads"` (created with
//! `CREATE TABLE IF NOT EXISTS` by the first bus that publishes a large event) and the
//! notification carries a small reference instead:
//! `{"v":1,"ref":"<uuid>","topic":"<topic>"}`. The insert and the notification are one
//! statement, so the row is committed when, and only when, the notification is sent;
//! listeners fetch the rows of the references they receive, one query per batch of
//! notifications.
//!
//! Many listeners may read one row, so nobody deletes it on receipt: rows older than
//! `large_payload_ttl_seconds` are deleted by a publisher, at most once a minute, after
//! it publishes a large event. A listener that is further behind than the TTL finds
//! the row gone and counts the event as malformed.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use event_bus_core::BoxError;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::{channel::quote_ident, publisher::Pool};

/// NOTIFY payloads must be shorter than this many bytes.
pub const NOTIFY_PAYLOAD_LIMIT: usize = 8000;

/// How often at most a publisher deletes expired rows.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// The notification sent in place of a large envelope.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LargeRef {
    /// Envelope version ([`event_bus_core::envelope::WIRE_VERSION`]).
    pub(crate) v: u32,
    /// Primary key of the stored row.
    #[serde(rename = "ref")]
    pub(crate) id: Uuid,
    /// The event's topic, so listeners can check the channel before fetching.
    pub(crate) topic: String,
}

/// SQL for the large-payload table of one prefix.
pub(crate) struct LargeStore {
    create_sql: String,
    insert_sql: String,
    fetch_sql: String,
    cleanup_sql: String,
    ready: OnceCell<()>,
    last_cleanup: Mutex<Option<Instant>>,
    ttl: Duration,
}

impl LargeStore {
    /// The store of a validated `prefix`.
    pub(crate) fn new(prefix: &str, ttl: Duration) -> Self {
        let table = quote_ident(&format!("{prefix}_large_payloads"));
        let index = quote_ident(&format!("{prefix}_large_payloads_created_at"));
        Self {
            create_sql: format!(
                "CREATE TABLE IF NOT EXISTS {table} (id uuid PRIMARY KEY, topic text NOT NULL, \
                 envelope text NOT NULL, created_at timestamptz NOT NULL DEFAULT now()); \
                 CREATE INDEX IF NOT EXISTS {index} ON {table} (created_at)"
            ),
            insert_sql: format!(
                "WITH stored AS (INSERT INTO {table} (id, topic, envelope) \
                 SELECT i::uuid, tp, e FROM unnest($3::text[], $4::text[], $5::text[]) AS s(i, tp, e)) \
                 SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS n(c, p)"
            ),
            fetch_sql: format!(
                "SELECT id::text, envelope FROM {table} WHERE id = ANY($1::text[]::uuid[])"
            ),
            cleanup_sql: format!(
                "DELETE FROM {table} WHERE created_at < now() - make_interval(secs => $1::float8)"
            ),
            ready: OnceCell::new(),
            last_cleanup: Mutex::new(None),
            ttl,
        }
    }

    /// The statement that stores rows and sends notifications: parameters are arrays of
    /// channels, payloads, ids, topics and envelopes.
    pub(crate) fn insert_sql(&self) -> &str {
        &self.insert_sql
    }

    /// Creates the table unless this store already did (or saw it exists).
    pub(crate) async fn ensure_table(&self, pool: &Pool) -> Result<(), BoxError> {
        self.ready
            .get_or_try_init(|| async {
                match pool.batch_execute(&self.create_sql).await {
                    Ok(()) => Ok(()),
                    // Two sessions creating the table at once: the loser sees one of these.
                    Err(e) if is_concurrent_create(&*e) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await
            .map(drop)
    }

    /// Fetches the envelopes of `ids`; missing rows are absent from the map.
    pub(crate) async fn fetch(
        &self,
        pool: &Pool,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, String>, BoxError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows = pool.query_pairs(&self.fetch_sql, &[&ids]).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, envelope)| Some((id.parse().ok()?, envelope)))
            .collect())
    }

    /// Deletes expired rows if the last cleanup by this bus was over a minute ago.
    pub(crate) async fn cleanup_if_due(&self, pool: &Pool) {
        {
            let mut last = self
                .last_cleanup
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < CLEANUP_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        match pool
            .execute(&self.cleanup_sql, &[&self.ttl.as_secs_f64()])
            .await
        {
            Ok(n) => tracing::debug!(deleted = n, "expired large payloads deleted"),
            Err(e) => tracing::warn!(error = %e, "deleting expired large payloads failed"),
        }
    }
}

fn is_concurrent_create(e: &(dyn std::error::Error + 'static)) -> bool {
    use tokio_postgres::error::SqlState;
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|c| *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::DUPLICATE_TABLE)
}
