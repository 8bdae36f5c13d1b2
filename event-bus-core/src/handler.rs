//! Event handlers: any `async fn(Event) -> Result<(), E>` or async closure.

use std::{future::Future, pin::Pin};

use futures_util::{TryFutureExt, future::ErrInto};

use crate::{error::BoxError, event::Event};

/// What a handler returns: `Ok(())`, or any error (`?` converts every
/// `std::error::Error + Send + Sync`, and `"text".into()` makes one from a message).
pub type HandlerResult = Result<(), BoxError>;

/// A boxed handler future: a convenient [`Handler::Future`] for a handler type written
/// by hand whose calls return different futures.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

/// Something that handles events.
///
/// You rarely implement this yourself: every `Fn(Event) -> impl Future<Output =
/// Result<(), E>>` that is `Send + Sync + 'static`, with `E: Into<Box<dyn Error + Send +
/// Sync>>` (that includes `std::io::Error`, `String`, `&'static str` and `anyhow::Error`),
/// is a handler.
///
/// A type of your own implements it by naming its call's future; a boxed
/// [`HandlerFuture`] does when the calls return different futures:
///
/// ```
/// use event_bus_core::{Event, Handler, handler::HandlerFuture};
///
/// struct Audit { prefix: String }
///
/// impl Handler for Audit {
///     type Future = HandlerFuture;
///
///     fn call(&self, event: Event) -> Self::Future {
///         let line = format!("{}{}", self.prefix, event.topic);
///         Box::pin(async move {
///             println!("{line}");
///             Ok(())
///         })
///     }
/// }
/// # fn assert_handler(_: impl Handler) {}
/// # assert_handler(Audit { prefix: "audit: ".into() });
/// ```
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
///
/// # Closures
///
/// Rust cannot infer the types of a bare closure passed as `impl Handler`: neither the
/// parameter's type nor the error type of `Ok(())`. This does not compile ("type
/// annotations needed"):
///
/// ```compile_fail,E0282
/// # use event_bus_core::{Event, Handler};
/// # fn subscribe(_: impl Handler) {}
/// subscribe(|event| async move {
///     println!("{}", event.topic);
///     Ok(())
/// });
/// ```
///
/// Wrap it in [`handler_fn`], which fixes both (`Event` in, [`HandlerResult`] out), or
/// name the types yourself:
///
/// ```
/// # use event_bus_core::{BoxError, Event, Handler, HandlerResult, handler_fn};
/// # fn subscribe(_: impl Handler) {}
/// subscribe(handler_fn(|event| async move {
///     println!("{}", event.topic);
///     Ok(())
/// }));
/// subscribe(|event: Event| async move {
///     println!("{}", event.topic);
///     Ok::<_, BoxError>(())
/// });
/// subscribe(async |event: Event| -> HandlerResult {
///     println!("{}", event.topic);
///     Ok(())
/// });
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event handler",
    label = "not an event handler",
    note = "a handler is an `async fn(Event) -> Result<(), E>` or a closure \
            `|event: Event| async move {{ ...; Ok::<(), E>(()) }}` that is Send + Sync + 'static, \
            where E: Into<Box<dyn std::error::Error + Send + Sync>>",
    note = "`handler_fn(|event| async move {{ ...; Ok(()) }})` infers both types for a closure"
)]
pub trait Handler: Send + Sync + 'static {
    /// The future of one call. The subscription's worker is built for the concrete
    /// handler type and awaits this future in place: calling a handler allocates
    /// nothing beyond what the handler's own future does.
    type Future: Future<Output = HandlerResult> + Send + 'static;

    /// Handles one event.
    fn call(&self, event: Event) -> Self::Future;
}

impl<F, Fut, E> Handler for F
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Future = ErrInto<Fut, BoxError>;

    fn call(&self, event: Event) -> Self::Future {
        self(event).err_into()
    }
}

/// Makes a handler of a closure, fixing its types so that none need writing: the
/// closure takes an [`Event`] and its future returns a [`HandlerResult`], so
/// `|event| async move { ...; Ok(()) }` compiles and `?` works on any error.
///
/// ```
/// use event_bus_core::{Event, Handler, handler_fn};
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
///
/// let total = Arc::new(AtomicU64::new(0));
/// let sum = total.clone();
/// let handler = handler_fn(move |event| {
///     let sum = sum.clone();
///     async move {
///         let amount: u64 = event.payload_as()?;
///         sum.fetch_add(amount, Ordering::Relaxed);
///         Ok(())
///     }
/// });
/// # fn assert_handler(_: impl Handler) {}
/// # assert_handler(handler);
/// ```
pub fn handler_fn<F, Fut>(f: F) -> F
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    f
}
