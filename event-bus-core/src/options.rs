//! Per-subscription options: timeout, queue, retries, dead letters, what repeated
//! failures do, and consumer groups.
//!
//! Every field of [`SubscribeOptions`] is optional; a field left at `None` takes the
//! bus-wide value from the `dispatcher` section of the configuration
//! ([`DispatcherConfig`]). So a config file sets the defaults and code overrides them
//! where one subscription needs something else:
//!
//! ```
//! use std::time::Duration;
//! use event_bus_core::{DeadLetter, RetryPolicy, SubscribeOptions};
//!
//! let options = SubscribeOptions::new()
//!     .handler_timeout(Duration::from_secs(30))
//!     .queue_maxsize(10_000)
//!     .retry(RetryPolicy::exponential(5, Duration::from_millis(100), Duration::from_secs(10)))
//!     .dead_letter(DeadLetter::Derived)
//!     .group("billing");
//! assert_eq!(options.retry.unwrap().max_attempts, 5);
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    config::{DispatcherConfig, OverflowPolicy, check_seconds},
    error::Error,
    topic::validate_topic,
};

/// How often a failed handler call is tried again, and how long to wait in between.
///
/// Attempt `n + 1` starts after a delay drawn at random between zero and
/// `min(max_backoff, initial_backoff × multiplier^(n-1))` ("full jitter", so that many
/// failing subscribers do not retry in lockstep); with `jitter = false` the delay is that
/// upper bound exactly. `max_attempts = 1` means no retry.
///
/// Config keys (section `dispatcher.retry`): `max_attempts`, `initial_backoff_seconds`,
/// `max_backoff_seconds`, `multiplier`, `jitter`.
///
/// ```
/// use std::time::Duration;
/// use event_bus_core::RetryPolicy;
///
/// let policy = RetryPolicy { jitter: false, ..RetryPolicy::exponential(4, Duration::from_millis(100), Duration::from_millis(250)) };
/// assert_eq!(policy.backoff_cap(1), Duration::from_millis(100));
/// assert_eq!(policy.backoff_cap(2), Duration::from_millis(200));
/// assert_eq!(policy.backoff_cap(3), Duration::from_millis(250)); // capped
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Calls in all, the first included; `1` disables retries. Default: `1`.
    pub max_attempts: u32,
    /// Upper bound of the delay before the second attempt. Default: `0.1`.
    #[serde(deserialize_with = "crate::seconds::deserialize")]
    pub initial_backoff_seconds: f64,
    /// Upper bound of any delay. Default: `30.0`.
    #[serde(deserialize_with = "crate::seconds::deserialize")]
    pub max_backoff_seconds: f64,
    /// Growth of the bound from one attempt to the next. Default: `2.0`.
    pub multiplier: f64,
    /// Draw each delay at random below its bound (`true`) or wait the bound exactly.
    /// Default: `true`.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            initial_backoff_seconds: 0.1,
            max_backoff_seconds: 30.0,
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt.
    pub fn none() -> Self {
        Self::default()
    }

    /// Up to `max_attempts` calls, with exponential backoff (doubling from `initial`,
    /// capped at `max`) and full jitter.
    pub fn exponential(max_attempts: u32, initial: Duration, max: Duration) -> Self {
        Self {
            max_attempts,
            initial_backoff_seconds: initial.as_secs_f64(),
            max_backoff_seconds: max.as_secs_f64(),
            ..Self::default()
        }
    }

    /// Checks value ranges; `key` is where the policy sits in the config.
    ///
    /// # Errors
    /// [`Error::Config`] naming `key.<field>`.
    pub fn validate(&self, key: &str) -> Result<(), Error> {
        if self.max_attempts == 0 {
            return Err(Error::config(
                format!("{key}.max_attempts"),
                "must be at least 1 (1 means no retry)",
            ));
        }
        check_seconds(
            &format!("{key}.initial_backoff_seconds"),
            self.initial_backoff_seconds,
            true,
        )?;
        check_seconds(
            &format!("{key}.max_backoff_seconds"),
            self.max_backoff_seconds,
            true,
        )?;
        if !(self.multiplier.is_finite() && (1.0..=1000.0).contains(&self.multiplier)) {
            return Err(Error::config(
                format!("{key}.multiplier"),
                format!("must be between 1 and 1000, got {}", self.multiplier),
            ));
        }
        Ok(())
    }

    /// The upper bound of the delay after failed attempt `attempt` (1-based).
    pub fn backoff_cap(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let bound = self.initial_backoff_seconds * self.multiplier.powi(exponent);
        Duration::from_secs_f64(bound.min(self.max_backoff_seconds).max(0.0))
    }

    /// The delay after failed attempt `attempt`, given a uniform random number in
    /// `[0, 1)` (ignored without jitter).
    pub fn backoff(&self, attempt: u32, random: f64) -> Duration {
        let cap = self.backoff_cap(attempt);
        if self.jitter {
            cap.mul_f64(random.clamp(0.0, 1.0))
        } else {
            cap
        }
    }
}

