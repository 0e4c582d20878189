//! What a replica keeps for an instance it leads, as command leader or as
//! recoverer: the phase, the votes counted, and (recovering) what the
//! Prepare and Validate replies showed. Plain data: the leader's handlers
//! are in `leader.rs`, the recoverer's in `recovery.rs`.

use super::types::{Attrs, Ballot, InstanceId, Status};
use crate::command::Batch;

/// Where an instance this replica leads (as command leader or recoverer)
/// stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Recovery: collecting promises.
    Prepare,
    /// Recovery: asking the Prepare quorum for contradicting instances.
    Validate,
    /// Recovery: waiting for contradicting instances to commit.
    Waiting,
    PreAccept,
    Accept,
    /// Committed; waiting for every peer to acknowledge the commit.
    Commit,
}

/// Bookkeeping a replica keeps for an instance it leads, until every peer
/// has the commit (or a higher ballot takes the instance over).
#[derive(Debug)]
pub(crate) struct Lead {
    pub ballot: Ballot,
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
    /// Recovery only: what the Prepare and Validate replies showed.
    pub recovery: Option<Box<Tally>>,
    /// When `propose` started it (the core's clock), for the commit
    /// latency; `None` for a recovery or a commit led again.
    pub proposed_at: Option<u64>,
}

/// What a recoverer learned from Prepare and Validate replies.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// A committed value seen (attrs, batch, noop).
    pub committed: Option<(Attrs, Batch, bool)>,
    /// The accepted value with the highest vote ballot.
    pub accepted: Option<(Ballot, Attrs, Batch, bool)>,
    /// Some replica had executed and dropped it.
    pub compacted: bool,
    pub leader_replied: bool,
    /// Unchanged fast-path votes in Q (EPaxos*'s |Rmax|).
    pub votes: u8,
    /// The value the fast path may have committed.
    pub candidate: Option<(Attrs, Batch)>,
    /// Q, the Prepare quorum, as a mask of peers (this replica not included).
    pub quorum: u16,
    /// Validate replies so far, from peers in Q.
    pub validated: u16,
    /// The instances reported by Validate (EPaxos*'s I), with the status the
    /// reporter gave.
    pub conflicts: Vec<(InstanceId, Status)>,
}
