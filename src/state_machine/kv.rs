//! The key-value store: GET, PUT and DELETE on byte-string keys and values.
//!
//! It must stay small per key and must never stop the shard to grow (issue
//! 15: at most 64 bytes of memory per key for 16-byte keys and values, and no
//! insert that rehashes or copies more than a sliver of the store). Hence:
//!
//! - **Records in an arena.** A key is one record: a 4-byte `Header`, the
//!   key, the value, padded to 4 bytes. Records are appended to 4 MiB chunks;
//!   growth allocates a chunk and never moves the old ones, and no key costs
//!   an allocation of its own.
//! - **An index in [`SEGMENTS`] segments.** The key's hash picks a segment,
//!   a hashbrown table of 6-byte entries: the record's place and 16 more hash
//!   bits. Segments grow on their own, so an insert rehashes at most one of
//!   them (about 1/4096 of the keys); the table's hash is rebuilt from the 16
//!   stored bits, so a rehash reads no record; and the bits spare a lookup
//!   the cache miss of reading a record whose key cannot match. Segments
//!   differ in size so that they do not all double at once (see
//!   `SEGMENT_GROUPS`).
//! - **Large values aside.** Values over [`VALUE_ARENA_BYTES_MAX`] stay
//!   `Bytes` in a slab, the record holding the index, so a GET of one bumps a
//!   reference count instead of copying. A GET of a small one copies it into
//!   a [`Value`]: cheaper than 32 bytes of `Bytes` and an allocation per value.
//! - **Overwrites in place, compaction in steps.** A PUT whose value fits its
//!   record's capacity writes over the old value; otherwise the record moves
//!   to the arena's end and the old one is marked dead. A chunk whose live
//!   bytes fall to 3/4 is queued, and each write scans at most
//!   [`COMPACT_STEP_BYTES`] of the oldest queued chunk, moving its live
//!   records to the end, and frees it once scanned. The arena so stays within
//!   about 4/3 of its live bytes whatever the mix of overwrites and deletes,
//!   and no write pays for more than one step.
//!
//! The budget for 16-byte keys and values: a 36-byte record, plus 7 bytes (an
//! entry and its control byte) per bucket, at a load that swings between
//! 7/16 and 7/8 in each segment but stays near 0.6 over the store: about 48
//! bytes per key, and 50 to 55 of RSS with the allocator's rounding and huge
//! pages. `examples/kv_bytes.rs` measures it, and the map of inline keys and
//! values this replaced (over 300).
//!
//! Limits: 16 GiB of arena per store ([`ARENA_CHUNKS_MAX`] chunks), past which
//! a PUT panics, on every replica alike.
//!
//! Everything is deterministic (a fixed hash, no random state): replicas lay
//! out the same store from the same commands, though only the digest, which
//! does not depend on the layout, is observable.

use std::collections::VecDeque;
use std::hash::Hasher;

use bytes::Bytes;
use hashbrown::HashTable;
use rustc_hash::FxHasher;

use super::{Access, StateMachine};
use crate::command::{fnv1a, FNV_OFFSET_BASIS};
use crate::command::{CommandRef, Op};
use crate::constants::KEY_BYTES_MAX;

/// The result of one KV command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvResult {
    /// A PUT took effect, or a DELETE removed a value.
    Done,
    /// A GET found this value.
    Value(Value),
    /// A GET found no value, or a DELETE had none to remove.
    NotFound,
    /// An INCR's sum, now the key's value.
    Integer(i64),
    /// A conditional PUT whose condition failed: nothing changed.
    NotDone,
    /// An INCR found a value that is not a decimal i64, or the sum would
    /// overflow: nothing changed.
    NotAnInteger,
}

/// Longest decimal text of an i64: "-9223372036854775808".
const I64_TEXT_BYTES_MAX: usize = 20;

/// The value as an integer, by Redis's rules (`string2ll`): decimal
/// digits with an optional leading '-', no '+', no spaces, no leading
/// zeros ("0" itself aside), within i64.
fn parse_i64(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > I64_TEXT_BYTES_MAX {
        return None;
    }
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.first().is_none_or(|d| !(b'1'..=b'9').contains(d)) {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(d - b'0');
        // Accumulate negatively: i64::MIN has no positive counterpart.
        n = n.checked_mul(10)?.checked_sub(digit)?;
    }
    if negative {
        Some(n)
    } else {
        n.checked_neg()
    }
}

