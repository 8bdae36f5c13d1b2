//! One subscription's bounded queue and the signals around it.

use std::{
    sync::{Mutex, MutexGuard, PoisonError},
    task::Waker,
};

use tokio::sync::Notify;

use super::queue::PriorityQueue;

/// Where a subscription is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Accepting and delivering events.
    Open,
    /// The bus is closing: deliver what is queued, accept nothing new.
    Draining,
    /// Cancelled: deliver nothing more.
    Cancelled,
}

pub(crate) struct MailboxState {
    pub(crate) queue: PriorityQueue,
    pub(crate) status: Status,
    /// The worker holds an event it popped (its handler is running or about to run).
    pub(crate) busy: bool,
    /// A stream subscription's reader waiting for the queue to become non-empty.
    pub(crate) reader: Option<Waker>,
}

impl MailboxState {
    /// Wakes a waiting stream reader, if any.
    pub(crate) fn wake_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }
}

/// A subscription's queue. The publisher side pushes under the lock and wakes the
/// worker through `ready`; the worker wakes blocked publishers through `space`.
pub(crate) struct Mailbox {
    state: Mutex<MailboxState>,
    /// Signalled when the queue goes from empty to non-empty, or the status changes.
    pub(crate) ready: Notify,
    /// Signalled when the queue stops being full, or the status changes.
    pub(crate) space: Notify,
    /// Signalled when the worker finds the queue empty and stops being busy.
    pub(crate) idle: Notify,
}

impl Mailbox {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(MailboxState {
                queue: PriorityQueue::default(),
                status: Status::Open,
                busy: false,
                reader: None,
            }),
            ready: Notify::new(),
            space: Notify::new(),
            idle: Notify::new(),
        }
    }

    /// Locks the state. A panic never happens while the lock is held (handlers run
    /// outside it), but if one did the state is still consistent, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, MailboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Nothing queued and no handler call pending.
    pub(crate) fn is_idle(&self) -> bool {
        let state = self.lock();
        state.queue.is_empty() && !state.busy
    }

    /// Waits until [`is_idle`](Self::is_idle).
    pub(crate) async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.is_idle() {
                return;
            }
            idle.await;
        }
    }

    /// Moves to `status` unless already cancelled; wakes the worker and blocked
    /// publishers. Returns the number of queued events discarded (all of them when
    /// cancelling).
    pub(crate) fn set_status(&self, status: Status) -> usize {
        let discarded = {
            let mut state = self.lock();
            if state.status == Status::Cancelled {
                return 0;
            }
            state.status = status;
            state.wake_reader();
            if status == Status::Cancelled {
                state.queue.clear()
            } else {
                0
            }
        };
        self.ready.notify_one();
        self.space.notify_waiters();
        self.idle.notify_waiters();
        discarded
    }
}
