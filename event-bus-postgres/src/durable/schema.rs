//! The tables of the durable delivery mode and every statement run on them.
//!
//! For a `channel_prefix` `P` (validated: ASCII letters, digits and `_`), the tables are
//! created on first use, in one transaction serialized by an advisory lock:
//!
//! ```sql
//! CREATE TABLE "P_schema"       (version int NOT NULL);
//! CREATE TABLE "P_events"       (id bigserial PRIMARY KEY, topic text NOT NULL,
//!                                priority int NOT NULL, envelope text NOT NULL,
//!                                created_at timestamptz NOT NULL DEFAULT now());
//! CREATE TABLE "P_groups"       (name text PRIMARY KEY, pattern text NOT NULL,
//!                                regex text NOT NULL, max_attempts int NOT NULL,
//!                                created_at timestamptz NOT NULL DEFAULT now(),
//!                                seen_at timestamptz NOT NULL DEFAULT now());
//! CREATE TABLE "P_deliveries"   (group_name text, event_id bigint, priority int NOT NULL,
//!                                attempts int NOT NULL DEFAULT 0,
//!                                visible_after timestamptz NOT NULL DEFAULT now(),
//!                                lease text, last_error text,
//!                                PRIMARY KEY (group_name, priority, event_id))
//!                                WITH (fillfactor = 50);
//! CREATE TABLE "P_dead_letters" (group_name text, event_id bigint, topic text NOT NULL,
//!                                envelope text NOT NULL, attempts int NOT NULL,
//!                                last_error text, dead_at timestamptz NOT NULL DEFAULT now(),
//!                                PRIMARY KEY (group_name, event_id));
//! ```
//!
//! plus the indexes `P_deliveries_event (event_id, group_name)` and
//! `P_dead_letters_event (event_id)`. The deliveries' primary key is the claim order (a
//! delivery's priority is its event's, so it is as unique as `(group_name, event_id)`);
//! settles find their row by the event index. The claim rewrites a delivery's lease,
//! attempts and visibility, none of them indexed: with pages left half empty the new
//! row version stays on its page and no index is written (a heap-only update).
//!
//! `P_schema` holds the [`SCHEMA_VERSION`] the tables were created or last migrated
//! to; a bus refuses to run against a newer version. Version 1 had the primary key
//! `(group_name, event_id)`, a separate claim index `P_deliveries_claim`, the event
//! index on `event_id` alone and the default fill factor; the first bus of version 2
//! to start migrates such tables in the creating transaction.
//!
//! Every value (topics, envelopes, group names, patterns, regular expressions, lease
//! tokens, errors) is a bound parameter; only the quoted table names are part of the
//! statements' text.

use sha2::{Digest, Sha256};

use crate::channel::quote_ident;

/// The version of the tables this library creates and expects.
pub const SCHEMA_VERSION: i32 = 2;

/// The fill factor of the deliveries table: room on each page for the claim's new row
/// version.
const DELIVERIES_FILLFACTOR: u32 = 50;

/// Every statement of one prefix, built once.
pub(crate) struct Sql {
    pub(crate) create: String,
    pub(crate) version: String,
    pub(crate) register: String,
    pub(crate) publish_notify: String,
    pub(crate) publish_quiet: String,
    pub(crate) claim: String,
    pub(crate) heartbeat: String,
    /// Acknowledges many deliveries, each fenced by its own lease token; returns the
    /// ones it deleted.
    pub(crate) ack_many: String,
    pub(crate) retry: String,
    pub(crate) dead_letter: String,
    pub(crate) dlq_list: String,
    pub(crate) redrive: String,
    pub(crate) cleanup: String,
    pub(crate) lag: String,
    pub(crate) drop_group: String,
    pub(crate) touch_group: String,
    pub(crate) expire_groups: String,
    pub(crate) scheduled: String,
    pub(crate) drop_group_rows: String,
    pub(crate) oldest: String,
    pub(crate) dead_tuples: String,
    /// The quoted name of the deliveries table, as `regclass` text.
    pub(crate) deliveries_name: String,
}

