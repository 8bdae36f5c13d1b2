//! Configuration of the PostgreSQL backend.

use std::{fmt, time::Duration};

use event_bus_core::{DispatcherConfig, Error, Secret, config::check_seconds};
use serde::{Deserialize, Serialize};

use crate::{
    channel::validate_prefix,
    durable::{DeliveryMode, DurableConfig},
};

/// Configuration of [`PostgresEventBus`](crate::PostgresEventBus)
/// (config `{"backend": "postgres", "url": "postgres://...", ...}`).
///
/// Only `url` is required (`connection_string` is accepted as another name for it).
/// Unknown keys are rejected; validation errors name the key. Duration keys end in
/// `_seconds` and take a number of seconds or a string such as `"250ms"` or `"5s"`.
/// `Debug` output, errors and logs never show the URL itself: they show the settings
/// the driver parsed from it, with `password=***` (see
/// [`redacted_url`](Self::redacted_url)).
///
/// ```
/// use event_bus_postgres::PostgresConfig;
/// let config: PostgresConfig = event_bus_core::config::from_json_str(
///     r#"{"url": "postgres://app:s3cret@db/app", "channel_prefix": "shop", "command_timeout_seconds": "2s"}"#,
/// )?;
/// assert_eq!(config.pool_size, 4);
/// assert_eq!(config.command_timeout_seconds, 2.0);
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), event_bus_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Where the server is, as a URL (`postgres://user:pw@host:5432/db`) or libpq
    /// key/value pairs (`host=db user=app password=... dbname=app sslmode=require`).
    /// `sslmode` may be `disable`, `prefer` (the default: TLS if the server offers it),
    /// `require`, `verify-ca` or `verify-full`; see the TLS notes in the crate docs.
    /// Also read under the name `connection_string`. Required; there is no default.
    #[serde(alias = "connection_string")]
    pub url: Secret,
    /// First part of every channel name and of the large-payload table name: 1 to 30
    /// ASCII letters, digits or `_`. Buses with different prefixes never see each
    /// other's events. Default: `"events"`.
    #[serde(default = "default_prefix")]
    pub channel_prefix: String,
    /// Most connections of the publishing pool (a `deadpool-postgres` pool; each
    /// statement takes a connection for itself), and, in the durable mode, of the
    /// claim pool too (claims, acknowledgements, heartbeats). From 1 to 64.
    /// Default: `4`.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long a statement waits for a free pooled connection when all `pool_size`
    /// are busy; a publish that waits longer fails with
    /// [`PublishOutcome::NotSent`](event_bus_core::PublishOutcome::NotSent).
    /// Default: `5.0`.
    #[serde(
        default = "default_timeout",
        deserialize_with = "event_bus_core::seconds::deserialize"
    )]
    pub pool_timeout_seconds: f64,
    /// Largest event envelope, in bytes, that is published or accepted from the wire;
    /// envelopes of 8000 bytes and more travel through the large-payload table.
    /// Default: `16777216` (16 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// How long a stored large payload is kept before a publisher deletes it. A
    /// listener that falls further behind than this loses such events (counted as
    /// malformed). Default: `600.0`.
    #[serde(
        default = "default_ttl",
        deserialize_with = "event_bus_core::seconds::deserialize"
    )]
    pub large_payload_ttl_seconds: f64,
    /// Bound on connecting and on each statement (publish, LISTEN, fetch). A publish
    /// during an outage fails after at most about this long. Also read under its
    /// former name `timeout_seconds`. Default: `5.0`.
    #[serde(
        alias = "timeout_seconds",
        default = "default_timeout",
        deserialize_with = "event_bus_core::seconds::deserialize"
    )]
    pub command_timeout_seconds: f64,
    /// How events are delivered: `"notify"` (LISTEN/NOTIFY pub/sub, at-most-once) or
    /// `"table"` (durable, at-least-once per consumer group through the delivery
    /// table; see the crate docs). Default: `"notify"`.
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// Settings of the `"table"` delivery mode. Default: see [`DurableConfig`].
    #[serde(default)]
    pub durable: DurableConfig,
    /// Dispatcher settings. Default: see [`DispatcherConfig`].
    #[serde(default)]
    pub dispatcher: DispatcherConfig,
}

