//! The receive buffer's bound: messages the driver has read off the pub/sub connection
//! and the listener has not yet handed to the dispatcher.
//!
//! The driver reads the socket on its own and cannot be slowed down, so while the
//! dispatcher is full (overflow `block`) messages wait in the buffer. It holds at most
//! `receive_buffer_bytes` of payload and [`MESSAGES_PER_QUEUE_SLOT`] ×
//! `dispatcher.queue_maxsize` messages; a message that does not fit is dropped, counted
//! in `dropped` and logged (on the 1st, 2nd, 4th, 8th… drop). Its size is reported in
//! the `buffered` and `buffered_bytes` gauges.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use event_bus_core::Metrics;
use redis::{PushInfo, Value};

/// How many received messages may wait per slot of a subscription queue: generous
/// enough that bursts are not dropped, small enough that a subscriber that cannot keep
/// up does not exhaust memory.
pub(crate) const MESSAGES_PER_QUEUE_SLOT: usize = 64;

/// Occupancy and bounds of one bus's receive buffer.
pub(crate) struct ReceiveBuffer {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    max_messages: usize,
    max_bytes: usize,
    overflowed: AtomicU64,
    metrics: Arc<Metrics>,
}

impl ReceiveBuffer {
    pub(crate) fn new(max_messages: usize, max_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_messages,
            max_bytes,
            overflowed: AtomicU64::new(0),
            metrics,
        }
    }

    /// Takes a message of `bytes` into the buffer, or, if it does not fit, counts it
    /// as dropped and returns `false`. An empty buffer takes any one message, so a
    /// message larger than the byte bound is never dropped for its size alone.
    pub(crate) fn admit(&self, bytes: usize, connection: &str) -> bool {
        let (messages, held) = (
            self.messages.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        );
        if messages > 0
            && (messages >= self.max_messages || held.saturating_add(bytes) > self.max_bytes)
        {
            self.metrics.add_dropped(1);
            let n = self.overflowed.fetch_add(1, Ordering::AcqRel) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    buffered = messages,
                    buffered_bytes = held,
                    max_bytes = self.max_bytes,
                    %connection,
                    "receive buffer full: redis message dropped"
                );
            }
            return false;
        }
        self.messages.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.metrics.add_buffered(1, to_i64(bytes));
        true
    }

    /// Removes a message of `bytes` that the listener took out of the buffer.
    pub(crate) fn release(&self, bytes: usize) {
        self.messages.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.metrics.add_buffered(-1, -to_i64(bytes));
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whether a push carries a published message (as opposed to connection or
/// subscription notices, which are never dropped).
pub(crate) fn is_message(push: &PushInfo) -> bool {
    matches!(
        push.kind,
        redis::PushKind::Message | redis::PushKind::PMessage
    )
}

/// The bytes a pushed message holds (channel, pattern and payload).
pub(crate) fn size(push: &PushInfo) -> usize {
    push.data
        .iter()
        .map(|v| match v {
            Value::BulkString(b) => b.len(),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_count_and_bytes_and_always_takes_one() {
        let metrics = Arc::new(Metrics::default());
        let buffer = ReceiveBuffer::new(3, 100, metrics.clone());
        assert!(buffer.admit(500, "c"), "an empty buffer takes any message");
        assert!(!buffer.admit(1, "c"), "over the byte bound");
        buffer.release(500);
        assert!(buffer.admit(60, "c") && buffer.admit(40, "c"));
        assert!(!buffer.admit(1, "c"));
        buffer.release(40);
        assert!(buffer.admit(20, "c") && buffer.admit(20, "c"));
        assert!(!buffer.admit(0, "c"), "over the message bound");
        let m = metrics.snapshot();
        assert_eq!((m.buffered, m.buffered_bytes, m.dropped), (3, 100, 3));
    }
}
