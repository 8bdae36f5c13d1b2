//! Configuration of the memory backend.

use event_bus_core::DispatcherConfig;
use serde::{Deserialize, Serialize};

/// Configuration of [`MemoryEventBus`](crate::MemoryEventBus): only the dispatcher
/// settings (config `{"backend": "memory", "dispatcher": {...}}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Dispatcher settings. Default: see [`DispatcherConfig`].
    pub dispatcher: DispatcherConfig,
}
