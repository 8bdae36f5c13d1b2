//! Secrets that never show up in `Debug` output or logs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A string that prints as `***`. Read it with [`Secret::expose`].
///
/// ```
/// use event_bus_core::Secret;
/// let s = Secret::new("hunter2");
/// assert_eq!(format!("{s:?}"), "***");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Hides passwords in a connection string: the `user:password@` part of a URL and
/// `password=...` in a key/value (libpq) string or URL query.
///
/// ```
/// use event_bus_core::secret::redact_connection_string;
/// assert_eq!(
///     redact_connection_string("postgres://app:s3cret@db:5432/app?sslmode=require"),
///     "postgres://app:***@db:5432/app?sslmode=require"
/// );
/// assert_eq!(
///     redact_connection_string("host=db user=app password=s3cret dbname=app"),
///     "host=db user=app password=*** dbname=app"
/// );
/// assert_eq!(redact_connection_string("rediss://:pw@cache:6380/0"), "rediss://:***@cache:6380/0");
/// ```
pub fn redact_connection_string(s: &str) -> String {
    let mut out = s.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    redact_password_params(&out)
}

fn redact_password_params(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(found) = lower[i..].find("password=") {
        let start = i + found;
        let at_boundary = start == 0 || matches!(s.as_bytes()[start - 1], b' ' | b'?' | b'&');
        let value_start = start + "password=".len();
        out.push_str(&s[i..value_start]);
        if !at_boundary {
            i = value_start;
            continue;
        }
        let value_end = if s[value_start..].starts_with('\'') {
            s[value_start + 1..]
                .find('\'')
                .map_or(s.len(), |j| value_start + j + 2)
        } else {
            s[value_start..]
                .find([' ', '&'])
                .map_or(s.len(), |j| value_start + j)
        };
        out.push_str("***");
        i = value_end;
    }
    out.push_str(&s[i..]);
    out
}
