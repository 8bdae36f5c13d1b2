//! The conformance suite: the executable form of the `EventBus` contract. Every case is
//! a small generic function taking a backend [`Factory`]; the
//! [`conformance_suite!`](crate::conformance_suite) macro instantiates all of them for
//! one backend, so a failure reads `redis::cancel_stops_delivery`.

pub mod delivery;
pub mod failures;
pub mod flush;
pub mod lifecycle;
pub mod ordering;
pub mod patterns;
pub mod subscriptions;
pub mod wire;

use std::sync::Arc;

use multibus::{DispatcherConfig, Event, EventBus, EventBusExt, EventType};
use serde_json::json;

use tokio::sync::Semaphore;

use crate::{
    factories::Factory,
    support::{Recorder, namespace},
};

/// Dispatcher settings for the suite: short timeouts so failure cases finish quickly.
pub fn test_dispatcher() -> DispatcherConfig {
    DispatcherConfig {
        handler_timeout_seconds: 0.3,
        consumer_error_sleep_seconds: 0.5,
        metrics_log_interval_seconds: 0.0,
        shutdown_timeout_seconds: 5.0,
        ..DispatcherConfig::default()
    }
}

/// Like [`test_dispatcher`] with a long handler timeout, for cases that hold a handler
/// at a gate while they set up a backlog.
pub fn patient_dispatcher() -> DispatcherConfig {
    DispatcherConfig {
        handler_timeout_seconds: 30.0,
        ..test_dispatcher()
    }
}

/// A fresh namespace and a bus in it, with [`test_dispatcher`] settings.
pub async fn bus(factory: Factory) -> (String, Arc<dyn EventBus>) {
    bus_with(factory, test_dispatcher()).await
}

/// A fresh namespace and a bus in it, with `dispatcher` settings.
pub async fn bus_with(
    factory: Factory,
    dispatcher: DispatcherConfig,
) -> (String, Arc<dyn EventBus>) {
    let ns = namespace();
    let bus = factory(ns.clone(), dispatcher).await;
    (ns, bus)
}

/// An event on `topic` whose payload is `n`.
pub fn event(topic: impl Into<String>, n: u64) -> Event {
    Event::new(EventType::Created, topic, json!(n))
}

/// Subscribes a recorder behind a gate that lets one call through per permit.
pub async fn gated(bus: &dyn multibus::EventBus, pattern: &str) -> (Recorder, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let r = Recorder::new();
    let (g, inner) = (gate.clone(), r.handler());
    bus.subscribe(pattern, move |e: Event| {
        let g = g.clone();
        let fut = multibus::Handler::call(&inner, e);
        async move {
            let _ = g.acquire().await.map(|p| p.forget());
            fut.await
        }
    })
    .await
    .unwrap();
    (r, gate)
}

/// Instantiates the conformance cases for one backend as `#[tokio::test]`s in a module
/// named after it: `conformance_suite!(memory, integration_tests::factories::memory);`
/// runs every case; `conformance_suite!(name, factory, also: [module::case, ...])` runs the
/// cases every mode shares plus the listed ones (durable modes).
#[macro_export]
macro_rules! conformance_suite {
    // Every case: the pub/sub backends.
    ($backend:ident, $factory:path) => {
        $crate::conformance_suite!($backend, $factory, also: [
            lifecycle::cancel_from_a_handler_never_waits_for_a_slot,
            ordering::fifo_at_equal_priority,
            subscriptions::dead_letters_receive_exactly_the_poison_events,
            subscriptions::group_members_share_the_events,
            subscriptions::per_subscription_options_override_the_bus,
        ]);
    };
    // The cases every mode runs, and `also` these. Durable modes leave out what only a
    // bus-side queue does; the call site says which and why.
    ($backend:ident, $factory:path, also: [$($module:ident :: $case:ident),* $(,)?]) => {
        mod $backend {
            $crate::conformance_suite!(@cases $factory;
                delivery::delivers_to_every_matching_subscription_and_no_other,
                delivery::overlapping_subscriptions_each_get_one_delivery,
                delivery::subscription_is_live_when_subscribe_returns,
                delivery::no_replay_of_earlier_events,
                delivery::publish_batch_delivers_in_order,
                delivery::publish_does_not_wait_for_handlers,
                patterns::pattern_table_matches_like_the_core,
                patterns::invalid_topics_and_patterns_are_rejected,
                lifecycle::cancel_stops_delivery,
                lifecycle::cancel_waits_for_a_running_handler,
                lifecycle::handler_can_cancel_its_own_subscription,
                lifecycle::dropping_a_subscription_keeps_it_alive,
                lifecycle::closed_bus_rejects_publish_and_subscribe,
                lifecycle::handler_can_close_the_bus,
                lifecycle::close_drains_accepted_events,
                lifecycle::idle_bus_counts_no_reconnects_or_errors,
                flush::flush_waits_for_a_follow_up_event,
                flush::flush_waits_for_a_chain_of_follow_ups,
                ordering::more_urgent_first_under_backlog,
                failures::slow_handler_times_out_and_counts,
                failures::auto_unsubscribe_after_consecutive_failures,
                failures::success_resets_the_failure_count,
                failures::panicking_handler_is_isolated,
                failures::slow_subscription_does_not_delay_others,
                wire::every_field_round_trips_with_unicode,
                wire::one_mebibyte_payload_is_delivered,
                subscriptions::retry_succeeds_on_attempt_n_after_its_backoff,
                subscriptions::panics_and_timeouts_are_retried,
                subscriptions::removal_after_consecutive_final_failures,
                subscriptions::pause_then_resume,
                subscriptions::stream_receives_in_order,
                subscriptions::dropping_a_stream_unsubscribes,
                $($module :: $case,)*
            );
        }
    };
    (@cases $factory:path; $($module:ident :: $case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$module::$case($factory).await;
            }
        )*
    };
}
