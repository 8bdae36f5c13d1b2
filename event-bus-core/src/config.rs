//! Dispatcher configuration and the JSON/TOML parsing helpers every config type uses.

use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    error::Error,
    options::{DeadLetter, OnMaxFailures, RetryPolicy, validate_group},
};

/// What a publish does when a matching subscription's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Wait until there is room (backpressure on the publisher, or on the receiving
    /// connection for network backends).
    #[default]
    Block,
    /// Fail the publish with [`Error::QueueFull`], handing the event back. No
    /// subscription receives it.
    Reject,
    /// Discard the oldest queued event of the full queue to make room.
    DropOldest,
    /// Discard the least urgent event among the queued ones and the new one (the newest
    /// of them on a tie, which is the new one if it is among the least urgent).
    DropLowestPriority,
}

/// Settings of the shared dispatcher (config section `dispatcher`).
///
/// Unknown keys are rejected. Duration keys end in `_seconds` and take a number of
/// seconds or a string such as `"250ms"` or `"5s"` (see [`seconds`](crate::seconds)).
///
/// ```
/// use event_bus_core::DispatcherConfig;
/// let config: DispatcherConfig =
///     event_bus_core::config::from_json_str(r#"{"handler_timeout_seconds": 2}"#).unwrap();
/// assert_eq!(config.handler_timeout_seconds, 2.0);
/// assert_eq!(config.queue_maxsize, 1000);
///
/// let config: DispatcherConfig = event_bus_core::config::from_toml_str(
///     "handler_timeout_seconds = \"250ms\"\nshutdown_timeout_seconds = \"1m\"",
/// ).unwrap();
/// assert_eq!(config.handler_timeout_seconds, 0.25);
/// assert_eq!(config.shutdown_timeout_seconds, 60.0);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Bound of each subscription's priority queue, in events. Never unbounded.
    /// Default: `1000`.
    pub queue_maxsize: usize,
    /// What happens when a queue is full. Default: `block`.
    pub overflow: OverflowPolicy,
    /// A handler call running longer is cancelled and counted as failed (timed out).
    /// Default: `5.0`.
    #[serde(deserialize_with = "crate::seconds::deserialize")]
    pub handler_timeout_seconds: f64,
    /// Consecutive failures (error, timeout or panic) after which a subscription is
    /// cancelled automatically; a success resets the count. Default: `3`.
    pub handler_max_failures: u32,
    /// Upper bound of the reconnect backoff after a connection error. Default: `5.0`.
    #[serde(deserialize_with = "crate::seconds::deserialize")]
    pub consumer_error_sleep_seconds: f64,
    /// Seconds between `event bus metrics` info log lines; `0` disables them. Also
    /// read under its former name `metrics_log_interval_s`. Default: `60.0`.
    #[serde(
        alias = "metrics_log_interval_s",
        deserialize_with = "crate::seconds::deserialize"
    )]
    pub metrics_log_interval_seconds: f64,
    /// Most handler calls running at once across the bus (each subscription runs one
    /// call at a time). Default: `256`.
    pub max_concurrent_handlers: usize,
    /// How long `close()` lets queued events drain before discarding (and counting)
    /// the rest. Default: `10.0`.
    #[serde(deserialize_with = "crate::seconds::deserialize")]
    pub shutdown_timeout_seconds: f64,
    /// Retries of a failed handler call (section `dispatcher.retry`). Default: one
    /// attempt, no retry.
    pub retry: RetryPolicy,
    /// Where events go after their last failed attempt: `"off"`, `"derived"`
    /// (`dead_letter:<topic>`) or `{"topic": "..."}`. Default: `"off"`.
    pub dead_letter: DeadLetter,
    /// What `handler_max_failures` consecutive final failures do: `"remove"`,
    /// `"pause"` or `"keep"`. Default: `"remove"`.
    pub on_max_failures: OnMaxFailures,
    /// How long a paused subscription waits before it resumes. Default: `30.0`.
    #[serde(deserialize_with = "crate::seconds::deserialize")]
    pub pause_seconds: f64,
    /// Consumer group of subscriptions that name none. Default: none.
    pub group: Option<String>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            queue_maxsize: 1000,
            overflow: OverflowPolicy::Block,
            handler_timeout_seconds: 5.0,
            handler_max_failures: 3,
            consumer_error_sleep_seconds: 5.0,
            metrics_log_interval_seconds: 60.0,
            max_concurrent_handlers: 256,
            shutdown_timeout_seconds: 10.0,
            retry: RetryPolicy::default(),
            dead_letter: DeadLetter::Off,
            on_max_failures: OnMaxFailures::Remove,
            pause_seconds: 30.0,
            group: None,
        }
    }
}

