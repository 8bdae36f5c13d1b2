//! Operations of the durable mode on [`RedisEventBus`]: group state, dead letters,
//! redrive, counters.

use event_bus_core::{Error, Event};

use crate::{
    RedisEventBus,
    streams::{GroupInfo, StreamMetrics, admin, maintenance},
};

impl RedisEventBus {
    /// The consumer groups of this bus's stream, with their lag and pending entries.
    ///
    /// # Errors
    /// [`Error::Config`] (key `delivery`) on a pub/sub bus; a connection error.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, Error> {
        admin::groups(self.streams()?).await
    }

    /// Up to `count` dead letters of `group`, oldest first, each with its entry id in
    /// the group's dead-letter stream. The failure is described in each event's
    /// metadata ([`DeadLetterInfo`](event_bus_core::DeadLetterInfo)).
    ///
    /// # Errors
    /// [`Error::Config`] on a pub/sub bus or a bad group name; a connection error.
    pub async fn dead_letters(
        &self,
        group: &str,
        count: usize,
    ) -> Result<Vec<(String, Event)>, Error> {
        admin::dead_letters(self.streams()?, group, count).await
    }

    /// Moves up to `count` dead letters of `group` (oldest first) back to the stream,
    /// under their original topic and for `group` only (other groups skip them), each
    /// atomically with its removal from the dead letters. Returns how many moved; the
    /// group's members then handle them again from attempt 1.
    ///
    /// # Errors
    /// [`Error::Config`] on a pub/sub bus or a bad group name; a connection error (the
    /// letters moved before it stay moved).
    pub async fn redrive(&self, group: &str, count: usize) -> Result<usize, Error> {
        admin::redrive(self.streams()?, group, count).await
    }

    /// Runs the stream upkeep now (it also runs every `streams.trim_interval_seconds`):
    /// trims what every group has acknowledged, applies the `streams.max_len` cap and
    /// removes idle consumers with nothing pending. Returns how many entries the cap
    /// trimmed (counted in [`StreamMetrics::lost`] when a group still needed them).
    ///
    /// # Errors
    /// [`Error::Config`] on a pub/sub bus; a connection error.
    pub async fn trim(&self) -> Result<u64, Error> {
        maintenance::upkeep(self.streams()?).await
    }

    /// Counters of the durable mode (all zero on a pub/sub bus).
    pub fn stream_metrics(&self) -> StreamMetrics {
        self.streams()
            .map(|s| s.stats.snapshot())
            .unwrap_or_default()
    }

    /// The stream key of this bus: `{channel_prefix}:stream` (braces included: a
    /// cluster hash tag).
    pub fn stream_key(&self) -> String {
        crate::streams::Keys::new(&self.config().channel_prefix).stream()
    }

    /// The dead-letter stream of `group`: `{channel_prefix}:dead:{group}`.
    pub fn dead_letter_key(&self, group: &str) -> String {
        crate::streams::Keys::new(&self.config().channel_prefix).dead(group)
    }
}
