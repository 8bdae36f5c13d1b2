//! The bus side of the benchmark: S subscriptions on one bus, P publishing tasks on
//! another bus of the same config (the same bus for memory).

use std::{convert::Infallible, future::ready, sync::Arc, time::Duration};

use multibus::{Event, EventBus, EventBusExt};

use super::{Collector, Workload, finish};
use crate::{
    backend::Selection,
    failure::{Failure, chain},
};

/// Publishes one round of the workload through the bus `selection` describes.
pub(crate) async fn run(
    selection: Selection,
    w: Workload,
    c: Arc<Collector>,
) -> Result<(Duration, String), Failure> {
    let name = selection.backend().to_owned();
    let sub_bus = selection.connect().await?;
    let pub_bus = if name == "memory" {
        sub_bus.clone()
    } else {
        selection.connect().await?
    };
    let result = publish_all(&sub_bus, &pub_bus, &w, &c).await;
    let closed_pub = pub_bus.close().await;
    sub_bus.close().await?;
    closed_pub?;
    Ok((result?, format!("multibus ({name})")))
}

async fn publish_all(
    sub_bus: &Arc<dyn EventBus>,
    pub_bus: &Arc<dyn EventBus>,
    w: &Workload,
    c: &Arc<Collector>,
) -> Result<Duration, Failure> {
    for i in 0..w.subscribers {
        let c = c.clone();
        sub_bus
            .subscribe(&w.topic, move |e: Event| {
                c.record(i, &e.payload);
                ready(Ok::<(), Infallible>(()))
            })
            .await?;
    }
    let start = tokio::time::Instant::now();
    let publishers = (0..w.publishers)
        .map(|p| {
            let (bus, c, mut source) = (pub_bus.clone(), c.clone(), w.source(p));
            tokio::spawn(async move {
                while let Some((seqs, mut events)) = source.next().await {
                    c.stamp(seqs);
                    let result = if events.len() == 1 {
                        bus.publish(events.remove(0)).await
                    } else {
                        bus.publish_batch(events).await
                    };
                    result.map_err(|e| chain(&e))?;
                }
                Ok(())
            })
        })
        .collect();
    finish(c, publishers, start, w.timeout).await
}
