//! Memory per key and the slowest insert of the KV store, for issue 15's
//! budget (at most 64 bytes per key for 16-byte keys and values): N PUTs of
//! distinct 16-byte keys with 16-byte values into one store, RSS read from
//! /proc/self/statm before and after, each PUT timed.
//!
//! `cargo run --release --example kv_bytes -- 1000000`
//! `cargo run --release --example kv_bytes -- 10000000 --old`
//! `MIMALLOC_PURGE_DELAY=-1 cargo run --release --example kv_bytes -- 10000000 --warm`
//!
//! `--old` measures the store issue 15 replaced instead: a hash map of inline
//! keys and values (`FxHashMap<InlineKey, Value>`), filled as its `apply` did.
//! The allocator is the server's (mimalloc).
//!
//! The slowest insert includes whatever else the machine did meanwhile:
//! faulting in fresh memory (2 MiB at a time where mimalloc asks for huge
//! pages, milliseconds each on a virtual machine) and other processes. For
//! scale, the timing loop alone is measured first. `--warm` separates the
//! store's own stalls: it fills and drops a store three times, reusing the
//! memory of the first (`MIMALLOC_PURGE_DELAY=-1` keeps mimalloc from handing
//! it back), and reports as the repeatable stall the slowest insert of the
//! second fill timed again in the third, the shorter of its two times, which
//! a one-off interruption does not survive. RSS means nothing there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use epaxos_fast::command::{CommandRef, Op};
use epaxos_fast::state_machine::{InlineKey, KvStore, StateMachine, Value};
use rustc_hash::FxHashMap;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 16;
const USAGE: &str = "usage: kv_bytes KEYS [--old] [--warm]";

/// Inserts slower than this are remembered, by number, to be compared
/// across fills.
const SLOW_US: u128 = 5;

fn main() {
    let (mut keys, mut old, mut warm) = (None, false, false);
    for arg in std::env::args().skip(1) {
        match (arg.as_str(), arg.parse::<u64>()) {
            ("--old", _) => old = true,
            ("--warm", _) => warm = true,
            (_, Ok(n)) if n > 0 && keys.is_none() => keys = Some(n),
            _ => {
                eprintln!("{USAGE}  (bad argument {arg:?})");
                std::process::exit(2)
            }
        }
    }
    let Some(keys) = keys else {
        eprintln!("{USAGE}");
        std::process::exit(2)
    };
    let mut sum = 0u64;
    let alone = time_inserts(keys, false, |key, _| {
        sum = sum.wrapping_add(u64::from(key[0]))
    });
    std::hint::black_box(sum);
    println!(
        "timing loop alone: slowest {} us, over 1 ms: {}",
        alone.slowest.as_micros(),
        alone.over_1ms
    );
    let fill = if old { fill_old } else { fill_new };
    if !warm {
        fill(keys, true, false);
        return;
    }
    fill(keys, false, false);
    let (second, third) = (fill(keys, true, true), fill(keys, false, true));
    let repeatable = second
        .slow
        .iter()
        .filter_map(|(i, &t)| third.slow.get(i).map(|&u| (t.min(u), *i)))
        .max();
    match repeatable {
        Some((t, i)) => println!(
            "  repeatable stall: {} us (insert {i}, timed in two fills)",
            t.as_micros()
        ),
        None => println!("  repeatable stall: none over {SLOW_US} us"),
    }
}

fn fill_old(keys: u64, report: bool, remember: bool) -> Fill {
    let mut map: FxHashMap<InlineKey, Value> = FxHashMap::default();
    let before = rss_bytes();
    let fill = time_inserts(keys, remember, |key, value| {
        map.insert(InlineKey::from_slice(key), Value::from_slice(value));
    });
    assert_eq!(map.len() as u64, keys);
    if report {
        fill.report("old (FxHashMap<InlineKey, Value>)", keys, before);
    }
    fill
}