/// `n` as decimal text in `buf`; returns the text's length.
fn format_i64(n: i64, buf: &mut [u8; I64_TEXT_BYTES_MAX]) -> usize {
    let mut digits = [0u8; I64_TEXT_BYTES_MAX];
    let mut len = 0;
    let mut rest = n.unsigned_abs();
    loop {
        digits[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut at = 0;
    if n < 0 {
        buf[0] = b'-';
        at = 1;
    }
    for i in 0..len {
        buf[at + i] = digits[len - 1 - i];
    }
    at + len
}

/// Longest value a [`Value`] holds inline.
pub const VALUE_INLINE_BYTES_MAX: usize = 30;

/// Longest value kept in the arena; longer ones are shared `Bytes`. Past a
/// few hundred bytes, the copy a GET makes costs more than the `Bytes`.
pub const VALUE_ARENA_BYTES_MAX: usize = 256;

/// Index segments, picked by a key's hash: the most entries one insert
/// rehashes is about three times the key count divided by this.
pub const SEGMENTS: usize = SEGMENT_GROUPS * GROUP_SEGMENTS;

/// Segments come in groups, group `g` taking a share of the keys that grows
/// as 2^(g/16), so that segment sizes spread evenly over four doublings.
/// Were the segments all alike, they would double their tables at the same
/// key count: the index's bytes per key would swing by two with the store's
/// size, and the tables they freed, of a size no segment asks for again,
/// would stay resident. Spread out, segments double one after another, the
/// load stays near its average, and a table one frees is taken by another
/// growing into that size.
const SEGMENT_GROUPS: usize = 64;
const GROUP_SEGMENTS: usize = 64;
const GROUPS_PER_OCTAVE: u32 = 16;

/// Where group `g` starts among the hash's top 32 bits: 2^32 times the
/// groups' cumulative share, (2^(g/16) - 1) / (2^4 - 1).
const GROUP_STARTS: [u32; SEGMENT_GROUPS] = group_starts();

const fn group_starts() -> [u32; SEGMENT_GROUPS] {
    // 2^(g/16) in 32.32 fixed point, by repeated multiplication.
    const ROOT: u128 = 4_485_121_744; // 2^(1/16) * 2^32, rounded
    const ONE: u128 = 1 << 32;
    let octaves = SEGMENT_GROUPS as u32 / GROUPS_PER_OCTAVE;
    let (mut starts, mut x, mut g) = ([0; SEGMENT_GROUPS], ONE, 0);
    while g < SEGMENT_GROUPS {
        starts[g] = ((x - ONE) / ((1 << octaves) - 1)) as u32;
        x = (x * ROOT) >> 32;
        g += 1;
    }
    starts
}

/// One arena chunk: much larger than a record (a chunk's tail too short for
/// the next record is wasted), and a multiple of the 2 MiB huge page, so
/// that none is shared by two chunks or with the allocator's bookkeeping
/// (at 1 MiB, that cost 9% more RSS).
pub const CHUNK_BYTES: usize = 4 << 20;

/// A place in the arena is a `u32` counting 4-byte units: 20 bits within a
/// chunk, 12 for the chunk, so a store holds at most 16 GiB of records.
const LOC_POS_BITS: u32 = 20;
pub const ARENA_CHUNKS_MAX: usize = 1 << (32 - LOC_POS_BITS);

/// A sealed chunk with at most this share of live bytes is compacted.
const CHUNK_LIVE_PERCENT_COMPACT: usize = 75;

/// Bytes of a queued chunk each write scans, at most. Scanning a chunk at
/// most 3/4 live frees a quarter of what is scanned, on average, which is
/// more than the largest record (what one write can kill), so compaction
/// keeps up with any workload.
pub const COMPACT_STEP_BYTES: usize = 8 << 10;

const RECORD_HEADER_BYTES: usize = 4;
const RECORD_BYTES_MAX: usize = record_bytes(KEY_BYTES_MAX, VALUE_ARENA_BYTES_MAX);

const _: () = assert!(CHUNK_BYTES / 4 <= 1 << LOC_POS_BITS);
const _: () = assert!(RECORD_BYTES_MAX <= CHUNK_BYTES / 64);
const _: () =
    assert!(COMPACT_STEP_BYTES * (100 - CHUNK_LIVE_PERCENT_COMPACT) / 100 >= RECORD_BYTES_MAX);
const _: () = assert!(VALUE_ARENA_BYTES_MAX > VALUE_INLINE_BYTES_MAX);
// A large value's record holds its slab index in place of the value.
const _: () = assert!(VALUE_ARENA_BYTES_MAX >= 4);

/// A stored value. Short ones live inline: making one allocates nothing and
/// a GET copies 40 bytes. Longer ones are shared by reference count.
#[derive(Clone)]
pub enum Value {
    Inline {
        len: u8,
        bytes: [u8; VALUE_INLINE_BYTES_MAX],
    },
    Shared(Bytes),
}

impl Value {
    pub fn from_slice(value: &[u8]) -> Value {
        if value.len() <= VALUE_INLINE_BYTES_MAX {
            let mut bytes = [0; VALUE_INLINE_BYTES_MAX];
            bytes[..value.len()].copy_from_slice(value);
            Value::Inline {
                len: value.len() as u8,
                bytes,
            }
        } else {
            Value::Shared(Bytes::copy_from_slice(value))
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Value::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Value::Shared(b) => b,
        }
    }
}

impl std::ops::Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Value {}

impl PartialEq<[u8]> for Value {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<str> for Value {
    fn eq(&self, other: &str) -> bool {
        self.as_slice() == other.as_bytes()
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::from_slice(s.as_bytes())
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_slice()))
    }
}

/// Where the store's memory goes, for tests and the measurement tool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    pub keys: usize,
    /// Bytes of live records in the arena.
    pub arena_live_bytes: usize,
    /// Bytes of the chunks the arena holds (pages never written stay out of
    /// RSS).
    pub arena_chunk_bytes: usize,
    /// Chunks queued for compaction or being compacted.
    pub chunks_compacting: usize,
    /// Chunks compacted and freed, ever.
    pub chunks_compacted: usize,
    /// Values kept as `Bytes`.
    pub large_values: usize,
    /// Buckets of all index segments.
    pub index_buckets: usize,
    /// Most entries one insert moved by rehashing a segment, ever.
    pub rehash_entries_max: usize,
}

