//! Finding the PostgreSQL server the tests run against.
//!
//! Order: `EVENT_BUS_POSTGRES_URL` if set; else `host=127.0.0.1 port=5432 user=postgres
//! dbname=test` if a server answers there; else the test fails with a message saying
//! how to provide one (no Docker/testcontainers fallback on this machine). A test never
//! skips silently, with or without `CI=true`.

use std::{net::SocketAddr, time::Duration};

use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls};

/// The default local server.
pub const LOCAL_DEFAULT: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

static URL: OnceCell<String> = OnceCell::const_new();

/// The connection string of the test server.
///
/// # Panics
/// If no server can be reached, with instructions.
pub async fn url() -> String {
    URL.get_or_init(discover).await.clone()
}

async fn discover() -> String {
    if let Ok(url) = std::env::var("EVENT_BUS_POSTGRES_URL") {
        return url;
    }
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(LOCAL_DEFAULT, NoTls),
    )
    .await
    {
        Ok(Ok(_)) => LOCAL_DEFAULT.to_owned(),
        outcome => panic!(
            "no PostgreSQL server for the postgres tests: set EVENT_BUS_POSTGRES_URL \
             (e.g. `postgres://postgres@127.0.0.1:5432/test`) or run a server accepting \
             `{LOCAL_DEFAULT}` (trust auth); no Docker fallback is available. Error: {}",
            match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "connect timed out".to_owned(),
            }
        ),
    }
}

/// A plain connection to the test server, for setting up faults and raw NOTIFYs.
///
/// # Panics
/// If it cannot connect.
pub async fn client() -> Client {
    let (client, connection) = tokio_postgres::connect(&url().await, NoTls)
        .await
        .expect("connect to the test PostgreSQL server");
    tokio::spawn(connection);
    client
}

/// The server's TCP address (for the fault proxy).
///
/// # Panics
/// If the connection string names no TCP host.
pub async fn addr() -> SocketAddr {
    let config: tokio_postgres::Config = url().await.parse().expect("valid connection string");
    let host = config
        .get_hosts()
        .iter()
        .find_map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => Some(h.clone()),
            #[allow(unreachable_patterns)]
            _ => None,
        })
        .expect("a TCP host in the connection string");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve the PostgreSQL host")
        .next()
        .expect("an address for the PostgreSQL host")
}

/// The test server's connection string with host and port replaced by `addr`.
pub async fn url_via(addr: SocketAddr) -> String {
    format!(
        "{} host={} port={}",
        strip_host_port(&url().await),
        addr.ip(),
        addr.port()
    )
}

fn strip_host_port(url: &str) -> String {
    let config: tokio_postgres::Config = url.parse().expect("valid connection string");
    let mut parts = Vec::new();
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={db}"));
    }
    if let Some(pw) = config.get_password() {
        parts.push(format!(
            "password='{}'",
            String::from_utf8_lossy(pw).replace('\'', "\\'")
        ));
    }
    parts.join(" ")
}
