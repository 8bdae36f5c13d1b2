//! The configuration that picks a backend.

use std::{fmt, str::FromStr};

use event_bus_core::{Error, config::from_json_value};
use serde::{Deserialize, Deserializer, Serialize};

/// Every backend the crate family knows, whether or not its feature is enabled, so that
/// asking for a disabled one names the feature to enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    /// In-process (feature `memory`, on by default).
    Memory,
    /// Redis pub/sub (feature `redis`).
    Redis,
    /// PostgreSQL LISTEN/NOTIFY (feature `postgres`).
    Postgres,
    /// Core NATS publish/subscribe (feature `nats`).
    Nats,
}

impl BackendName {
    /// All backends.
    pub const ALL: [Self; 4] = [Self::Memory, Self::Redis, Self::Postgres, Self::Nats];

    /// The name used in config files: `memory`, `redis`, `postgres`, `nats`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Postgres => "postgres",
            Self::Nats => "nats",
        }
    }

    /// The Cargo feature of the `multibus` crate that compiles this backend in.
    pub fn feature(self) -> &'static str {
        self.as_str()
    }

    /// Whether this backend is compiled in.
    pub fn is_enabled(self) -> bool {
        match self {
            Self::Memory => cfg!(feature = "memory"),
            Self::Redis => cfg!(feature = "redis"),
            Self::Postgres => cfg!(feature = "postgres"),
            Self::Nats => cfg!(feature = "nats"),
        }
    }

    pub(crate) fn disabled(self) -> Error {
        Error::BackendDisabled {
            backend: self.as_str().to_owned(),
            feature: self.feature().to_owned(),
        }
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| {
                Error::config(
                    "backend",
                    format!("unknown backend {s:?}; available: memory, redis, postgres, nats"),
                )
            })
    }
}

/// Configuration for [`create_event_bus`](crate::create_event_bus): the `backend` key
/// picks the variant, the other keys belong to that backend's config type.
///
/// ```
/// use multibus::Config;
/// let config = Config::from_json_str(r#"{"backend": "memory", "dispatcher": {"handler_timeout_seconds": 2}}"#)?;
/// assert_eq!(config.backend().as_str(), "memory");
/// let config = Config::from_toml_str("backend = \"memory\"\n[dispatcher]\nqueue_maxsize = 10\n")?;
/// let err = Config::from_json_str(r#"{"backend": "memory", "dispatcher": {"queue_maxsize": "ten"}}"#).unwrap_err();
/// assert!(err.to_string().contains("dispatcher.queue_maxsize"));
/// # Ok::<(), multibus::Error>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Config {
    /// `{"backend": "memory", ...}`.
    #[cfg(feature = "memory")]
    #[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
    Memory(event_bus_memory::MemoryConfig),
    /// `{"backend": "redis", "url": "redis://...", ...}`.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    Redis(event_bus_redis::RedisConfig),
    /// `{"backend": "postgres", "url": "postgres://...", ...}`.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    Postgres(event_bus_postgres::PostgresConfig),
    /// `{"backend": "nats", "url": "nats://...", ...}`.
    #[cfg(feature = "nats")]
    #[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
    Nats(event_bus_nats::NatsConfig),
}

impl Config {
    /// Which backend this config selects.
    pub fn backend(&self) -> BackendName {
        match *self {
            #[cfg(feature = "memory")]
            Self::Memory(_) => BackendName::Memory,
            #[cfg(feature = "redis")]
            Self::Redis(_) => BackendName::Redis,
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => BackendName::Postgres,
            #[cfg(feature = "nats")]
            Self::Nats(_) => BackendName::Nats,
        }
    }

