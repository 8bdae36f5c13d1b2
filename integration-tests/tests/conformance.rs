//! The conformance suite, once per backend. Adding a backend is one line.

use integration_tests::conformance_suite;

conformance_suite!(memory, integration_tests::factories::memory);
conformance_suite!(redis, integration_tests::factories::redis);
conformance_suite!(postgres, integration_tests::factories::postgres);
conformance_suite!(
    redis_streams,
    integration_tests::factories::redis_streams,
    durable
);
conformance_suite!(nats, integration_tests::factories::nats);

/// The PostgreSQL durable mode runs every case except three that test pub/sub-only
/// behaviour: a dead-letter *topic* (durable dead letters go to the group's
/// dead-letter table instead), a local queue that drops on overflow, and 200 events
/// queued locally behind a blocked handler (durable events wait on the server: a
/// claimer keeps at most one claim batch in flight, and nothing is dropped).
mod postgres_table {
    integration_tests::conformance_suite!(@cases integration_tests::factories::postgres_table;
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
        lifecycle::cancel_from_a_handler_never_waits_for_a_slot,
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
        subscriptions::group_members_share_the_events,
    );
}
