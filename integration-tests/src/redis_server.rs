//! Finding the Redis server the tests run against, and raw access to it.
//!
//! Order: `EVENT_BUS_REDIS_URL` if set; else `redis://127.0.0.1:6379` if a server
//! answers `PING` there; else the test fails with a message saying how to provide one
//! (no Docker/testcontainers fallback on this machine). A test never skips silently,
//! with or without `CI=true`.

use std::{net::SocketAddr, time::Duration};

use redis::aio::MultiplexedConnection;
use tokio::sync::OnceCell;

/// The default local server.
pub const LOCAL_DEFAULT: &str = "redis://127.0.0.1:6379";

static URL: OnceCell<String> = OnceCell::const_new();

/// The URL of the test server.
///
/// # Panics
/// If no server can be reached, with instructions.
pub async fn url() -> String {
    URL.get_or_init(discover).await.clone()
}

async fn discover() -> String {
    if let Ok(url) = std::env::var("EVENT_BUS_REDIS_URL") {
        return url;
    }
    match tokio::time::timeout(Duration::from_secs(5), ping(LOCAL_DEFAULT)).await {
        Ok(Ok(())) => LOCAL_DEFAULT.to_owned(),
        outcome => panic!(
            "no Redis server for the redis tests: set EVENT_BUS_REDIS_URL (e.g. \
             `redis://127.0.0.1:6379`) or run a server answering at {LOCAL_DEFAULT}; \
             no Docker fallback is available. Error: {}",
            match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "connect timed out".to_owned(),
            }
        ),
    }
}

async fn ping(url: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").exec_async(&mut conn).await
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
    let mut conn = client().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .expect("CLIENT LIST");
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
