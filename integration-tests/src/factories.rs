//! One function per backend that builds a connected bus in a namespace.

use std::sync::Arc;

use event_bus::{DispatcherConfig, EventBus};
use futures_util::future::BoxFuture;

/// Builds a connected bus for namespace `ns` (channel prefix for network backends) with
/// the given dispatcher settings. Two calls with the same `ns` on a network backend give
/// two buses that see each other's events.
pub type Factory = fn(ns: String, dispatcher: DispatcherConfig) -> BoxFuture<'static, Arc<dyn EventBus>>;

/// The in-process backend (the namespace is irrelevant: each bus is its own world).
pub fn memory(_ns: String, dispatcher: DispatcherConfig) -> BoxFuture<'static, Arc<dyn EventBus>> {
    Box::pin(async move {
        let bus = event_bus::MemoryEventBus::new(event_bus::MemoryConfig { dispatcher })
            .expect("valid memory config");
        bus.connect().await.expect("memory connect");
        Arc::new(bus) as Arc<dyn EventBus>
    })
}
