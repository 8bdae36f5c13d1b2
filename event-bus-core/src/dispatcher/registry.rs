//! The subscription table, indexed so that matching an event does not scan every pattern.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{sync::watch, task::JoinHandle};

use super::{hasher::TopicMap, mailbox::Mailbox};
use crate::{
    metrics::{HandlerStats, StatsSource},
    options::Resolved,
    pattern::Pattern,
    subscription::{EndReason, SubscriptionId},
    transport::SubscriberKind,
};

/// One live subscription.
pub(crate) struct SubEntry {
    pub(crate) id: SubscriptionId,
    /// Creation order; publishers lock several mailboxes in this order.
    pub(crate) seq: u64,
    pub(crate) pattern: Pattern,
    /// A handler (called by a worker task) or a stream (read by the application).
    pub(crate) kind: SubscriberKind,
    pub(crate) options: Resolved,
    pub(crate) group: Option<Arc<str>>,
    pub(crate) mailbox: Mailbox,
    /// Set once the subscription is cancelled (by the user, the failure limit or close
    /// after its deadline); the worker checks it before each handler call.
    pub(crate) cancelled: AtomicBool,
    /// Why the subscription ended, once it has; watched by `Subscription::ended` and by
    /// a worker waiting for a concurrency slot or a retry.
    pub(crate) ended: watch::Sender<Option<EndReason>>,
    pub(crate) worker: Mutex<Option<JoinHandle<()>>>,
    /// Handler outcomes, written by the worker (or the stream reader) only.
    pub(crate) stats: HandlerStats,
}

impl StatsSource for SubEntry {
    fn stats(&self) -> &HandlerStats {
        &self.stats
    }

    fn queue_depth(&self) -> u64 {
        self.mailbox.lock().queue.len() as u64
    }
}

