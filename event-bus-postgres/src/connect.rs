//! Opening connections: TLS setup, timeouts and the `application_name` of each role.

use std::time::Duration;

use event_bus_core::{
    Error,
    deadline::{Operation, within},
};
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

    /// The driver's settings parsed from the URL.
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// What a failed connection attempt's error says it was doing (the server shown
    /// with its password redacted).
    pub(crate) fn context(&self) -> String {
        format!("connecting to PostgreSQL ({})", self.redacted)
    }

    /// Opens a connection for `role` (`listen`, `publish` or `claim`). Unless the connection
    /// string sets one, the session's `application_name` is
    /// `eventbus-{role}-{channel_prefix}`, so operators can find it in `pg_stat_activity`.
    pub(crate) async fn connect(&self, role: &str) -> Result<(Client, PgConnection), Error> {
        // connect_timeout bounds each address; this bounds the whole attempt.
        match within(Operation::Connect, self.timeout * 2, self.open(role)).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(Error::connection(self.context(), e)),
            Err(timeout) => Err(Error::connection(self.context(), timeout)),
        }
    }

    /// [`connect`](Self::connect) without the bound on the whole attempt (the caller
    /// bounds it) and with the driver's error.
    pub(crate) async fn open(
        &self,
        role: &str,
    ) -> Result<(Client, PgConnection), tokio_postgres::Error> {
        let mut config = self.config.clone();
        if config.get_application_name().is_none() {
            config.application_name(format!("eventbus-{role}-{}", self.prefix));
        }
        config.connect(self.tls.clone()).await
    }
}

/// A connection opened by [`connect_raw`]; poll it (e.g. in a task) for the client to
/// work and for notifications.
pub type RawConnection = PgConnection;

/// Opens one `tokio-postgres` connection to `url` with the TLS handling the bus uses
/// (`sslmode` as in libpq: see the crate docs), for tools that talk to the server next
/// to the bus on equal terms, such as the raw side of `eventbus bench` (which asks the
/// server, in `pg_stat_ssl`, whether the session is encrypted). Not bounded by a
/// timeout.
///
/// # Errors
/// [`Error::Config`] naming `url` for a string that does not parse;
/// [`Error::Connection`] when connecting fails.
pub async fn connect_raw(url: &str) -> Result<(Client, RawConnection), Error> {
    let (config, verify) = crate::redact::parse(url)?;
    let tls = crate::tls::connector(verify)?;
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| Error::connection("connect", e))?;
    Ok((client, connection))
}
