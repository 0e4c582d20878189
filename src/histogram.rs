//! Fixed-bucket histograms: how many values fell at or below each of a fixed
//! list of bounds, and their sum. Plain counters in a fixed array, so the
//! core, the node and the runtime can keep one without allocating, copy it
//! (`Copy`), and the metrics endpoint can publish it as Prometheus buckets.
//!
//! Pure: no clock, no IO. A value's unit is the scale's (`Nanos`: time in
//! nanoseconds; `Commands`: a count). It imports nothing of the crate but
//! `constants`, so the protocol core may use it.

use std::marker::PhantomData;

/// Most buckets a scale may have (the last one catches everything).
pub const BUCKETS_MAX: usize = 20;

/// A list of bucket bounds: ascending, the last one `u64::MAX` (Prometheus's
/// `+Inf`), at most `BUCKETS_MAX`.
pub trait Scale: Copy + Default + std::fmt::Debug + PartialEq + Eq {
    const BOUNDS: &'static [u64];
}

/// Latencies, in nanoseconds: 25 µs to 10 s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nanos;

impl Scale for Nanos {
    const BOUNDS: &'static [u64] = &[
        25_000,
        50_000,
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
        10_000_000_000,
        u64::MAX,
    ];
}

/// Commands in one instance: powers of two up to `BATCH_COMMANDS_MAX`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Commands;

impl Scale for Commands {
    const BOUNDS: &'static [u64] = &[
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        1024,
        2048,
        4096,
        u64::MAX,
    ];
}

const fn valid(bounds: &[u64]) -> bool {
    if bounds.is_empty() || bounds.len() > BUCKETS_MAX || bounds[bounds.len() - 1] != u64::MAX {
        return false;
    }
    let mut i = 1;
    while i < bounds.len() {
        if bounds[i - 1] >= bounds[i] {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = assert!(valid(Nanos::BOUNDS) && valid(Commands::BOUNDS));
const _: () = assert!(
    Commands::BOUNDS[Commands::BOUNDS.len() - 2] == crate::constants::BATCH_COMMANDS_MAX as u64
);

/// Counts per bucket (not cumulative) and the sum of every value recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram<S: Scale> {
    counts: [u64; BUCKETS_MAX],
    sum: u64,
    scale: PhantomData<S>,
}

impl<S: Scale> Histogram<S> {
    /// Counts `value` in the first bucket whose bound is at or above it.
    pub fn record(&mut self, value: u64) {
        let i = S::BOUNDS.partition_point(|&b| b < value);
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    /// The bucket bounds, the last `u64::MAX`.
    pub fn bounds(&self) -> &'static [u64] {
        S::BOUNDS
    }

    /// Values per bucket, in the order of `bounds` (not cumulative).
    pub fn counts(&self) -> &[u64] {
        &self.counts[..S::BOUNDS.len()]
    }

    /// Sum of the values recorded (saturating).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_lands_in_the_first_bucket_at_or_above_it() {
        let mut h = Histogram::<Commands>::default();
        for v in [0, 1, 2, 3, 4096, 4097, u64::MAX] {
            h.record(v);
        }
        let c = h.counts();
        assert_eq!(c.len(), Commands::BOUNDS.len());
        assert_eq!((c[0], c[1], c[2]), (2, 1, 1), "0 and 1 | 2 | 3");
        assert_eq!(c[12], 1, "4096 at its bound");
        assert_eq!(c[13], 2, "past the last finite bound");
        assert_eq!(h.count(), 7);
        assert_eq!(h.sum(), u64::MAX, "saturates");
    }

    #[test]
    fn latencies_use_nanoseconds() {
        let mut h = Histogram::<Nanos>::default();
        h.record(30_000); // 30 µs
        h.record(2_000_000_000); // 2 s
        assert_eq!(h.counts()[1], 1);
        assert_eq!(h.counts()[15], 1);
        assert_eq!(h.sum(), 2_000_030_000);
    }
}