impl DispatcherConfig {
    /// Checks value ranges.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key (`dispatcher.<key>`) and the bad value.
    pub fn validate(&self) -> Result<(), Error> {
        for (key, value) in [
            ("handler_timeout_seconds", self.handler_timeout_seconds),
            (
                "consumer_error_sleep_seconds",
                self.consumer_error_sleep_seconds,
            ),
            ("shutdown_timeout_seconds", self.shutdown_timeout_seconds),
            ("pause_seconds", self.pause_seconds),
        ] {
            check_seconds(&format!("dispatcher.{key}"), value, false)?;
        }
        check_seconds(
            "dispatcher.metrics_log_interval_seconds",
            self.metrics_log_interval_seconds,
            true,
        )?;
        for (key, value) in [
            ("queue_maxsize", self.queue_maxsize),
            ("handler_max_failures", self.handler_max_failures as usize),
            ("max_concurrent_handlers", self.max_concurrent_handlers),
        ] {
            if value == 0 {
                return Err(Error::config(
                    format!("dispatcher.{key}"),
                    "must be at least 1",
                ));
            }
        }
        self.retry.validate("dispatcher.retry")?;
        self.dead_letter.validate("dispatcher.dead_letter")?;
        if let Some(group) = &self.group {
            validate_group(group).map_err(|e| match e {
                Error::Config { message, .. } => Error::config("dispatcher.group", message),
                other => other,
            })?;
        }
        Ok(())
    }

    /// `pause_seconds` as a duration.
    pub fn pause(&self) -> Duration {
        Duration::from_secs_f64(self.pause_seconds)
    }

    /// `handler_timeout_seconds` as a duration.
    pub fn handler_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.handler_timeout_seconds)
    }

    /// `consumer_error_sleep_seconds` as a duration.
    pub fn consumer_error_sleep(&self) -> Duration {
        Duration::from_secs_f64(self.consumer_error_sleep_seconds)
    }

    /// `shutdown_timeout_seconds` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_timeout_seconds)
    }

    /// `metrics_log_interval_seconds` as a duration, `None` when disabled.
    pub fn metrics_log_interval(&self) -> Option<Duration> {
        (self.metrics_log_interval_seconds > 0.0)
            .then(|| Duration::from_secs_f64(self.metrics_log_interval_seconds))
    }
}

/// Checks a duration setting given in seconds: finite, below 10⁹ (so that converting it
/// to a `Duration` cannot panic), and positive, or also zero when `zero_ok`.
///
/// # Errors
/// [`Error::Config`] naming `key` and the bad value.
///
/// ```
/// use event_bus_core::config::check_seconds;
/// assert!(check_seconds("timeout", 2.5, false).is_ok());
/// assert!(check_seconds("interval", 0.0, true).is_ok());
/// assert!(check_seconds("timeout", 0.0, false).unwrap_err().to_string().contains("`timeout`"));
/// ```
pub fn check_seconds(key: &str, value: f64, zero_ok: bool) -> Result<(), Error> {
    if value.is_finite() && value < 1e9 && (value > 0.0 || (zero_ok && value == 0.0)) {
        return Ok(());
    }
    let what = if zero_ok {
        "zero or positive"
    } else {
        "positive"
    };
    Err(Error::config(
        key,
        format!("must be a {what} number of seconds, got {value}"),
    ))
}

/// Deserializes `T` from a JSON value; errors name the offending key's dotted path.
///
/// # Errors
/// [`Error::Config`] with the path of the unknown, missing or mistyped key.
pub fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." {
            "(root)".to_owned()
        } else {
            path
        };
        Error::config(key, e.into_inner().to_string())
    })
}

/// Deserializes `T` from JSON text; errors name the offending key.
///
/// # Errors
/// [`Error::Config`] for malformed JSON or a bad key.
pub fn from_json_str<T: DeserializeOwned>(json: &str) -> Result<T, Error> {
    let value = serde_json::from_str(json)
        .map_err(|e| Error::config("(root)", format!("invalid JSON: {e}")))?;
    from_json_value(value)
}

