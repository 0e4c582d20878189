//! Instance spaces: per replica, a window of instances indexed by slot.
//!
//! Slots below a space's `base` were executed and dropped (compaction); the
//! window holds the rest, with placeholders for slots only heard of as
//! dependencies.

use std::collections::VecDeque;

use rustc_hash::FxHashSet;

use super::lead::{Lead, Phase};
use super::message::{Message, Value};
use super::types::{Attrs, Ballot, Initial, InstanceId, ReplicaId, Status};
use crate::command::Batch;
use crate::constants::{INSTANCE_WINDOW_SLOTS_MAX, QUEUE_KEPT_SLOTS_MIN};

/// Tarjan's per-node state, valid only while `epoch` matches the run.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Mark {
    pub epoch: u64,
    pub index: u32,
    pub low: u32,
    pub on_stack: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Instance {
    pub status: Status,
    /// The highest ballot promised here.
    pub promised: Ballot,
    /// The ballot of the last vote here (a pre-accept at the initial ballot,
    /// an accept), or of the commit. Kept apart from `promised`, as in
    /// classic Paxos: recovery trusts the value with the highest vote, and a
    /// promise alone is not a vote (Sutra, "On the correctness of
    /// Egalitarian Paxos", 2019).
    pub voted: Ballot,
    pub attrs: Attrs,
    /// The command leader's initial attributes, as far as known here.
    pub initial: Initial,
    /// The commands, once known here (EPaxos*'s initCmd; the decided value
    /// is these or, if `noop`, nothing).
    pub batch: Batch,
    /// The value voted or committed here is a no-op.
    pub noop: bool,
    /// The seq this instance is recorded with in the conflict index (0: not yet).
    pub indexed_seq: u64,
    pub mark: Mark,
    /// A missing instance an earlier execution attempt through this one
    /// stopped at: while it stays uncommitted, so does everything behind it.
    pub blocked_on: Option<InstanceId>,
    /// Execution roots to retry when this instance commits.
    pub waiters: Vec<InstanceId>,
    pub lead: Option<Box<Lead>>,
    /// When a recovery check is due (0: none scheduled).
    pub watch_at: u64,
    /// Recoveries this replica started for the instance (drives back-off).
    pub attempts: u8,
}

impl Instance {
    pub fn is_committed(&self) -> bool {
        self.status >= Status::Committed
    }

    /// The batch as the decided (or voted) value: empty for a no-op.
    pub fn value_batch(&self) -> Batch {
        if self.noop {
            Batch::empty()
        } else {
            self.batch.clone()
        }
    }

    /// Replaces the attributes, keeping the initial ones if they were the
    /// current ones.
    pub fn set_attrs(&mut self, attrs: Attrs) {
        if self.initial == Initial::Same && attrs != self.attrs {
            self.initial = Initial::Other(Box::new(self.attrs));
        }
        self.attrs = attrs;
    }

    /// Takes a decided or voted value: attributes, no-op-ness, and `batch`
    /// unless it is `None` (the commands are known here already) or the
    /// value is a no-op (which keeps them, for the leader's answers).
    pub fn set_value(&mut self, attrs: Attrs, noop: bool, batch: Option<Batch>) {
        self.set_attrs(attrs);
        self.noop = noop;
        if let (false, Some(batch)) = (noop, batch) {
            self.batch = batch;
        }
    }

    /// The command leader's initial attributes, if known here.
    pub fn initial_attrs(&self) -> Option<&Attrs> {
        match &self.initial {
            Initial::Unknown => None,
            Initial::Same => Some(&self.attrs),
            Initial::Other(a) => Some(a),
        }
    }

    /// A leader that no longer holds the instance's highest ballot.
    pub fn lead_superseded(&self) -> bool {
        self.lead
            .as_ref()
            .is_some_and(|l| l.phase != Phase::Commit && l.ballot != self.promised)
    }

    pub fn commit_message(&self, id: InstanceId) -> Message {
        // A whole commit: an empty batch that is not a no-op would go out
        // as a slim one (`Value::is_slim`) and never be acknowledged.
        debug_assert!(
            self.noop || !self.batch.is_empty(),
            "commit of {id:?} without its batch"
        );
        Message::Commit(Value {
            id,
            ballot: self.voted,
            attrs: self.attrs,
            batch: self.value_batch(),
            noop: self.noop,
        })
    }
}

pub(crate) enum Lookup<'a> {
    /// Executed and dropped.
    Compacted,
    /// Never heard of.
    Missing,
    Found(&'a Instance),
}

struct Space {
    /// Slot of `window[0]`; every slot below it is executed.
    base: u64,
    window: VecDeque<Instance>,
}