impl KvStats {
    /// What the store's memory comes to, roughly: the live records and the
    /// index's buckets (an entry and a control byte each). Large values (the
    /// slab of shared `Bytes`) and unused chunk space are left out.
    pub fn memory_bytes(&self) -> usize {
        self.arena_live_bytes + self.index_buckets * (core::mem::size_of::<Entry>() + 1)
    }
}

/// An in-memory map. It owns copies of its keys and values: a value must not
/// pin the whole received batch it arrived in.
pub struct KvStore {
    segments: Box<[HashTable<Entry>]>,
    arena: Arena,
    large: Slab,
    keys: usize,
    rehash_entries_max: usize,
}

impl Default for KvStore {
    fn default() -> KvStore {
        KvStore::new()
    }
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::with_sizes(CHUNK_BYTES, COMPACT_STEP_BYTES)
    }

    /// Smaller chunks let tests reach compaction with few keys.
    fn with_sizes(chunk_bytes: usize, compact_step_bytes: usize) -> KvStore {
        KvStore {
            segments: (0..SEGMENTS).map(|_| HashTable::new()).collect(),
            arena: Arena::new(chunk_bytes, compact_step_bytes),
            large: Slab::default(),
            keys: 0,
            rehash_entries_max: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// The value of `key`, borrowed from the store.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let loc = self.find(key)?;
        Some(match self.arena.stored(loc) {
            Stored::Small(value) => value,
            Stored::Large(index) => self.large.get(index),
        })
    }

    /// A digest of the whole state, independent of insertion order: replicas
    /// that executed the same commands report the same digest. (The same sum
    /// as the hash map this store replaced reported.)
    pub fn digest(&self) -> u64 {
        let mut sum = 0u64;
        for chunk in self.arena.chunks.iter().flatten() {
            for pos in chunk.live_records() {
                let value = match chunk.stored(pos) {
                    Stored::Small(value) => value,
                    Stored::Large(index) => self.large.get(index),
                };
                let h = fnv1a(fnv1a(FNV_OFFSET_BASIS, chunk.key(pos)) ^ 0xff, value);
                sum = sum.wrapping_add(mix(h));
            }
        }
        sum
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            keys: self.keys,
            arena_live_bytes: self.arena.live_bytes,
            arena_chunk_bytes: self.arena.chunks.iter().flatten().count() * self.arena.chunk_bytes,
            chunks_compacting: self.arena.queue.len()
                + usize::from(self.arena.compacting.is_some()),
            chunks_compacted: self.arena.chunks_compacted,
            large_values: self.large.len,
            index_buckets: self.segments.iter().map(HashTable::num_buckets).sum(),
            rehash_entries_max: self.rehash_entries_max,
        }
    }

    fn find(&self, key: &[u8]) -> Option<Loc> {
        let kh = KeyHash::of(key);
        let arena = &self.arena;
        self.segments[kh.segment]
            .find(kh.table_hash(), |e| {
                e.tag == kh.tag && arena.key(e.loc()) == key
            })
            .map(Entry::loc)
    }

    fn get_value(&self, key: &[u8]) -> Option<Value> {
        let loc = self.find(key)?;
        Some(match self.arena.stored(loc) {
            Stored::Small(value) => Value::from_slice(value),
            Stored::Large(index) => Value::Shared(self.large.get(index).clone()),
        })
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        assert!(key.len() <= KEY_BYTES_MAX, "key of {} bytes", key.len());
        let kh = KeyHash::of(key);
        let KvStore {
            segments,
            arena,
            large,
            ..
        } = self;
        let table = &mut segments[kh.segment];
        let found = table.find_mut(kh.table_hash(), |e| {
            e.tag == kh.tag && arena.key(e.loc()) == key
        });
        if let Some(entry) = found {
            if let Some(moved) = overwrite(arena, large, entry.loc(), key, value) {
                entry.loc = moved.0;
            }
            return;
        }
        let stored = if value.len() > VALUE_ARENA_BYTES_MAX {
            Stored::Large(large.insert(Bytes::copy_from_slice(value)))
        } else {
            Stored::Small(value)
        };
        let loc = arena.append(key, stored);
        // hashbrown rehashes when an insert finds no growth left and takes
        // an empty bucket; it leaves growth behind it only if it did.
        let (full, moved) = (table.len() == table.capacity(), table.len());
        let entry = Entry {
            loc: loc.0,
            tag: kh.tag,
        };
        table.insert_unique(kh.table_hash(), entry, Entry::table_hash);
        if full && table.capacity() > table.len() {
            self.rehash_entries_max = self.rehash_entries_max.max(moved);
        }
        self.keys += 1;
    }

    /// Redis's INCRBY: `delta` (8 bytes, little-endian, checked when the
    /// batch was parsed) added to the value read as an integer.
    fn incr(&mut self, key: &[u8], delta: &[u8]) -> KvResult {
        let delta = i64::from_le_bytes(delta.try_into().expect("an 8-byte delta"));
        let old = match self.find(key) {
            None => Some(0),
            Some(loc) => match self.arena.stored(loc) {
                Stored::Small(text) => parse_i64(text),
                Stored::Large(_) => None, // longer than any integer's text
            },
        };
        let Some(sum) = old.and_then(|n| n.checked_add(delta)) else {
            return KvResult::NotAnInteger;
        };
        let mut text = [0u8; I64_TEXT_BYTES_MAX];
        let len = format_i64(sum, &mut text);
        self.put(key, &text[..len]);
        self.compact_step();
        KvResult::Integer(sum)
    }

    /// Removes the key's value; false if it had none.
    fn delete(&mut self, key: &[u8]) -> bool {
        let kh = KeyHash::of(key);
        let KvStore {
            segments,
            arena,
            large,
            ..
        } = self;
        let found = segments[kh.segment].find_entry(kh.table_hash(), |e| {
            e.tag == kh.tag && arena.key(e.loc()) == key
        });
        let Ok(entry) = found else { return false };
        let loc = entry.remove().0.loc();
        if let Stored::Large(index) = arena.stored(loc) {
            large.remove(index);
        }
        arena.kill(loc);
        self.keys -= 1;
        true
    }

    /// One bounded step of compaction: scans up to the step's bytes of the
    /// chunk being compacted, moving its live records to the arena's end.
    fn compact_step(&mut self) {
        let mut budget = self.arena.compact_step_bytes;
        while budget > 0 {
            let Some(loc) = self.arena.compact_next() else {
                return;
            };
            let header = self.arena.header(loc);
            if !header.dead() {
                self.relocate(loc);
            }
            self.arena.compact_advance(header.record_bytes());
            budget = budget.saturating_sub(header.record_bytes());
        }
    }

    fn relocate(&mut self, loc: Loc) {
        let kh = KeyHash::of(self.arena.key(loc));
        let moved = self.arena.relocate(loc);
        let entry = self.segments[kh.segment]
            .find_mut(kh.table_hash(), |e| e.loc() == loc)
            .expect("every live record has an index entry");
        entry.loc = moved.0;
    }
}

