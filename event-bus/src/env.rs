//! Reading the configuration from `EVENT_BUS_*` environment variables, the ones the
//! `eventbus` command line reads.

use event_bus_core::Error;
use serde_json::{Value, json};

use crate::backend::{BackendName, Config};

/// A config file, TOML or JSON (by extension), read with [`Config::from_file`].
const CONFIG_VAR: &str = "EVENT_BUS_CONFIG";
/// The backend name: `memory`, `redis`, `postgres` or `nats`.
const BACKEND_VAR: &str = "EVENT_BUS_BACKEND";
/// The server location, the config key `url`.
const URL_VAR: &str = "EVENT_BUS_URL";

impl Config {
    /// Reads the configuration from the environment, as the `eventbus` command line does:
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `EVENT_BUS_CONFIG` | path of a config file (`.json`, otherwise TOML) |
    /// | `EVENT_BUS_BACKEND` | `memory`, `redis`, `postgres` or `nats` |
    /// | `EVENT_BUS_URL` | the server `url`; without `EVENT_BUS_BACKEND` its scheme picks the backend (`redis://`, `rediss://`, `postgres://`, `postgresql://`, `nats://`) |
    ///
    /// A file and the other two variables exclude each other. With none of them set
    /// (or all empty) the result is the memory backend with default settings, as with
    /// [`Config::default`]. Every other setting takes its default; use a file for more.
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable at fault (a URL whose scheme names no
    /// backend, a URL for the memory backend, both a file and a backend) or, from the
    /// file or the URL, the key at fault; [`Error::BackendDisabled`] naming the feature.
    ///
    /// ```no_run
    /// use multibus::prelude::*;
    /// # async fn run() -> Result<(), Error> {
    /// // EVENT_BUS_URL=redis://127.0.0.1:6379 ./my-service
    /// let bus = create_event_bus(Config::from_env()?)?;
    /// bus.connect().await?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Self, Error> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the variables looked up by `lookup` instead of
    /// in the process environment (for tests, or another source of settings).
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    ///
    /// ```
    /// use multibus::{BackendName, Config};
    /// let config = Config::from_env_with(|name| match name {
    ///     "EVENT_BUS_BACKEND" => Some("memory".to_owned()),
    ///     _ => None,
    /// })?;
    /// assert_eq!(config.backend(), BackendName::Memory);
    /// # Ok::<(), multibus::Error>(())
    /// ```
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let var = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let (file, backend, url) = (var(CONFIG_VAR), var(BACKEND_VAR), var(URL_VAR));
        if let Some(path) = file {
            if let Some(other) = [(BACKEND_VAR, &backend), (URL_VAR, &url)]
                .into_iter()
                .find_map(|(name, value)| value.as_ref().map(|_| name))
            {
                return Err(Error::config(
                    CONFIG_VAR,
                    format!("the config file and {other} exclude each other: unset one"),
                ));
            }
            return Self::from_file(path);
        }
        Self::from_json_value(backend_value(backend.as_deref(), url)?)
    }
}

/// The config object for a backend name and URL, as `from_env` reads them.
fn backend_value(backend: Option<&str>, url: Option<String>) -> Result<Value, Error> {
    let name = match (backend, &url) {
        (Some(name), _) => name
            .parse::<BackendName>()
            .map_err(|e| Error::config(BACKEND_VAR, without_key(e)))?,
        (None, Some(url)) => BackendName::for_url(url).ok_or_else(|| {
            Error::config(
                URL_VAR,
                format!(
                    "its scheme names no backend ({}): set EVENT_BUS_BACKEND",
                    BackendName::url_schemes_text()
                ),
            )
        })?,
        (None, None) => BackendName::Memory,
    };
    Ok(match (name, url) {
        (BackendName::Memory, Some(_)) => {
            return Err(Error::config(
                URL_VAR,
                "the memory backend takes no url: unset it or set EVENT_BUS_BACKEND",
            ));
        }
        (name, None) => json!({"backend": name.as_str()}),
        (name, Some(url)) => json!({"backend": name.as_str(), "url": url}),
    })
}

