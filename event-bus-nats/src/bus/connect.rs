//! Opening the client: options, credentials, the event callback, and what a failed
//! connect says.

use std::{sync::atomic::AtomicUsize, time::Duration};

use async_nats::ConnectOptions;
use event_bus_core::{Error, reconnect::Backoff};

use super::{Inner, Started};
use crate::{echo::Echo, link};

impl Inner {
    pub(super) async fn start(&self) -> Result<Started, Error> {
        let timeout = self.config.command_timeout();
        let max_delay = self.dispatcher.config().consumer_error_sleep();
        let mut options = ConnectOptions::new()
            .name(&self.client_name)
            .connection_timeout(timeout)
            .ping_interval(self.config.ping_interval())
            .subscription_capacity(self.config.subscription_capacity)
            .require_tls(self.servers.tls)
            .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, max_delay))
            .event_callback(link::callback(
                self.link.clone(),
                self.dispatcher.metrics().clone(),
                self.address.clone(),
            ));
        if let Some(credentials) = &self.servers.credentials {
            options = credentials.apply(options);
        }
        let client = options
            .connect(self.servers.server_addrs())
            .await
            .map_err(|e| self.connect_error(&e))?;
        if let Some(js) = &self.jetstream {
            js.attach(&client).await?;
        }
        let echo = Echo::start(&client).await?;
        echo.round_trip(&client, timeout).await?;
        self.dispatcher.start();
        let max_payload = AtomicUsize::new(client.server_info().max_payload);
        Ok(Started {
            client,
            echo,
            max_payload,
        })
    }

    /// The error of a failed connect, naming the redacted address and, where it helps,
    /// what to check.
    fn connect_error(&self, error: &async_nats::ConnectError) -> Error {
        use async_nats::ConnectErrorKind as Kind;
        let hint = match error.kind() {
            Kind::Tls | Kind::TimedOut | Kind::Io if self.servers.tls => {
                " (TLS is required: does the server speak TLS?)"
            }
            Kind::AuthorizationViolation | Kind::Authentication => {
                " (check the user name and password or token)"
            }
            _ => "",
        };
        // The client never saw the credentials in an address, so its message holds none.
        Error::connection(
            format!("connect to {}{hint}", self.address),
            error.to_string(),
        )
    }
}

/// The delay before reconnect attempt `attempts` (1 is the first, made at once), as
/// [`Backoff`] computes it: 100 ms doubling up to `max`, with jitter.
fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let mut backoff = Backoff::new(max);
    for _ in 2..attempts.min(24) {
        backoff.next_delay();
    }
    backoff.next_delay()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_to_the_cap() {
        let max = Duration::from_secs(2);
        assert_eq!(reconnect_delay(1, max), Duration::ZERO);
        assert!(reconnect_delay(2, max) <= Duration::from_millis(100));
        assert!(reconnect_delay(1_000_000, max) <= max);
        assert!(reconnect_delay(1_000_000, max) >= max * 3 / 4);
    }
}