impl Sql {
    /// The statements of a validated `prefix`.
    pub(crate) fn new(prefix: &str) -> Self {
        let t = |name: &str| quote_ident(&format!("{prefix}_{name}"));
        let (s, e, g, d, x) = (
            t("schema"),
            t("events"),
            t("groups"),
            t("deliveries"),
            t("dead_letters"),
        );
        // The deliveries table's quoted name as an SQL string literal (for `regclass`);
        // the validated prefix holds no quote of either kind.
        let d_text = format!("'{d}'");
        let (claim_idx, event_idx, dead_idx) = (
            t("deliveries_claim"),
            t("deliveries_event"),
            t("dead_letters_event"),
        );
        // The lock key is a number derived from the prefix, not a value from outside.
        let lock = lock_key(prefix);
        let create = format!(
            "SELECT pg_advisory_xact_lock({lock});
CREATE TABLE IF NOT EXISTS {s} (version int NOT NULL);
CREATE TABLE IF NOT EXISTS {e} (id bigserial PRIMARY KEY, topic text NOT NULL, priority int NOT NULL, envelope text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {g} (name text PRIMARY KEY, pattern text NOT NULL, regex text NOT NULL, max_attempts int NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), seen_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {d} (group_name text NOT NULL, event_id bigint NOT NULL, priority int NOT NULL, attempts int NOT NULL DEFAULT 0, visible_after timestamptz NOT NULL DEFAULT now(), lease text, last_error text, PRIMARY KEY (group_name, priority, event_id)) WITH (fillfactor = {DELIVERIES_FILLFACTOR});
CREATE INDEX IF NOT EXISTS {event_idx} ON {d} (event_id, group_name);
CREATE TABLE IF NOT EXISTS {x} (group_name text NOT NULL, event_id bigint NOT NULL, topic text NOT NULL, envelope text NOT NULL, attempts int NOT NULL, last_error text, dead_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (group_name, event_id));
CREATE INDEX IF NOT EXISTS {dead_idx} ON {x} (event_id);
INSERT INTO {s} (version) SELECT {SCHEMA_VERSION} WHERE NOT EXISTS (SELECT 1 FROM {s});
DO $migrate$ BEGIN
  IF (SELECT max(version) FROM {s}) = 1 THEN
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', {d_text}, (SELECT conname FROM pg_constraint WHERE conrelid = {d_text}::regclass AND contype = 'p'));
    ALTER TABLE {d} ADD PRIMARY KEY (group_name, priority, event_id), SET (fillfactor = {DELIVERIES_FILLFACTOR});
    DROP INDEX {event_idx};
    CREATE INDEX {event_idx} ON {d} (event_id, group_name);
    UPDATE {s} SET version = 2;
  END IF;
END $migrate$;
DROP INDEX IF EXISTS {claim_idx};"
        );
        let publish = |notify: &str| {
            format!(
                "WITH ev AS (
  INSERT INTO {e} (topic, priority, envelope)
  SELECT * FROM unnest($1::text[], $2::int[], $3::text[])
  RETURNING id, topic, priority
), dl AS (
  INSERT INTO {d} (group_name, event_id, priority)
  SELECT g.name, ev.id, ev.priority FROM ev JOIN {g} g ON ev.topic ~ g.regex
  RETURNING group_name
), woken AS (SELECT json_agg(DISTINCT group_name)::text AS groups FROM dl)
SELECT {notify} FROM woken WHERE groups IS NOT NULL"
            )
        };
        Self {
            version: format!("SELECT max(version) FROM {s}"),
            register: format!(
                "INSERT INTO {g} (name, pattern, regex, max_attempts) VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE SET pattern = EXCLUDED.pattern, regex = EXCLUDED.regex, max_attempts = EXCLUDED.max_attempts, seen_at = now()
RETURNING (SELECT pattern FROM {g} WHERE name = $1)"
            ),
            // A payload of 8000 bytes or more would fail the publish: wake every group then.
            publish_notify: publish(
                "pg_notify($4, CASE WHEN length(groups) < 7000 THEN groups ELSE '*' END)",
            ),
            publish_quiet: publish("1"),
            // The locked rows are updated by their `ctid` (no index lookup); the key
            // columns are compared too, so a row version that moved is left unclaimed
            // rather than another row claimed.
            claim: format!(
                "WITH c AS (
  SELECT ctid AS row_id, group_name, event_id, lease AS old_lease FROM {d}
  WHERE group_name = $1 AND visible_after <= now()
  ORDER BY priority, event_id
  LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE {d} d SET lease = $3, visible_after = now() + make_interval(secs => $4), attempts = d.attempts + 1
FROM c JOIN {e} e ON e.id = c.event_id
WHERE d.ctid = c.row_id AND d.group_name = c.group_name AND d.event_id = c.event_id
RETURNING d.event_id, d.attempts, e.envelope, c.old_lease IS NOT NULL, d.priority"
            ),
            heartbeat: format!(
                "UPDATE {d} SET visible_after = now() + make_interval(secs => $3)
WHERE group_name = $1 AND lease = ANY($2::text[])"
            ),
            ack_many: format!(
                "DELETE FROM {d} d USING unnest($1::text[], $2::bigint[], $3::text[]) AS a(group_name, event_id, lease)
WHERE d.group_name = a.group_name AND d.event_id = a.event_id AND d.lease = a.lease
RETURNING d.group_name, d.event_id, d.lease"
            ),
            retry: format!(
                "UPDATE {d} SET visible_after = now() + make_interval(secs => $4), last_error = $5, lease = NULL
WHERE group_name = $1 AND event_id = $2 AND lease = $3"
            ),
            dead_letter: format!(
                "WITH gone AS (
  DELETE FROM {d} WHERE group_name = $1 AND event_id = $2 AND lease = $3
  RETURNING group_name, event_id, attempts
)
INSERT INTO {x} (group_name, event_id, topic, envelope, attempts, last_error)
SELECT gone.group_name, gone.event_id, $4, $5, gone.attempts, $6 FROM gone
ON CONFLICT (group_name, event_id) DO UPDATE SET topic = EXCLUDED.topic, envelope = EXCLUDED.envelope,
  attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, dead_at = now()"
            ),
            dlq_list: format!(
                "SELECT event_id, topic, attempts, last_error, envelope FROM {x}
WHERE group_name = $1 ORDER BY event_id LIMIT $2"
            ),
            redrive: format!(
                "WITH moved AS (
  DELETE FROM {x} WHERE group_name = $1 AND ($2::bigint[] IS NULL OR event_id = ANY($2))
  RETURNING group_name, event_id
)
INSERT INTO {d} (group_name, event_id, priority)
SELECT moved.group_name, moved.event_id, e.priority FROM moved JOIN {e} e ON e.id = moved.event_id
ON CONFLICT DO NOTHING"
            ),
            cleanup: format!(
                "DELETE FROM {e} WHERE id IN (
  SELECT ev.id FROM {e} ev
  WHERE ev.created_at < now() - make_interval(secs => $1)
    AND NOT EXISTS (SELECT 1 FROM {d} dl WHERE dl.event_id = ev.id)
    AND NOT EXISTS (SELECT 1 FROM {x} dead WHERE dead.event_id = ev.id)
  ORDER BY ev.id LIMIT $2)"
            ),
            scheduled: format!(
                "SELECT extract(epoch FROM min(visible_after) - now())::float8 FROM {d}
WHERE group_name = ANY($1) AND lease IS NULL AND attempts > 0"
            ),
            touch_group: format!("UPDATE {g} SET seen_at = now() WHERE name = $1"),
            // A subscription's own group (`_sub_...`) whose bus stopped without removing
            // it (a crash) is removed once no claimer has touched it for `$1` seconds.
            expire_groups: format!(
                "WITH gone AS (
  DELETE FROM {g} WHERE left(name, 5) = '_sub_' AND seen_at < now() - make_interval(secs => $1)
  RETURNING name
)
DELETE FROM {d} dl USING gone WHERE dl.group_name = gone.name"
            ),
            drop_group: format!("DELETE FROM {g} WHERE name = $1"),
            drop_group_rows: format!("DELETE FROM {d} WHERE group_name = $1"),
            lag: format!("SELECT group_name, count(*) FROM {d} GROUP BY group_name ORDER BY group_name"),
            oldest: format!(
                "SELECT extract(epoch FROM now() - min(e.created_at))::float8 FROM {d} dl JOIN {e} e ON e.id = dl.event_id"
            ),
            dead_tuples: "SELECT coalesce(n_dead_tup, 0)::bigint FROM pg_stat_user_tables WHERE relid = to_regclass($1)"
                .to_owned(),
            deliveries_name: d.clone(),
            create,
        }
    }
}

/// The advisory lock serializing table creation for `prefix`.
fn lock_key(prefix: &str) -> i64 {
    let digest = Sha256::digest(format!("multibus durable {prefix}").as_bytes());
    let mut bytes = [0_u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}
