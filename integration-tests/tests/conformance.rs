//! The conformance suite, once per backend. Adding a backend is one line.

use integration_tests::conformance_suite;

conformance_suite!(memory, integration_tests::factories::memory);
conformance_suite!(redis, integration_tests::factories::redis);
conformance_suite!(postgres, integration_tests::factories::postgres);
conformance_suite!(nats, integration_tests::factories::nats);

// The Redis durable mode leaves out what only a bus-side queue does: overflow policies
// (a durable subscription leaves what its queue cannot take on the server) and
// round-robin group shares (durable members share by whoever reads first).
conformance_suite!(redis_streams, integration_tests::factories::redis_streams, also: [
    ordering::fifo_at_equal_priority,
    subscriptions::dead_letters_receive_exactly_the_poison_events,
]);

// The PostgreSQL durable mode leaves out three pub/sub-only behaviours: a dead-letter
// *topic* (durable dead letters go to the group's dead-letter table instead), a local
// queue that drops on overflow, and 200 events queued locally behind a blocked handler
// (durable events wait on the server: a claimer keeps at most one claim batch in flight,
// and nothing is dropped).
conformance_suite!(postgres_table, integration_tests::factories::postgres_table, also: [
    lifecycle::cancel_from_a_handler_never_waits_for_a_slot,
    subscriptions::group_members_share_the_events,
]);

// The NATS durable mode runs what the Redis durable mode runs, for the same reasons:
// a durable subscription leaves what its queue cannot take on the server, and members
// of a group share by whoever pulls first.
conformance_suite!(nats_jetstream, integration_tests::factories::nats_jetstream, also: [
    ordering::fifo_at_equal_priority,
    subscriptions::dead_letters_receive_exactly_the_poison_events,
]);
