//! Configuration of the Redis backend.

use std::{fmt, time::Duration};

use event_bus_core::{
    DispatcherConfig, Error, Secret,
    config::{check_seconds, from_json_str},
    namespace::validate_prefix,
};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use serde::{Deserialize, Serialize};

use crate::streams::{DeliveryMode, StreamsConfig};

/// Configuration of [`RedisEventBus`](crate::RedisEventBus) (config
/// `{"backend": "redis", ...}`).
///
/// Either give `url`, or the separate `host`, `port`, `ssl`, `username`, `password` and
/// `db` keys; a `url` overrides all of those. Unknown keys are rejected. Duration keys
/// end in `_seconds` and take a number of seconds or a string such as `"250ms"` or
/// `"5s"`. `Debug` output never shows the password (the one in `url` included).
///
/// ```
/// use event_bus_redis::RedisConfig;
/// let config = RedisConfig::from_url("rediss://:s3cret@cache.internal:6380/2")?;
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// let config: RedisConfig = event_bus_core::config::from_json_str(
///     r#"{"host": "cache", "channel_prefix": "billing", "dispatcher": {"queue_maxsize": 50}}"#,
/// )?;
/// assert_eq!(config.port, 6379);
/// # Ok::<(), event_bus_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Server host name or IP address. Default: `"localhost"`.
    pub host: String,
    /// Server port. Default: `6379`.
    pub port: u16,
    /// Connect with TLS (like a `rediss://` URL). Default: `false`.
    pub ssl: bool,
    /// ACL user name; without it the password authenticates the `default` user.
    /// Default: none.
    pub username: Option<String>,
    /// Password (`AUTH`). Never printed. Default: none.
    pub password: Option<Secret>,
    /// Database number (`SELECT`). Pub/sub channels are server-wide, so this only
    /// matters for ACL rules and proxies. Default: `0`.
    pub db: u32,
    /// `redis://[user:password@]host[:port][/db]` or `rediss://…` (TLS). When set it
    /// overrides `host`, `port`, `ssl`, `username`, `password` and `db`. Printed with
    /// the password redacted. Default: none.
    pub url: Option<String>,
    /// Namespace of the bus: topic `t` travels on channel `{channel_prefix}:t`, so
    /// applications (or tests) with different prefixes never see each other's events.
    /// 1 to 30 ASCII letters, digits and `_`, the same rule on every backend (see
    /// [`event_bus_core::namespace`]). Default: `"events"`.
    pub channel_prefix: String,
    /// Largest event envelope, in bytes: a larger event is refused by `publish` (never
    /// sent), and a larger received message is counted as malformed and skipped.
    /// Default: `8388608` (8 MiB).
    pub max_message_bytes: usize,
    /// Bound of the receive buffer, in bytes of message payload: messages the server
    /// has sent and the dispatcher has not taken yet (its queues are full under the
    /// `block` overflow policy). A message arriving when the buffer is full is dropped
    /// and counted in `dropped`; one message is always accepted into an empty buffer.
    /// The buffer also holds at most 64 × `dispatcher.queue_maxsize` messages.
    /// Default: `16777216` (16 MiB).
    pub receive_buffer_bytes: usize,
    /// Longest wait for the server when connecting, publishing, subscribing and
    /// flushing; an operation still waiting then fails. Default: `5.0`.
    #[serde(deserialize_with = "event_bus_core::seconds::deserialize")]
    pub command_timeout_seconds: f64,
    /// How often the idle pub/sub connection is checked with `PING`, so a connection
    /// that died silently is noticed and replaced; `0` disables the check.
    /// Default: `10.0`.
    #[serde(deserialize_with = "event_bus_core::seconds::deserialize")]
    pub ping_interval_seconds: f64,
    /// How events travel: `"pubsub"` (at-most-once) or `"streams"` (durable,
    /// at-least-once, with consumer groups; see the crate docs). Default: `"pubsub"`.
    pub delivery: DeliveryMode,
    /// Settings of the durable mode, used when `delivery = "streams"`.
    /// Default: see [`StreamsConfig`].
    pub streams: StreamsConfig,
    /// Dispatcher settings (`dispatcher.consumer_error_sleep_seconds` caps the reconnect
    /// backoff). Default: see [`DispatcherConfig`].
    pub dispatcher: DispatcherConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            host: "localhost".to_owned(),
            port: 6379,
            ssl: false,
            username: None,
            password: None,
            db: 0,
            url: None,
            channel_prefix: "events".to_owned(),
            max_message_bytes: 8 * 1024 * 1024,
            receive_buffer_bytes: 16 * 1024 * 1024,
            command_timeout_seconds: 5.0,
            ping_interval_seconds: 10.0,
            delivery: DeliveryMode::Pubsub,
            streams: StreamsConfig::default(),
            dispatcher: DispatcherConfig::default(),
        }
    }
}

