//! A fixed-size latency histogram: 64 buckets per power of two (values within 1.6 %),
//! so recording costs one atomic add and memory does not grow with the event count.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Sub-buckets per power of two.
const SUB: u64 = 64;
/// Buckets for every `u64`: values below `2 * SUB` exactly, then `SUB` per power of two
/// up to 2^64.
const BUCKETS: usize = (SUB as usize) * (64 - 5);

/// Counts of values (nanoseconds) by bucket, and the exact maximum.
pub(crate) struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("len", &self.len())
            .field("max", &self.max())
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

fn index(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let shift = 63 - u64::from(v.leading_zeros()) - 6;
    (SUB * (shift + 1) + ((v >> shift) - SUB)) as usize
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let low = (i % SUB + SUB) << shift;
    low + (1 << shift) / 2
}

impl Histogram {
    /// Records one value.
    pub(crate) fn record(&self, v: u64) {
        self.counts[index(v)].fetch_add(1, Relaxed);
        self.max.fetch_max(v, Relaxed);
    }

    /// Adds the counts of `other`.
    pub(crate) fn add(&self, other: &Self) {
        for (into, from) in self.counts.iter().zip(other.counts.iter()) {
            into.fetch_add(from.load(Relaxed), Relaxed);
        }
        self.max.fetch_max(other.max.load(Relaxed), Relaxed);
    }

    /// Values recorded.
    pub(crate) fn len(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The value at quantile `q` (0 to 1), within 1.6 %; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        let total = self.len();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count.load(Relaxed);
            if seen >= rank {
                return value(i).min(self.max());
            }
        }
        self.max()
    }

    /// The largest value recorded, exactly.
    pub(crate) fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_two_percent() {
        for v in [
            0,
            1,
            127,
            128,
            129,
            1_000,
            33_333,
            1_000_000,
            123_456_789,
            u64::MAX / 3,
        ] {
            let got = value(index(v));
            let error = (got as f64 - v as f64).abs() / (v as f64).max(1.0);
            assert!(error <= 1.0 / 64.0, "{v} -> {got}");
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_of_a_uniform_spread() {
        let h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1_000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5_000_000.0).abs() / 5_000_000.0 < 0.02, "{p50}");
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(h.len(), 10_000);
    }
}
