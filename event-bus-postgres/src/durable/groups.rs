//! Consumer groups in one bus: registering a group on the server, one claimer per group
//! shared by the bus's members of it, and removing members (and a subscription's own
//! group) when they end.

use std::sync::{Arc, Mutex};

use event_bus_core::{Dispatcher, Error, Pattern, SubscriptionId};
use tokio::sync::{Notify, watch};

use super::{Durable, GroupRun, claimer::Claimer, lock, regex, settle::Held};

impl Durable {
    /// Registers the group of subscription `id` and starts its claimer.
    pub(crate) async fn start(
        &self,
        dispatcher: &Dispatcher,
        id: SubscriptionId,
        pattern: &Pattern,
        group: Option<&str>,
        max_attempts: u32,
    ) -> Result<(), Error> {
        self.ensure_schema().await?;
        let ephemeral = group.is_none();
        let group: Arc<str> = match group {
            Some(g) => g.into(),
            None => format!("_sub_{id}").into(),
        };
        let regex = regex::pattern_regex(pattern);
        let name: &str = &group;
        let source = pattern.as_str();
        let attempts = i32::try_from(max_attempts).unwrap_or(i32::MAX);
        let rows = self
            .shared
            .publish
            .query_prepared(
                "registering a consumer group",
                &self.shared.sql.register,
                &[&name, &source, &regex, &attempts],
            )
            .await
            .map_err(|e| Error::connection("registering a consumer group", e.source))?;
        let before: Option<String> = rows.first().and_then(|r| r.try_get(0).ok()).flatten();
        if before.as_deref().is_some_and(|p| p != source) {
            tracing::warn!(group = name, old = ?before, new = source, "consumer group pattern changed");
        }
        lock(&self.subscriptions).insert(id, group.clone());
        let mut groups = lock(&self.groups);
        if let Some(run) = groups.get(&group).filter(|r| !r.task.is_finished()) {
            lock(&run.members).push(id);
        } else {
            let run = self.spawn_claimer(dispatcher, id, &group, ephemeral);
            groups.insert(group, run);
        }
        drop(groups);
        self.start_maintenance();
        Ok(())
    }

    /// Starts the claimer of `group` in this bus, with `first` as its one member.
    fn spawn_claimer(
        &self,
        dispatcher: &Dispatcher,
        first: SubscriptionId,
        group: &Arc<str>,
        ephemeral: bool,
    ) -> GroupRun {
        let counters = lock(&self.counters)
            .entry(group.clone())
            .or_default()
            .clone();
        let wake = Arc::new(Notify::new());
        lock(&self.wakers)
            .entry(group.clone())
            .or_default()
            .push(Arc::downgrade(&wake));
        let (passes, passes_rx) = watch::channel(0);
        let members = Arc::new(Mutex::new(vec![first]));
        let held = Arc::new(Held::default());
        let claimer = Claimer {
            shared: self.shared.clone(),
            dispatcher: dispatcher.clone(),
            members: members.clone(),
            group: group.clone(),
            wake: wake.clone(),
            counters,
            passes,
            held: held.clone(),
        };
        GroupRun {
            held,
            members,
            ephemeral,
            task: tokio::spawn(claimer.run()),
            wake,
            passes: passes_rx,
        }
    }

    /// Removes subscription `id` from its group here; the group's claimer stops with
    /// its last member, and a subscription's own group goes with it (its undelivered
    /// rows too). Rows claimed and not settled are claimed again after their lease.
    pub(crate) async fn release(&self, id: SubscriptionId) {
        let Some(group) = lock(&self.subscriptions).remove(&id) else {
            return;
        };
        let ended = {
            let mut groups = lock(&self.groups);
            let last = groups.get(&group).is_some_and(|run| {
                let mut members = lock(&run.members);
                members.retain(|m| *m != id);
                members.is_empty()
            });
            if last { groups.remove(&group) } else { None }
        };
        let Some(run) = ended else {
            return;
        };
        run.task.abort();
        if run.ephemeral {
            let name: &str = &group;
            if let Err(e) = self.drop_group(name).await {
                tracing::debug!(group = name, error = %e, "removing a subscription's own group failed");
            }
        }
    }

    pub(super) async fn drop_group(&self, name: &str) -> Result<(), Error> {
        let sql = &self.shared.sql;
        for stmt in [&sql.drop_group, &sql.drop_group_rows] {
            self.shared
                .publish
                .execute_prepared("removing a consumer group", stmt, &[&name])
                .await
                .map_err(|e| Error::connection("removing a consumer group", e.source))?;
        }
        Ok(())
    }
}
