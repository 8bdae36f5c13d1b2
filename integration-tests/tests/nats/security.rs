//! NATS authentication (user and password, token) against private servers, secrets kept
//! out of errors, health and `Debug`, and the error of TLS against a plain server.

use std::time::Duration;

use integration_tests::{nats_server::PrivateServer, support::namespace};
use multibus::{EventBus, EventBusExt, NatsConfig, NatsEventBus, Secret};
use tokio::time::Instant;

use super::{Seen, bus, event};

#[tokio::test]
async fn user_password_and_token_authenticate_and_stay_secret() {
    let server = PrivateServer::start(&["--user", "app", "--pass", "pw-s3cret"]).await;
    let ns = namespace();
    let good = bus(NatsConfig {
        url: format!("nats://app:pw-s3cret@127.0.0.1:{}", server.port()),
        channel_prefix: ns.clone(),
        ..NatsConfig::default()
    })
    .await;
    let seen = Seen::default();
    let _sub = good.subscribe("a:*", seen.handler()).await.unwrap();
    good.publish(event("a:b", 1)).await.unwrap();
    good.flush().await.unwrap();
    assert_eq!(seen.all(), [1]);
    assert!(!format!("{good:?}").contains("pw-s3cret"));
    good.close().await.unwrap();

    let bad = NatsEventBus::new(NatsConfig {
        url: server.url(),
        username: Some("app".into()),
        password: Some(Secret::new("wrong-s3cret")),
        command_timeout_seconds: 2.0,
        ..NatsConfig::default()
    })
    .unwrap();
    let err = bad.connect().await.unwrap_err().to_string();
    assert!(
        err.contains("authorization") && err.contains("check the user name"),
        "{err}"
    );
    assert!(!err.contains("wrong-s3cret"), "{err}");
    let health = format!("{:?}", bad.health().await);
    assert!(!health.contains("wrong-s3cret"), "{health}");

    let server = PrivateServer::start(&["--auth", "tok-s3cret"]).await;
    let token = bus(NatsConfig {
        url: server.url(),
        token: Some(Secret::new("tok-s3cret")),
        ..NatsConfig::default()
    })
    .await;
    token.flush().await.unwrap();
    token.close().await.unwrap();
    let in_url =
        bus(
            NatsConfig::from_url(format!("nats://tok-s3cret@127.0.0.1:{}", server.port())).unwrap(),
        )
        .await;
    assert!(in_url.health().await.is_healthy());
    in_url.close().await.unwrap();
}

#[tokio::test]
async fn tls_against_a_plain_server_fails_clearly() {
    let server = PrivateServer::start(&[]).await;
    let bus = NatsEventBus::new(NatsConfig {
        url: format!("tls://u:tls-s3cret@127.0.0.1:{}", server.port()),
        command_timeout_seconds: 2.0,
        ..NatsConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let err = bus.connect().await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.contains("TLS"), "{err}");
    assert!(
        err.contains(&format!("tls://u:***@127.0.0.1:{}", server.port())),
        "{err}"
    );
    assert!(!err.contains("tls-s3cret"), "{err}");
}

/// Passwords and tokens written in the URL never reach the log at `debug` or above, the
/// client's own debug lines included (it only ever sees addresses without them):
/// through a connect, a refused login, a lost connection and its reconnect. (At `trace`
/// the client logs each `CONNECT` it writes, password included: see
/// docs/backends/nats.md.)
#[tokio::test]
async fn secrets_never_reach_the_log() {
    let (log, _serial) = integration_tests::log_capture::capture().await;
    let server = PrivateServer::start(&["--user", "app", "--pass", "pw-l0g-s3cret"]).await;
    let proxy = integration_tests::proxy::TcpProxy::start(server.addr()).await;
    let good = bus(NatsConfig {
        url: format!("nats://app:pw-l0g-s3cret@{}", proxy.addr()),
        channel_prefix: namespace(),
        ..NatsConfig::default()
    })
    .await;
    let seen = Seen::default();
    let _sub = good.subscribe("a:*", seen.handler()).await.unwrap();
    proxy.cut();
    let reconnected =
        integration_tests::support::wait_until(integration_tests::support::DEADLINE, || {
            good.metrics().reconnects >= 1
        })
        .await;
    assert!(reconnected, "{:?}", good.metrics());
    good.publish(event("a:b", 1)).await.unwrap();
    good.flush().await.unwrap();
    good.close().await.unwrap();
    let bad = NatsEventBus::new(NatsConfig {
        url: format!("nats://app:wrong-l0g-s3cret@127.0.0.1:{}", server.port()),
        command_timeout_seconds: 2.0,
        ..NatsConfig::default()
    })
    .unwrap();
    assert!(bad.connect().await.is_err());
    let everything = log.take();
    assert!(
        everything.contains("re-established"),
        "the reconnect is logged:\n{everything}"
    );
    let text: String = everything
        .lines()
        .filter(|line| !line.contains(" TRACE "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !text.contains("pw-l0g-s3cret") && !text.contains("wrong-l0g-s3cret"),
        "{text}"
    );
}
