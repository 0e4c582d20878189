//! Identifiers and per-instance attributes.

use crate::constants::REPLICAS_MAX;

/// A replica's position in the cluster, `0..N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReplicaId(pub u8);

impl ReplicaId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    pub(crate) fn bit(self) -> u16 {
        1 << self.0
    }
}

/// A position in one replica's instance space. Slots start at 1;
/// [`Slot::NONE`] in a dependency vector means "no dependency".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Slot(pub u64);

impl Slot {
    pub const NONE: Slot = Slot(0);
}

/// One instance: slot `slot` of replica `replica`'s instance space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId {
    pub replica: ReplicaId,
    pub slot: Slot,
}

impl InstanceId {
    pub fn new(replica: ReplicaId, slot: u64) -> InstanceId {
        InstanceId {
            replica,
            slot: Slot(slot),
        }
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.replica.0, self.slot.0)
    }
}

/// A Paxos ballot, ordered by (epoch, number, replica). The command leader
/// starts every instance at the initial ballot (0, 0, leader); a replica that
/// recovers an instance takes a ballot above every one it has seen for it,
/// with its own id last, so two recoverers never share a ballot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ballot {
    pub epoch: u32,
    pub number: u32,
    pub replica: ReplicaId,
}

impl Ballot {
    pub fn initial(leader: ReplicaId) -> Ballot {
        Ballot {
            epoch: 0,
            number: 0,
            replica: leader,
        }
    }

    /// The lowest ballot owned by `replica` that is above `self`.
    pub fn next(self, replica: ReplicaId) -> Ballot {
        Ballot {
            epoch: self.epoch,
            number: self
                .number
                .checked_add(1)
                .expect("ballot numbers exhausted"),
            replica,
        }
    }
}

/// Dependencies: for each replica q, the highest slot of q this instance must
/// be ordered after. An entry covers every slot of q up to it (the prefix),
/// which is what lets one number per replica stand for a set: the graph the
/// executor walks is then a function of committed attributes alone, the same
/// at every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Deps(pub [u64; REPLICAS_MAX]);

impl Deps {
    pub fn get(&self, replica: ReplicaId) -> Slot {
        Slot(self.0[replica.index()])
    }

    /// Element-wise maximum: the union of two dependency sets.
    #[inline]
    pub fn union(&mut self, other: &Deps) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = (*a).max(*b);
        }
    }
}

/// The attributes EPaxos agrees on besides the commands: `seq` breaks ties
/// inside a dependency cycle, `deps` orders conflicting instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Attrs {
    pub seq: u64,
    pub deps: Deps,
}

impl Attrs {
    pub fn union(&mut self, other: &Attrs) {
        self.seq = self.seq.max(other.seq);
        self.deps.union(&other.deps);
    }
}

/// How far an instance has got at one replica. Ordered: a status only rises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Status {
    /// Known only as somebody's dependency (or a slot below one).
    #[default]
    None,
    PreAccepted,
    Accepted,
    Committed,
    Executed,
}

/// What a replica knows of the command leader's initial attributes for an
/// instance (EPaxos*'s initDep, with seq): needed to tell, in recovery,
/// whether a vote could have counted towards the fast path.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Initial {
    /// Never pre-accepted nor validated here.
    #[default]
    Unknown,
    /// Equal to the instance's current attributes (no allocation).
    Same,
    Other(Box<Attrs>),
}
