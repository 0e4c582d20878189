//! Instance spaces: per replica, a window of instances indexed by slot.
//!
//! Slots below a space's `base` were executed and dropped (compaction); the
//! window holds the rest, with placeholders for slots only heard of as
//! dependencies.

use std::collections::VecDeque;

use super::message::Message;
use super::types::{Attrs, Ballot, InstanceId, ReplicaId, Status};
use crate::constants::INSTANCE_WINDOW_SLOTS_MAX;
use crate::wire::Batch;

/// Where a command leader's own instance stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    PreAccept,
    Accept,
    /// Committed; waiting for every peer to acknowledge the commit.
    Commit,
}

/// Bookkeeping a command leader keeps for its own instance until every peer
/// has the commit.
#[derive(Debug)]
pub(crate) struct Lead {
    pub phase: Phase,
    /// Attributes the leader proposed: the fast path commits these.
    pub initial: Attrs,
    /// Union of the attributes in the replies: the slow path accepts these.
    pub merged: Attrs,
    /// Peers the current phase's message went to.
    pub sent: u16,
    /// Peers that answered the current phase.
    pub replied: u16,
    /// Replies (PreAccept phase) whose attributes differ from `initial`.
    pub changed: u32,
}

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
    pub ballot: Ballot,
    pub attrs: Attrs,
    pub batch: Batch,
    /// The seq this instance is recorded with in the conflict index (0: not yet).
    pub indexed_seq: u64,
    pub mark: Mark,
    /// A missing instance an earlier execution attempt through this one
    /// stopped at: while it stays uncommitted, so does everything behind it.
    pub blocked_on: Option<InstanceId>,
    /// Execution roots to retry when this instance commits.
    pub waiters: Vec<InstanceId>,
    pub lead: Option<Box<Lead>>,
}

impl Instance {
    pub fn is_committed(&self) -> bool {
        self.status >= Status::Committed
    }

    pub fn commit_message(&self, id: InstanceId) -> Message {
        Message::Commit(super::message::Commit {
            id,
            ballot: self.ballot,
            attrs: self.attrs,
            batch: self.batch.clone(),
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
        }
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
            space.window.pop_front();
            space.base += 1;
        }
    }

    /// Instances held in memory, all spaces together.
    pub fn len(&self) -> usize {
        self.spaces.iter().map(|s| s.window.len()).sum()
    }
}
