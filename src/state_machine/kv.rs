//! The key-value store: GET, PUT and DELETE on byte-string keys and values.

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::{Access, InlineKey, StateMachine};
use crate::command::{fnv1a, FNV_OFFSET_BASIS};
use crate::command::{CommandRef, Op};

/// The result of one KV command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvResult {
    /// A PUT or DELETE took effect.
    Done,
    /// A GET found this value.
    Value(Value),
    /// A GET found no value.
    NotFound,
}

/// Longest value stored inside the map entry itself.
pub const VALUE_INLINE_BYTES_MAX: usize = 30;

/// A stored value. Short ones live inline: storing one allocates nothing and
/// answering a GET copies 40 bytes. Longer ones are shared by reference count,
/// so a GET never copies them.
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

/// An in-memory map. It owns copies of its keys and values: a value must not
/// pin the whole received batch it arrived in. Short keys and values are
/// stored inline in the map's entries.
#[derive(Default, Debug)]
pub struct KvStore {
    map: FxHashMap<InlineKey, Value>,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.map.get(key)
    }

    /// A digest of the whole state, independent of insertion order: replicas
    /// that executed the same commands report the same digest.
    pub fn digest(&self) -> u64 {
        self.map
            .iter()
            .map(|(k, v)| mix(fnv1a(fnv1a(FNV_OFFSET_BASIS, k) ^ 0xff, v)))
            .fold(0u64, u64::wrapping_add)
    }
}

/// splitmix64's finaliser: spreads FNV's weak low bits before the sum.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl StateMachine for KvStore {
    type Output = KvResult;

    fn conflict_key<'c>(cmd: &CommandRef<'c>) -> Option<(&'c [u8], Access)> {
        let access = match cmd.op {
            Op::Get => Access::Read,
            Op::Put | Op::Delete => Access::Write,
        };
        Some((cmd.key, access))
    }

    fn apply(&mut self, cmd: &CommandRef<'_>) -> KvResult {
        match cmd.op {
            Op::Get => match self.map.get(cmd.key) {
                Some(v) => KvResult::Value(v.clone()),
                None => KvResult::NotFound,
            },
            Op::Put => {
                let value = Value::from_slice(cmd.value);
                match self.map.get_mut(cmd.key) {
                    Some(slot) => *slot = value,
                    None => {
                        self.map.insert(InlineKey::from_slice(cmd.key), value);
                    }
                }
                KvResult::Done
            }
            Op::Delete => {
                self.map.remove(cmd.key);
                KvResult::Done
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c<'a>(op: Op, key: &'a [u8], value: &'a [u8]) -> CommandRef<'a> {
        CommandRef {
            client: 1,
            request: 1,
            first_outstanding: 1,
            op,
            key,
            value,
        }
    }

    #[test]
    fn get_put_delete() {
        let mut kv = KvStore::new();
        assert_eq!(kv.apply(&c(Op::Get, b"a", b"")), KvResult::NotFound);
        assert_eq!(kv.apply(&c(Op::Put, b"a", b"1")), KvResult::Done);
        assert_eq!(kv.apply(&c(Op::Put, b"a", b"2")), KvResult::Done);
        assert_eq!(
            kv.apply(&c(Op::Get, b"a", b"")),
            KvResult::Value("2".into())
        );
        let d = kv.digest();
        assert_eq!(kv.apply(&c(Op::Delete, b"a", b"")), KvResult::Done);
        assert_eq!(kv.apply(&c(Op::Get, b"a", b"")), KvResult::NotFound);
        assert_ne!(kv.digest(), d);
    }

    #[test]
    fn digest_ignores_insertion_order() {
        let (mut a, mut b) = (KvStore::new(), KvStore::new());
        a.apply(&c(Op::Put, b"x", b"1"));
        a.apply(&c(Op::Put, b"y", b"2"));
        b.apply(&c(Op::Put, b"y", b"2"));
        b.apply(&c(Op::Put, b"x", b"1"));
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn reads_do_not_conflict_with_reads() {
        let get = c(Op::Get, b"k", b"");
        let put = c(Op::Put, b"k", b"v");
        assert_eq!(KvStore::conflict_key(&get), Some((&b"k"[..], Access::Read)));
        assert_eq!(
            KvStore::conflict_key(&put),
            Some((&b"k"[..], Access::Write))
        );
    }
}
