//! NATS backend tests beyond the conformance suite: subject mapping, flush, close,
//! large events and dead letters; the durable JetStream mode; faults (a cut or black-holed connection, slow
//! consumers); authentication and TLS against private servers; a three-node cluster
//! losing a node. Against real `nats-server` processes (see
//! `integration_tests::nats_server`).

#[path = "nats/cluster.rs"]
mod cluster;
#[path = "nats/delivery.rs"]
mod delivery;
#[path = "nats/durable.rs"]
mod durable;
#[path = "nats/durable_crash.rs"]
mod durable_crash;
#[path = "nats/faults.rs"]
mod faults;
#[path = "nats/security.rs"]
mod security;

use std::sync::{Arc, Mutex};

use integration_tests::nats_server;
use multibus::{Event, EventBus, EventType, Handler, NatsConfig, NatsEventBus};

/// A config for prefix `ns` on the test server.
async fn config(ns: &str) -> NatsConfig {
    NatsConfig {
        channel_prefix: ns.to_owned(),
        ..NatsConfig::from_url(nats_server::url().await).expect("valid NATS URL")
    }
}

/// A connected bus with `config`.
async fn bus(config: NatsConfig) -> NatsEventBus {
    let bus = NatsEventBus::new(config).expect("valid config");
    bus.connect().await.expect("connect");
    bus
}

/// An event on `topic` whose payload carries `n`.
fn event(topic: &str, n: u64) -> Event {
    Event::new(EventType::Created, topic, serde_json::json!({ "n": n }))
}

/// Records the `n` of every event received.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u64>>>);

impl Seen {
    fn handler(&self) -> impl Handler + use<> {
        let seen = self.clone();
        move |event: Event| {
            let seen = seen.clone();
            async move {
                let n = event.payload["n"].as_u64().unwrap_or(u64::MAX);
                seen.0.lock().unwrap().push(n);
                Ok::<(), std::convert::Infallible>(())
            }
        }
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn all(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }
}
