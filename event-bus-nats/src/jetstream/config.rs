//! Settings of the durable delivery mode (config section `jetstream`).

use std::time::Duration;

use event_bus_core::{Error, config::check_seconds};
use serde::{Deserialize, Serialize};

/// How the NATS backend carries events (config key `delivery`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Core NATS publish/subscribe: at-most-once, nothing kept on the server.
    #[default]
    Pubsub,
    /// JetStream with durable pull consumers: at-least-once per consumer group, events
    /// kept in a stream (see `docs/backends/nats.md`, *Durable delivery*).
    Jetstream,
}

/// Where a new consumer group starts (config key `jetstream.start`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    /// Only events published after the group was created (`DeliverPolicy::New`).
    #[default]
    Latest,
    /// Every event the stream still retains (`DeliverPolicy::All`).
    Earliest,
}

/// Settings of the durable mode (`delivery = "jetstream"`), section `jetstream`.
/// Unknown keys are rejected; a bad value is reported as `jetstream.<key>`.
///
/// ```
/// use event_bus_nats::NatsConfig;
/// let config = NatsConfig::from_json_str(
///     r#"{"delivery": "jetstream", "jetstream": {"lease_seconds": 60, "max_age_seconds": 604800}}"#,
/// )?;
/// assert_eq!(config.jetstream.lease().as_secs(), 60);
/// # Ok::<(), event_bus_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// How long an event may stay unacknowledged with a member that shows no sign of
    /// life before the server delivers it again (the consumer's `ack_wait`). A running
    /// handler keeps extending it (`+WPI` every third of it). Default: `30.0`.
    #[serde(deserialize_with = "event_bus_core::seconds::deserialize")]
    pub lease_seconds: f64,
    /// Events one pull request asks for (and so at most the duplicates a killed member
    /// causes per subscription, besides what its queue held). Default: `100`.
    pub batch_size: usize,
    /// Where a group that does not exist yet starts. Default: `latest`.
    pub start: StartPosition,
    /// Retention cap: events older than this are removed from the stream, whether or
    /// not every group has acknowledged them (such removals are counted as `lost`);
    /// `0`: no age limit. Also applies to dead letters. Default: `0`.
    #[serde(deserialize_with = "event_bus_core::seconds::deserialize")]
    pub max_age_seconds: f64,
    /// Retention cap on the stream's size in bytes (oldest removed first); `0`: none.
    /// Default: `0`.
    pub max_bytes: u64,
    /// Retention cap on the stream's number of events (oldest removed first); `0`:
    /// none. Default: `0`.
    pub max_msgs: u64,
    /// Copies of the stream in a JetStream cluster (1 to 5; 3 survives the loss of a
    /// node). Default: `1`.
    pub replicas: usize,
    /// Store the streams in memory instead of files: faster, and lost when the server
    /// restarts. Default: `false`.
    pub memory_storage: bool,
    /// Window within which the stream drops a second publish of the same event id (a
    /// retried publish whose first outcome was unknown). Default: `120.0`.
    #[serde(deserialize_with = "event_bus_core::seconds::deserialize")]
    pub duplicate_window_seconds: f64,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            lease_seconds: 30.0,
            batch_size: 100,
            start: StartPosition::Latest,
            max_age_seconds: 0.0,
            max_bytes: 0,
            max_msgs: 0,
            replicas: 1,
            memory_storage: false,
            duplicate_window_seconds: 120.0,
        }
    }
}

impl JetStreamConfig {
    /// Checks every value; keys are reported as `jetstream.<key>`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key.
    pub fn validate(&self) -> Result<(), Error> {
        check_seconds("jetstream.lease_seconds", self.lease_seconds, false)?;
        if self.lease_seconds < 0.1 {
            return Err(Error::config(
                "jetstream.lease_seconds",
                format!("must be at least 0.1, got {}", self.lease_seconds),
            ));
        }
        check_seconds("jetstream.max_age_seconds", self.max_age_seconds, true)?;
        check_seconds(
            "jetstream.duplicate_window_seconds",
            self.duplicate_window_seconds,
            false,
        )?;
        if self.max_age_seconds > 0.0 && self.duplicate_window_seconds > self.max_age_seconds {
            return Err(Error::config(
                "jetstream.duplicate_window_seconds",
                "must not exceed jetstream.max_age_seconds",
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Error::config(
                "jetstream.batch_size",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(Error::config(
                "jetstream.replicas",
                "must be between 1 and 5",
            ));
        }
        for (key, value) in [
            ("jetstream.max_bytes", self.max_bytes),
            ("jetstream.max_msgs", self.max_msgs),
        ] {
            if i64::try_from(value).is_err() {
                return Err(Error::config(key, "too large"));
            }
        }
        Ok(())
    }

    /// `lease_seconds` as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.lease_seconds)
    }

    /// `max_age_seconds` as a duration (zero: no limit).
    pub fn max_age(&self) -> Duration {
        Duration::from_secs_f64(self.max_age_seconds)
    }

    /// `duplicate_window_seconds` as a duration.
    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs_f64(self.duplicate_window_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NatsConfig;

    #[test]
    fn errors_name_the_key() {
        for (json, key) in [
            (
                r#"{"jetstream": {"lease_seconds": 0}}"#,
                "jetstream.lease_seconds",
            ),
            (
                r#"{"jetstream": {"lease_seconds": 0.01}}"#,
                "jetstream.lease_seconds",
            ),
            (
                r#"{"jetstream": {"batch_size": 0}}"#,
                "jetstream.batch_size",
            ),
            (r#"{"jetstream": {"replicas": 7}}"#, "jetstream.replicas"),
            (
                r#"{"jetstream": {"max_age_seconds": -1}}"#,
                "jetstream.max_age_seconds",
            ),
            (
                r#"{"jetstream": {"max_age_seconds": 60, "duplicate_window_seconds": 120}}"#,
                "jetstream.duplicate_window_seconds",
            ),
            (r#"{"jetstream": {"start": "middle"}}"#, "jetstream.start"),
            (r#"{"jetstream": {"bogus": 1}}"#, "jetstream.bogus"),
            (r#"{"delivery": "kafka"}"#, "delivery"),
        ] {
            let err = NatsConfig::from_json_str(json).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{json}: {err}");
        }
    }

    #[test]
    fn defaults_and_units() {
        let c = NatsConfig::from_json_str(
            r#"{"delivery": "jetstream", "jetstream": {"max_age_seconds": "1h", "start": "earliest"}}"#,
        )
        .unwrap();
        assert_eq!(c.delivery, DeliveryMode::Jetstream);
        assert_eq!(c.jetstream.max_age(), Duration::from_secs(3600));
        assert_eq!(c.jetstream.start, StartPosition::Earliest);
        assert_eq!(NatsConfig::default().delivery, DeliveryMode::Pubsub);
    }
}