fn default_prefix() -> String {
    "events".to_owned()
}
fn default_pool_size() -> usize {
    4
}
fn default_max_message_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_ttl() -> f64 {
    600.0
}
fn default_timeout() -> f64 {
    5.0
}

impl PostgresConfig {
    /// A config with `url` (a `postgres://` URL or libpq key/value pairs) and every
    /// other key at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url.into()),
            channel_prefix: default_prefix(),
            pool_size: default_pool_size(),
            pool_timeout_seconds: default_timeout(),
            max_message_bytes: default_max_message_bytes(),
            large_payload_ttl_seconds: default_ttl(),
            command_timeout_seconds: default_timeout(),
            delivery: DeliveryMode::default(),
            durable: DurableConfig::default(),
            dispatcher: DispatcherConfig::default(),
        }
    }

    /// Sets `delivery`.
    pub fn with_delivery(mut self, delivery: DeliveryMode) -> Self {
        self.delivery = delivery;
        self
    }

    /// Sets `channel_prefix`.
    pub fn with_channel_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.channel_prefix = prefix.into();
        self
    }

    /// Sets `dispatcher`.
    pub fn with_dispatcher(mut self, dispatcher: DispatcherConfig) -> Self {
        self.dispatcher = dispatcher;
        self
    }

    /// Checks every key and parses the URL.
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad key.
    pub fn validate(&self) -> Result<(), Error> {
        self.parse().map(drop)
    }

    /// Validates, and returns the driver's config and whether TLS certificates must be
    /// verified (`sslmode=verify-ca`/`verify-full`).
    pub(crate) fn parse(&self) -> Result<(tokio_postgres::Config, bool), Error> {
        validate_prefix(&self.channel_prefix)?;
        if !(1..=64).contains(&self.pool_size) {
            return Err(Error::config("pool_size", "must be between 1 and 64"));
        }
        if self.max_message_bytes < 1024 {
            return Err(Error::config("max_message_bytes", "must be at least 1024"));
        }
        check_seconds(
            "large_payload_ttl_seconds",
            self.large_payload_ttl_seconds,
            false,
        )?;
        check_seconds(
            "command_timeout_seconds",
            self.command_timeout_seconds,
            false,
        )?;
        check_seconds("pool_timeout_seconds", self.pool_timeout_seconds, false)?;
        self.durable.validate()?;
        self.dispatcher.validate()?;
        let (mut pg, verify) = crate::redact::parse(self.url.expose())?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(self.command_timeout());
        }
        Ok((pg, verify))
    }

    /// `command_timeout_seconds` as a duration.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.command_timeout_seconds)
    }

    /// `pool_timeout_seconds` as a duration.
    pub fn pool_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.pool_timeout_seconds)
    }

    /// `large_payload_ttl_seconds` as a duration.
    pub fn large_payload_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.large_payload_ttl_seconds)
    }

    /// The settings parsed from the URL, in key/value form with the
    /// password shown as `***`; safe to log. Rendered from the driver's parsed form,
    /// never from the text, so no way of writing the password can leak it. A string
    /// that does not parse is not shown.
    ///
    /// ```
    /// use event_bus_postgres::PostgresConfig;
    /// let config = PostgresConfig::new("postgres://app:s3%2Fcret@db:5433/shop?sslmode=require");
    /// assert_eq!(
    ///     config.redacted_url(),
    ///     "host=db port=5433 user=app password=*** dbname=shop sslmode=require"
    /// );
    /// ```
    pub fn redacted_url(&self) -> String {
        match crate::redact::parse(self.url.expose()) {
            Ok((pg, verify)) => crate::redact::describe(&pg, verify),
            Err(_) => crate::redact::UNPARSEABLE.to_owned(),
        }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("channel_prefix", &self.channel_prefix)
            .field("pool_size", &self.pool_size)
            .field("pool_timeout_seconds", &self.pool_timeout_seconds)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("large_payload_ttl_seconds", &self.large_payload_ttl_seconds)
            .field("command_timeout_seconds", &self.command_timeout_seconds)
            .field("delivery", &self.delivery)
            .field("durable", &self.durable)
            .field("dispatcher", &self.dispatcher)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_bus_core::config::from_json_str;

    #[test]
    fn defaults_and_required_key() {
        let c: PostgresConfig = from_json_str(r#"{"url": "host=x"}"#).unwrap();
        assert_eq!(c, PostgresConfig::new("host=x"));
        assert_eq!(c.channel_prefix, "events");
        assert_eq!(c.delivery, DeliveryMode::Notify);
        c.validate().unwrap();
        let c: PostgresConfig = from_json_str(
            r#"{"url": "host=x", "delivery": "table", "durable": {"lease_seconds": "2s"}}"#,
        )
        .unwrap();
        assert_eq!(c.delivery, DeliveryMode::Table);
        assert_eq!(c.durable.lease(), Duration::from_secs(2));
        let err =
            from_json_str::<PostgresConfig>(r#"{"url": "x", "delivery": "queue"}"#).unwrap_err();
        assert!(err.to_string().contains("queue"), "{err}");
        let err = from_json_str::<PostgresConfig>("{}").unwrap_err();
        assert!(err.to_string().contains("`url`"), "{err}");
        let err = from_json_str::<PostgresConfig>(r#"{"url": "x", "colour": 1}"#).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let bad = |f: fn(&mut PostgresConfig), key: &str| {
            let mut c = PostgresConfig::new("host=localhost");
            f(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        };
        bad(|c| c.pool_size = 0, "pool_size");
        bad(|c| c.pool_size = 65, "pool_size");
        bad(|c| c.pool_timeout_seconds = 0.0, "pool_timeout_seconds");
        bad(|c| c.channel_prefix = "a;b".into(), "channel_prefix");
        bad(
            |c| c.command_timeout_seconds = -1.0,
            "command_timeout_seconds",
        );
        bad(
            |c| c.large_payload_ttl_seconds = 0.0,
            "large_payload_ttl_seconds",
        );
        bad(|c| c.max_message_bytes = 10, "max_message_bytes");
        bad(
            |c| c.durable.claim_batch_size = 0,
            "durable.claim_batch_size",
        );
        bad(|c| c.durable.lease_seconds = 0.0, "durable.lease_seconds");
        bad(|c| c.url = "port=notanumber".into(), "`url`");
        bad(
            |c| c.dispatcher.queue_maxsize = 0,
            "dispatcher.queue_maxsize",
        );
    }

    #[test]
    fn former_key_names_are_accepted() {
        let c: PostgresConfig = from_json_str(
            r#"{"connection_string": "host=x", "timeout_seconds": 2, "large_payload_ttl_seconds": "10m"}"#,
        )
        .unwrap();
        assert_eq!(c.url.expose(), "host=x");
        assert_eq!(c.command_timeout(), Duration::from_secs(2));
        assert_eq!(c.large_payload_ttl(), Duration::from_secs(600));
        let c: PostgresConfig = event_bus_core::config::from_toml_str(
            "url = \"host=x\"\ncommand_timeout_seconds = \"250ms\"",
        )
        .unwrap();
        assert_eq!(c.command_timeout(), Duration::from_millis(250));
        let err = from_json_str::<PostgresConfig>(
            r#"{"url": "host=x", "command_timeout_seconds": "soon"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`command_timeout_seconds`") && err.contains("\"soon\""),
            "{err}"
        );
    }

    #[test]
    fn debug_hides_the_password() {
        for s in [
            "postgres://u:hunter2@h/db",
            "host=h user=u password=hunter2",
        ] {
            let text = format!("{:?}", PostgresConfig::new(s));
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("***"), "{text}");
        }
    }
}