fn fill_new(keys: u64, report: bool, remember: bool) -> Fill {
    let mut kv = KvStore::new();
    let before = rss_bytes();
    let fill = time_inserts(keys, remember, |key, value| {
        let cmd = CommandRef {
            client: 1,
            request: 1,
            first_outstanding: 1,
            op: Op::Put,
            key,
            value,
        };
        kv.apply(&cmd);
    });
    let s = kv.stats();
    assert_eq!(s.keys as u64, keys);
    if report {
        fill.report("new (KvStore)", keys, before);
        let per_key = |bytes: usize| bytes as f64 / keys as f64;
        println!(
            "  arena {:.1} B/key live in {} MiB of chunks; index {:.1} B/key \
             ({} buckets of 7 B, load {:.2}); accounted {:.1} B/key; \
             largest rehash {} entries",
            per_key(s.arena_live_bytes),
            s.arena_chunk_bytes >> 20,
            per_key(s.index_buckets * 7),
            s.index_buckets,
            s.keys as f64 / s.index_buckets as f64,
            per_key(s.arena_live_bytes + s.index_buckets * 7),
            s.rehash_entries_max
        );
    }
    fill
}

/// What timing one fill found.
struct Fill {
    after_rss: usize,
    timed: Duration,
    slowest: Duration,
    slowest_at: u64,
    over_100us: u64,
    over_1ms: u64,
    /// Inserts over `SLOW_US`, by number.
    slow: HashMap<u64, Duration>,
}

impl Fill {
    fn report(&self, name: &str, keys: u64, before_rss: usize) {
        let grown = self.after_rss.saturating_sub(before_rss);
        println!(
            "{name}: {keys} keys of {KEY_BYTES} B, values of {VALUE_BYTES} B: \
             RSS {} -> {} MiB, {:.1} B/key",
            before_rss >> 20,
            self.after_rss >> 20,
            grown as f64 / keys as f64
        );
        println!(
            "  inserts {:.0} ns each; slowest {} us (insert {}); \
             over 100 us: {}, over 1 ms: {}",
            self.timed.as_nanos() as f64 / keys as f64,
            self.slowest.as_micros(),
            self.slowest_at,
            self.over_100us,
            self.over_1ms
        );
    }
}

/// Inserts `keys` distinct keys through `insert`, timing each, and
/// remembering the slow ones if asked (which takes memory: not while RSS
/// is measured).
fn time_inserts(keys: u64, remember: bool, mut insert: impl FnMut(&[u8], &[u8])) -> Fill {
    let mut fill = Fill {
        after_rss: 0,
        timed: Duration::ZERO,
        slowest: Duration::ZERO,
        slowest_at: 0,
        over_100us: 0,
        over_1ms: 0,
        slow: HashMap::new(),
    };
    for i in 0..keys {
        let (key, value) = (key_of(i), value_of(i));
        let t = Instant::now();
        insert(&key, &value);
        let took = t.elapsed();
        fill.timed += took;
        fill.over_100us += u64::from(took > Duration::from_micros(100));
        fill.over_1ms += u64::from(took > Duration::from_millis(1));
        if took > fill.slowest {
            (fill.slowest, fill.slowest_at) = (took, i);
        }
        if remember && took.as_micros() > SLOW_US {
            fill.slow.insert(i, took);
        }
    }
    fill.after_rss = rss_bytes();
    fill
}

/// Distinct for every `i`: the low half is `i` itself; the high half (a
/// bijection of it) spreads the bytes a hash sees first.
fn key_of(i: u64) -> [u8; KEY_BYTES] {
    let mut key = [0; KEY_BYTES];
    key[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    key[8..].copy_from_slice(&i.to_le_bytes());
    key
}

fn value_of(i: u64) -> [u8; VALUE_BYTES] {
    let mut value = [0; VALUE_BYTES];
    value[..8].copy_from_slice(&i.to_be_bytes());
    value
}

/// Resident bytes of this process: /proc/self/statm's second field, in pages.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm's resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page).expect("a page size")
}