/// Writes `value` over the record at `loc`, of `key`; returns where the
/// record went if it did not fit in place.
fn overwrite(
    arena: &mut Arena,
    large: &mut Slab,
    loc: Loc,
    key: &[u8],
    value: &[u8],
) -> Option<Loc> {
    let old = arena.stored(loc);
    let stored = if value.len() > VALUE_ARENA_BYTES_MAX {
        let bytes = Bytes::copy_from_slice(value);
        if let Stored::Large(index) = old {
            large.set(index, bytes);
            return None;
        }
        Stored::Large(large.insert(bytes))
    } else {
        if let Stored::Large(index) = old {
            large.remove(index);
        }
        Stored::Small(value)
    };
    if arena.rewrite(loc, stored) {
        return None;
    }
    let moved = arena.append(key, stored);
    arena.kill(loc);
    Some(moved)
}

/// splitmix64's finaliser: spreads a hash's weak low bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a key's hash decides: its segment (from the top 40 bits), and the
/// tag its entry keeps (the next 16).
struct KeyHash {
    segment: usize,
    tag: u16,
}

impl KeyHash {
    fn of(key: &[u8]) -> KeyHash {
        let mut hasher = FxHasher::default();
        hasher.write(key);
        let h = mix(hasher.finish());
        let group = GROUP_STARTS.partition_point(|&start| start <= (h >> 32) as u32) - 1;
        KeyHash {
            segment: group * GROUP_SEGMENTS + (h >> 24) as usize % GROUP_SEGMENTS,
            tag: (h >> 8) as u16,
        }
    }

