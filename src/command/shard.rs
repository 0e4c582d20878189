//! Which shard owns a key, and the hash behind it.
//!
//! Clients and servers must agree on `shard_of`, so it is part of the wire
//! contract, but it lives here, below the protocol, because the KV store's
//! digest shares its hash and neither should import `wire/`.

/// The shard that owns `key` among `shards`: FNV-1a, then a multiplicative
/// mix so that keys differing only in their last byte spread. Clients and
/// servers must agree on it, so it is part of the wire format.
pub fn shard_of(key: &[u8], shards: usize) -> usize {
    debug_assert!(shards > 0);
    if shards == 1 {
        return 0;
    }
    let h = fnv1a(FNV_OFFSET_BASIS, key);
    let mixed = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    ((mixed >> 32) % shards as u64) as usize
}

/// FNV-1a's starting value.
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of `bytes`, continuing from `h` (`FNV_OFFSET_BASIS` to start).
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_shards() {
        let mut count = [0usize; 4];
        for i in 0..4000u32 {
            count[shard_of(format!("key{i}").as_bytes(), 4)] += 1;
        }
        assert!(count.iter().all(|&c| c > 800), "{count:?}");
        assert_eq!(shard_of(b"anything", 1), 0);
    }
}
