//! Configuration of the NATS backend.

use std::{fmt, time::Duration};

use event_bus_core::{
    DispatcherConfig, Error, Secret,
    config::{check_seconds, from_json_str},
};
use serde::{Deserialize, Serialize};

use event_bus_core::namespace::validate_prefix;

use crate::{
    jetstream::{DeliveryMode, JetStreamConfig},
    servers::Servers,
};

/// Configuration of [`NatsEventBus`](crate::NatsEventBus) (config
/// `{"backend": "nats", ...}`).
///
/// Unknown keys are rejected. Duration keys end in `_seconds` and take a number of
/// seconds or a string such as `"250ms"` or `"5s"`. `Debug` output never shows a
/// password or token, neither the separate keys nor those written in `url`.
///
/// ```
/// use event_bus_nats::NatsConfig;
/// let config = NatsConfig::from_url("nats://app:s3cret@nats.internal:4222")?;
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// let config = NatsConfig::from_json_str(
///     r#"{"url": "tls://nats.internal", "channel_prefix": "billing", "command_timeout_seconds": "2s"}"#,
/// )?;
/// assert_eq!(config.redacted_address(), "tls://nats.internal:4222");
/// # Ok::<(), event_bus_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server address `nats://[user:password@]host[:port]`, or `tls://…` to require
    /// TLS; a user name alone (`nats://token@host`) is a token. Several servers of one
    /// cluster are separated by commas; the client also learns the cluster's other
    /// servers from the one it reaches. Printed with secrets redacted.
    /// Default: `"nats://localhost:4222"`.
    pub url: String,
    /// Require TLS for every server (as a `tls://` URL does). Default: `false`.
    pub tls: bool,
    /// User name, with `password`; not allowed when `url` carries credentials.
    /// Default: none.
    pub username: Option<String>,
    /// Password of `username`. Never printed. Default: none.
    pub password: Option<Secret>,
    /// Authentication token (the server's `--auth`); not allowed with `username` or
    /// when `url` carries credentials. Never printed. Default: none.
    pub token: Option<Secret>,
    /// Namespace of the bus: topic `t` travels on subject `{channel_prefix}.…` (see
    /// [`subject`](crate::subject)), so applications (or tests) with different prefixes
    /// never see each other's events. 1 to 30 ASCII letters, digits or `_`.
    /// Default: `"events"`.
    pub channel_prefix: String,
    /// Received messages longer than this many bytes are counted as malformed and
    /// skipped (the server's own `max_payload`, 1 MiB by default, bounds what can be
    /// published). Default: `8388608` (8 MiB).
    pub max_message_bytes: usize,
    /// Longest wait for the server when connecting, publishing, subscribing and
    /// flushing; an operation still waiting then fails. Default: `5.0`.
    #[serde(deserialize_with = "event_bus_core::seconds::deserialize")]
    pub command_timeout_seconds: f64,
    /// How often the client pings the server, so that a connection that died silently
    /// is noticed and replaced. Default: `10.0`.
    #[serde(deserialize_with = "event_bus_core::seconds::deserialize")]
    pub ping_interval_seconds: f64,
    /// Messages the client buffers per server subscription before the bus takes them;
    /// beyond that the client drops them and reports a slow consumer (counted in
    /// `dropped`). Default: `65536`.
    pub subscription_capacity: usize,
    /// Dispatcher settings (`dispatcher.consumer_error_sleep_seconds` caps the reconnect
    /// backoff). Default: see [`DispatcherConfig`].
    pub dispatcher: DispatcherConfig,
    /// How events travel: `pubsub` (core NATS, at-most-once) or `jetstream` (durable,
    /// at-least-once per consumer group; see `docs/backends/nats.md`). Default: `pubsub`.
    pub delivery: DeliveryMode,
    /// Settings of the durable mode, used with `delivery = "jetstream"`.
    /// Default: see [`JetStreamConfig`].
    pub jetstream: JetStreamConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://localhost:4222".to_owned(),
            tls: false,
            username: None,
            password: None,
            token: None,
            channel_prefix: "events".to_owned(),
            max_message_bytes: 8 * 1024 * 1024,
            command_timeout_seconds: 5.0,
            ping_interval_seconds: 10.0,
            subscription_capacity: 65_536,
            dispatcher: DispatcherConfig::default(),
            delivery: DeliveryMode::Pubsub,
            jetstream: JetStreamConfig::default(),
        }
    }
}

impl NatsConfig {
    /// Default settings connecting to `url` (`nats://` or `tls://`, comma-separated for
    /// several servers).
    ///
    /// # Errors
    /// [`Error::Config`] with key `url` if the URL cannot be used.
    pub fn from_url(url: impl Into<String>) -> Result<Self, Error> {
        let config = Self {
            url: url.into(),
            ..Self::default()
        };
        config.validate()?;
        Ok(config)
    }

    /// Parses a JSON object of these keys.
    ///
    /// # Errors
    /// [`Error::Config`] naming the unknown, mistyped or invalid key.
    pub fn from_json_str(json: &str) -> Result<Self, Error> {
        let config: Self = from_json_str(json)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key and the problem.
    pub fn validate(&self) -> Result<(), Error> {
        self.dispatcher.validate()?;
        self.jetstream.validate()?;
        validate_prefix(&self.channel_prefix)?;
        if self.max_message_bytes == 0 {
            return Err(Error::config("max_message_bytes", "must be at least 1"));
        }
        if self.subscription_capacity == 0 {
            return Err(Error::config("subscription_capacity", "must be at least 1"));
        }
        check_seconds(
            "command_timeout_seconds",
            self.command_timeout_seconds,
            false,
        )?;
        check_seconds("ping_interval_seconds", self.ping_interval_seconds, false)?;
        self.servers().map(|_| ())
    }

    /// `command_timeout_seconds` as a duration.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.command_timeout_seconds)
    }

