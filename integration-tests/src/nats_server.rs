//! Finding the NATS server the tests run against, and private `nats-server` processes
//! for tests that need their own (authentication, clusters, killing a node).
//!
//! Order: `EVENT_BUS_NATS_URL` if set; else `nats://127.0.0.1:4222` if a server
//! answers there (sends its `INFO` line); else the test fails with a message saying how
//! to provide one. A test never skips silently, with or without `CI=true`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    net::TcpStream,
    sync::OnceCell,
    time::Instant,
};

use crate::ports::free_port;

/// The default local server.
pub const LOCAL_DEFAULT: &str = "nats://127.0.0.1:4222";

static URL: OnceCell<String> = OnceCell::const_new();

/// The URL of the test server.
///
/// # Panics
/// If no server can be reached, with instructions.
pub async fn url() -> String {
    URL.get_or_init(discover).await.clone()
}

async fn discover() -> String {
    if let Ok(url) = std::env::var("EVENT_BUS_NATS_URL") {
        return url;
    }
    let local: SocketAddr = "127.0.0.1:4222".parse().expect("valid address");
    match answers(local, Duration::from_secs(5)).await {
        Ok(()) => LOCAL_DEFAULT.to_owned(),
        Err(e) => panic!(
            "no NATS server for the nats tests: set EVENT_BUS_NATS_URL (e.g. \
             `nats://127.0.0.1:4222`) or run a server answering at {LOCAL_DEFAULT} \
             (`nats-server -a 127.0.0.1 -p 4222 -js`); no Docker fallback is available. \
             Error: {e}"
        ),
    }
}

/// Whether a NATS server at `addr` sends its `INFO` greeting within `timeout`.
///
/// # Errors
/// What went wrong, as text.
pub async fn answers(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    greeting(addr, timeout).await.map(drop)
}

/// The `INFO` line a NATS server at `addr` greets with, read within `timeout`.
async fn greeting(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let greet = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(stream.take(64 * 1024))
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        if line.starts_with("INFO") {
            Ok(line)
        } else {
            Err(format!("not a NATS server at {addr}"))
        }
    };
    tokio::time::timeout(timeout, greet)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {addr} within {timeout:?}")))
}

/// The test server's TCP address (for the fault proxy).
///
/// # Panics
/// If the URL names no resolvable host.
pub async fn addr() -> SocketAddr {
    let url = url().await;
    let first = url.split(',').next().unwrap_or_default();
    let host_port = first
        .split("://")
        .nth(1)
        .unwrap_or(first)
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    tokio::net::lookup_host(host_port)
        .await
        .expect("resolve the NATS host")
        .next()
        .expect("an address for the NATS host")
}

/// The file in a private server's directory that receives its log.
const LOG: &str = "server.log";

/// A `nats-server` process this test started, on loopback, killed (by its pid) when
/// dropped.
pub struct PrivateServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl PrivateServer {
    /// Starts `nats-server -a 127.0.0.1 -p <free port>` with `args` added, and waits
    /// until it answers.
    ///
    /// # Panics
    /// If `nats-server` is not installed or does not answer within 10 seconds.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_on(free_port(), args).await
    }

    /// As [`start`](Self::start), on `port`. Unless `args` name the server
    /// (`--server_name`), it gets a unique name; either way only a greeting carrying
    /// that name counts as the server being up, so another process that holds the
    /// port is never mistaken for this one.
    ///
    /// # Panics
    /// As [`start`](Self::start), and if another process serves `port`.
    pub async fn start_on(port: u16, args: &[&str]) -> Self {
        let dir = TempDir::new();
        let named = args
            .iter()
            .position(|a| *a == "--server_name")
            .and_then(|i| args.get(i + 1))
            .map(|name| (*name).to_owned());
        let name = named
            .clone()
            .unwrap_or_else(|| format!("eventbus_{}", uuid::Uuid::new_v4().simple()));
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(args);
        if named.is_none() {
            command.args(["--server_name", &name]);
        }
        let log = std::fs::File::create(dir.0.join(LOG)).expect("create the server log");
        let child = command
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server (is it installed and on PATH?)");
        let mut server = Self { child, port, dir };
        let addr = server.addr();
        let ours = format!("\"server_name\":\"{name}\"");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "nats-server on port {port} exited at start: {status}\n{}",
                    server.log_tail()
                );
            }
            match greeting(addr, Duration::from_millis(500)).await {
                Ok(info) if info.contains(&ours) => return server,
                Ok(_) => panic!("port {port} is served by another process"),
                Err(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {port} did not answer within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The last lines the server logged (its standard error), for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.0.join(LOG)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills the process (by its pid) and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("eventbus-nats-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
