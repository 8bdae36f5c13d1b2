//! Which bus a subcommand talks to: `--config FILE`, or `--url` (whose scheme names the
//! backend) with an optional `--backend`, or the `EVENT_BUS_*` variables of those
//! options; the memory backend when none is given.

use std::path::{Path, PathBuf};

use clap::{ArgMatches, parser::ValueSource};
use multibus::{BackendName, Error};
use serde_json::{Value, json};

use self::selection::Origin;
pub(crate) use self::selection::Selection;
use crate::failure::Failure;

mod selection;

/// The help heading of the options every subcommand accepts.
pub(crate) const GLOBAL_OPTIONS: &str = "Global options";

/// Options naming the bus a subcommand talks to.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct BackendArgs {
    /// Config file, TOML (or JSON when it ends in `.json`), with the schema of
    /// `create_event_bus`, e.g. `backend = "redis"` and `url = "redis://127.0.0.1"`.
    /// Not together with `--backend` or `--url`.
    #[arg(long, global = true, env = "EVENT_BUS_CONFIG", value_name = "FILE",
          help_heading = GLOBAL_OPTIONS)]
    config: Option<PathBuf>,
    /// Backend: memory, redis, postgres or nats. Without it, the scheme of `--url` names the
    /// backend; without both, memory.
    #[arg(long, global = true, env = "EVENT_BUS_BACKEND", value_name = "NAME",
          help_heading = GLOBAL_OPTIONS)]
    backend: Option<String>,
    /// Server URL: `redis://` or `rediss://` for Redis, `postgres://` or `postgresql://`
    /// for PostgreSQL (with `--backend postgres`, also a libpq `key=value` string),
    /// `nats://` for NATS (with `--backend nats`, also `tls://`).
    #[arg(long, global = true, env = "EVENT_BUS_URL", value_name = "URL",
          help_heading = GLOBAL_OPTIONS)]
    url: Option<String>,
    /// Which of the options above came from their environment variable.
    #[arg(skip)]
    from_env: FromEnv,
}

/// The config file, backend and URL options that apply (at most one side is set).
type Given<'a> = (Option<&'a Path>, Option<&'a str>, Option<&'a str>);

#[derive(Clone, Copy, Debug, Default)]
struct FromEnv {
    config: bool,
    backend: bool,
    url: bool,
}

/// One of the options, for messages that name it as the user gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    Config,
    Backend,
    Url,
}

impl BackendArgs {
    /// Notes which options came from environment variables, so that messages name
    /// them as the user gave them (`EVENT_BUS_URL` rather than `--url`).
    pub(crate) fn note_sources(&mut self, matches: &ArgMatches) {
        let env = |id: &str| matches.value_source(id) == Some(ValueSource::EnvVariable);
        self.from_env = FromEnv {
            config: env("config"),
            backend: env("backend"),
            url: env("url"),
        };
    }

