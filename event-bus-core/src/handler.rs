//! Event handlers: any `async fn(Event) -> Result<(), E>` or async closure.

use std::{future::Future, pin::Pin};

use crate::{error::BoxError, event::Event};

/// The future a [`Handler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

/// Something that handles events.
///
/// You rarely implement this yourself: every `Fn(Event) -> impl Future<Output =
/// Result<(), E>>` that is `Send + Sync + 'static`, with `E: Into<Box<dyn Error + Send +
/// Sync>>` (that includes `std::io::Error`, `String`, `&'static str` and `anyhow::Error`),
/// is a handler.
///
/// Returning `Err` marks the delivery as failed; so do a panic and running past
/// `dispatcher.handler_timeout_seconds`. After `dispatcher.handler_max_failures`
/// consecutive failures the subscription is cancelled automatically.
///
/// A handler runs on the Tokio runtime: it must not block the thread (use
/// `tokio::task::spawn_blocking` for blocking work). The timeout can only cancel a handler
/// at an `.await`.
///
/// ```
/// use event_bus_core::{Event, Handler};
///
/// async fn audit(event: Event) -> Result<(), std::io::Error> {
///     println!("{} on {}", event.event_type, event.topic);
///     Ok(())
/// }
/// fn assert_handler(_: impl Handler) {}
/// assert_handler(audit);
/// assert_handler(|event: Event| async move {
///     if event.payload.is_null() { return Err("empty payload"); }
///     Ok(())
/// });
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event handler",
    label = "not an event handler",
    note = "a handler is an `async fn(Event) -> Result<(), E>` or a closure \
            `|event: Event| async move {{ ...; Ok::<(), E>(()) }}` that is Send + Sync + 'static, \
            where E: Into<Box<dyn std::error::Error + Send + Sync>>"
)]
pub trait Handler: Send + Sync + 'static {
    /// Handles one event.
    fn call(&self, event: Event) -> HandlerFuture;
}

impl<F, Fut, E> Handler for F
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn call(&self, event: Event) -> HandlerFuture {
        let fut = self(event);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
