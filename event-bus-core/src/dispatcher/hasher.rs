//! A fast, fixed-key hasher for the subscription index.
//!
//! The index's keys are the application's own subscription topics; published topics
//! only look them up. An attacker choosing published topics can therefore not fill the
//! table with colliding keys, so a keyed (DoS-resistant) hash buys nothing here and
//! would cost more than the rest of the lookup.

use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a, 64-bit.
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Builds [`Fnv`] hashers.
pub(crate) type FnvBuild = BuildHasherDefault<Fnv>;
