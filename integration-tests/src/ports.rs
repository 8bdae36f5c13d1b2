//! Free loopback ports for the private servers tests start.
//!
//! A port the kernel reports free is released before the server binds it, and the
//! kernel may report the same port again to a test running at the same time. Ports are
//! therefore handed out at most once per test process, so two private servers of one
//! test binary never race for the same port.

use std::{
    collections::HashSet,
    sync::{Mutex, OnceLock},
};

static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();

/// A free loopback port that no other caller in this process has been given.
///
/// # Panics
/// If no port can be bound.
pub fn free_port() -> u16 {
    let handed_out = HANDED_OUT.get_or_init(Mutex::default);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        // A poisoned lock only means another test panicked while inserting; the set
        // itself is still a valid set of ports.
        let mut set = handed_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.insert(port) {
            return port;
        }
    }
}