    fn table_hash(&self) -> u64 {
        table_hash(self.tag)
    }
}

/// The hash a segment's table sees, made from the tag alone so that a rehash
/// needs no key. Multiplying by an odd constant maps the low bits (the
/// bucket, up to 2^16 buckets per segment) one to one and mixes all 16 into
/// the top 7 (hashbrown's control byte).
fn table_hash(tag: u16) -> u64 {
    u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// An index entry: where the record is, and 16 hash bits the segment was
/// not chosen by. Packed to 6 bytes: a bucket costs 7 with its control byte.
#[derive(Clone, Copy)]
#[repr(C, packed(2))]
struct Entry {
    loc: u32,
    tag: u16,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 6);

impl Entry {
    fn loc(&self) -> Loc {
        Loc(self.loc)
    }

    fn table_hash(&self) -> u64 {
        table_hash(self.tag)
    }
}

/// A record's place in the arena, in 4-byte units (see `LOC_POS_BITS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc(u32);

impl Loc {
    fn new(chunk: usize, pos: usize) -> Loc {
        debug_assert!(chunk < ARENA_CHUNKS_MAX && pos % 4 == 0 && pos / 4 < 1 << LOC_POS_BITS);
        Loc(((chunk as u32) << LOC_POS_BITS) | (pos / 4) as u32)
    }

    fn chunk(self) -> usize {
        (self.0 >> LOC_POS_BITS) as usize
    }

    fn pos(self) -> usize {
        (self.0 & ((1 << LOC_POS_BITS) - 1)) as usize * 4
    }
}

/// What a record holds in its value field.
#[derive(Clone, Copy)]
enum Stored<'a> {
    Small(&'a [u8]),
    /// The slab index of a value over [`VALUE_ARENA_BYTES_MAX`].
    Large(u32),
}

impl Stored<'_> {
    /// Bytes of value field it takes.
    fn need(self) -> usize {
        match self {
            Stored::Small(value) => value.len(),
            Stored::Large(_) => 4,
        }
    }
}

/// Bytes of a record with the given key and value field, padded so records
/// stay 4-byte aligned (which is what lets [`Loc`] count 4-byte units).
const fn record_bytes(key_len: usize, value_len: usize) -> usize {
    (RECORD_HEADER_BYTES + key_len + value_len).next_multiple_of(4)
}

/// A record's first 4 bytes, little-endian, from the low bit: key length (11
/// bits), value capacity (9), value length (9), large, dead. A record's
/// size is fixed by its key length and capacity; the padding goes to the
/// capacity, so a value may grow by up to 3 bytes in place.
#[derive(Clone, Copy, Debug)]
struct Header(u32);

const KEY_LEN_BITS: u32 = 11;
const CAP_SHIFT: u32 = KEY_LEN_BITS;
const FIELD_BITS: u32 = 9;
const LEN_SHIFT: u32 = CAP_SHIFT + FIELD_BITS;
const LARGE: u32 = 1 << (LEN_SHIFT + FIELD_BITS);
const DEAD: u32 = LARGE << 1;
const _: () = assert!(DEAD != 0 && KEY_BYTES_MAX < 1 << KEY_LEN_BITS);
const _: () = assert!(VALUE_ARENA_BYTES_MAX + 3 < 1 << FIELD_BITS);

impl Header {
    fn new(key_len: usize, cap: usize, stored: Stored<'_>) -> Header {
        debug_assert!(key_len <= KEY_BYTES_MAX && cap < 1 << FIELD_BITS);
        Header(key_len as u32 | (cap as u32) << CAP_SHIFT).with_value(stored)
    }

    fn with_value(self, stored: Stored<'_>) -> Header {
        debug_assert!(stored.need() <= self.cap());
        let fixed = self.0 & ((1 << LEN_SHIFT) - 1);
        match stored {
            Stored::Small(value) => Header(fixed | (value.len() as u32) << LEN_SHIFT),
            Stored::Large(_) => Header(fixed | LARGE),
        }
    }

    fn key_len(self) -> usize {
        (self.0 & ((1 << KEY_LEN_BITS) - 1)) as usize
    }

    fn cap(self) -> usize {
        (self.0 >> CAP_SHIFT & ((1 << FIELD_BITS) - 1)) as usize
    }

    fn len(self) -> usize {
        (self.0 >> LEN_SHIFT & ((1 << FIELD_BITS) - 1)) as usize
    }

