//! Cancel, drop and close.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::{bus, bus_with, event, gated, patient_dispatcher};
use crate::{
    factories::Factory,
    support::{DEADLINE, Recorder, wait_until},
};
use multibus::{Error, Event, EventBus, EventBusExt, Subscription};

/// After `cancel` returns, the handler gets nothing more.
pub async fn cancel_stops_delivery(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let (cancelled, kept) = (Recorder::new(), Recorder::new());
    let topic = format!("{ns}:cancel");
    let sub = bus.subscribe(&topic, cancelled.handler()).await.unwrap();
    bus.subscribe(&topic, kept.handler()).await.unwrap();
    bus.publish(event(&topic, 1)).await.unwrap();
    cancelled.wait_for(1, DEADLINE).await;
    assert!(sub.is_active());
    sub.cancel().await;
    bus.publish(event(&topic, 2)).await.unwrap();
    kept.wait_for(2, DEADLINE).await;
    bus.flush().await.unwrap();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(bus.metrics().subscriptions, 1);
    bus.close().await.unwrap();
}

/// `cancel` waits for a running call of the handler, and no call starts after it returns.
pub async fn cancel_waits_for_a_running_handler(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let topic = format!("{ns}:running");
    let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, f) = (started.clone(), finished.clone());
    let sub = bus
        .subscribe(&topic, move |_e: Event| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok::<(), std::io::Error>(())
            }
        })
        .await
        .unwrap();
    for i in 0..5 {
        bus.publish(event(&topic, i)).await.unwrap();
    }
    assert!(wait_until(DEADLINE, || started.load(Ordering::SeqCst) >= 1).await);
    sub.cancel().await;
    let (s_after, f_after) = (
        started.load(Ordering::SeqCst),
        finished.load(Ordering::SeqCst),
    );
    assert_eq!(
        s_after, f_after,
        "cancel returned while the handler was running"
    );
    bus.publish(event(&topic, 9)).await.unwrap();
    bus.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await; // give a wrong implementation the chance to misbehave
    assert_eq!(started.load(Ordering::SeqCst), s_after);
    bus.close().await.unwrap();
}

/// A handler may cancel its own subscription without deadlock.
pub async fn handler_can_cancel_its_own_subscription(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let topic = format!("{ns}:self-cancel");
    let slot: Arc<Mutex<Option<Subscription>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (slot2, calls2) = (slot.clone(), calls.clone());
    let sub = bus
        .subscribe(&topic, move |_e: Event| {
            let (slot, calls) = (slot2.clone(), calls2.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let sub = slot.lock().unwrap().take();
                if let Some(sub) = sub {
                    sub.cancel().await;
                }
                Ok::<(), std::io::Error>(())
            }
        })
        .await
        .unwrap();
    *slot.lock().unwrap() = Some(sub);
    bus.publish(event(&topic, 1)).await.unwrap();
    assert!(wait_until(DEADLINE, || bus.metrics().subscriptions == 0).await);
    bus.publish(event(&topic, 2)).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    bus.close().await.unwrap();
}

/// Dropping a `Subscription` does not cancel it (documented behaviour).
pub async fn dropping_a_subscription_keeps_it_alive(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let r = Recorder::new();
    drop(
        bus.subscribe(&format!("{ns}:dropped"), r.handler())
            .await
            .unwrap(),
    );
    bus.publish(event(format!("{ns}:dropped"), 1))
        .await
        .unwrap();
    r.wait_for(1, DEADLINE).await;
    assert_eq!(bus.metrics().subscriptions, 1);
    bus.close().await.unwrap();
}

