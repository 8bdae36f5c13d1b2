//! What the client reports about its connection: connects and reconnects, losses,
//! errors and slow consumers, turned into health, metrics and (rate-limited) logs.

use std::sync::{Arc, Mutex, PoisonError};

use async_nats::Event as ClientEvent;
use event_bus_core::{Metrics, log_limit::LogLimiter};

/// The connection state as last reported by the client.
#[derive(Debug, Default)]
pub(crate) struct Link {
    state: Mutex<State>,
    slow_consumer_log: LogLimiter,
}

#[derive(Debug, Default)]
struct State {
    connected: bool,
    ever_connected: bool,
    last_error: Option<String>,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `(connected, last error)` for `health`.
    pub(crate) fn status(&self) -> (bool, Option<String>) {
        let state = self.lock();
        (state.connected, state.last_error.clone())
    }

    /// Records one event of the client. `address` is redacted.
    pub(crate) fn on_event(&self, event: ClientEvent, metrics: &Metrics, address: &str) {
        match event {
            ClientEvent::Connected => {
                let mut state = self.lock();
                let reconnect = state.ever_connected;
                state.connected = true;
                state.ever_connected = true;
                state.last_error = None;
                drop(state);
                if reconnect {
                    metrics.add_reconnects(1);
                    tracing::warn!(%address, "NATS connection re-established; subscriptions renewed");
                }
            }
            ClientEvent::Disconnected => {
                let mut state = self.lock();
                state.connected = false;
                state.last_error = Some("connection to the NATS server lost".to_owned());
                drop(state);
                tracing::warn!(%address, "NATS connection lost; reconnecting");
            }
            ClientEvent::SlowConsumer(sid) => {
                // The client dropped a message for this subscription: its buffer was full.
                metrics.add_dropped(1);
                if let Some(suppressed) = self.slow_consumer_log.check() {
                    tracing::warn!(
                        sid,
                        suppressed,
                        "slow consumer: the NATS client dropped a message (counted in `dropped`)"
                    );
                }
            }
            ClientEvent::ServerError(error) => {
                self.lock().last_error = Some(format!("server error: {error}"));
                tracing::warn!(%address, %error, "NATS server error");
            }
            ClientEvent::ClientError(error) => {
                self.lock().last_error = Some(format!("client error: {error}"));
                tracing::warn!(%address, %error, "NATS client error");
            }
            ClientEvent::LameDuckMode => {
                tracing::warn!(%address, "NATS server entering lame duck mode: it will close the connection soon");
            }
            ClientEvent::Draining | ClientEvent::Closed => {
                self.lock().connected = false;
            }
        }
    }
}

/// The client's event callback, reporting into `link` and `metrics`.
pub(crate) fn callback(
    link: Arc<Link>,
    metrics: Arc<Metrics>,
    address: String,
) -> impl Fn(ClientEvent) -> std::future::Ready<()> + Send + Sync + 'static {
    move |event| {
        link.on_event(event, &metrics, &address);
        std::future::ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_and_slow_consumers_are_counted() {
        let link = Link::default();
        let metrics = Metrics::default();
        link.on_event(ClientEvent::Connected, &metrics, "a");
        assert_eq!(link.status(), (true, None));
        link.on_event(ClientEvent::Disconnected, &metrics, "a");
        assert!(!link.status().0 && link.status().1.is_some());
        link.on_event(ClientEvent::Connected, &metrics, "a");
        link.on_event(ClientEvent::SlowConsumer(3), &metrics, "a");
        let m = metrics.snapshot();
        assert_eq!((m.reconnects, m.dropped), (1, 1));
        assert_eq!(link.status(), (true, None));
    }
}
