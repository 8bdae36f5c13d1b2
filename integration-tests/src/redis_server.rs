//! The Redis server the tests run against, and raw access to it.
//!
//! Found as [`servers`] describes: `EVENT_BUS_REDIS_URL`, else
//! `redis://127.0.0.1:6379` if a server answers `PING` there, else a container of
//! [`SERVER`]`.image` (override: `EVENT_BUS_TEST_REDIS_IMAGE`).

use std::{net::SocketAddr, time::Duration};

use futures_util::FutureExt;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::{
    servers::{self, Server},
    support::DEADLINE,
};

/// The default local server.
pub const LOCAL_DEFAULT: &str = "redis://127.0.0.1:6379";

/// How the tests find or start a Redis server.
pub static SERVER: Server = Server {
    name: "Redis",
    url_var: "EVENT_BUS_REDIS_URL",
    local_url: LOCAL_DEFAULT,
    image: "redis:7.0.15",
    image_var: "EVENT_BUS_TEST_REDIS_IMAGE",
    container_port: 6379,
    env: &[],
    // The port is published on loopback only, so protected mode (which refuses clients
    // from other hosts, as the published port's clients appear) is not needed.
    cmd: &[
        "redis-server",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ],
    container_url: |port| format!("redis://127.0.0.1:{port}"),
    probe: |url| ping(url).boxed(),
};

/// The URL of the test server.
///
/// # Panics
/// If no server can be found or started, saying how to provide one.
pub async fn url() -> String {
    servers::url(&SERVER)
}

async fn ping(url: String) -> Result<(), String> {
    let answer: redis::RedisResult<()> = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").exec_async(&mut conn).await
    }
    .await;
    answer.map_err(|e| e.to_string())
}

/// A plain connection to the test server, for raw `PUBLISH`es, ACL changes and kills.
///
/// # Panics
/// If it cannot connect.
pub async fn client() -> MultiplexedConnection {
    redis::Client::open(url().await)
        .expect("valid Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test Redis server")
}

/// The server's TCP address (for the fault proxy).
///
/// # Panics
/// If the URL names no resolvable host.
pub async fn addr() -> SocketAddr {
    let url = redis::parse_redis_url(&url().await).expect("valid Redis URL");
    let host = url.host_str().expect("a host in the Redis URL").to_owned();
    let port = url.port().unwrap_or(6379);
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve the Redis host")
        .next()
        .expect("an address for the Redis host")
}

/// The test server's URL with host and port replaced by `addr`.
pub async fn url_via(addr: SocketAddr) -> String {
    let mut url = redis::parse_redis_url(&url().await).expect("valid Redis URL");
    url.set_host(Some(&addr.ip().to_string()))
        .expect("settable host");
    url.set_port(Some(addr.port())).expect("settable port");
    url.to_string()
}

/// Kills the server's pub/sub connections whose client name contains `name_part` (so a
/// test only ever kills its own), returning how many it killed.
///
/// # Panics
/// If the server cannot be reached.
pub async fn kill_pubsub_connections(name_part: &str) -> usize {
    kill(name_part, Some("pubsub")).await
}

/// Kills the server's connections of any type whose client name contains `name_part`
/// (e.g. a bus's [publishing connection](multibus::RedisEventBus::publish_client_name)),
/// returning how many it killed.
///
/// # Panics
/// If the server cannot be reached.
pub async fn kill_connections(name_part: &str) -> usize {
    kill(name_part, None).await
}

async fn kill(name_part: &str, kind: Option<&str>) -> usize {
    let mut conn = client().await;
    let mut list = redis::cmd("CLIENT");
    list.arg("LIST");
    if let Some(kind) = kind {
        list.arg("TYPE").arg(kind);
    }
    let list: String = list.query_async(&mut conn).await.expect("CLIENT LIST");
    let mut killed = 0;
    for line in list.lines() {
        let field = |key: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        };
        if field("name").is_some_and(|n| n.contains(name_part)) {
            let id = field("id").expect("client id");
            let n: usize = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut conn)
                .await
                .expect("CLIENT KILL");
            killed += n;
        }
    }
    killed
}

/// A private `redis-server` child process on a loopback port, for tests that restart the
/// server itself. Dropping it kills and reaps the child, so it never outlives a test,
/// whether the test passes or panics.
pub struct OwnRedisServer {
    port: u16,
    child: Option<std::process::Child>,
    /// With persistence: the data directory (removed on drop).
    dir: Option<std::path::PathBuf>,
}

impl OwnRedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers.
    pub async fn start() -> Self {
        let port = crate::ports::free_port();
        let mut server = Self {
            port,
            child: None,
            dir: None,
        };
        server.spawn().await;
        server
    }

    /// Like [`start`](Self::start), with an append-only file fsynced on every write
    /// (`--appendonly yes --appendfsync always`) in a temporary directory, so a killed
    /// and respawned server comes back with its data.
    pub async fn start_persistent() -> Self {
        let port = crate::ports::free_port();
        let dir =
            std::env::temp_dir().join(format!("eventbus-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the data directory");
        let mut server = Self {
            port,
            child: None,
            dir: Some(dir),
        };
        server.spawn().await;
        server
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the child on `self.port` (nothing in memory, nothing on disk) and waits
    /// until that very process answers.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let mut command = std::process::Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()]);
        command.args(["--save", "", "--daemonize", "no"]);
        match &self.dir {
            None => command.args(["--appendonly", "no"]),
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
        };
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (is it on PATH?)");
        let pid = child.id();
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            let info = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut conn)
                    .await
            };
            // Only our child counts: another process could have taken the port.
            if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_millis(500), info).await {
                assert!(
                    info.lines()
                        .any(|l| l.trim() == format!("process_id:{pid}")),
                    "port {} is served by another process",
                    self.port
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} never answered",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the child (SIGKILL, no shutdown handshake) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
