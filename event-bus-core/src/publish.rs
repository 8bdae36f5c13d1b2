//! [`Publish`]: the future of [`EventBus::publish`](crate::EventBus::publish).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use crate::{dispatcher::Dispatcher, error::Error, event::Event};

/// The future [`EventBus::publish`](crate::EventBus::publish) returns: await it for the
/// result.
///
/// A publish that finishes without waiting (the memory backend queueing an event that
/// finds room, or one refused at once) is a ready value and allocates nothing; one that
/// has to wait (a network round trip, room in a full queue under the `block` policy)
/// carries a boxed future. Backends build one with [`Publish::new`] or
/// [`Publish::ready`].
///
/// ```
/// use event_bus_core::{Error, Publish};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let done = Publish::ready(Ok(()));
/// assert!(done.await.is_ok());
/// let later = Publish::new(async { Err::<(), _>(Error::Closed) });
/// assert!(matches!(later.await, Err(Error::Closed)));
/// # }
/// ```
#[must_use = "a publish does nothing unless awaited"]
pub struct Publish<'a>(State<'a>);

enum State<'a> {
    /// [`Dispatcher::publish`] not yet polled: the work happens on the first poll.
    Local(&'a Dispatcher, Option<Event>),
    /// Finished; `None` once the result has been taken.
    Ready(Option<Result<(), Error>>),
    Pending(Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>),
}

impl<'a> Publish<'a> {
    /// A publish that finishes when `future` does (boxed once).
    pub fn new(future: impl Future<Output = Result<(), Error>> + Send + 'a) -> Self {
        Self(State::Pending(Box::pin(future)))
    }

    /// A publish that has already finished with `result`.
    pub fn ready(result: Result<(), Error>) -> Self {
        Self(State::Ready(Some(result)))
    }

    /// [`Dispatcher::publish`] of `event`, done on the first poll.
    pub(crate) fn local(dispatcher: &'a Dispatcher, event: Event) -> Self {
        Self(State::Local(dispatcher, Some(event)))
    }
}

impl Future for Publish<'_> {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let State::Local(dispatcher, event) = &mut self.0 {
            let dispatcher = *dispatcher;
            let Some(event) = event.take() else {
                return Poll::Ready(Err(Error::Closed));
            };
            match dispatcher.publish_now(event) {
                // Spelled out so that the common case writes no error-sized value.
                Ok(Ok(())) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(waiting) => *self = waiting,
            }
        }
        match &mut self.0 {
            // Polled again after completion: the contract of `Future` leaves this open;
            // answering `Closed` is safer than panicking inside a publisher.
            State::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(Error::Closed))),
            State::Pending(future) => future.as_mut().poll(cx),
            State::Local(..) => Poll::Ready(Err(Error::Closed)),
        }
    }
}

impl fmt::Debug for Publish<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            State::Ready(result) => f.debug_tuple("Publish::Ready").field(result).finish(),
            State::Local(..) => f.write_str("Publish::Local"),
            State::Pending(_) => f.write_str("Publish::Pending"),
        }
    }
}
