//! The configuration keys of the durable delivery mode.

use std::time::Duration;

use event_bus_core::{Error, config::check_seconds};
use serde::{Deserialize, Serialize};

/// How a PostgreSQL bus delivers events (config key `delivery`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// LISTEN/NOTIFY pub/sub: at-most-once, nothing stored. The default.
    #[default]
    Notify,
    /// The durable delivery table: at-least-once per consumer group, with retries,
    /// dead letters and competing consumers (see `docs/backends/postgres.md`).
    Table,
}

/// Settings of the durable delivery mode (config section `durable`; used only with
/// `delivery = "table"`). Unknown keys are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurableConfig {
    /// How long a claimed event stays invisible to other members of its group while
    /// it is handled; running handlers extend it (every third of it). A consumer that
    /// dies leaves its events to be claimed again after this long. Default: `30.0`.
    #[serde(
        default = "default_lease",
        deserialize_with = "event_bus_core::seconds::deserialize"
    )]
    pub lease_seconds: f64,
    /// Most events one claim takes (and so at most the duplicates a killed consumer
    /// causes per subscription). Default: `100`.
    #[serde(default = "default_batch")]
    pub claim_batch_size: u32,
    /// How often an idle claimer looks for work without a wake-up (jittered by up to
    /// a quarter either way): NOTIFY wake-ups are hints and may be lost.
    /// Default: `1.0`.
    #[serde(
        default = "default_poll",
        deserialize_with = "event_bus_core::seconds::deserialize"
    )]
    pub poll_interval_seconds: f64,
    /// Whether a publish sends a NOTIFY to wake the claimers. Turn it off on
    /// write-heavy databases (NOTIFY takes a database-wide lock at commit); claimers
    /// then find work by polling. Default: `true`.
    #[serde(default = "default_notify")]
    pub notify: bool,
    /// How long an event is kept after every group has acknowledged it (it is
    /// deleted in batches by a subscribed bus; events some group still has to handle
    /// or holds as a dead letter are never deleted). Default: `3600.0`.
    #[serde(
        default = "default_retention",
        deserialize_with = "event_bus_core::seconds::deserialize"
    )]
    pub retention_seconds: f64,
    /// How often a bus with a durable subscription runs its maintenance: it removes
    /// the own groups (and undelivered rows) of subscriptions whose bus stopped without
    /// removing them, such as a crashed process (groups not seen for ten leases, at
    /// least a minute), then deletes events past `retention_seconds` in batches.
    /// Default: `30.0`.
    #[serde(
        default = "default_maintenance",
        deserialize_with = "event_bus_core::seconds::deserialize"
    )]
    pub maintenance_interval_seconds: f64,
}

fn default_lease() -> f64 {
    30.0
}
fn default_batch() -> u32 {
    100
}
fn default_poll() -> f64 {
    1.0
}
fn default_notify() -> bool {
    true
}
fn default_retention() -> f64 {
    3600.0
}
fn default_maintenance() -> f64 {
    30.0
}

impl Default for DurableConfig {
    fn default() -> Self {
        Self {
            lease_seconds: default_lease(),
            claim_batch_size: default_batch(),
            poll_interval_seconds: default_poll(),
            notify: default_notify(),
            retention_seconds: default_retention(),
            maintenance_interval_seconds: default_maintenance(),
        }
    }
}

impl DurableConfig {
    /// Checks every key.
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad key (`durable.<key>`).
    pub fn validate(&self) -> Result<(), Error> {
        check_seconds("durable.lease_seconds", self.lease_seconds, false)?;
        check_seconds(
            "durable.poll_interval_seconds",
            self.poll_interval_seconds,
            false,
        )?;
        check_seconds("durable.retention_seconds", self.retention_seconds, true)?;
        check_seconds(
            "durable.maintenance_interval_seconds",
            self.maintenance_interval_seconds,
            false,
        )?;
        if self.lease_seconds < 0.1 {
            return Err(Error::config(
                "durable.lease_seconds",
                "must be at least 0.1",
            ));
        }
        if !(1..=10_000).contains(&self.claim_batch_size) {
            return Err(Error::config(
                "durable.claim_batch_size",
                "must be between 1 and 10000",
            ));
        }
        Ok(())
    }

    /// `lease_seconds` as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.lease_seconds)
    }

    /// `maintenance_interval_seconds` as a duration.
    pub fn maintenance_interval(&self) -> Duration {
        Duration::from_secs_f64(self.maintenance_interval_seconds)
    }

    /// `poll_interval_seconds` as a duration.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs_f64(self.poll_interval_seconds)
    }
}
