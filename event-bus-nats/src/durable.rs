//! Operations of the durable mode on [`NatsEventBus`]: group state, dead letters,
//! redrive, counters.

use event_bus_core::{Error, Event};

use crate::{
    NatsEventBus,
    jetstream::{JetStreamMetrics, NatsGroupInfo, admin, names::Names},
};

impl NatsEventBus {
    /// The consumer groups of this bus's events stream, with their lag (`pending`) and
    /// unacknowledged deliveries.
    ///
    /// # Errors
    /// [`Error::Config`] (key `delivery`) on a pub/sub bus; [`Error::Closed`] before
    /// connect; a connection error.
    pub async fn groups(&self) -> Result<Vec<NatsGroupInfo>, Error> {
        admin::groups(self.jetstream()?).await
    }

    /// Up to `count` dead letters of `group`, oldest first, each with its sequence in
    /// the auxiliary stream. The failure is described in each event's metadata
    /// ([`DeadLetterInfo`](event_bus_core::DeadLetterInfo)).
    ///
    /// # Errors
    /// [`Error::Config`] on a pub/sub bus or an empty group name; a connection error.
    pub async fn dead_letters(
        &self,
        group: &str,
        count: usize,
    ) -> Result<Vec<(u64, Event)>, Error> {
        self.inner.started().await?;
        admin::dead_letters(self.jetstream()?, group, count).await
    }

    /// Moves up to `count` dead letters of `group` (oldest first) back to the events
    /// stream, under their original topic and for `group` only (other groups skip
    /// them); each is stored before it is deleted from the dead letters, so a failure
    /// in between leaves it in both (a duplicate, never a loss). Returns how many
    /// moved; the group's members then handle them again from attempt 1.
    ///
    /// # Errors
    /// [`Error::Config`] on a pub/sub bus; a connection error (the letters moved
    /// before it stay moved).
    pub async fn redrive(&self, group: &str, count: usize) -> Result<usize, Error> {
        self.inner.started().await?;
        admin::redrive(self.jetstream()?, group, count).await
    }

    /// Counters of the durable mode (all zero on a pub/sub bus).
    pub fn jetstream_metrics(&self) -> JetStreamMetrics {
        self.jetstream()
            .map(|js| js.stats.snapshot())
            .unwrap_or_default()
    }

    /// The events stream of this bus: `eventbus_{channel_prefix}`.
    pub fn stream_name(&self) -> String {
        Names::new(&self.config().channel_prefix).stream()
    }

    /// The stream of dead letters and parts: `eventbus_{channel_prefix}-aux`.
    pub fn aux_stream_name(&self) -> String {
        Names::new(&self.config().channel_prefix).aux_stream()
    }

    /// The subject of the dead letters of `group`:
    /// `{channel_prefix}-aux.dead.{group}` (group encoded as a topic segment).
    pub fn dead_letter_subject(&self, group: &str) -> String {
        Names::new(&self.config().channel_prefix).dead(group)
    }
}
