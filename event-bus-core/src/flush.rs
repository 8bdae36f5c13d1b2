//! `flush` until quiescent, the same on every backend.
//!
//! [`EventBus::flush`](crate::EventBus::flush) returns when nothing this bus published,
//! received or queued is still waiting, including what its handlers published while it
//! waited. Each backend supplies one *round trip*: a step after which everything this
//! bus published before the step has been received back and handed to the dispatcher
//! (nothing for the memory backend; a `PING` on the subscriber connection for Redis; a
//! notification on the bus's private channel for PostgreSQL). [`until_quiescent`]
//! repeats round trip and [`Dispatcher::flush`] until a round in which no handler
//! published anything.

use std::future::Future;

use crate::{dispatcher::Dispatcher, error::Error};

/// Repeats `round_trip` then [`Dispatcher::flush`] until a round in which this bus
/// published nothing (its `published` counter did not move), so that follow-up events
/// published by handlers, and their own follow-ups, have been handled when it returns.
/// A bus that never stops publishing (an endless chain of handlers, a producer that
/// never pauses) keeps it waiting, as the memory backend's queues would.
///
/// ```
/// use event_bus_core::{Dispatcher, DispatcherConfig, flush::until_quiescent};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), event_bus_core::Error> {
/// let dispatcher = Dispatcher::new(DispatcherConfig::default())?;
/// // The memory backend's round trip: nothing is on its way back from a server.
/// until_quiescent(&dispatcher, || async { Ok(()) }).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// The first error of `round_trip`.
pub async fn until_quiescent<F, Fut>(
    dispatcher: &Dispatcher,
    mut round_trip: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    loop {
        let published = dispatcher.metrics().published();
        round_trip().await?;
        dispatcher.flush().await;
        if dispatcher.metrics().published() == published {
            return Ok(());
        }
    }
}
