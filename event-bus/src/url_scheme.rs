//! Which backend a server URL belongs to, told by its scheme.

use crate::BackendName;

impl BackendName {
    /// Every URL scheme a backend serves, and that backend: the one table that
    /// [`for_url`](Self::for_url), [`Config::from_env`](crate::Config::from_env) and the
    /// `eventbus --url` option read.
    pub const URL_SCHEMES: &'static [(&'static str, BackendName)] = &[
        ("redis", BackendName::Redis),
        ("rediss", BackendName::Redis),
        ("postgres", BackendName::Postgres),
        ("postgresql", BackendName::Postgres),
        ("nats", BackendName::Nats),
    ];

    /// The backend a server URL is for, by its scheme (case-insensitive), from
    /// [`URL_SCHEMES`](Self::URL_SCHEMES): `redis://` and `rediss://` are Redis,
    /// `postgres://` and `postgresql://` are PostgreSQL, `nats://` is NATS; `None` for
    /// anything else (including libpq key/value strings, and `tls://`, which a NATS
    /// config may use but which names no backend by itself).
    ///
    /// ```
    /// use multibus::BackendName;
    /// assert_eq!(BackendName::for_url("rediss://cache:6380"), Some(BackendName::Redis));
    /// assert_eq!(BackendName::for_url("postgresql://db/app"), Some(BackendName::Postgres));
    /// assert_eq!(BackendName::for_url("nats://127.0.0.1:4222"), Some(BackendName::Nats));
    /// assert_eq!(BackendName::for_url("host=db user=app"), None);
    /// ```
    pub fn for_url(url: &str) -> Option<Self> {
        let (scheme, _) = url.split_once("://")?;
        Self::URL_SCHEMES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(scheme))
            .map(|&(_, backend)| backend)
    }

    /// The schemes of [`URL_SCHEMES`](Self::URL_SCHEMES) for messages:
    /// `redis://, rediss://, postgres://, postgresql://, nats://`.
    pub fn url_schemes_text() -> String {
        Self::URL_SCHEMES
            .iter()
            .map(|(scheme, _)| format!("{scheme}://"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_network_backend_has_a_scheme_and_memory_none() {
        for backend in BackendName::ALL {
            let has_scheme = BackendName::URL_SCHEMES.iter().any(|&(_, b)| b == backend);
            assert_eq!(has_scheme, backend != BackendName::Memory, "{backend}");
        }
        assert_eq!(BackendName::for_url("REDIS://h"), Some(BackendName::Redis));
        assert_eq!(BackendName::for_url("memory://"), None);
        assert_eq!(BackendName::for_url("redis"), None);
        assert_eq!(
            BackendName::url_schemes_text(),
            "redis://, rediss://, postgres://, postgresql://, nats://"
        );
    }
}