    /// The option as the user gave it: `--url`, or `EVENT_BUS_URL` from the environment.
    fn name(&self, opt: Opt) -> &'static str {
        match (opt, self.is_env(opt)) {
            (Opt::Config, false) => "--config",
            (Opt::Config, true) => "EVENT_BUS_CONFIG",
            (Opt::Backend, false) => "--backend",
            (Opt::Backend, true) => "EVENT_BUS_BACKEND",
            (Opt::Url, false) => "--url",
            (Opt::Url, true) => "EVENT_BUS_URL",
        }
    }

    fn is_env(&self, opt: Opt) -> bool {
        match opt {
            Opt::Config => self.from_env.config,
            Opt::Backend => self.from_env.backend,
            Opt::Url => self.from_env.url,
        }
    }

    /// The options given on the command line (not from the environment), e.g. to tell
    /// the user that a subcommand does not use them.
    pub(crate) fn on_command_line(&self) -> Vec<&'static str> {
        [
            (Opt::Config, self.config.is_some()),
            (Opt::Backend, self.backend.is_some()),
            (Opt::Url, self.url.is_some()),
        ]
        .into_iter()
        .filter(|&(opt, given)| given && !self.is_env(opt))
        .map(|(opt, _)| self.name(opt))
        .collect()
    }

    /// Chooses the bus. A config file excludes `--backend` and `--url`; when one side
    /// comes from the command line and the other from the environment, the command
    /// line wins.
    ///
    /// # Errors
    /// A usage failure naming the options at fault, or the config file's bad key.
    pub(crate) fn select(&self) -> Result<Selection, Failure> {
        let (config, backend, url) = self.given()?;
        if let Some(path) = config {
            let value = read_config_file(path)
                .map_err(|e| Failure::from(e).context(&path.display().to_string()))?;
            let origin = Origin::File {
                option: self.name(Opt::Config),
                path: path.to_owned(),
            };
            return Ok(Selection { value, origin });
        }
        let value = self.flags_value(backend, url)?;
        let origin = if backend.is_none() && url.is_none() {
            Origin::Default
        } else {
            let given = [(Opt::Backend, backend), (Opt::Url, url)]
                .into_iter()
                .filter(|(_, value)| value.is_some())
                .map(|(opt, _)| self.name(opt))
                .collect::<Vec<_>>()
                .join(" and ");
            Origin::Flags {
                url: self.name(Opt::Url),
                given,
            }
        };
        Ok(Selection { value, origin })
    }

    /// The non-empty options that apply: the config file, or the backend and URL.
    fn given(&self) -> Result<Given<'_>, Failure> {
        let config = self.config.as_deref().filter(|p| !p.as_os_str().is_empty());
        let backend = self.backend.as_deref().filter(|s| !s.is_empty());
        let url = self.url.as_deref().filter(|s| !s.is_empty());
        if config.is_none() || (backend.is_none() && url.is_none()) {
            return Ok((config, backend, url));
        }
        let others_on_command_line =
            (backend.is_some() && !self.from_env.backend) || (url.is_some() && !self.from_env.url);
        match (!self.from_env.config, others_on_command_line) {
            (true, false) => Ok((config, None, None)),
            (false, true) => Ok((None, backend, url)),
            _ => {
                let other = if backend.is_some() && self.from_env.backend == self.from_env.config {
                    Opt::Backend
                } else {
                    Opt::Url
                };
                Err(Failure::usage(format!(
                    "{} cannot be combined with {}: the config file names the backend and \
                     its server; give one or the other",
                    self.name(Opt::Config),
                    self.name(other)
                )))
            }
        }
    }

    /// The config of `--backend` and `--url`.
    fn flags_value(&self, backend: Option<&str>, url: Option<&str>) -> Result<Value, Failure> {
        let (backend_flag, url_flag) = (self.name(Opt::Backend), self.name(Opt::Url));
        let from_scheme = url.and_then(BackendName::for_url);
        let name = match (backend, url) {
            (Some(name), _) => name.parse::<BackendName>().map_err(|_| {
                Failure::usage(format!(
                    "{backend_flag} {name}: unknown backend; available: {}",
                    BackendName::ALL.map(BackendName::as_str).join(", ")
                ))
            })?,
            (None, Some(url)) => from_scheme.ok_or_else(|| unknown_scheme(url_flag, url))?,
            (None, None) => BackendName::Memory,
        };
        if let Some(scheme_backend) = from_scheme.filter(|&b| b != name) {
            return Err(Failure::usage(format!(
                "{backend_flag} {name} does not match {url_flag}, a {scheme_backend} URL; \
                 drop {backend_flag} (the URL's scheme names the backend)"
            )));
        }
        Ok(match (name, url) {
            (BackendName::Memory, None) => json!({"backend": "memory"}),
            (BackendName::Memory, Some(_)) => {
                return Err(Failure::usage(format!(
                    "{backend_flag} memory takes no {url_flag}: the memory backend has no \
                     server"
                )));
            }
            (BackendName::Redis, None) => json!({"backend": "redis"}),
            (BackendName::Redis, Some(url)) => json!({"backend": "redis", "url": url}),
            (BackendName::Postgres, None) => {
                return Err(Failure::usage(format!(
                    "{backend_flag} postgres needs {url_flag}, e.g. \
                     postgres://postgres@127.0.0.1:5432/postgres"
                )));
            }
            (BackendName::Postgres, Some(url)) => {
                json!({"backend": "postgres", "url": url})
            }
            (BackendName::Nats, None) => json!({"backend": "nats"}),
            (BackendName::Nats, Some(url)) => json!({"backend": "nats", "url": url}),
        })
    }
}

