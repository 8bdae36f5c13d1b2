//! Test support shared by the conformance suite, the backend fault tests and the CLI
//! tests: finding (or starting) the servers, unique namespaces, waiting on conditions,
//! recording handlers, log capture, a fault-injecting TCP proxy, crash-test consumer
//! processes, one factory per backend,
//! and the conformance cases themselves.

pub mod conformance;
pub mod crash_worker;
pub mod factories;
pub mod log_capture;
pub mod nats_server;
pub mod ports;
pub mod postgres_server;
pub mod proxy;
pub mod redis_server;
pub mod servers;
pub mod support;
