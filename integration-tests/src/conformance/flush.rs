//! `flush` is quiescent: follow-up events that handlers publish are handled before it
//! returns, on every backend.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{bus, event};
use crate::{factories::Factory, support::Recorder};
use multibus::{Event, EventBusExt};

/// How long each handler below takes: long enough that a follow-up it publishes is
/// still on its way (through the server, for network backends) when it returns.
const HANDLER_TIME: Duration = Duration::from_millis(20);

/// A handler on `first` publishes one event on `second`; after `flush` the handler of
/// `second` has handled it.
pub async fn flush_waits_for_a_follow_up_event(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let (first, second) = (format!("{ns}:first"), format!("{ns}:second"));
    let weak = Arc::downgrade(&bus);
    let follow_up = second.clone();
    bus.subscribe(&first, move |_e: Event| {
        let (weak, topic) = (weak.clone(), follow_up.clone());
        async move {
            tokio::time::sleep(HANDLER_TIME).await;
            match weak.upgrade() {
                Some(bus) => bus.publish(event(topic, 2)).await,
                None => Ok(()),
            }
        }
    })
    .await
    .unwrap();
    let got = Recorder::new();
    bus.subscribe(&second, got.handler()).await.unwrap();
    bus.publish(event(&first, 1)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(got.topics(), [second], "{:?}", bus.metrics());
    bus.close().await.unwrap();
}

/// A handler that publishes the next link of a chain, five times: after `flush`
/// every link has been handled.
pub async fn flush_waits_for_a_chain_of_follow_ups(factory: Factory) {
    const LINKS: u64 = 5;
    let (ns, bus) = bus(factory).await;
    let topic = format!("{ns}:chain");
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (weak, seen, next_topic) = (Arc::downgrade(&bus), handled.clone(), topic.clone());
    bus.subscribe(&topic, move |e: Event| {
        let (weak, seen, topic) = (weak.clone(), seen.clone(), next_topic.clone());
        async move {
            tokio::time::sleep(HANDLER_TIME).await;
            let n = e.payload.as_u64().unwrap_or(LINKS);
            seen.lock().unwrap().push(n);
            match weak.upgrade() {
                Some(bus) if n < LINKS => bus.publish(event(topic, n + 1)).await,
                _ => Ok(()),
            }
        }
    })
    .await
    .unwrap();
    bus.publish(event(&topic, 0)).await.unwrap();
    bus.flush().await.unwrap();
    let handled = handled.lock().unwrap().clone();
    assert_eq!(
        handled,
        (0..=LINKS).collect::<Vec<_>>(),
        "{:?}",
        bus.metrics()
    );
    bus.close().await.unwrap();
}