pub(crate) struct Spaces {
    spaces: Vec<Space>,
    /// Compacted instances that were no-ops: a recovery waiting on one must
    /// still tell a no-op from a command after it is dropped. Only recovery
    /// makes no-ops, so this stays small.
    compacted_noops: FxHashSet<InstanceId>,
}

impl Spaces {
    pub fn new(replicas: usize) -> Spaces {
        Spaces {
            spaces: (0..replicas)
                .map(|_| Space {
                    base: 1,
                    window: VecDeque::new(),
                })
                .collect(),
            compacted_noops: FxHashSet::default(),
        }
    }

    /// A compacted instance that was a no-op.
    pub fn was_noop(&self, id: InstanceId) -> bool {
        self.compacted_noops.contains(&id)
    }

    /// The first slot of `replica` not executed here.
    pub fn executed_below(&self, replica: ReplicaId) -> u64 {
        self.executed_below_from(replica, 0)
    }

    /// The same, known to be at least `from`: the walk starts there.
    pub fn executed_below_from(&self, replica: ReplicaId, from: u64) -> u64 {
        let space = &self.spaces[replica.index()];
        let start = from.max(space.base);
        let skip = ((start - space.base) as usize).min(space.window.len());
        let run = space
            .window
            .range(skip..)
            .take_while(|i| i.status == Status::Executed)
            .count();
        space.base + (skip + run) as u64
    }

    /// The highest slot of `replica` held in the window (0: none).
    pub fn last_slot(&self, replica: ReplicaId) -> u64 {
        let space = &self.spaces[replica.index()];
        space.base + space.window.len() as u64 - 1
    }

    /// Every instance held, with its id.
    pub fn iter(&self) -> impl Iterator<Item = (InstanceId, &Instance)> {
        self.spaces.iter().enumerate().flat_map(|(r, space)| {
            space.window.iter().enumerate().map(move |(i, inst)| {
                (
                    InstanceId::new(ReplicaId(r as u8), space.base + i as u64),
                    inst,
                )
            })
        })
    }

    /// Every slot of `replica` below this was executed and dropped.
    pub fn base(&self, replica: ReplicaId) -> u64 {
        self.spaces[replica.index()].base
    }

    pub fn get(&self, id: InstanceId) -> Lookup<'_> {
        let space = &self.spaces[id.replica.index()];
        if id.slot.0 < space.base {
            return Lookup::Compacted;
        }
        match space.window.get((id.slot.0 - space.base) as usize) {
            Some(inst) => Lookup::Found(inst),
            None => Lookup::Missing,
        }
    }

    pub fn get_mut(&mut self, id: InstanceId) -> Option<&mut Instance> {
        let space = &mut self.spaces[id.replica.index()];
        let offset = id.slot.0.checked_sub(space.base)?;
        space.window.get_mut(offset as usize)
    }

    /// Committed or executed (including compacted).
    pub fn is_committed(&self, id: InstanceId) -> bool {
        match self.get(id) {
            Lookup::Compacted => true,
            Lookup::Missing => false,
            Lookup::Found(inst) => inst.is_committed(),
        }
    }

    /// The instance, created (with placeholders below it) if unknown.
    /// `None` if it was compacted, or lies implausibly far ahead.
    pub fn entry(&mut self, id: InstanceId) -> Option<&mut Instance> {
        let space = &mut self.spaces[id.replica.index()];
        let offset = id.slot.0.checked_sub(space.base)?;
        if offset >= INSTANCE_WINDOW_SLOTS_MAX {
            return None;
        }
        let offset = offset as usize;
        if offset >= space.window.len() {
            space.window.resize_with(offset + 1, Instance::default);
        }
        Some(&mut space.window[offset])
    }

    /// Drops executed instances from the front of `replica`'s window, as long
    /// as nothing still needs them (a leader keeps its own until every peer
    /// acknowledged the commit).
    pub fn compact(&mut self, replica: ReplicaId) {
        let space = &mut self.spaces[replica.index()];
        while let Some(front) = space.window.front() {
            if front.status != Status::Executed || front.lead.is_some() {
                break;
            }
            debug_assert!(front.waiters.is_empty());
            if front.noop {
                self.compacted_noops
                    .insert(InstanceId::new(replica, space.base));
            }
            space.window.pop_front();
            space.base += 1;
        }
        // A backlog (commits held for a paused peer) grows the window;
        // once it drains, give the memory back instead of keeping the peak.
        let (len, cap) = (space.window.len(), space.window.capacity());
        if cap > QUEUE_KEPT_SLOTS_MIN && cap > 4 * len {
            space.window.shrink_to((2 * len).max(QUEUE_KEPT_SLOTS_MIN));
        }
    }

    /// Instances held in memory, all spaces together.
    pub fn len(&self) -> usize {
        self.spaces.iter().map(|s| s.window.len()).sum()
    }
}
