//! The consumer of one durable subscription: reads its group's entries on a dedicated
//! connection and hands them to the dispatcher.
//!
//! Three tasks per consumer: the [reader](super::reader) (own pending entries first,
//! then claims of expired entries and blocking reads of new ones), the
//! [lease keeper](super::leases) (extends the lease of what it holds), and the
//! [acker](super::acker) (batched `XACK`).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use event_bus_core::{
    DeadLetter, Pattern, SubscriptionId,
    durable::{Outstanding, OutstandingGuard},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

pub(crate) use super::leases::InFlight;
use super::{Streams, acker, leases, lock, reader};

/// Longest blocking read: how soon a stop or a due retry is noticed.
pub(super) const BLOCK: Duration = Duration::from_millis(500);

/// What a consumer, its helper tasks and its settle handles share.
pub(crate) struct Ctx {
    pub(crate) streams: Weak<Streams>,
    pub(crate) sub: SubscriptionId,
    pub(crate) pattern: Pattern,
    pub(crate) group: String,
    pub(crate) name: String,
    /// The subscription's dead-letter option (see [`StreamSettle`]).
    pub(crate) dead_letter: DeadLetter,
    pub(crate) stream: String,
    pub(crate) in_flight: Arc<InFlight>,
    /// Entries to acknowledge (the acker batches them); see [`Ctx::ack`].
    acks: mpsc::UnboundedSender<Ack>,
    /// The bus's acknowledgements not yet written (shared by its consumers).
    acking: Arc<Outstanding>,
    /// When the next claim is due (moved earlier by a retry).
    pub(crate) claim_at: Mutex<Instant>,
    /// Entries waiting on the server for a retry, until when they are waited for (by
    /// `flush`): their due time plus a lease, in case another member takes them.
    pub(crate) retrying: Mutex<HashMap<String, Instant>>,
    /// `CLIENT ID` of the reading connection (0 before it is open).
    pub(super) client_id: AtomicI64,
    /// Reads started, and reads finished with what they returned handed over.
    pub(super) reads_started: AtomicU64,
    pub(super) reads_done: watch::Sender<u64>,
}

/// One entry for the acker: its id, whether a handler handled it (or it was skipped),
/// and its place among the bus's acknowledgements not yet written.
pub(super) type Ack = (String, bool, OutstandingGuard);

impl Ctx {
    /// Queues the `XACK` of `id` (`handled`: by a handler, else skipped unseen); counted
    /// as outstanding until written, so that `flush` waits for it. `false` once the
    /// acker is gone (the consumer stopped).
    pub(crate) fn ack(&self, id: String, handled: bool) -> bool {
        self.acks.send((id, handled, self.acking.enter())).is_ok()
    }

    /// Whether an entry of this consumer waits on the server for a retry.
    pub(crate) fn is_retrying(&self) -> bool {
        let now = Instant::now();
        let mut retrying = lock(&self.retrying);
        retrying.retain(|_, until| *until > now);
        !retrying.is_empty()
    }

    /// Makes the next claim happen no later than `at`.
    pub(crate) fn claim_by(&self, at: Instant) {
        let mut next = lock(&self.claim_at);
        if at < *next {
            *next = at;
        }
    }
}

/// A running consumer, owned by [`Streams`].
pub(crate) struct ConsumerHandle {
    pub(crate) group: String,
    pub(crate) index: u32,
    ctx: Arc<Ctx>,
    stop: watch::Sender<bool>,
    reader: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    acker: JoinHandle<()>,
}

impl ConsumerHandle {
    /// Stops reading; what was handed to the dispatcher is still settled.
    pub(crate) fn stop_reading(&self) {
        self.stop.send_replace(true);
    }

    /// Whether an entry of this consumer waits on the server for a retry.
    pub(crate) fn is_retrying(&self) -> bool {
        self.ctx.is_retrying()
    }

