//! The in-process event bus.

use async_trait::async_trait;
use event_bus_core::{
    Dispatcher, Error, Event, EventBus, Health, MetricsSnapshot, Pattern, Publish,
    SubscribeOptions, Subscriber, Subscription, flush::until_quiescent,
};

use crate::config::MemoryConfig;

/// An event bus inside one process. Cheap to clone; clones share one bus.
#[derive(Clone)]
pub struct MemoryEventBus {
    dispatcher: Dispatcher,
}

impl MemoryEventBus {
    /// A bus with `config`.
    ///
    /// # Errors
    /// [`Error::Config`] naming a bad `dispatcher.*` value.
    pub fn new(config: MemoryConfig) -> Result<Self, Error> {
        Ok(Self {
            dispatcher: Dispatcher::new(config.dispatcher)?,
        })
    }

    /// The dispatcher behind this bus.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }
}

impl std::fmt::Debug for MemoryEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEventBus")
            .field("config", self.dispatcher.config())
            .field("closed", &self.dispatcher.is_closed())
            .finish()
    }
}

#[async_trait]
impl EventBus for MemoryEventBus {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn connect(&self) -> Result<(), Error> {
        if self.dispatcher.is_closed() {
            return Err(Error::Closed);
        }
        self.dispatcher.start();
        Ok(())
    }

    /// Queues `event` for the matching subscriptions ([`Dispatcher::publish`]): without
    /// allocating, unless it has to wait for room in a full queue (`block`).
    fn publish(&self, event: Event) -> Publish<'_> {
        self.dispatcher.publish(event)
    }

    async fn add_subscription(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        subscriber: Subscriber,
    ) -> Result<Subscription, Error> {
        let pattern = Pattern::parse(pattern)?;
        self.dispatcher.subscribe(pattern, &options, subscriber)
    }

    /// Waits until the bus is quiescent (see [`event_bus_core::flush`]); nothing is on
    /// its way back from a server, so the round trip is empty.
    async fn flush(&self) -> Result<(), Error> {
        until_quiescent(&self.dispatcher, || async { Ok(()) }).await
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.dispatcher.metrics().snapshot()
    }

    async fn health(&self) -> Health {
        let open = !self.dispatcher.is_closed();
        Health::new("memory", open, open, None)
    }

    async fn close(&self) -> Result<(), Error> {
        self.dispatcher.close().await;
        Ok(())
    }
}
