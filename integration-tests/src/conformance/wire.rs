//! Events arrive whole.

use multibus::{Event, EventBusExt, EventType, Priority};
use serde_json::json;

use super::bus;
use crate::{
    factories::Factory,
    support::{DEADLINE, Recorder},
};

/// Every field, including unicode in each string, arrives unchanged.
pub async fn every_field_round_trips_with_unicode(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let topic = format!("{ns}:ünïcødé:✓");
    let r = Recorder::new();
    bus.subscribe(&topic, r.handler()).await.unwrap();
    let sent = Event::new(
        EventType::custom("bestellung_erstellt 🚀"),
        &topic,
        json!({"name": "Zoë", "emoji": "🦀", "nested": {"list": [1, 2.5, null, true]}, "ctl": "tab\there"}),
    )
    .with_source("kassé")
    .with_correlation_id("korrelation-✓")
    .with_metadata("mandant", "ACME ü")
    .with_metadata("empty", "")
    .with_priority(Priority::new(17));
    bus.publish(sent.clone()).await.unwrap();
    let got = r.wait_for(1, DEADLINE).await;
    assert_eq!(got[0], sent);
    bus.close().await.unwrap();
}

/// A 1 MiB payload is delivered intact.
pub async fn one_mebibyte_payload_is_delivered(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let topic = format!("{ns}:big");
    let r = Recorder::new();
    bus.subscribe(&topic, r.handler()).await.unwrap();
    let body: String = (0..1 << 20)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let sent = Event::new(EventType::Created, &topic, json!({ "body": body }));
    bus.publish(sent.clone()).await.unwrap();
    let got = r.wait_for(1, DEADLINE).await;
    assert_eq!(got[0], sent);
    bus.close().await.unwrap();
}
