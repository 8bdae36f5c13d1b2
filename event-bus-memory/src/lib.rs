//! In-process backend of the `multibus` crate family: publish puts the event straight
//! into the shared dispatcher's subscription queues, with no serialization and no network.
//!
//! Use it in development, in tests, and for decoupling components of one process. Every
//! guarantee of [`EventBus`] holds; events live only in this process's memory.
//!
//! ```
//! use event_bus_memory::{MemoryConfig, MemoryEventBus};
//! use event_bus_core::{Event, EventBus, EventBusExt, EventType};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), event_bus_core::Error> {
//! let bus = MemoryEventBus::new(MemoryConfig::default())?;
//! let sub = bus.subscribe("greetings", |e: Event| async move {
//!     println!("hello, {}", e.payload["name"]);
//!     Ok::<(), std::io::Error>(())
//! }).await?;
//! bus.publish(Event::new(EventType::Created, "greetings", serde_json::json!({"name": "world"}))).await?;
//! bus.flush().await?;
//! assert_eq!(bus.metrics().delivered, 1);
//! sub.cancel().await;
//! bus.close().await?;
//! # Ok(()) }
//! ```

mod bus;
mod config;

pub use bus::MemoryEventBus;
pub use config::MemoryConfig;

// What applications need besides the bus itself, so that this crate alone is enough.
pub use event_bus_core::prelude::*;

/// The bus, its config and everything applications use: `use event_bus_memory::prelude::*;`.
pub mod prelude {
    pub use crate::{MemoryConfig, MemoryEventBus};
    pub use event_bus_core::prelude::*;
}
