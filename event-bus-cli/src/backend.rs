//! Backend selection shared by every subcommand: `--config FILE`, or `--backend` with
//! `--url`, or the `EVENT_BUS_*` environment variables; memory by default.

use std::{fmt, path::PathBuf, process::ExitCode, sync::Arc};

use event_bus::{BackendName, Config, Error, EventBus, create_event_bus};
use serde_json::{Value, json};

/// Options naming the bus a subcommand talks to. Precedence: `--config` (or
/// `EVENT_BUS_CONFIG`), then `--backend`/`--url` (or `EVENT_BUS_BACKEND`/`EVENT_BUS_URL`),
/// then the memory backend.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct BackendArgs {
    /// Config file, TOML (or JSON when it ends in `.json`), with the schema of
    /// `create_event_bus`, e.g. `backend = "redis"` and `url = "redis://127.0.0.1"`.
    #[arg(long, global = true, env = "EVENT_BUS_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Backend to use when no config file is given: memory, redis or postgres.
    #[arg(long, global = true, env = "EVENT_BUS_BACKEND", value_name = "NAME")]
    pub(crate) backend: Option<String>,
    /// Server URL for `--backend` (the config key `url`): `redis://127.0.0.1:6379` for
    /// redis, `postgres://postgres@127.0.0.1/postgres` for postgres.
    #[arg(long, global = true, env = "EVENT_BUS_URL", value_name = "URL")]
    pub(crate) url: Option<String>,
}

/// Why the command failed, and with which exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// A usage or configuration error (exit status 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    /// A runtime error: server unreachable, publish failed (exit status 1).
    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }

    /// The process exit status.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        match error {
            Error::Config { .. }
            | Error::BackendDisabled { .. }
            | Error::InvalidTopic { .. }
            | Error::InvalidPattern { .. } => Self::usage(error.to_string()),
            other => Self::runtime(other.to_string()),
        }
    }
}

impl BackendArgs {
    /// The configuration as a JSON object (the schema of `event_bus::Config`).
    ///
    /// # Errors
    /// A usage failure naming the key or file at fault.
    pub(crate) fn config_value(&self) -> Result<Value, Failure> {
        if let Some(path) = &self.config {
            return Ok(read_config_file(path)?);
        }
        let name: BackendName = match self.backend.as_deref() {
            None | Some("") => BackendName::Memory,
            Some(name) => name.parse()?,
        };
        let url = self.url.as_deref().filter(|u| !u.is_empty());
        Ok(match (name, url) {
            (BackendName::Memory, None) => json!({"backend": "memory"}),
            (BackendName::Memory, Some(_)) => {
                return Err(Error::config("url", "the memory backend takes no url").into());
            }
            (BackendName::Redis, None) => json!({"backend": "redis"}),
            (BackendName::Redis, Some(url)) => json!({"backend": "redis", "url": url}),
            (BackendName::Postgres, None) => json!({"backend": "postgres"}),
            (BackendName::Postgres, Some(url)) => {
                json!({"backend": "postgres", "url": url})
            }
        })
    }
}

/// Reads a `.json` or TOML file into a JSON value, like `Config::from_file`.
fn read_config_file(path: &std::path::Path) -> Result<Value, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config("(file)", format!("cannot read {}: {e}", path.display())))?;
    if path.extension().is_some_and(|e| e == "json") {
        event_bus::backend_api::config::from_json_str(&text)
    } else {
        event_bus::backend_api::config::from_toml_str(&text)
    }
}

/// The backend name of a config value (`memory` when absent, as the parser will say).
pub(crate) fn backend_of(value: &Value) -> &str {
    value
        .get("backend")
        .and_then(Value::as_str)
        .unwrap_or("memory")
}

/// Builds and connects the bus `value` describes.
///
/// # Errors
/// A usage failure for bad config; a runtime failure if the server cannot be reached.
pub(crate) async fn connect(value: Value) -> Result<Arc<dyn EventBus>, Failure> {
    let bus = create_event_bus(Config::from_json_value(value)?)?;
    bus.connect().await?;
    Ok(bus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_and_url_map_to_config_keys() {
        let args = |backend: &str, url: Option<&str>| BackendArgs {
            config: None,
            backend: Some(backend.to_owned()),
            url: url.map(str::to_owned),
        };
        assert_eq!(
            args("redis", Some("redis://h")).config_value().unwrap(),
            json!({"backend": "redis", "url": "redis://h"})
        );
        assert_eq!(
            args("postgres", Some("postgres://h"))
                .config_value()
                .unwrap()["url"],
            "postgres://h"
        );
        assert_eq!(
            BackendArgs::default().config_value().unwrap(),
            json!({"backend": "memory"})
        );
        let err = args("kafka", None).config_value().unwrap_err();
        assert!(err.to_string().contains("`backend`"), "{err}");
        assert_eq!(err.code, 2);
        let err = args("memory", Some("x")).config_value().unwrap_err();
        assert!(err.to_string().contains("`url`"), "{err}");
    }
}