    /// `ping_interval_seconds` as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs_f64(self.ping_interval_seconds)
    }

    /// The server addresses with every password and token redacted, for logs.
    pub fn redacted_address(&self) -> String {
        self.servers()
            .map_or_else(|_| "(invalid url)".to_owned(), |s| s.redacted())
    }

    /// The parsed servers and credentials.
    pub(crate) fn servers(&self) -> Result<Servers, Error> {
        let mut servers = Servers::parse(&self.url)?;
        servers.tls |= self.tls;
        let separate = self.username.is_some() || self.password.is_some() || self.token.is_some();
        if separate && servers.credentials.is_some() {
            return Err(Error::config(
                "url",
                "carries credentials, and `username`/`password`/`token` are set too: give them in one place",
            ));
        }
        if separate {
            servers.credentials = crate::servers::Credentials::from_keys(
                self.username.as_deref(),
                self.password.as_ref(),
                self.token.as_ref(),
            )?;
        }
        Ok(servers)
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.redacted_address())
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("token", &self.token)
            .field("channel_prefix", &self.channel_prefix)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("command_timeout_seconds", &self.command_timeout_seconds)
            .field("ping_interval_seconds", &self.ping_interval_seconds)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("dispatcher", &self.dispatcher)
            .field("delivery", &self.delivery)
            .field("jetstream", &self.jetstream)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = NatsConfig::default();
        c.validate().unwrap();
        assert_eq!(c.channel_prefix, "events");
        assert_eq!(c.redacted_address(), "nats://localhost:4222");
        assert!(!c.servers().unwrap().tls);
    }

    #[test]
    fn secrets_never_in_debug() {
        for (config, secret) in [
            (
                NatsConfig::from_url("nats://app:s3cret@h:1").unwrap(),
                "s3cret",
            ),
            (NatsConfig::from_url("nats://t0ken@h:1").unwrap(), "t0ken"),
            (
                NatsConfig {
                    username: Some("app".into()),
                    password: Some(Secret::new("hunter2")),
                    ..NatsConfig::default()
                },
                "hunter2",
            ),
            (
                NatsConfig {
                    token: Some(Secret::new("hunter3")),
                    ..NatsConfig::default()
                },
                "hunter3",
            ),
            (
                NatsConfig::from_url("nats://a:p2@h:1, tls://a:p2@g").unwrap(),
                "p2",
            ),
        ] {
            let text = format!("{config:?}");
            assert!(!text.contains(secret), "{text}");
            assert!(!config.redacted_address().contains(secret));
        }
        let c = NatsConfig::from_url("nats://app:s3cret@h:1").unwrap();
        assert!(c.redacted_address().contains("nats://app:***@h:1"));
    }

    #[test]
    fn errors_name_the_key() {
        for (json, key) in [
            (r#"{"prot": 1}"#, "prot"),
            (r#"{"channel_prefix": ""}"#, "channel_prefix"),
            (r#"{"channel_prefix": "a.b"}"#, "channel_prefix"),
            (r#"{"url": "http://x"}"#, "url"),
            (r#"{"url": "nats://"}"#, "url"),
            (r#"{"url": "nats://a:b@h", "token": "t"}"#, "url"),
            (r#"{"username": "a"}"#, "password"),
            (r#"{"password": "a"}"#, "username"),
            (
                r#"{"username": "a", "password": "b", "token": "t"}"#,
                "token",
            ),
            (r#"{"max_message_bytes": 0}"#, "max_message_bytes"),
            (r#"{"subscription_capacity": 0}"#, "subscription_capacity"),
            (
                r#"{"command_timeout_seconds": 0}"#,
                "command_timeout_seconds",
            ),
            (r#"{"ping_interval_seconds": 0}"#, "ping_interval_seconds"),
            (
                r#"{"dispatcher": {"queue_maxsize": 0}}"#,
                "dispatcher.queue_maxsize",
            ),
        ] {
            let err = NatsConfig::from_json_str(json).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{json}: {err}");
        }
    }

    #[test]
    fn bad_urls_are_not_echoed_with_their_secrets() {
        let err = NatsConfig::from_url("http://app:s3cret@h")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`url`") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn duration_keys_take_units() {
        let c = NatsConfig::from_json_str(
            r#"{"command_timeout_seconds": "250ms", "ping_interval_seconds": "1m"}"#,
        )
        .unwrap();
        assert_eq!(c.command_timeout(), Duration::from_millis(250));
        assert_eq!(c.ping_interval(), Duration::from_secs(60));
    }

    #[test]
    fn tls_from_scheme_or_key() {
        assert!(
            NatsConfig::from_url("tls://h")
                .unwrap()
                .servers()
                .unwrap()
                .tls
        );
        let c = NatsConfig {
            tls: true,
            ..NatsConfig::default()
        };
        assert!(c.servers().unwrap().tls);
    }
}
