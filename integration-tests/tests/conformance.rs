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