/// Deserializes `T` from TOML text; errors name the offending key.
///
/// # Errors
/// [`Error::Config`] for malformed TOML or a bad key.
pub fn from_toml_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| Error::config("(root)", format!("invalid TOML: {e}")))?;
    let value = serde_json::to_value(table)
        .map_err(|e| Error::config("(root)", format!("unsupported TOML value: {e}")))?;
    from_json_value(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = DispatcherConfig::default();
        assert_eq!(c.queue_maxsize, 1000);
        assert_eq!(c.overflow, OverflowPolicy::Block);
        assert_eq!(c.handler_timeout_seconds, 5.0);
        assert_eq!(c.handler_max_failures, 3);
        assert_eq!(c.consumer_error_sleep_seconds, 5.0);
        assert_eq!(c.metrics_log_interval(), Some(Duration::from_secs(60)));
        c.validate().unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let err = from_json_str::<DispatcherConfig>(r#"{"queue_maxsize": "big"}"#).unwrap_err();
        assert!(err.to_string().contains("queue_maxsize"), "{err}");
        let err = from_json_str::<DispatcherConfig>(r#"{"queue_max": 1}"#).unwrap_err();
        assert!(err.to_string().contains("queue_max"), "{err}");
        let err = from_toml_str::<DispatcherConfig>("overflow = \"explode\"").unwrap_err();
        assert!(err.to_string().contains("overflow"), "{err}");
        let bad = DispatcherConfig {
            handler_timeout_seconds: -1.0,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("dispatcher.handler_timeout_seconds")
        );
    }

    #[test]
    fn duration_keys_take_units_and_the_old_interval_name() {
        let c: DispatcherConfig =
            from_json_str(r#"{"handler_timeout_seconds": "250ms", "metrics_log_interval_s": 30}"#)
                .unwrap();
        assert_eq!(c.handler_timeout(), Duration::from_millis(250));
        assert_eq!(c.metrics_log_interval_seconds, 30.0);
        let c: DispatcherConfig = from_toml_str(
            "metrics_log_interval_seconds = \"0s\"\nconsumer_error_sleep_seconds = 2",
        )
        .unwrap();
        assert_eq!(c.metrics_log_interval(), None);
        assert_eq!(c.consumer_error_sleep(), Duration::from_secs(2));
        let err = from_toml_str::<DispatcherConfig>("shutdown_timeout_seconds = \"10 minutes\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`shutdown_timeout_seconds`"), "{err}");
        assert!(err.contains("\"10 minutes\""), "{err}");
        let err = from_json_str::<DispatcherConfig>(r#"{"metrics_log_interval_seconds": -1}"#)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`dispatcher.metrics_log_interval_seconds`"),
            "{err}"
        );
        assert!(err.contains("-1"), "{err}");
    }

    #[test]
    fn parses_toml_and_policies() {
        let c: DispatcherConfig =
            from_toml_str("overflow = \"drop_lowest_priority\"\nqueue_maxsize = 5").unwrap();
        assert_eq!(c.overflow, OverflowPolicy::DropLowestPriority);
        assert_eq!(c.queue_maxsize, 5);
    }

    #[test]
    fn subscription_defaults_parse_from_toml() {
        // The example of docs/configuration.md.
        let c: DispatcherConfig = from_toml_str(
            "handler_timeout_seconds = \"2s\"\ndead_letter = \"derived\"\n\
             on_max_failures = \"pause\"\npause_seconds = 60\n\
             [retry]\nmax_attempts = 5\ninitial_backoff_seconds = \"100ms\"\nmax_backoff_seconds = 10\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.retry.max_attempts, 5);
        assert_eq!(c.retry.initial_backoff_seconds, 0.1);
        assert_eq!(c.dead_letter, DeadLetter::Derived);
        assert_eq!(c.on_max_failures, OnMaxFailures::Pause);
        let c: DispatcherConfig =
            from_json_str(r#"{"dead_letter": {"topic": "failed"}, "group": "g"}"#).unwrap();
        assert_eq!(c.dead_letter, DeadLetter::Topic("failed".into()));
        let err = from_json_str::<DispatcherConfig>(r#"{"retry": {"max_attempts": 0}}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("dispatcher.retry.max_attempts"),
            "{err}"
        );
    }
}
