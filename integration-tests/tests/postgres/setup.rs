//! Configuration: hostile prefixes, TLS modes, secrets, the facade.

use integration_tests::{
    postgres_server,
    support::{DEADLINE, Recorder, namespace},
};
use multibus::{Config, EventBus, EventBusExt, PostgresConfig, PostgresEventBus, create_event_bus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{config_for, event};

#[tokio::test]
async fn hostile_prefixes_fail_at_construction_naming_the_key() {
    let url = postgres_server::url().await;
    for prefix in [
        "",
        "ev\"ents",
        "a;DROP TABLE x",
        "x'--",
        "ünïcødé",
        "with space",
        &"p".repeat(64),
        &"p".repeat(31),
    ] {
        let err = PostgresEventBus::new(PostgresConfig::new(&url).with_channel_prefix(prefix))
            .unwrap_err();
        assert!(
            err.to_string().contains("channel_prefix"),
            "{prefix:?}: {err}"
        );
        let json = serde_json::json!({"backend": "postgres", "url": url, "channel_prefix": prefix});
        // Rejected when the config is read (before any connection is made).
        let err = Config::from_json_value(json).unwrap_err();
        assert!(
            err.to_string().contains("channel_prefix"),
            "{prefix:?}: {err}"
        );
    }
}

#[tokio::test]
async fn the_facade_builds_a_postgres_bus_from_json() {
    let ns = namespace();
    let json = serde_json::json!({
        "backend": "postgres",
        "url": postgres_server::url().await,
        "channel_prefix": ns,
        "pool_size": 2,
        "dispatcher": {"handler_timeout_seconds": 2}
    });
    let bus = create_event_bus(Config::from_json_value(json).unwrap()).unwrap();
    bus.connect().await.unwrap();
    assert_eq!(bus.backend(), "postgres");
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:*"), r.handler())
        .await
        .unwrap();
    bus.publish(event(&format!("{ns}:a"), 1)).await.unwrap();
    r.wait_for(1, DEADLINE).await;
    bus.close().await.unwrap();
    let err = Config::from_json_str(r#"{"backend":"postgres","url":"x","chanel_prefix":"y"}"#)
        .unwrap_err();
    assert!(err.to_string().contains("chanel_prefix"), "{err}");
}

/// A server that answers the TLS request with "no" (what PostgreSQL without TLS does).
async fn non_tls_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if socket.read_exact(&mut request).await.is_ok() {
                    let _ = socket.write_all(b"N").await;
                    let mut rest = Vec::new();
                    let _ = socket.read_to_end(&mut rest).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn sslmode_require_fails_clearly_against_a_server_without_tls() {
    let addr = non_tls_server().await;
    let url = format!(
        "host={} port={} user=postgres sslmode=require",
        addr.ip(),
        addr.port()
    );
    let bus = PostgresEventBus::new(config_for(&url, &namespace())).unwrap();
    let err = bus.connect().await.unwrap_err().to_string();
    assert!(err.contains("TLS"), "{err}");
    assert!(
        err.contains("sslmode=require"),
        "the error shows the (redacted) settings: {err}"
    );
}

#[tokio::test]
async fn sslmode_require_works_against_a_tls_server() {
    let client = postgres_server::client().await;
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(
        ssl, "on",
        "this test needs a server with TLS enabled (the local test server has it)"
    );
    let ns = namespace();
    let url = format!("{} sslmode=require", postgres_server::url().await);
    let bus = super::connected(config_for(&url, &ns)).await;
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:t"), r.handler())
        .await
        .unwrap();
    bus.publish(event(&format!("{ns}:t"), 1)).await.unwrap();
    r.wait_for(1, DEADLINE).await;
    let encrypted: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name LIKE $1 AND s.ssl",
            &[&format!("eventbus-%-{ns}")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        encrypted >= 2,
        "listener and publisher use TLS ({encrypted})"
    );
    bus.close().await.unwrap();
}

#[tokio::test]
async fn the_password_never_shows_in_debug_or_errors() {
    let password = "pa55w0rd-s3cret";
    for url in [
        format!("postgres://postgres:{password}@127.0.0.1:1/test"),
        format!("host=127.0.0.1 port=1 user=postgres password={password} dbname=test"),
    ] {
        let config = config_for(&url, &namespace());
        assert!(!format!("{config:?}").contains(password));
        let facade =
            Config::from_json_value(serde_json::json!({"backend": "postgres", "url": url}))
                .unwrap();
        assert!(!format!("{facade:?}").contains(password));
        let bus = PostgresEventBus::new(config).unwrap();
        assert!(!format!("{bus:?}").contains(password));
        let err = bus.connect().await.unwrap_err();
        assert!(!format!("{err} {err:?}").contains(password), "{err:?}");
    }
}
