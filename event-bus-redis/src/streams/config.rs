//! Settings of the durable delivery mode (config section `streams`).

use std::time::Duration;

use event_bus_core::{Error, RetryPolicy, config::check_seconds, options::validate_group};
use serde::{Deserialize, Serialize};

/// How the Redis backend carries events (config key `delivery`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Redis pub/sub: at-most-once, nothing kept on the server.
    #[default]
    Pubsub,
    /// Redis Streams with consumer groups: at-least-once, events kept until every group
    /// has acknowledged them (see the crate docs, *Durable delivery*).
    Streams,
}

/// Where a new consumer group starts reading (config key `streams.start`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    /// Only events published after the group was created (`XGROUP CREATE ... $`).
    #[default]
    Latest,
    /// Every event still retained in the stream (`XGROUP CREATE ... 0`).
    Earliest,
}

/// Settings of the durable mode (`delivery = "streams"`), section `streams`.
///
/// ```
/// use event_bus_redis::RedisConfig;
/// let config = RedisConfig::from_json_str(
///     r#"{"delivery": "streams", "streams": {"lease_seconds": 60, "consumer_name": "billing-1"}}"#,
/// )?;
/// assert_eq!(config.streams.lease().as_secs(), 60);
/// # Ok::<(), event_bus_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsConfig {
    /// How long an event may stay unacknowledged with a consumer that shows no sign of
    /// life before another member of the group (or the same consumer restarted) takes
    /// it. A running handler keeps extending its lease. Default: `30.0`.
    #[serde(deserialize_with = "event_bus_core::seconds::deserialize")]
    pub lease_seconds: f64,
    /// Consumer name base of this process in its groups; set it to a stable name per
    /// instance (e.g. the host name) so a restarted process first takes back its own
    /// pending events. The n-th durable subscription of a group on one bus is consumer
    /// `{consumer_name}-{n}`. Default: none (a random name per bus).
    pub consumer_name: Option<String>,
    /// Where a group that does not exist yet starts. Default: `latest`.
    pub start: StartPosition,
    /// Entries fetched per read. Default: `100`.
    pub read_count: usize,
    /// Safety cap on the stream length, in entries: when the stream is still longer
    /// after trimming what every group has acknowledged, the oldest entries are trimmed
    /// anyway, counted in `lost` and logged as an error. `0`: no cap. Default: `0`.
    pub max_len: u64,
    /// How often acknowledged entries are trimmed and idle consumers removed.
    /// Default: `10.0`.
    #[serde(deserialize_with = "event_bus_core::seconds::deserialize")]
    pub trim_interval_seconds: f64,
    /// A consumer with nothing pending that has been idle this long is removed from
    /// its group; `0` never removes consumers. Default: `86400` (one day).
    #[serde(deserialize_with = "event_bus_core::seconds::deserialize")]
    pub consumer_idle_seconds: f64,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            lease_seconds: 30.0,
            consumer_name: None,
            start: StartPosition::Latest,
            read_count: 100,
            max_len: 0,
            trim_interval_seconds: 10.0,
            consumer_idle_seconds: 86_400.0,
        }
    }
}

impl StreamsConfig {
    /// Checks every value; keys are reported as `streams.<key>`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key.
    pub fn validate(&self) -> Result<(), Error> {
        check_seconds("streams.lease_seconds", self.lease_seconds, false)?;
        if self.lease_seconds < 0.1 {
            return Err(Error::config(
                "streams.lease_seconds",
                format!("must be at least 0.1, got {}", self.lease_seconds),
            ));
        }
        check_seconds(
            "streams.trim_interval_seconds",
            self.trim_interval_seconds,
            false,
        )?;
        check_seconds(
            "streams.consumer_idle_seconds",
            self.consumer_idle_seconds,
            true,
        )?;
        if self.read_count == 0 {
            return Err(Error::config("streams.read_count", "must be at least 1"));
        }

        if let Some(name) = &self.consumer_name {
            validate_group(name).map_err(|_| {
                Error::config(
                    "streams.consumer_name",
                    format!("{name:?} must be 1 to 128 letters, digits, `_`, `-` or `.`"),
                )
            })?;
        }
        Ok(())
    }

    /// Checks that `retry` fits this mode: a retry waits on the server for at most one
    /// lease (the entry becomes claimable again when its lease runs out), so a policy whose
    /// longest delay (the bound before its last attempt) exceeds `lease_seconds` cannot be
    /// honoured and is refused rather than cut short.
    ///
    /// # Errors
    /// [`Error::Config`] naming `key` (where the retry policy was set).
    pub fn check_retry(&self, retry: &RetryPolicy, key: &str) -> Result<(), Error> {
        // The longest delay the policy can ask for: the bound before its last attempt.
        let longest = retry.backoff_cap(retry.max_attempts.saturating_sub(1));
        if retry.max_attempts > 1 && longest > self.lease() {
            return Err(Error::config(
                key,
                format!(
                    "the retry policy can wait {} s, longer than streams.lease_seconds ({} s): \
                     in streams mode a retry waits at most one lease; raise the lease or lower \
                     the backoff",
                    longest.as_secs_f64(),
                    self.lease_seconds
                ),
            ));
        }
        Ok(())
    }

    /// `lease_seconds` as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.lease_seconds)
    }

    /// `trim_interval_seconds` as a duration.
    pub fn trim_interval(&self) -> Duration {
        Duration::from_secs_f64(self.trim_interval_seconds)
    }

    /// `consumer_idle_seconds` as a duration, `None` when consumers are kept.
    pub fn consumer_idle(&self) -> Option<Duration> {
        (self.consumer_idle_seconds > 0.0)
            .then(|| Duration::from_secs_f64(self.consumer_idle_seconds))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_backoff_longer_than_the_lease_is_refused_naming_the_key() {
        let streams = StreamsConfig::default();
        let fits = RetryPolicy::exponential(5, Duration::from_millis(100), Duration::from_secs(30));
        streams.check_retry(&fits, "k").unwrap();
        // Its cap is above the lease, but its 5 attempts never wait longer than 0.8 s.
        let capped_high =
            RetryPolicy::exponential(5, Duration::from_millis(100), Duration::from_secs(60));
        streams.check_retry(&capped_high, "k").unwrap();
        let long = RetryPolicy::exponential(5, Duration::from_secs(20), Duration::from_secs(60));
        let err = streams
            .check_retry(&long, "options.retry.max_backoff_seconds")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("`options.retry.max_backoff_seconds`"),
            "{err}"
        );
        assert!(err.to_string().contains("streams.lease_seconds"), "{err}");
        // Without retries there is no backoff to honour.
        let once = RetryPolicy {
            max_attempts: 1,
            ..long
        };
        streams.check_retry(&once, "k").unwrap();
    }
}
