//! NATS authentication (user and password, token) against private servers, secrets kept
//! out of errors, health and `Debug`, and the error of TLS against a plain server.

use std::time::Duration;

use event_bus::{EventBus, EventBusExt, NatsConfig, NatsEventBus, Secret};
use integration_tests::{nats_server::PrivateServer, support::namespace};
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