    fn large(self) -> bool {
        self.0 & LARGE != 0
    }

    fn dead(self) -> bool {
        self.0 & DEAD != 0
    }

    fn record_bytes(self) -> usize {
        RECORD_HEADER_BYTES + self.key_len() + self.cap()
    }
}

/// The records: chunks appended to one at a time (the tail), sealed when the
/// next record does not fit, compacted and freed once mostly dead.
struct Arena {
    /// By chunk number; `None` once freed (the number is then in `free`).
    chunks: Vec<Option<Chunk>>,
    free: Vec<u32>,
    tail: Option<usize>,
    /// Sealed chunks waiting to be compacted, oldest first.
    queue: VecDeque<usize>,
    /// The chunk being compacted and the position of its next record.
    compacting: Option<(usize, usize)>,
    live_bytes: usize,
    chunks_compacted: usize,
    chunk_bytes: usize,
    compact_step_bytes: usize,
}

/// Records are appended to `bytes`, whose capacity is the chunk's size and
/// never changes: a chunk is not zeroed (which would make the allocator
/// write all of it, and the kernel make it resident, at once) but written
/// as it fills.
struct Chunk {
    bytes: Vec<u8>,
    live: usize,
    queued: bool,
}

impl Chunk {
    fn header(&self, pos: usize) -> Header {
        let bytes = self.bytes[pos..pos + 4].try_into().expect("4 bytes");
        Header(u32::from_le_bytes(bytes))
    }

    fn set_header(&mut self, pos: usize, header: Header) {
        self.bytes[pos..pos + 4].copy_from_slice(&header.0.to_le_bytes());
    }

    fn key(&self, pos: usize) -> &[u8] {
        let start = pos + RECORD_HEADER_BYTES;
        &self.bytes[start..start + self.header(pos).key_len()]
    }

    fn stored(&self, pos: usize) -> Stored<'_> {
        let header = self.header(pos);
        debug_assert!(!header.dead());
        let start = pos + RECORD_HEADER_BYTES + header.key_len();
        if header.large() {
            let index = self.bytes[start..start + 4].try_into().expect("4 bytes");
            Stored::Large(u32::from_le_bytes(index))
        } else {
            Stored::Small(&self.bytes[start..start + header.len()])
        }
    }

    /// Bytes of records written.
    fn used(&self) -> usize {
        self.bytes.len()
    }

    /// Writes a record at the end, its capacity fitted to `stored`.
    fn append(&mut self, key: &[u8], stored: Stored<'_>) -> usize {
        let (pos, size) = (self.used(), record_bytes(key.len(), stored.need()));
        assert!(pos + size <= self.bytes.capacity(), "a chunk never grows");
        let cap = size - RECORD_HEADER_BYTES - key.len();
        let header = Header::new(key.len(), cap, stored);
        self.bytes.extend_from_slice(&header.0.to_le_bytes());
        self.bytes.extend_from_slice(key);
        match stored {
            Stored::Small(value) => self.bytes.extend_from_slice(value),
            Stored::Large(index) => self.bytes.extend_from_slice(&index.to_le_bytes()),
        }
        self.bytes.resize(pos + size, 0);
        self.live += size;
        pos
    }

    fn write_value(&mut self, start: usize, stored: Stored<'_>) {
        match stored {
            Stored::Small(value) => self.bytes[start..start + value.len()].copy_from_slice(value),
            Stored::Large(index) => {
                self.bytes[start..start + 4].copy_from_slice(&index.to_le_bytes())
            }
        }
    }

    /// Positions of the records not dead, in order.
    fn live_records(&self) -> impl Iterator<Item = usize> + '_ {
        let mut pos = 0;
        std::iter::from_fn(move || {
            while pos < self.used() {
                let (at, header) = (pos, self.header(pos));
                pos += header.record_bytes();
                if !header.dead() {
                    return Some(at);
                }
            }
            None
        })
    }
}

impl Arena {
    fn new(chunk_bytes: usize, compact_step_bytes: usize) -> Arena {
        assert!((4 * RECORD_BYTES_MAX..=CHUNK_BYTES).contains(&chunk_bytes));
        Arena {
            chunks: Vec::new(),
            free: Vec::new(),
            tail: None,
            queue: VecDeque::new(),
            compacting: None,
            live_bytes: 0,
            chunks_compacted: 0,
            chunk_bytes,
            compact_step_bytes,
        }
    }

    fn chunk(&self, chunk: usize) -> &Chunk {
        self.chunks[chunk]
            .as_ref()
            .expect("a record's chunk is held")
    }

    fn chunk_mut(&mut self, chunk: usize) -> &mut Chunk {
        self.chunks[chunk]
            .as_mut()
            .expect("a record's chunk is held")
    }

