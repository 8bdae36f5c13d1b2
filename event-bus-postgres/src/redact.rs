//! What may be shown of a connection string: a description rendered from the driver's
//! parsed form, never the text itself.
//!
//! The connection string is parsed by the driver (`tokio_postgres::Config`), and the
//! description is built from the parsed fields: hosts, host addresses, ports, user,
//! database, options, `application_name` and `sslmode`, with `password=***` when a
//! password is set. However the password was written (quoted, escaped,
//! percent-encoded, in the URL's user info or its query), it is not one of the fields
//! shown, so it cannot leak through a parsing corner case. A string the driver cannot
//! parse is not shown at all.

use std::fmt::Write as _;

use event_bus_core::Error;
use tokio_postgres::config::{Host, SslMode};

/// Shown in place of a connection string that does not parse.
pub(crate) const UNPARSEABLE: &str = "(unparseable connection string, not shown)";

/// Parses `connection_string`; returns the driver's config and whether TLS
/// certificates must be verified (`sslmode=verify-ca`/`verify-full`).
///
/// # Errors
/// [`Error::Config`] naming `url`. The message never quotes the text:
/// only the driver's reason, and only when it names a key rather than a value.
pub(crate) fn parse(connection_string: &str) -> Result<(tokio_postgres::Config, bool), Error> {
    let (text, verify) = crate::tls::split_verify_mode(connection_string);
    let config = text.parse().map_err(|e: tokio_postgres::Error| {
        let reason = std::error::Error::source(&e).map(ToString::to_string);
        let message = match reason {
            // These name a key (`unknown option `sslmod``), never a value.
            Some(r) if r.starts_with("unknown option") || r.starts_with("invalid value") => {
                format!("cannot parse: {r}")
            }
            // Others may quote a character of the text, which could be the password's.
            _ => "cannot parse: expected `key=value` pairs or a `postgres://` URL".to_owned(),
        };
        Error::config("url", message)
    })?;
    Ok((config, verify))
}

/// `host=... port=... user=... password=*** dbname=... sslmode=...`: the settings of
/// `config`, in libpq's key/value syntax, without the password.
pub(crate) fn describe(config: &tokio_postgres::Config, verify: bool) -> String {
    let mut out = String::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    push_list(&mut out, "host", &hosts);
    let addrs: Vec<String> = config
        .get_hostaddrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    push_list(&mut out, "hostaddr", &addrs);
    let ports: Vec<String> = config.get_ports().iter().map(|p| p.to_string()).collect();
    push_list(&mut out, "port", &ports);
    push(&mut out, "user", config.get_user());
    if config.get_password().is_some() {
        push(&mut out, "password", Some("***"));
    }
    push(&mut out, "dbname", config.get_dbname());
    push(&mut out, "options", config.get_options());
    push(&mut out, "application_name", config.get_application_name());
    let sslmode = match config.get_ssl_mode() {
        _ if verify => "verify-full",
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        _ => "other",
    };
    push(&mut out, "sslmode", Some(sslmode));
    out
}

fn push_list(out: &mut String, key: &str, values: &[String]) {
    if !values.is_empty() {
        push(out, key, Some(&values.join(",")));
    }
}

fn push(out: &mut String, key: &str, value: Option<&str>) {
    let Some(value) = value else { return };
    if !out.is_empty() {
        out.push(' ');
    }
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        let _ = write!(out, "{key}={value}");
    } else {
        let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
        let _ = write!(out, "{key}='{escaped}'");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(s: &str) -> String {
        let (config, verify) = parse(s).unwrap();
        describe(&config, verify)
    }

    #[test]
    fn the_issue_examples_hide_the_password() {
        for s in [
            "host=h user=u password = hunter2 dbname=d",
            "host=h user=u\tpassword=hunter2",
            r"host=h password='hun\'ter2' user=u",
            "postgres://u:hun/ter2@h/db",
            "postgres://u@h/db?pass%77ord=hunter2",
            "postgresql://u:hunter2@h:5433,g/db?sslmode=require&application_name=app",
        ] {
            let text = shown(s);
            assert!(!text.contains("ter2"), "{s:?} -> {text}");
            assert!(text.contains("password=***"), "{s:?} -> {text}");
        }
    }

    #[test]
    fn the_description_is_valid_libpq_syntax() {
        let text = shown("postgres://u%20x@h1:5433,h2/my%27db?options=-c%20a%3Db&sslmode=disable");
        assert_eq!(
            text,
            r"host=h1,h2 port=5433,5432 user='u x' dbname='my\'db' options='-c a=b' sslmode=disable"
        );
        let (config, _) = parse(&text).unwrap();
        assert_eq!(config.get_dbname(), Some("my'db"));
        assert_eq!(
            shown("host=h sslmode=verify-ca"),
            "host=h sslmode=verify-full"
        );
    }

    #[test]
    fn parse_errors_quote_no_value() {
        for (s, expect) in [
            ("host=h password s3cr", "expected `key=value`"),
            ("host=h password='s3cr", "expected `key=value`"),
            ("host=h passwrd=s3cr", "unknown option `passwrd`"),
            ("host=h port=s3cr", "invalid value"),
        ] {
            let err = parse(s).unwrap_err().to_string();
            assert!(
                err.contains(expect) && !err.contains("s3cr"),
                "{s:?}: {err}"
            );
            assert!(err.contains("`url`"), "{err}");
        }
    }
}
