//! The bus the options chose: its configuration, where it came from, and the errors
//! of parsing it worded in the user's terms.

use std::{path::PathBuf, sync::Arc};

use multibus::{BackendName, Config, Error, EventBus, create_event_bus};
use serde_json::Value;

use crate::{failure::Failure, output};

/// The bus the options chose, and where the choice came from.
#[derive(Clone, Debug)]
pub(crate) struct Selection {
    /// The configuration as a JSON object (the schema of `multibus::Config`).
    pub(crate) value: Value,
    pub(super) origin: Origin,
}

/// Where a [`Selection`] came from, for messages.
#[derive(Clone, Debug)]
pub(super) enum Origin {
    /// No option given: memory.
    Default,
    /// A config file, named by `option` (`--config` or `EVENT_BUS_CONFIG`).
    File { option: &'static str, path: PathBuf },
    /// `--backend` and/or `--url` (or their variables): `url` names the URL option as
    /// given, `given` the options given.
    Flags { url: &'static str, given: String },
}

impl Selection {
    /// The backend name of the config (`memory` when absent, as the parser will say).
    pub(crate) fn backend(&self) -> &str {
        self.value
            .get("backend")
            .and_then(Value::as_str)
            .unwrap_or("memory")
    }

    /// Where the choice came from: `--config shop.toml`, `--url`, or the default.
    pub(crate) fn origin(&self) -> String {
        match &self.origin {
            Origin::Default => "the default (no --config, --backend or --url given)".to_owned(),
            Origin::File { option, path } => format!("{option} {}", path.display()),
            Origin::Flags { given, .. } => given.clone(),
        }
    }

    /// Parses and checks the configuration.
    ///
    /// # Errors
    /// A usage failure naming the file and key, or the option, at fault.
    pub(crate) fn parse(&self) -> Result<Config, Failure> {
        Config::from_json_value(self.value.clone()).map_err(|e| match (&self.origin, &e) {
            (Origin::File { path, .. }, _) => Failure::from(e).context(&path.display().to_string()),
            (Origin::Flags { url, .. }, Error::Config { key, message })
                if matches!(key.as_str(), "url" | "connection_string" | "(root)") =>
            {
                Failure::usage(format!("{url}: {message}"))
            }
            _ => e.into(),
        })
    }

    /// On the memory backend, tells the user (one line on stderr, a notice) that
    /// `consequence` and how to reach a server instead.
    pub(crate) fn notice_if_memory(&self, consequence: &str) {
        if self.backend() == BackendName::Memory.as_str() {
            output::notice(format!(
                "note: the memory backend only reaches this process, so {consequence}; \
                 to reach other processes use --url redis://HOST:6379, \
                 --url postgres://USER@HOST/DB or --config FILE"
            ));
        }
    }

    /// Builds and connects the bus.
    ///
    /// # Errors
    /// A usage failure for bad config; a runtime failure if the server cannot be reached.
    pub(crate) async fn connect(&self) -> Result<Arc<dyn EventBus>, Failure> {
        let bus = create_event_bus(self.parse()?)?;
        bus.connect().await?;
        Ok(bus)
    }
}