impl RedisConfig {
    /// Default settings connecting to `url` (`redis://` or `rediss://`).
    ///
    /// # Errors
    /// [`Error::Config`] with key `url` if the URL cannot be used.
    pub fn from_url(url: impl Into<String>) -> Result<Self, Error> {
        let config = Self {
            url: Some(url.into()),
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
        validate_prefix(&self.channel_prefix)?;
        if self.port == 0 {
            return Err(Error::config("port", "must be between 1 and 65535"));
        }
        if self.max_message_bytes == 0 {
            return Err(Error::config("max_message_bytes", "must be at least 1"));
        }
        if self.receive_buffer_bytes == 0 {
            return Err(Error::config("receive_buffer_bytes", "must be at least 1"));
        }
        check_seconds(
            "command_timeout_seconds",
            self.command_timeout_seconds,
            false,
        )?;
        check_seconds("ping_interval_seconds", self.ping_interval_seconds, true)?;
        self.streams.validate()?;
        if self.delivery == DeliveryMode::Streams {
            self.streams.check_retry(
                &self.dispatcher.retry,
                "dispatcher.retry.max_backoff_seconds",
            )?;
        }
        self.connection_info().map(|_| ())
    }

    /// `command_timeout_seconds` as a duration.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.command_timeout_seconds)
    }

    /// `ping_interval_seconds` as a duration, `None` when disabled.
    pub fn ping_interval(&self) -> Option<Duration> {
        (self.ping_interval_seconds > 0.0)
            .then(|| Duration::from_secs_f64(self.ping_interval_seconds))
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        match &self.url {
            Some(url) => url.starts_with("rediss://"),
            None => self.ssl,
        }
    }

    /// The server address for logs, errors and `Debug`: rebuilt from the parsed
    /// connection settings (scheme, user, host, port, database) with any password shown
    /// as `***`. A URL that does not parse is shown as `<unusable url>`, never as text.
    pub fn redacted_address(&self) -> String {
        match self.connection_info() {
            Ok(info) => describe(&info),
            Err(_) => "<unusable url>".to_owned(),
        }
    }

    /// The `redis` crate's connection settings.
    pub(crate) fn connection_info(&self) -> Result<ConnectionInfo, Error> {
        if let Some(url) = &self.url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(Error::config(
                    "url",
                    format!(
                        "must start with redis:// or rediss://, got {}",
                        scheme_of(url)
                    ),
                ));
            }
            // The driver's message may quote the URL: never show it.
            return url.as_str().into_connection_info().map_err(|e| {
                Error::config("url", format!("not a usable Redis URL ({:?})", e.kind()))
            });
        }
        let addr = if self.ssl {
            ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let mut redis = RedisConnectionInfo::default().set_db(i64::from(self.db));
        if let Some(user) = &self.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password.expose());
        }
        let info = addr
            .into_connection_info()
            .map_err(|e| Error::config("host", e.to_string()))?;
        Ok(info.set_redis_settings(redis))
    }
}

/// `scheme://[user[:***]@]host:port/db` of parsed connection settings.
fn describe(info: &ConnectionInfo) -> String {
    let redis = info.redis_settings();
    let (scheme, place) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => ("redis", format!("{host}:{port}")),
        ConnectionAddr::TcpTls { host, port, .. } => ("rediss", format!("{host}:{port}")),
        ConnectionAddr::Unix(path) => ("redis+unix", path.display().to_string()),
        _ => ("redis", "<address>".to_owned()),
    };
    let auth = match (redis.username(), redis.password()) {
        (Some(user), Some(_)) => format!("{user}:***@"),
        (None, Some(_)) => ":***@".to_owned(),
        (Some(user), None) => format!("{user}@"),
        (None, None) => String::new(),
    };
    format!("{scheme}://{auth}{place}/{}", redis.db())
}

