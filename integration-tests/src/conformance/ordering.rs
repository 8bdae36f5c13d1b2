//! Priority and FIFO order under backlog.

use multibus::Priority;

use super::{bus_with, event, gated, patient_dispatcher};
use crate::{
    factories::Factory,
    support::{DEADLINE, wait_until},
};

/// While the handler is busy, more urgent events overtake less urgent ones.
pub async fn more_urgent_first_under_backlog(factory: Factory) {
    let (ns, bus) = bus_with(factory, patient_dispatcher()).await;
    let topic = format!("{ns}:prio");
    let (r, gate) = gated(bus.as_ref(), &topic).await;
    bus.publish(event(&topic, 0)).await.unwrap(); // occupies the handler
    assert!(wait_until(DEADLINE, || bus.metrics().in_flight == 1).await);
    let order = [
        (1, Priority::LOW),
        (2, Priority::NORMAL),
        (3, Priority::HIGH),
        (4, Priority::CRITICAL),
        (5, Priority::new(200)),
        (6, Priority::HIGH),
    ];
    for (n, p) in order {
        bus.publish(event(&topic, n).with_priority(p))
            .await
            .unwrap();
    }
    assert!(wait_until(DEADLINE, || bus.metrics().queue_depth == 6).await);
    gate.add_permits(7);
    let got: Vec<u64> = r
        .wait_for(7, DEADLINE)
        .await
        .iter()
        .map(|e| e.payload.as_u64().unwrap())
        .collect();
    assert_eq!(got, [0, 4, 3, 6, 2, 1, 5]);
    bus.close().await.unwrap();
}

/// Equal priorities keep publish order, under backlog and without.
pub async fn fifo_at_equal_priority(factory: Factory) {
    let (ns, bus) = bus_with(factory, patient_dispatcher()).await;
    let topic = format!("{ns}:fifo");
    let (r, gate) = gated(bus.as_ref(), &topic).await;
    for i in 0..200 {
        bus.publish(event(&topic, i).with_priority(Priority::HIGH))
            .await
            .unwrap();
    }
    assert!(wait_until(DEADLINE, || bus.metrics().received == 200).await);
    gate.add_permits(200);
    let got: Vec<u64> = r
        .wait_for(200, DEADLINE)
        .await
        .iter()
        .map(|e| e.payload.as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    bus.close().await.unwrap();
}
