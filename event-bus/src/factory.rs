//! Building a bus from configuration.

use std::sync::Arc;

use event_bus_core::{Error, EventBus};

use crate::backend::Config;

/// Builds the bus `config` selects. Call [`EventBus::connect`] before use (network
/// backends otherwise connect on first use).
///
/// # Errors
/// [`Error::Config`] for bad settings (naming the key).
///
/// ```
/// use multibus::prelude::*;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
/// let bus = create_event_bus(Config::from_json_str(r#"{"backend": "memory"}"#)?)?;
/// bus.connect().await?;
/// assert_eq!(bus.backend(), "memory");
/// bus.close().await?;
/// # Ok(()) }
/// ```
pub fn create_event_bus(config: Config) -> Result<Arc<dyn EventBus>, Error> {
    Ok(match config {
        #[cfg(feature = "memory")]
        Config::Memory(c) => Arc::new(event_bus_memory::MemoryEventBus::new(c)?),
        #[cfg(feature = "redis")]
        Config::Redis(c) => Arc::new(event_bus_redis::RedisEventBus::new(c)?),
        #[cfg(feature = "postgres")]
        Config::Postgres(c) => Arc::new(event_bus_postgres::PostgresEventBus::new(c)?),
        #[cfg(feature = "nats")]
        Config::Nats(c) => Arc::new(event_bus_nats::NatsEventBus::new(c)?),
    })
}