    /// A handle to wait for the consumer's current read.
    pub(crate) fn waiter(&self) -> Waiter {
        Waiter {
            ctx: self.ctx.clone(),
            stop: self.stop.subscribe(),
        }
    }

    /// Stops the consumer without waiting (close from a handler): it reads no more and
    /// stops extending leases; its acknowledgements are still sent.
    pub(crate) fn detach(self) {
        self.stop.send_replace(true);
        self.heartbeat.abort();
    }

    /// Stops the consumer: ends its read (within one blocking read), stops extending
    /// leases, and waits up to `timeout` for the pending acknowledgements to be sent.
    pub(crate) async fn stop(self, streams: &Streams) {
        let timeout = streams.timeout;
        self.stop.send_replace(true);
        self.waiter().finish_read(streams).await;
        let mut reader = self.reader;
        if tokio::time::timeout(BLOCK + timeout, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
        self.heartbeat.abort();
        drop(self.ctx);
        // The acker ends once every settle handle is gone (the dispatcher settled or
        // dropped them), after sending what they acknowledged.
        let _ = tokio::time::timeout(timeout, self.acker).await;
    }
}

/// Waits for one consumer's read in progress.
pub(crate) struct Waiter {
    ctx: Arc<Ctx>,
    stop: watch::Receiver<bool>,
}

impl Waiter {
    /// Waits until the read in progress (if any) has finished and handed over what it
    /// returned; a read blocked waiting for entries is cut short (`CLIENT UNBLOCK`).
    pub(crate) async fn finish_read(mut self, streams: &Streams) {
        let started = self.ctx.reads_started.load(Ordering::Acquire);
        let mut done = self.ctx.reads_done.subscribe();
        if *done.borrow() >= started {
            return;
        }
        let id = self.ctx.client_id.load(Ordering::Acquire);
        if id != 0 {
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("UNBLOCK").arg(id);
            let _ = streams.commands.run::<i64>("unblock a reader", &cmd).await;
        }
        let stop = self.stop.wait_for(|s| *s);
        tokio::select! {
            _ = done.wait_for(|d| *d >= started) => {}
            _ = stop => {}
        }
    }
}

/// What one consumer serves.
pub(crate) struct Spec {
    pub(crate) sub: SubscriptionId,
    pub(crate) pattern: Pattern,
    pub(crate) group: String,
    /// Consumer name in the group.
    pub(crate) name: String,
    /// Its number among this bus's consumers of the group.
    pub(crate) index: u32,
    pub(crate) dead_letter: DeadLetter,
}

/// Starts the consumer of `spec`.
pub(crate) fn spawn(streams: &Arc<Streams>, spec: Spec) -> ConsumerHandle {
    let Spec {
        sub,
        pattern,
        group,
        name,
        index,
        dead_letter,
    } = spec;
    let (acks, ack_rx) = mpsc::unbounded_channel();
    let in_flight = Arc::new(InFlight::default());
    let stream = streams.keys.stream();
    let ctx = Arc::new(Ctx {
        streams: Arc::downgrade(streams),
        sub,
        pattern,
        group: group.clone(),
        name,
        dead_letter,
        stream,
        in_flight,
        acks,
        acking: streams.acking.clone(),
        claim_at: Mutex::new(Instant::now()),
        retrying: Mutex::default(),
        client_id: AtomicI64::new(0),
        reads_started: AtomicU64::new(0),
        reads_done: watch::Sender::new(0),
    });
    let (stop, stop_rx) = watch::channel(false);
    let acker = tokio::spawn(acker::ack_loop(
        Arc::downgrade(streams),
        acker::Acking::of(&ctx),
        ack_rx,
    ));
    let heartbeat = tokio::spawn(leases::heartbeat_loop(ctx.clone(), streams.config.lease()));
    let reader = tokio::spawn(reader::read_loop(ctx.clone(), stop_rx));
    ConsumerHandle {
        group,
        index,
        ctx,
        stop,
        reader,
        heartbeat,
        acker,
    }
}