    fn header(&self, loc: Loc) -> Header {
        self.chunk(loc.chunk()).header(loc.pos())
    }

    fn key(&self, loc: Loc) -> &[u8] {
        self.chunk(loc.chunk()).key(loc.pos())
    }

    fn stored(&self, loc: Loc) -> Stored<'_> {
        self.chunk(loc.chunk()).stored(loc.pos())
    }

    /// Writes `stored` over the record's value if it fits its capacity.
    fn rewrite(&mut self, loc: Loc, stored: Stored<'_>) -> bool {
        let chunk = self.chunk_mut(loc.chunk());
        let header = chunk.header(loc.pos());
        if stored.need() > header.cap() {
            return false;
        }
        chunk.set_header(loc.pos(), header.with_value(stored));
        chunk.write_value(loc.pos() + RECORD_HEADER_BYTES + header.key_len(), stored);
        true
    }

    fn append(&mut self, key: &[u8], stored: Stored<'_>) -> Loc {
        let size = record_bytes(key.len(), stored.need());
        let tail = self.room_for(size);
        let pos = self.chunk_mut(tail).append(key, stored);
        self.live_bytes += size;
        Loc::new(tail, pos)
    }

    /// Copies a live record to the end, its capacity fitted to its value,
    /// and kills the original.
    fn relocate(&mut self, loc: Loc) -> Loc {
        let (from, pos) = (loc.chunk(), loc.pos());
        let size = {
            let chunk = self.chunk(from);
            record_bytes(chunk.header(pos).key_len(), chunk.stored(pos).need())
        };
        let to = self.room_for(size);
        let (src, dst) = two_chunks(&mut self.chunks, from, to);
        let at = dst.append(src.key(pos), src.stored(pos));
        self.live_bytes += size;
        self.kill(loc);
        Loc::new(to, at)
    }

    fn kill(&mut self, loc: Loc) {
        let (c, pos) = (loc.chunk(), loc.pos());
        let chunk = self.chunk_mut(c);
        let header = chunk.header(pos);
        assert!(!header.dead(), "record at {loc:?} killed twice");
        chunk.set_header(pos, Header(header.0 | DEAD));
        chunk.live -= header.record_bytes();
        self.live_bytes -= header.record_bytes();
        self.queue_if_dead(c);
    }

    /// The tail chunk, with `size` bytes free: seals the current one and
    /// opens another if needed.
    fn room_for(&mut self, size: usize) -> usize {
        if let Some(tail) = self.tail {
            if self.chunk(tail).used() + size <= self.chunk_bytes {
                return tail;
            }
            self.tail = None;
            self.queue_if_dead(tail);
        }
        let chunk = match self.free.pop() {
            Some(c) => c as usize,
            None => {
                self.chunks.push(None);
                self.chunks.len() - 1
            }
        };
        assert!(
            chunk < ARENA_CHUNKS_MAX,
            "the KV store's arena is full ({ARENA_CHUNKS_MAX} chunks)"
        );
        self.chunks[chunk] = Some(Chunk {
            bytes: Vec::with_capacity(self.chunk_bytes),
            live: 0,
            queued: false,
        });
        self.tail = Some(chunk);
        chunk
    }

    fn queue_if_dead(&mut self, c: usize) {
        let limit = self.chunk_bytes * CHUNK_LIVE_PERCENT_COMPACT / 100;
        if self.tail == Some(c) {
            return;
        }
        let chunk = self.chunk_mut(c);
        if !chunk.queued && chunk.live <= limit {
            chunk.queued = true;
            self.queue.push_back(c);
        }
    }

    /// The next record of the chunk being compacted, freeing a chunk once
    /// scanned and starting on the next queued one; `None` if none is queued.
    fn compact_next(&mut self) -> Option<Loc> {
        loop {
            if let Some((c, pos)) = self.compacting {
                let chunk = self.chunk(c);
                if pos < chunk.used() {
                    return Some(Loc::new(c, pos));
                }
                assert_eq!(chunk.live, 0, "a scanned chunk holds no live record");
                self.chunks[c] = None;
                self.free.push(c as u32);
                self.compacting = None;
                self.chunks_compacted += 1;
            }
            self.compacting = Some((self.queue.pop_front()?, 0));
        }
    }

    fn compact_advance(&mut self, bytes: usize) {
        let (_, pos) = self
            .compacting
            .as_mut()
            .expect("a chunk is being compacted");
        *pos += bytes;
    }
}

/// Chunk `from` to read and chunk `to` to write, at once.
fn two_chunks(chunks: &mut [Option<Chunk>], from: usize, to: usize) -> (&Chunk, &mut Chunk) {
    assert_ne!(from, to, "a record moves to another chunk");
    let (src, dst) = if from < to {
        let (low, high) = chunks.split_at_mut(to);
        (&low[from], &mut high[0])
    } else {
        let (low, high) = chunks.split_at_mut(from);
        (&high[0], &mut low[to])
    };
    let held = "both chunks are held";
    (src.as_ref().expect(held), dst.as_mut().expect(held))
}