/// Where an event goes after its last attempt failed.
///
/// A dead letter is the original event (same id, payload, metadata, priority) published
/// on the same bus under the dead-letter topic, with failure metadata added:
/// `dead_letter.topic` (the original topic), `dead_letter.error` (truncated),
/// `dead_letter.attempts`, `dead_letter.pattern`, `dead_letter.group` (when the
/// subscription has one) and `dead_letter.failed_at` (RFC 3339). An event that is itself
/// a dead letter is never dead-lettered again (it is dropped and counted), so a failing
/// catch-all subscription cannot loop.
///
/// In a config file: `"off"`, `"derived"` or `{"topic": "orders:failed"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetter {
    /// No dead letters: the event is dropped and counted as failed.
    #[default]
    Off,
    /// The topic `dead_letter:` followed by the original topic, so one subscription to
    /// `dead_letter:*` receives every dead letter of the bus.
    Derived,
    /// This fixed topic.
    Topic(String),
}

/// The prefix of [`DeadLetter::Derived`] topics.
pub const DEAD_LETTER_PREFIX: &str = "dead_letter:";

impl DeadLetter {
    /// The dead-letter topic for an event on `topic`, if dead letters are on.
    pub fn topic_for(&self, topic: &str) -> Option<String> {
        match self {
            Self::Off => None,
            Self::Derived => Some(format!("{DEAD_LETTER_PREFIX}{topic}")),
            Self::Topic(fixed) => Some(fixed.clone()),
        }
    }

    /// Checks a fixed topic against the topic rules.
    ///
    /// # Errors
    /// [`Error::Config`] naming `key`.
    pub fn validate(&self, key: &str) -> Result<(), Error> {
        match self {
            Self::Topic(topic) => {
                validate_topic(topic).map_err(|e| Error::config(key, e.to_string()))
            }
            Self::Off | Self::Derived => Ok(()),
        }
    }
}

/// What happens when a subscription's handler fails `handler_max_failures` times in a
/// row (each failure counted after its retries are spent).
///
/// In a config file (`dispatcher.on_max_failures`): `"remove"`, `"pause"` (for
/// `dispatcher.pause_seconds`) or `"keep"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMaxFailures {
    /// Unsubscribe automatically; the subscription ends with
    /// [`EndReason::Removed`](crate::EndReason::Removed).
    #[default]
    Remove,
    /// Stop delivering for a cool-down, then resume (a circuit breaker). Events keep
    /// queueing meanwhile, under the subscription's overflow policy.
    Pause,
    /// Keep delivering; failures are only counted and logged.
    Keep,
}

/// Options of one subscription; `None` fields take the bus-wide value from
/// [`DispatcherConfig`]. See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// A handler call running longer is cancelled and counts as failed.
    pub handler_timeout: Option<Duration>,
    /// Bound of the subscription's queue, in events.
    pub queue_maxsize: Option<usize>,
    /// What a publish does when the queue is full.
    pub overflow: Option<OverflowPolicy>,
    /// Retries of a failed call.
    pub retry: Option<RetryPolicy>,
    /// Where events go after their last failed attempt.
    pub dead_letter: Option<DeadLetter>,
    /// Consecutive final failures before `on_max_failures` applies.
    pub max_failures: Option<u32>,
    /// What `max_failures` consecutive final failures do.
    pub on_max_failures: Option<OnMaxFailures>,
    /// How long a paused subscription waits before resuming.
    pub pause: Option<Duration>,
    /// Consumer group: subscriptions of one bus with the same group share the events,
    /// each event going to one of them.
    pub group: Option<String>,
}

impl SubscribeOptions {
    /// Options that take every value from the bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the handler timeout.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// Sets the queue bound.
    pub fn queue_maxsize(mut self, events: usize) -> Self {
        self.queue_maxsize = Some(events);
        self
    }

    /// Sets the overflow policy.
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = Some(policy);
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Sets the dead-letter destination.
    pub fn dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.dead_letter = Some(dead_letter);
        self
    }

    /// Removes the subscription after `failures` consecutive final failures.
    pub fn remove_after(mut self, failures: u32) -> Self {
        self.max_failures = Some(failures);
        self.on_max_failures = Some(OnMaxFailures::Remove);
        self
    }

    /// Pauses the subscription for `pause` after `failures` consecutive final failures.
    pub fn pause_after(mut self, failures: u32, pause: Duration) -> Self {
        self.max_failures = Some(failures);
        self.on_max_failures = Some(OnMaxFailures::Pause);
        self.pause = Some(pause);
        self
    }

    /// Never removes or pauses the subscription, however often it fails.
    pub fn keep_on_failures(mut self) -> Self {
        self.on_max_failures = Some(OnMaxFailures::Keep);
        self
    }

    /// Joins consumer group `group`.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// These options over the bus-wide `config`, checked.
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad option (`options.<field>`).
    pub fn resolve(&self, config: &DispatcherConfig) -> Result<Resolved, Error> {
        let handler_timeout = self.handler_timeout.unwrap_or(config.handler_timeout());
        let queue_maxsize = self.queue_maxsize.unwrap_or(config.queue_maxsize);
        let max_failures = self.max_failures.unwrap_or(config.handler_max_failures);
        for (key, value) in [
            ("queue_maxsize", queue_maxsize),
            ("max_failures", max_failures as usize),
        ] {
            if value == 0 {
                return Err(Error::config(
                    format!("options.{key}"),
                    "must be at least 1",
                ));
            }
        }
        if handler_timeout.is_zero() {
            return Err(Error::config("options.handler_timeout", "must be positive"));
        }
        let retry = self.retry.clone().unwrap_or_else(|| config.retry.clone());
        retry.validate("options.retry")?;
        let dead_letter = self
            .dead_letter
            .clone()
            .unwrap_or_else(|| config.dead_letter.clone());
        dead_letter.validate("options.dead_letter")?;
        let group = self.group.clone().or_else(|| config.group.clone());
        if let Some(group) = &group {
            validate_group(group)?;
        }
        Ok(Resolved {
            handler_timeout: Some(handler_timeout),
            queue_maxsize,
            overflow: self.overflow.unwrap_or(config.overflow),
            retry,
            dead_letter,
            max_failures,
            on_max_failures: self.on_max_failures.unwrap_or(config.on_max_failures),
            pause: self.pause.unwrap_or(config.pause()),
            group,
        })
    }
}