    /// Parses a JSON object.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key that is missing, unknown or mistyped;
    /// [`Error::BackendDisabled`] naming the feature to enable.
    pub fn from_json_value(value: serde_json::Value) -> Result<Self, Error> {
        let serde_json::Value::Object(mut map) = value else {
            return Err(Error::config(
                "(root)",
                "expected an object with a `backend` key",
            ));
        };
        let name = match map.remove("backend") {
            Some(serde_json::Value::String(s)) => s.parse::<BackendName>()?,
            Some(other) => {
                return Err(Error::config(
                    "backend",
                    format!("expected a string, got {other}"),
                ));
            }
            None => {
                return Err(Error::config(
                    "backend",
                    "missing; one of memory, redis, postgres, nats",
                ));
            }
        };
        let rest = serde_json::Value::Object(map);
        match name {
            // Values are checked here too, so a bad config fails when it is read.
            #[cfg(feature = "memory")]
            BackendName::Memory => {
                let config: event_bus_memory::MemoryConfig = from_json_value(rest)?;
                config.dispatcher.validate()?;
                Ok(Self::Memory(config))
            }
            #[cfg(feature = "redis")]
            BackendName::Redis => {
                let config: event_bus_redis::RedisConfig = from_json_value(rest)?;
                config.validate()?;
                Ok(Self::Redis(config))
            }
            #[cfg(feature = "postgres")]
            BackendName::Postgres => {
                let config: event_bus_postgres::PostgresConfig = from_json_value(rest)?;
                config.validate()?;
                Ok(Self::Postgres(config))
            }
            #[cfg(feature = "nats")]
            BackendName::Nats => {
                let config: event_bus_nats::NatsConfig = from_json_value(rest)?;
                config.validate()?;
                Ok(Self::Nats(config))
            }
            #[allow(unreachable_patterns)]
            other => {
                let _ = rest;
                Err(other.disabled())
            }
        }
    }

    /// Parses JSON text.
    ///
    /// # Errors
    /// As [`from_json_value`](Self::from_json_value), or for malformed JSON.
    pub fn from_json_str(json: &str) -> Result<Self, Error> {
        Self::from_json_value(event_bus_core::config::from_json_str(json)?)
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// As [`from_json_value`](Self::from_json_value), or for malformed TOML.
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        Self::from_json_value(event_bus_core::config::from_toml_str(text)?)
    }

    /// Reads a `.toml` or `.json` file (by extension; other names are tried as TOML).
    ///
    /// # Errors
    /// [`Error::Config`] if the file cannot be read or parsed.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config("(file)", format!("cannot read {}: {e}", path.display())))?;
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_json_str(&text)
        } else {
            Self::from_toml_str(&text)
        }
    }
}

#[cfg(feature = "memory")]
impl Default for Config {
    fn default() -> Self {
        Self::Memory(Default::default())
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::from_json_value(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_key_errors() {
        let err = Config::from_json_str(r#"{"dispatcher": {}}"#).unwrap_err();
        assert!(err.to_string().contains("`backend`"), "{err}");
        let err = Config::from_json_str(r#"{"backend": "kafka"}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("available: memory, redis, postgres, nats"),
            "{err}"
        );
        let err = Config::from_json_str(r#"{"backend": "memory", "colour": 1}"#).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn values_are_checked_when_read() {
        let err = Config::from_json_str(
            r#"{"backend": "memory", "dispatcher": {"handler_timeout_seconds": 0}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("dispatcher.handler_timeout_seconds"),
            "{err}"
        );
    }

    #[test]
    fn memory_alone_works() {
        assert_eq!(
            Config::from_json_str(r#"{"backend":"memory"}"#)
                .unwrap()
                .backend(),
            BackendName::Memory
        );
    }

    #[test]
    fn the_disabled_error_names_the_feature() {
        // Checked for every backend, whatever features this build has.
        for name in BackendName::ALL {
            let err = name.disabled().to_string();
            assert!(
                err.contains(&format!("enable the `{name}` feature")),
                "{err}"
            );
        }
    }

    #[test]
    fn disabled_backends_name_their_feature() {
        for name in BackendName::ALL.into_iter().filter(|b| !b.is_enabled()) {
            let err = Config::from_json_str(&format!(r#"{{"backend":"{name}"}}"#)).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("enable the `{name}` feature")),
                "{err}"
            );
        }
    }
}