/// How an error names the scheme of a URL it refuses: the scheme when it looks like one
/// (at most 16 letters, digits, `+`, `-`, `.`), never other text of the URL, which may
/// hold a password.
fn scheme_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme.len() <= 16
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) =>
        {
            format!("scheme {scheme:?}")
        }
        _ => "no URL scheme".to_owned(),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("ssl", &self.ssl)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("db", &self.db)
            .field("url", &self.url.as_ref().map(|_| self.redacted_address()))
            .field("channel_prefix", &self.channel_prefix)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("receive_buffer_bytes", &self.receive_buffer_bytes)
            .field("command_timeout_seconds", &self.command_timeout_seconds)
            .field("ping_interval_seconds", &self.ping_interval_seconds)
            .field("delivery", &self.delivery)
            .field("streams", &self.streams)
            .field("dispatcher", &self.dispatcher)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = RedisConfig::default();
        assert_eq!(
            (c.host.as_str(), c.port, c.ssl, c.db),
            ("localhost", 6379, false, 0)
        );
        assert_eq!(c.channel_prefix, "events");
        assert_eq!(c.max_message_bytes, 8 << 20);
        c.validate().unwrap();
        assert_eq!(c.redacted_address(), "redis://localhost:6379/0");
    }

    #[test]
    fn secrets_never_in_debug() {
        let c = RedisConfig {
            password: Some(Secret::new("hunter2")),
            ..RedisConfig::from_url("redis://app:s3cret@h:1/3").unwrap()
        };
        let text = format!("{c:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        assert!(text.contains("redis://app:***@h:1/3"), "{text}");
    }

    #[test]
    fn passwords_never_shown_whatever_the_url() {
        let secret = "Pw0rd";
        for url in [
            "redis://app:Pw0rd@h:1/3",
            "redis://:Pw0rd@h",
            "rediss://app:Pw0rd@h:6380/0",
            "redis://app:Pw0rd%40x@h/1",
            "redis://app:Pw0rd:more@h/1",
            "redis://app:a%2FPw0rd@h",
            "redis://h/2?password=Pw0rd",
            "redis://app@h/2?password=Pw0rd&protocol=resp3",
            "redis+unix:///tmp/r.sock?pass=Pw0rd",
            "http://app:Pw0rd@h",
            "app:Pw0rd@h://x",
            "redis://app:Pw0rd@",
            "redis://app:Pw0rd@[::1",
        ] {
            let shown = match RedisConfig::from_url(url) {
                Ok(c) => format!("{c:?} {}", c.redacted_address()),
                Err(e) => format!("{e} {e:?}"),
            };
            assert!(!shown.contains(secret), "{url}: {shown}");
        }
        let c = RedisConfig::from_url("redis://h/2?password=Pw0rd").unwrap();
        // The driver takes no password from the query: the address shows what it uses.
        assert_eq!(c.redacted_address(), "redis://h:6379/2");
        let err = RedisConfig::from_url("http://x").unwrap_err().to_string();
        assert!(err.contains("scheme \"http\""), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        for (json, key) in [
            (r#"{"port": 0}"#, "port"),
            (r#"{"port": "x"}"#, "port"),
            (r#"{"prot": 1}"#, "prot"),
            (r#"{"channel_prefix": ""}"#, "channel_prefix"),
            (r#"{"channel_prefix": "a b"}"#, "channel_prefix"),
            (r#"{"channel_prefix": "P:b"}"#, "channel_prefix"),
            (r#"{"channel_prefix": "préfixe"}"#, "channel_prefix"),
            (r#"{"receive_buffer_bytes": 0}"#, "receive_buffer_bytes"),
            (r#"{"url": "http://x"}"#, "url"),
            (r#"{"url": "redis://"}"#, "url"),
            (r#"{"max_message_bytes": 0}"#, "max_message_bytes"),
            (
                r#"{"command_timeout_seconds": 0}"#,
                "command_timeout_seconds",
            ),
            (r#"{"ping_interval_seconds": -1}"#, "ping_interval_seconds"),
            (r#"{"delivery": "queue"}"#, "delivery"),
            (
                r#"{"streams": {"lease_seconds": 0}}"#,
                "streams.lease_seconds",
            ),
            (r#"{"streams": {"read_count": 0}}"#, "streams.read_count"),
            (r#"{"streams": {"start": "middle"}}"#, "streams.start"),
            (
                r#"{"streams": {"consumer_name": "a b"}}"#,
                "streams.consumer_name",
            ),
            (
                r#"{"dispatcher": {"queue_maxsize": 0}}"#,
                "dispatcher.queue_maxsize",
            ),
        ] {
            let err = RedisConfig::from_json_str(json).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{json}: {err}");
        }
    }

    #[test]
    fn duration_keys_take_units() {
        let c = RedisConfig::from_json_str(
            r#"{"command_timeout_seconds": "250ms", "ping_interval_seconds": "1m"}"#,
        )
        .unwrap();
        assert_eq!(c.command_timeout(), Duration::from_millis(250));
        assert_eq!(c.ping_interval(), Some(Duration::from_secs(60)));
        let c: RedisConfig =
            event_bus_core::config::from_toml_str("ping_interval_seconds = 0").unwrap();
        assert_eq!(c.ping_interval(), None);
        let err = RedisConfig::from_json_str(r#"{"command_timeout_seconds": "5 sec"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`command_timeout_seconds`") && err.contains("\"5 sec\""),
            "{err}"
        );
    }

    #[test]
    fn url_and_ssl_select_tls() {
        assert!(RedisConfig::from_url("rediss://h").unwrap().uses_tls());
        assert!(!RedisConfig::from_url("redis://h").unwrap().uses_tls());
        let c = RedisConfig {
            ssl: true,
            ..RedisConfig::default()
        };
        assert!(c.uses_tls());
        assert!(matches!(
            c.connection_info().unwrap().addr(),
            ConnectionAddr::TcpTls { .. }
        ));
    }
}
