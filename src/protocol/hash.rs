//! A fixed (unseeded) hasher for integer keys such as client ids.
//!
//! FxHash multiplies by one constant: for runs of consecutive ids, which is
//! exactly what client ids are, the bits hashbrown indexes with cluster and
//! probe sequences grow long (the measurement is in `perf/RESULTS.md`,
//! "Before fed4359"). A full 64-bit finaliser (splitmix64's) spreads
//! every input bit over every output bit. No random state: the core must be
//! deterministic.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only integer keys use this hasher; fold anything else in anyway.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        let mut z = (self.0 ^ x).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.0 = z ^ (z >> 31);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by integer ids, deterministic and well spread.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
