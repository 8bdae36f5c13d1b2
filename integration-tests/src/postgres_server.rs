//! The PostgreSQL server the tests run against.
//!
//! Found as [`servers`] describes: `EVENT_BUS_POSTGRES_URL`, else
//! `host=127.0.0.1 port=5432 user=postgres dbname=test` if a server accepts it, else a
//! container of [`SERVER`]`.image` (override: `EVENT_BUS_TEST_POSTGRES_IMAGE`).

use std::{net::SocketAddr, time::Duration};

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

use crate::{
    servers::{self, Server},
    support::DEADLINE,
};

/// The default local server.
pub const LOCAL_DEFAULT: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// How the tests find or start a PostgreSQL server: trust authentication, database
/// `test`, and TLS on (with the image's self-signed certificate) for the TLS tests.
pub static SERVER: Server = Server {
    name: "PostgreSQL",
    url_var: "EVENT_BUS_POSTGRES_URL",
    local_url: LOCAL_DEFAULT,
    image: "postgres:15.10",
    image_var: "EVENT_BUS_TEST_POSTGRES_IMAGE",
    container_port: 5432,
    env: &[
        ("POSTGRES_HOST_AUTH_METHOD", "trust"),
        ("POSTGRES_DB", "test"),
    ],
    cmd: &[
        "postgres",
        "-c",
        "ssl=on",
        "-c",
        "ssl_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem",
        "-c",
        "ssl_key_file=/etc/ssl/private/ssl-cert-snakeoil.key",
    ],
    container_url: |port| format!("host=127.0.0.1 port={port} user=postgres dbname=test"),
    probe: |url| connects(url).boxed(),
};

/// The connection string of the test server.
///
/// # Panics
/// If no server can be found or started, saying how to provide one.
pub async fn url() -> String {
    servers::url(&SERVER)
}

/// The test server's connection string as a `postgres://` URL, the form the CLI's `--url`
/// takes: the lookup may give `key=value` pairs (the local default, a container, or
/// `EVENT_BUS_POSTGRES_URL`).
///
/// # Panics
/// As [`url`] does, or if `key=value` pairs cannot be written as a URL.
pub fn uri() -> String {
    as_uri(&servers::url(&SERVER))
}

/// `conn` unchanged if it is a URL, else its hosts, ports, user, password and database as
/// a `postgres://` URL.
///
/// # Panics
/// If `conn` does not parse, or sets anything more (the URL would lose it).
fn as_uri(conn: &str) -> String {
    if conn.contains("://") {
        return conn.to_owned();
    }
    let var = SERVER.url_var;
    let config: tokio_postgres::Config = conn
        .parse()
        .unwrap_or_else(|e| panic!("{var}: not a connection string ({e})"));
    let mut uri = "postgres://".to_owned();
    if let Some(user) = config.get_user() {
        uri.push_str(&percent_encode(user.as_bytes()));
        if let Some(password) = config.get_password() {
            uri.push(':');
            uri.push_str(&percent_encode(password));
        }
        uri.push('@');
    }
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(name) => percent_encode(name.as_bytes()),
                tokio_postgres::config::Host::Unix(dir) => {
                    percent_encode(dir.as_os_str().as_encoded_bytes())
                }
            };
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    uri.push_str(&hosts.join(","));
    if let Some(dbname) = config.get_dbname() {
        uri.push('/');
        uri.push_str(&percent_encode(dbname.as_bytes()));
    }
    // A URL gives every host a port: the default one where `conn` names none.
    let mut expected = config.clone();
    if ports.is_empty() {
        for _ in &hosts {
            expected.port(5432);
        }
    }
    let same = uri
        .parse::<tokio_postgres::Config>()
        .is_ok_and(|c| c == expected);
    assert!(
        same,
        "{var}: the CLI tests need a postgres:// URL for settings beyond host, port, user, \
         password and dbname"
    );
    uri
}

/// `bytes` with everything but unreserved URL characters percent-encoded.
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn connects(url: String) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    drop(client);
    let _ = connection.await;
    Ok(())
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

/// A private PostgreSQL server (a `postgres` child process on a loopback port, in a
/// fresh temporary data directory), for tests that restart the server itself. Dropping
/// it stops the child and removes the directory, whether the test passes or panics.
///
/// Run as root, the server runs as the `postgres` system user (PostgreSQL refuses
/// root). It trusts every local connection as user `postgres`.
pub struct OwnPostgresServer {
    port: u16,
    dir: std::path::PathBuf,
    user: Option<(u32, u32)>,
    child: Option<std::process::Child>,
}

impl OwnPostgresServer {
    /// Creates a data directory with `initdb`, starts the server on a free loopback
    /// port and waits until it answers.
    ///
    /// # Panics
    /// If `initdb` or `postgres` is not on `PATH` or fails.
    pub async fn start() -> Self {
        let port = crate::ports::free_port();
        let dir = std::env::temp_dir().join(format!("eventbus-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).expect("create a temporary directory");
        let user = server_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the directory");
        }
        let mut server = Self {
            port,
            dir,
            user,
            child: None,
        };
        let status = server
            .command("initdb")
            .arg("-D")
            .arg(server.data())
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run initdb (is it on PATH?)");
        assert!(status.success(), "initdb failed: {status}");
        server.spawn().await;
        server
    }

    /// Its connection string.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> std::process::Command {
        use std::os::unix::process::CommandExt as _;
        let mut command = std::process::Command::new(program);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command.stdin(std::process::Stdio::null());
        command
    }

    /// Starts the server (again) and waits until that very process answers.
    ///
    /// # Panics
    /// If it is already running, exits, or never answers.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "postgres already running");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start postgres (is it on PATH?)");
        self.child = Some(child);
        let data = self.data();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("postgres on port {} exited: {status}", self.port);
            }
            let answer = async {
                let (client, connection) = tokio_postgres::connect(&self.url(), NoTls).await?;
                tokio::spawn(connection);
                client.query_one("SHOW data_directory", &[]).await
            };
            // Only our child counts: another process could have taken the port.
            if let Ok(Ok(row)) = tokio::time::timeout(Duration::from_millis(500), answer).await {
                let served: String = row.get(0);
                assert_eq!(
                    std::path::Path::new(&served),
                    data,
                    "port {} is served by another server",
                    self.port
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres on port {} never answered",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server ("fast" shutdown: clients are disconnected at once) and reaps
    /// it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let interrupted = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if !interrupted {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for OwnPostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `postgres` system user's uid and gid when running as root; `None` otherwise.
fn server_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt as _;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::as_uri;

    #[test]
    fn key_value_pairs_become_a_url() {
        assert_eq!(
            as_uri("host=127.0.0.1 port=5432 user=postgres dbname=test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(
            as_uri("host=/run/postgresql user=app password='p@ss w' dbname=x"),
            "postgres://app:p%40ss%20w@%2Frun%2Fpostgresql/x"
        );
        assert_eq!(
            as_uri("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }

    #[test]
    #[should_panic(expected = "need a postgres:// URL")]
    fn settings_a_url_would_lose_are_refused() {
        as_uri("host=127.0.0.1 user=postgres sslmode=require");
    }
}