/// The message of a config error, without its key (which `from_env` replaces by the
/// variable's name).
fn without_key(error: Error) -> String {
    match error {
        Error::Config { message, .. } => message,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Config::from_env_with(|name| vars.get(name).cloned())
    }

    fn message(vars: &[(&str, &str)]) -> String {
        from(vars).unwrap_err().to_string()
    }

    #[test]
    fn nothing_set_means_memory() {
        assert_eq!(from(&[]).unwrap().backend(), BackendName::Memory);
        let empty = [(CONFIG_VAR, ""), (BACKEND_VAR, ""), (URL_VAR, "")];
        assert_eq!(from(&empty).unwrap().backend(), BackendName::Memory);
    }

    #[test]
    fn errors_name_the_variable() {
        let err = message(&[(BACKEND_VAR, "kafka")]);
        assert!(
            err.contains("`EVENT_BUS_BACKEND`") && err.contains("kafka"),
            "{err}"
        );
        let err = message(&[(URL_VAR, "amqp://broker")]);
        assert!(err.contains("`EVENT_BUS_URL`"), "{err}");
        assert!(
            !err.contains("broker"),
            "the URL may hold a password: {err}"
        );
        let err = message(&[(BACKEND_VAR, "memory"), (URL_VAR, "redis://h")]);
        assert!(err.contains("`EVENT_BUS_URL`"), "{err}");
        let err = message(&[(CONFIG_VAR, "bus.toml"), (URL_VAR, "redis://h")]);
        assert!(
            err.contains("`EVENT_BUS_CONFIG`") && err.contains("EVENT_BUS_URL"),
            "{err}"
        );
        let err = message(&[(CONFIG_VAR, "/nonexistent/bus.toml")]);
        assert!(err.contains("/nonexistent/bus.toml"), "{err}");
    }

    #[test]
    fn the_url_scheme_picks_the_backend() {
        for (url, backend) in [
            ("redis://h", BackendName::Redis),
            ("rediss://h:6380/1", BackendName::Redis),
            ("postgres://u@h/db", BackendName::Postgres),
            ("postgresql://u@h/db", BackendName::Postgres),
            ("nats://h:4222", BackendName::Nats),
        ] {
            let value = backend_value(None, Some(url.to_owned())).unwrap();
            assert_eq!(value, json!({"backend": backend.as_str(), "url": url}));
        }
        let value = backend_value(Some("postgres"), Some("host=h user=u".to_owned())).unwrap();
        assert_eq!(
            value,
            json!({"backend": "postgres", "url": "host=h user=u"})
        );
    }

    #[test]
    fn a_config_file_is_read() {
        let path = std::env::temp_dir().join(format!("event-bus-env-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "backend = \"memory\"\n[dispatcher]\nqueue_maxsize = 7\n",
        )
        .unwrap();
        let config = from(&[(CONFIG_VAR, path.to_str().unwrap())]);
        std::fs::remove_file(&path).unwrap();
        #[allow(irrefutable_let_patterns)] // when only the memory backend is compiled in
        let Config::Memory(config) = config.unwrap() else {
            panic!("not the memory backend");
        };
        assert_eq!(config.dispatcher.queue_maxsize, 7);
    }

    /// Run by [`from_env_reads_the_process_environment`] in a child process whose
    /// environment sets `EVENT_BUS_BACKEND=kafka`.
    #[test]
    #[ignore = "run in a child process by from_env_reads_the_process_environment"]
    fn child_reads_the_environment() {
        let err = Config::from_env().unwrap_err().to_string();
        assert!(
            err.contains("`EVENT_BUS_BACKEND`") && err.contains("kafka"),
            "{err}"
        );
    }

    /// `from_env` reads the real environment (checked in a child process, since tests
    /// share this one's environment).
    #[test]
    fn from_env_reads_the_process_environment() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "env::tests::child_reads_the_environment"])
            .args(["--ignored", "--test-threads=1"])
            .env(BACKEND_VAR, "kafka")
            .env_remove(CONFIG_VAR)
            .env_remove(URL_VAR)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