impl SubEntry {
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Records why the subscription ended (the first reason wins) and wakes whoever
    /// waits on it.
    pub(crate) fn end(&self, reason: EndReason) {
        self.ended.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(reason);
            true
        });
    }

    /// Waits until the subscription has ended.
    pub(crate) async fn wait_ended(&self) {
        let mut ended = self.ended.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = ended.wait_for(Option::is_some).await;
    }

    pub(crate) fn take_worker(&self) -> Option<JoinHandle<()>> {
        self.worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Exact-topic subscriptions are found with one hash lookup. Wildcard patterns are
/// grouped by their literal prefix (the text before the first wildcard); an event
/// checks only the groups whose prefix starts its topic, one hash lookup per distinct
/// prefix length in use.
///
/// Members of a consumer group are matched like any subscription; then each group
/// keeps one of its matching members, in turn (round robin).
#[derive(Default)]
pub(crate) struct Registry {
    by_id: HashMap<SubscriptionId, Arc<SubEntry>>,
    exact: TopicMap<Vec<Arc<SubEntry>>>,
    by_prefix: TopicMap<Vec<Arc<SubEntry>>>,
    /// Distinct prefix length -> number of `by_prefix` keys of that length.
    prefix_lens: BTreeMap<usize, usize>,
    /// Consumer group -> (live members, turn counter).
    groups: HashMap<Arc<str>, (usize, AtomicUsize)>,
}

impl Registry {
    pub(crate) fn contains(&self, id: SubscriptionId) -> bool {
        self.by_id.contains_key(&id)
    }

    pub(crate) fn get(&self, id: SubscriptionId) -> Option<Arc<SubEntry>> {
        self.by_id.get(&id).cloned()
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &Arc<SubEntry>> {
        self.by_id.values()
    }

    pub(crate) fn insert(&mut self, entry: Arc<SubEntry>) {
        self.by_id.insert(entry.id, entry.clone());
        if let Some(group) = &entry.group {
            self.groups
                .entry(group.clone())
                .or_insert_with(|| (0, AtomicUsize::new(0)))
                .0 += 1;
        }
        match entry.pattern.literal() {
            Some(topic) => self.exact.get_or_default(topic).push(entry),
            None => {
                let prefix = entry.pattern.literal_prefix();
                let len = prefix.len();
                let group = self.by_prefix.get_or_default(&prefix);
                if group.is_empty() {
                    *self.prefix_lens.entry(len).or_default() += 1;
                }
                group.push(entry);
            }
        }
    }

    pub(crate) fn remove(&mut self, id: SubscriptionId) -> Option<Arc<SubEntry>> {
        let entry = self.by_id.remove(&id)?;
        if let Some(group) = &entry.group {
            if let Some((members, _)) = self.groups.get_mut(group) {
                *members -= 1;
                if *members == 0 {
                    self.groups.remove(group);
                }
            }
        }
        let (map, key, is_prefix) = match entry.pattern.literal() {
            Some(topic) => (&mut self.exact, topic.to_owned(), false),
            None => (&mut self.by_prefix, entry.pattern.literal_prefix(), true),
        };
        if let Some(group) = map.get_mut(&key) {
            group.retain(|e| e.id != id);
            if group.is_empty() {
                map.remove(&key);
                if is_prefix {
                    let len = key.len();
                    if let Some(n) = self.prefix_lens.get_mut(&len) {
                        *n -= 1;
                        if *n == 0 {
                            self.prefix_lens.remove(&len);
                        }
                    }
                }
            }
        }
        Some(entry)
    }

    pub(crate) fn drain(&mut self) -> Vec<Arc<SubEntry>> {
        self.exact.clear();
        self.by_prefix.clear();
        self.prefix_lens.clear();
        self.groups.clear();
        self.by_id.drain().map(|(_, e)| e).collect()
    }

    /// Subscriptions whose pattern matches `topic` and passes `filter`, in creation order.
    /// The subscriptions `topic` goes to (of those passing `filter`), and whether
    /// `topic` is the exact topic of a subscription (then it is a valid topic: exact
    /// patterns are checked with the topic rules when subscribing).
    pub(crate) fn matching(
        &self,
        topic: &str,
        filter: impl Fn(&SubEntry) -> bool,
    ) -> (Targets, bool) {
        let exact = self.exact.get(topic);
        // The common case: one subscription to this exact topic and no wildcard or
        // group subscriptions at all.
        if let Some([one]) = exact.map(Vec::as_slice) {
            if self.prefix_lens.is_empty() && self.groups.is_empty() {
                let out = if filter(one) {
                    Targets::One(one.clone())
                } else {
                    Targets::None
                };
                return (out, true);
            }
        }
        self.matching_all(topic, exact, filter)
    }

    /// [`matching`](Self::matching) in general.
    fn matching_all(
        &self,
        topic: &str,
        exact: Option<&Vec<Arc<SubEntry>>>,
        filter: impl Fn(&SubEntry) -> bool,
    ) -> (Targets, bool) {
        let mut out = Targets::default();
        if let Some(group) = exact {
            out.extend(group.iter().filter(|e| filter(e)).cloned());
        }
        if !self.prefix_lens.is_empty() {
            self.add_prefix_matches(topic, &filter, &mut out);
        }
        if let Targets::Many(many) = &mut out {
            many.sort_unstable_by_key(|e| e.seq);
        }
        if !self.groups.is_empty() {
            out = self.one_per_group(out);
        }
        (out, exact.is_some())
    }

    /// Adds the wildcard subscriptions matching `topic` to `out`.
    fn add_prefix_matches(
        &self,
        topic: &str,
        filter: &impl Fn(&SubEntry) -> bool,
        out: &mut Targets,
    ) {
        for &len in self.prefix_lens.keys() {
            if len > topic.len() {
                break;
            }
            if !topic.is_char_boundary(len) {
                continue;
            }
            if let Some(group) = self.by_prefix.get(&topic[..len]) {
                out.extend(
                    group
                        .iter()
                        .filter(|e| filter(e) && e.pattern.matches(topic))
                        .cloned(),
                );
            }
        }
    }

    /// Keeps every target outside a group, and one member of each group, taking turns.
    fn one_per_group(&self, targets: Targets) -> Targets {
        let mut out = Targets::default();
        let mut members: Vec<Arc<SubEntry>> = Vec::new();
        for entry in targets.into_vec() {
            match &entry.group {
                None => out.extend([entry]),
                Some(_) => members.push(entry),
            }
        }
        while let Some(first) = members.first() {
            let group = first.group.clone();
            let (same, rest): (Vec<_>, Vec<_>) =
                members.into_iter().partition(|e| e.group == group);
            members = rest;
            let turn = group
                .as_ref()
                .and_then(|g| self.groups.get(g))
                .map_or(0, |(_, turn)| turn.fetch_add(1, Ordering::Relaxed));
            out.extend([same[turn % same.len()].clone()]);
        }
        if let Targets::Many(many) = &mut out {
            many.sort_unstable_by_key(|e| e.seq);
        }
        out
    }
}

/// The subscriptions an event goes to. Most events match one subscription, which
/// needs no allocation.
#[derive(Default)]
pub(crate) enum Targets {
    #[default]
    None,
    One(Arc<SubEntry>),
    Many(Vec<Arc<SubEntry>>),
}

impl Targets {
    fn into_vec(self) -> Vec<Arc<SubEntry>> {
        match self {
            Self::None => Vec::new(),
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        }
    }

    pub(crate) fn as_slice(&self) -> &[Arc<SubEntry>] {
        match self {
            Self::None => &[],
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }
}

impl Extend<Arc<SubEntry>> for Targets {
    fn extend<I: IntoIterator<Item = Arc<SubEntry>>>(&mut self, iter: I) {
        for entry in iter {
            *self = match std::mem::take(self) {
                Self::None => Self::One(entry),
                Self::One(first) => Self::Many(vec![first, entry]),
                Self::Many(mut many) => {
                    many.push(entry);
                    Self::Many(many)
                }
            };
        }
    }
}
