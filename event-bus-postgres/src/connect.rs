//! Opening connections: TLS setup, timeouts and the `application_name` of each role.

use std::time::Duration;

use event_bus_core::Error;
use tokio_postgres::{Client, Connection, Socket, tls::MakeTlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The stream type of a connection made by [`Connector`].
type TlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// A connection future to be driven by a task of the caller's choosing.
pub(crate) type PgConnection = Connection<Socket, TlsStream>;

/// Opens connections to one server with one TLS setup (see [`crate::tls`]).
pub(crate) struct Connector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    prefix: String,
    timeout: Duration,
    redacted: String,
}

impl Connector {
    /// A connector for a parsed, validated config.
    pub(crate) fn new(
        config: tokio_postgres::Config,
        verify_certificates: bool,
        prefix: &str,
        timeout: Duration,
        redacted: String,
    ) -> Result<Self, Error> {
        Ok(Self {
            config,
            tls: crate::tls::connector(verify_certificates)?,
            prefix: prefix.to_owned(),
            timeout,
            redacted,
        })
    }

    /// Bound on each statement.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The TCP addresses of the server (host, port), for probing whether it is back
    /// (see [`Backoff::wait`](event_bus_core::reconnect::Backoff::wait)); Unix sockets
    /// are left out.
    pub(crate) fn tcp_addresses(&self) -> Vec<(String, u16)> {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .filter_map(|(i, host)| match host {
                tokio_postgres::config::Host::Tcp(name) => {
                    let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                    Some((name.clone(), port))
                }
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(_) => None,
            })
            .collect()
    }

    /// Opens a connection for `role` (`listen`, `publish` or `claim`). Unless the connection
    /// string sets one, the session's `application_name` is
    /// `eventbus-{role}-{channel_prefix}`, so operators can find it in `pg_stat_activity`.
    pub(crate) async fn connect(&self, role: &str) -> Result<(Client, PgConnection), Error> {
        let mut config = self.config.clone();
        if config.get_application_name().is_none() {
            config.application_name(format!("eventbus-{role}-{}", self.prefix));
        }
        let attempt = config.connect(self.tls.clone());
        // connect_timeout bounds each address; this bounds the whole attempt.
        match tokio::time::timeout(self.timeout * 2, attempt).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(Error::connection(
                format!("connecting to PostgreSQL ({})", self.redacted),
                e,
            )),
            Err(_) => Err(Error::Timeout {
                operation: format!("connecting to PostgreSQL ({})", self.redacted),
                after: self.timeout * 2,
            }),
        }
    }
}