/// The error for a `--url` whose scheme names no backend. The URL itself is not
/// repeated: it may hold a password.
fn unknown_scheme(url_flag: &str, url: &str) -> Failure {
    let known = BackendName::url_schemes_text();
    Failure::usage(match url.split_once("://") {
        Some((scheme, _)) => {
            format!("{url_flag}: unknown scheme `{scheme}://`; a server URL starts with {known}")
        }
        None => format!(
            "{url_flag} is not a URL (no `scheme://`); a server URL starts with {known} \
             (a libpq key=value string needs --backend postgres)"
        ),
    })
}

/// Reads a `.json` or TOML file into a JSON value, like `Config::from_file`.
fn read_config_file(path: &Path) -> Result<Value, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config("(file)", format!("cannot read it: {e}")))?;
    if path.extension().is_some_and(|e| e == "json") {
        multibus::backend_api::config::from_json_str(&text)
    } else {
        multibus::backend_api::config::from_toml_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(backend: Option<&str>, url: Option<&str>) -> BackendArgs {
        BackendArgs {
            backend: backend.map(str::to_owned),
            url: url.map(str::to_owned),
            ..BackendArgs::default()
        }
    }

    fn error(args: &BackendArgs) -> String {
        let failure = args.select().unwrap_err();
        assert_eq!(failure.code(), Failure::USAGE, "{failure}");
        failure.to_string()
    }

    #[test]
    fn the_url_scheme_names_the_backend() {
        let value = |url| args(None, Some(url)).select().unwrap().value;
        assert_eq!(
            value("redis://h"),
            json!({"backend": "redis", "url": "redis://h"})
        );
        assert_eq!(value("rediss://h")["backend"], "redis");
        assert_eq!(
            value("postgresql://h/db"),
            json!({"backend": "postgres", "url": "postgresql://h/db"})
        );
        assert_eq!(
            args(Some("postgres"), Some("host=h"))
                .select()
                .unwrap()
                .value["url"],
            "host=h"
        );
        assert_eq!(
            BackendArgs::default().select().unwrap().value,
            json!({"backend": "memory"})
        );
    }

    #[test]
    fn flag_errors_speak_in_flags() {
        let cases = [
            (
                args(Some("postgres"), None),
                "--backend postgres needs --url",
            ),
            (
                args(Some("kafka"), None),
                "--backend kafka: unknown backend",
            ),
            (
                args(Some("memory"), Some("redis://h")),
                "does not match --url",
            ),
            (
                args(Some("redis"), Some("postgres://h")),
                "does not match --url",
            ),
            (args(None, Some("http://pw@h")), "unknown scheme `http://`"),
            (args(None, Some("host=h password=pw")), "--url is not a URL"),
        ];
        for (args, needle) in cases {
            let message = error(&args);
            assert!(message.contains(needle), "{message}");
            assert!(!message.contains("pw"), "{message}");
            assert!(!message.contains("(root)"), "{message}");
        }
        let mut from_env = args(Some("postgres"), None);
        from_env.from_env.backend = true;
        assert!(error(&from_env).starts_with("EVENT_BUS_BACKEND postgres needs --url"));
        assert!(error(&args(Some("memory"), Some("x"))).contains("memory takes no --url"));
    }

    #[test]
    fn config_file_excludes_backend_and_url_from_the_same_place() {
        let mut both = args(Some("redis"), None);
        both.config = Some("shop.toml".into());
        assert!(error(&both).starts_with("--config cannot be combined with --backend"));
        both.from_env = FromEnv {
            config: true,
            backend: true,
            url: false,
        };
        assert!(
            error(&both).starts_with("EVENT_BUS_CONFIG cannot be combined with EVENT_BUS_BACKEND")
        );
        // The command line beats the environment.
        both.from_env.config = true;
        both.from_env.backend = false;
        assert_eq!(both.select().unwrap().backend(), "redis");
    }

    #[test]
    fn url_errors_of_the_parsed_config_name_the_flag() {
        let selection = args(None, Some("redis://h:notaport")).select().unwrap();
        let err = selection.parse().unwrap_err().to_string();
        assert!(err.starts_with("--url: "), "{err}");
    }
}