/// After close, publish and subscribe fail with `Closed`; close is idempotent.
pub async fn closed_bus_rejects_publish_and_subscribe(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let r = Recorder::new();
    let sub = bus
        .subscribe(&format!("{ns}:x"), r.handler())
        .await
        .unwrap();
    bus.close().await.unwrap();
    assert!(!sub.is_active());
    assert!(matches!(
        bus.publish(event(format!("{ns}:x"), 1)).await,
        Err(Error::Closed)
    ));
    assert!(matches!(
        bus.subscribe(&format!("{ns}:x"), r.handler()).await,
        Err(Error::Closed)
    ));
    assert!(!bus.health().await.open);
    bus.close().await.unwrap();
    sub.cancel().await;
}

/// A handler may close the bus it is subscribed to.
pub async fn handler_can_close_the_bus(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let weak = Arc::downgrade(&bus);
    bus.subscribe(&format!("{ns}:close"), move |_e: Event| {
        let weak = weak.clone();
        async move {
            if let Some(bus) = weak.upgrade() {
                bus.close().await?;
            }
            Ok::<(), Error>(())
        }
    })
    .await
    .unwrap();
    bus.publish(event(format!("{ns}:close"), 1)).await.unwrap();
    assert!(wait_until(DEADLINE, || bus.metrics().delivered == 1).await);
    assert!(matches!(
        bus.publish(event(format!("{ns}:close"), 2)).await,
        Err(Error::Closed)
    ));
}

/// Close delivers what the dispatcher already accepted before returning.
pub async fn close_drains_accepted_events(factory: Factory) {
    let (ns, bus) = bus_with(factory, patient_dispatcher()).await;
    let topic = format!("{ns}:drain");
    let (r, gate) = gated(bus.as_ref(), &topic).await;
    for i in 0..20 {
        bus.publish(event(&topic, i)).await.unwrap();
    }
    // All received: one is waiting at the gate, the rest are queued.
    assert!(wait_until(DEADLINE, || bus.metrics().queue_depth == 19).await);
    let closer = {
        let bus: Arc<dyn EventBus> = bus.clone();
        tokio::spawn(async move { bus.close().await })
    };
    gate.add_permits(20);
    closer.await.unwrap().unwrap();
    assert_eq!(r.len(), 20);
    assert_eq!(bus.metrics().dropped, 0);
}

/// An idle bus counts no reconnects and no failures.
pub async fn idle_bus_counts_no_reconnects_or_errors(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let r = Recorder::new();
    bus.subscribe(&format!("{ns}:idle"), r.handler())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // idling is the behaviour under test
    let m = bus.metrics();
    assert_eq!(
        (m.reconnects, m.failed, m.malformed, m.dropped),
        (0, 0, 0, 0)
    );
    assert!(bus.health().await.is_healthy());
    bus.close().await.unwrap();
}

/// A handler holding the only concurrency slot can cancel another subscription whose
/// worker is waiting for that slot: `cancel` returns at once and nothing times out.
pub async fn cancel_from_a_handler_never_waits_for_a_slot(factory: Factory) {
    let dispatcher = multibus::DispatcherConfig {
        max_concurrent_handlers: 1,
        ..patient_dispatcher()
    };
    let (ns, bus) = bus_with(factory, dispatcher).await;
    let topic = format!("{ns}:slot");
    for round in 0..10 {
        let victim: Arc<Mutex<Option<Subscription>>> = Arc::default();
        let v = victim.clone();
        let canceller = bus
            .subscribe(&topic, move |_e: Event| {
                let v = v.clone();
                async move {
                    // Give the other worker time to take the event and wait for our slot.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let b = v.lock().unwrap().take();
                    if let Some(b) = b {
                        b.cancel().await;
                    }
                    Ok::<(), std::io::Error>(())
                }
            })
            .await
            .unwrap();
        let seen = Recorder::new();
        *victim.lock().unwrap() = Some(bus.subscribe(&topic, seen.handler()).await.unwrap());
        bus.publish(event(&topic, round)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), bus.flush())
            .await
            .expect("flush returned: the cancel did not hang")
            .unwrap();
        assert_eq!(bus.metrics().timed_out, 0, "round {round}");
        canceller.cancel().await;
    }
    bus.close().await.unwrap();
}
