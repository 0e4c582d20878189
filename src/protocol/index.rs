//! The conflict index: per key, the latest instance of each replica that
//! touched it. Computing an instance's attributes is one hash lookup per key.
//!
//! Besides the state machine's conflicts, every command conflicts with the
//! other commands of the same client. The exactly-once table (`sessions.rs`)
//! is per client: if two commands of one client on different keys could run
//! in different orders at two replicas, the table would forget a result at
//! one replica before applying it there and apply it at another, and the
//! replicas would diverge. Ordering a client's commands makes the table part
//! of the agreed order. It costs nothing for a client with one request in
//! flight, and little for a pipelining client that talks to one replica.

use std::marker::PhantomData;

use rustc_hash::FxHashMap;

use super::hash::IdMap;

use super::types::{Attrs, Deps, InstanceId};
use crate::constants::REPLICAS_MAX;
use crate::state_machine::{Access, InlineKey, StateMachine};
use crate::wire::Batch;

/// What one key has seen. Reads conflict only with writes, so writes are
/// tracked apart from "any access".
#[derive(Default)]
struct KeyEntry {
    /// Instances that read or wrote the key.
    any: Seen,
    /// Instances that wrote the key.
    write: Seen,
}

/// Per replica the highest slot seen, and the highest seq: read together,
/// so kept together (one or two cache lines, not three).
#[derive(Default)]
struct Seen {
    seq: u64,
    slots: [u64; REPLICAS_MAX],
}

impl Seen {
    /// Adds these instances to `deps`, over the first `replicas` entries only
    /// (u64 max does not vectorise; the unused tail stays zero anyway).
    #[inline]
    fn add_to(&self, deps: &mut Deps, seq_max: &mut u64, replicas: usize) {
        for (d, s) in deps.0[..replicas].iter_mut().zip(&self.slots[..replicas]) {
            *d = (*d).max(*s);
        }
        *seq_max = (*seq_max).max(self.seq);
    }

    #[inline]
    fn add(&mut self, id: InstanceId, seq: u64) {
        let q = id.replica.index();
        self.slots[q] = self.slots[q].max(id.slot.0);
        self.seq = self.seq.max(seq);
    }
}

impl KeyEntry {
    fn add(&mut self, id: InstanceId, seq: u64, access: Access) {
        self.any.add(id, seq);
        if access == Access::Write {
            self.write.add(id, seq);
        }
    }
}

/// Keyed by a fixed hasher (no random state): the core is deterministic.
/// One entry per key ever touched, so it grows with the key space, like the
/// store itself, not with the number of commands.
pub(crate) struct ConflictIndex<S> {
    replicas: usize,
    keys: FxHashMap<InlineKey, KeyEntry>,
    /// Per client id, as if every command also wrote the client's session.
    clients: IdMap<u64, KeyEntry>,
    state_machine: PhantomData<fn() -> S>,
}

impl<S: StateMachine> ConflictIndex<S> {
    pub fn new(replicas: usize) -> Self {
        ConflictIndex {
            replicas,
            keys: FxHashMap::default(),
            clients: IdMap::default(),
            state_machine: PhantomData,
        }
    }

    /// Adds the conflicts of `batch` to `attrs`: deps gain every conflicting
    /// instance, seq rises above every conflicting seq.
    pub fn add_conflicts(&self, batch: &Batch, attrs: &mut Attrs) {
        let n = self.replicas;
        let mut seq_max = 0;
        let mut last_client = None;
        for cmd in batch.iter() {
            if last_client != Some(cmd.client) {
                last_client = Some(cmd.client);
                if let Some(entry) = self.clients.get(&cmd.client) {
                    entry.any.add_to(&mut attrs.deps, &mut seq_max, n);
                }
            }
            let Some((key, access)) = S::conflict_key(&cmd) else {
                continue;
            };
            let Some(entry) = self.keys.get(key) else {
                continue;
            };
            let conflicting = match access {
                Access::Read => &entry.write,
                Access::Write => &entry.any,
            };
            conflicting.add_to(&mut attrs.deps, &mut seq_max, n);
        }
        attrs.seq = attrs.seq.max(seq_max + 1);
    }

    /// Records that instance `id` with sequence number `seq` touches the keys
    /// of `batch`. Idempotent, and safe in any order: it only raises values.
    pub fn record(&mut self, id: InstanceId, seq: u64, batch: &Batch) {
        let mut last_client = None;
        for cmd in batch.iter() {
            if last_client != Some(cmd.client) {
                last_client = Some(cmd.client);
                self.clients
                    .entry(cmd.client)
                    .or_default()
                    .add(id, seq, Access::Write);
            }
            let Some((key, access)) = S::conflict_key(&cmd) else {
                continue;
            };
            let entry = match self.keys.get_mut(key) {
                Some(entry) => entry,
                // A new key: the only place the index copies one.
                None => self.keys.entry(InlineKey::from_slice(key)).or_default(),
            };
            entry.add(id, seq, access);
        }
    }

    pub fn keys(&self) -> usize {
        self.keys.len()
    }
}
