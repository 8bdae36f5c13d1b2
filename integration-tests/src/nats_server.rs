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

use tokio::{io::AsyncReadExt, net::TcpStream, sync::OnceCell, time::Instant};

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
    let greet = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        if &buf == b"INFO" {
            Ok(())
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

/// A free loopback port (bound, then released for a server to take).
///
/// # Panics
/// If no port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A `nats-server` process this test started, on loopback, killed (by its pid) when
/// dropped.
pub struct PrivateServer {
    child: Child,
    port: u16,
    _dir: TempDir,
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

    /// As [`start`](Self::start), on `port`.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub async fn start_on(port: u16, args: &[&str]) -> Self {
        let dir = TempDir::new();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (is it installed and on PATH?)");
        let mut server = Self {
            child,
            port,
            _dir: dir,
        };
        let addr = server.addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        while answers(addr, Duration::from_millis(500)).await.is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("nats-server on port {port} exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {port} did not answer within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
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