/// Values over [`VALUE_ARENA_BYTES_MAX`], by index. Fixed-size pages, so
/// that growing never copies the values already in.
#[derive(Default)]
struct Slab {
    pages: Vec<Vec<SlabSlot>>,
    /// Head of the list of free slots threaded through them.
    free: Option<u32>,
    len: usize,
}

enum SlabSlot {
    Full(Bytes),
    Free { next: Option<u32> },
}

// The free list costs no space: `Free` fits in `Bytes`'s niche.
const _: () = assert!(std::mem::size_of::<SlabSlot>() == std::mem::size_of::<Bytes>());

const SLAB_PAGE_VALUES: usize = 1024;

impl Slab {
    fn insert(&mut self, value: Bytes) -> u32 {
        self.len += 1;
        if let Some(index) = self.free {
            let slot = self.slot_mut(index);
            let SlabSlot::Free { next } = *slot else {
                unreachable!("the free list holds free slots")
            };
            *slot = SlabSlot::Full(value);
            self.free = next;
            return index;
        }
        if self
            .pages
            .last()
            .is_none_or(|p| p.len() == SLAB_PAGE_VALUES)
        {
            self.pages.push(Vec::with_capacity(SLAB_PAGE_VALUES));
        }
        let index =
            (self.pages.len() - 1) * SLAB_PAGE_VALUES + self.pages.last().map_or(0, Vec::len);
        self.pages
            .last_mut()
            .expect("a page")
            .push(SlabSlot::Full(value));
        u32::try_from(index).expect("fewer than 2^32 large values")
    }

    fn get(&self, index: u32) -> &Bytes {
        let i = index as usize;
        match &self.pages[i / SLAB_PAGE_VALUES][i % SLAB_PAGE_VALUES] {
            SlabSlot::Full(value) => value,
            SlabSlot::Free { .. } => panic!("large value {index} is free"),
        }
    }

    fn set(&mut self, index: u32, value: Bytes) {
        let slot = self.slot_mut(index);
        assert!(
            matches!(slot, SlabSlot::Full(_)),
            "large value {index} is free"
        );
        *slot = SlabSlot::Full(value);
    }

    fn remove(&mut self, index: u32) {
        let next = self.free;
        let slot = self.slot_mut(index);
        assert!(
            matches!(slot, SlabSlot::Full(_)),
            "large value {index} is free"
        );
        *slot = SlabSlot::Free { next };
        self.free = Some(index);
        self.len -= 1;
    }

    fn slot_mut(&mut self, index: u32) -> &mut SlabSlot {
        let i = index as usize;
        &mut self.pages[i / SLAB_PAGE_VALUES][i % SLAB_PAGE_VALUES]
    }
}

impl StateMachine for KvStore {
    type Output = KvResult;

    fn conflict_key<'c>(cmd: &CommandRef<'c>) -> Option<(&'c [u8], Access)> {
        let access = match cmd.op {
            Op::Get => Access::Read,
            Op::Put | Op::Delete | Op::Incr | Op::PutIfAbsent | Op::PutIfPresent => Access::Write,
            // The session table's own business (`protocol::sessions`).
            Op::Expire => return None,
        };
        Some((cmd.key, access))
    }

    fn apply(&mut self, cmd: &CommandRef<'_>) -> KvResult {
        match cmd.op {
            Op::Get => match self.get_value(cmd.key) {
                Some(v) => KvResult::Value(v),
                None => KvResult::NotFound,
            },
            Op::Put => {
                self.put(cmd.key, cmd.value);
                self.compact_step();
                KvResult::Done
            }
            Op::Delete => {
                let removed = self.delete(cmd.key);
                self.compact_step();
                if removed {
                    KvResult::Done
                } else {
                    KvResult::NotFound
                }
            }
            Op::PutIfAbsent | Op::PutIfPresent => {
                if self.find(cmd.key).is_some() != (cmd.op == Op::PutIfPresent) {
                    return KvResult::NotDone;
                }
                self.put(cmd.key, cmd.value);
                self.compact_step();
                KvResult::Done
            }
            Op::Incr => self.incr(cmd.key, cmd.value),
            // Never reaches the store: the session table executes it.
            Op::Expire => KvResult::Done,
        }
    }

    fn result_bytes(out: &KvResult) -> usize {
        match out {
            KvResult::Value(v) => v.len(),
            KvResult::Integer(_) => 8,
            KvResult::Done | KvResult::NotFound | KvResult::NotDone | KvResult::NotAnInteger => 0,
        }
    }
}

#[cfg(test)]
mod tests;