/// Checks a consumer group name: 1 to 128 characters, letters, digits, `_`, `-`, `.`.
///
/// # Errors
/// [`Error::Config`] naming `group`.
pub fn validate_group(group: &str) -> Result<(), Error> {
    let ok = !group.is_empty()
        && group.len() <= 128
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            "group",
            format!(
                "{group:?} is not a valid group name (1 to 128 characters: letters, digits, `_`, `-`, `.`)"
            ),
        ))
    }
}

/// Subscription options with every bus-wide default filled in.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Resolved {
    /// Handler timeout; `None` for stream subscriptions (the reader sets the pace).
    pub handler_timeout: Option<Duration>,
    /// Queue bound.
    pub queue_maxsize: usize,
    /// Overflow policy.
    pub overflow: OverflowPolicy,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Dead-letter destination.
    pub dead_letter: DeadLetter,
    /// Consecutive final failures before `on_max_failures` applies.
    pub max_failures: u32,
    /// What repeated failures do.
    pub on_max_failures: OnMaxFailures,
    /// Cool-down of a paused subscription.
    pub pause: Duration,
    /// Consumer group.
    pub group: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_the_bus() {
        let config = DispatcherConfig::default();
        let r = SubscribeOptions::new().resolve(&config).unwrap();
        assert_eq!(r.handler_timeout, Some(config.handler_timeout()));
        assert_eq!(r.queue_maxsize, 1000);
        assert_eq!(r.retry.max_attempts, 1);
        assert_eq!(r.dead_letter, DeadLetter::Off);
        let r = SubscribeOptions::new()
            .queue_maxsize(3)
            .handler_timeout(Duration::from_millis(5))
            .pause_after(2, Duration::from_secs(1))
            .group("g")
            .resolve(&config)
            .unwrap();
        assert_eq!(r.queue_maxsize, 3);
        assert_eq!(r.handler_timeout, Some(Duration::from_millis(5)));
        assert_eq!(
            (r.max_failures, r.on_max_failures),
            (2, OnMaxFailures::Pause)
        );
        assert_eq!(r.group.as_deref(), Some("g"));
    }

    #[test]
    fn bad_options_name_the_field() {
        let config = DispatcherConfig::default();
        for (options, key) in [
            (
                SubscribeOptions::new().queue_maxsize(0),
                "options.queue_maxsize",
            ),
            (
                SubscribeOptions::new().retry(RetryPolicy {
                    max_attempts: 0,
                    ..RetryPolicy::default()
                }),
                "options.retry.max_attempts",
            ),
            (
                SubscribeOptions::new().dead_letter(DeadLetter::Topic(String::new())),
                "options.dead_letter",
            ),
            (SubscribeOptions::new().group("a b"), "group"),
        ] {
            let err = options.resolve(&config).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::exponential(5, Duration::from_millis(10), Duration::from_millis(50));
        assert_eq!(p.backoff_cap(1), Duration::from_millis(10));
        assert_eq!(p.backoff_cap(3), Duration::from_millis(40));
        assert_eq!(p.backoff_cap(9), Duration::from_millis(50));
        assert_eq!(p.backoff(2, 0.5), Duration::from_millis(10));
        assert_eq!(p.backoff(u32::MAX, 0.0), Duration::ZERO);
    }

    #[test]
    fn dead_letter_config_forms() {
        let d: DeadLetter = serde_json::from_str(r#""derived""#).unwrap();
        assert_eq!(d.topic_for("a:b").as_deref(), Some("dead_letter:a:b"));
        let d: DeadLetter = serde_json::from_str(r#"{"topic": "failed"}"#).unwrap();
        assert_eq!(d.topic_for("a").as_deref(), Some("failed"));
        let d: DeadLetter = serde_json::from_str(r#""off""#).unwrap();
        assert_eq!(d.topic_for("a"), None);
    }
}
