//! Handlers written the short way: `handler_fn` closures and typed payloads.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use multibus::prelude::*;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Order {
    id: u64,
}

/// A `handler_fn` closure reads typed payloads; a payload of the wrong shape fails the
/// delivery (counted in `failed`) and the next good one is still delivered.
#[tokio::test]
async fn payload_as_in_a_handler_fn_closure() -> Result<(), Error> {
    let bus = create_event_bus(Config::default())?;
    let sum = Arc::new(AtomicU64::new(0));
    let seen = sum.clone();
    let sub = bus
        .subscribe(
            "orders:*",
            handler_fn(move |event| {
                let seen = seen.clone();
                async move {
                    let order: Order = event.payload_as()?;
                    seen.fetch_add(order.id, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .await?;
    for payload in [json!({"id": 40}), json!({"id": "two"}), json!({"id": 2})] {
        bus.publish(Event::new(EventType::Created, "orders:eu", payload))
            .await?;
    }
    bus.flush().await?;
    let metrics = bus.metrics();
    assert_eq!((metrics.delivered, metrics.failed), (2, 1));
    assert_eq!(sum.load(Ordering::SeqCst), 42);
    sub.cancel().await;
    bus.close().await
}

/// The error of `payload_as` names the event's topic, the type and the field at fault.
#[test]
fn payload_errors_say_what_is_wrong() {
    let event = Event::new(EventType::Created, "orders:eu", json!({"id": "two"}));
    let err = event.payload_as::<Order>().err().unwrap();
    let text = err.to_string();
    assert!(text.contains("\"orders:eu\""), "{text}");
    assert!(text.contains("handlers::Order"), "{text}");
    assert!(text.contains("(at `id`)"), "{text}");
    assert!(matches!(err, Error::Payload { .. }));
}
