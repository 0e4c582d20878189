//! The messages replicas exchange, as the core sees them (already decoded).
//!
//! The commit protocol (PreAccept, Accept, Commit) is the SOSP 2013 one; the
//! recovery messages (Prepare, Validate, Waiting) follow EPaxos* (Ryabinin,
//! Gotsman, Sutra, OPODIS 2025, Figure 5), see `recovery.rs`.

use super::types::{Attrs, Ballot, InstanceId, Status};
use crate::command::Batch;
use crate::constants::REPLICAS_MAX;

/// One protocol message. The dispatch in `Replica::handle` is a single match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    PreAccept(PreAccept),
    PreAcceptOk(PreAcceptOk),
    /// Leader (or recoverer) to acceptor: accept this value at this ballot.
    Accept(Value),
    AcceptOk(AcceptOk),
    /// The instance is decided with this value.
    Commit(Value),
    CommitOk(CommitOk),
    Prepare(Prepare),
    PrepareOk(PrepareOk),
    Nack(Nack),
    Validate(Validate),
    ValidateOk(ValidateOk),
    Waiting(Waiting),
    Progress(Progress),
}

/// Command leader to acceptor, at the leader's initial ballot only: here is
/// a batch with the attributes the leader saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreAccept {
    pub id: InstanceId,
    pub ballot: Ballot,
    pub attrs: Attrs,
    pub batch: Batch,
}

/// Acceptor to leader: the attributes after adding the acceptor's conflicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreAcceptOk {
    pub id: InstanceId,
    pub ballot: Ballot,
    pub attrs: Attrs,
}

/// An instance's value at a ballot, as Accept proposes it and Commit
/// announces it decided (one type: the two carry the same fields). A no-op
/// carries no batch; otherwise the batch travels so an acceptor that missed
/// the PreAccept still knows the commands, except in a slim Commit
/// (`is_slim`) to a peer that voted for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub id: InstanceId,
    pub ballot: Ballot,
    pub attrs: Attrs,
    pub batch: Batch,
    pub noop: bool,
}

impl Value {
    /// A Commit that leaves the batch out, to a peer that stored it with its
    /// vote at this ballot (no batch, and not a no-op: the core never
    /// proposes an empty batch). The leader re-sends it whole.
    pub fn is_slim(&self) -> bool {
        !self.noop && self.batch.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptOk {
    pub id: InstanceId,
    pub ballot: Ballot,
}

/// The receiver has the commit durably; the sender stops re-sending it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOk {
    pub id: InstanceId,
}

/// Recoverer to every replica: promise `ballot` for the instance and tell
/// what you know of it (EPaxos*'s Recover).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepare {
    pub id: InstanceId,
    pub ballot: Ballot,
}

/// The promise, with the acceptor's state of the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareOk {
    pub id: InstanceId,
    pub ballot: Ballot,
    /// `Executed` means executed and dropped here: committed, value unknown.
    pub status: Status,
    /// The ballot of the acceptor's last vote (or of the commit).
    pub voted: Ballot,
    pub attrs: Attrs,
    /// The commands as the acceptor knows them (empty if it never saw them).
    pub batch: Batch,
    /// The value voted or committed is a no-op.
    pub noop: bool,
    /// Pre-accepted at the initial ballot with the command leader's
    /// attributes unchanged: a vote the fast path may have counted.
    pub unchanged: bool,
}

/// The receiver has promised a higher ballot than the message carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    pub id: InstanceId,
    pub promised: Ballot,
}

/// Recoverer to its Prepare quorum: the instance may have committed on the
/// fast path with this value; report every instance that could contradict it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validate {
    pub id: InstanceId,
    pub ballot: Ballot,
    pub attrs: Attrs,
    pub batch: Batch,
}

/// The conflicting instances outside the value's dependencies that do not
/// depend on the recovered instance, each with its status here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidateOk {
    pub id: InstanceId,
    pub ballot: Ballot,
    pub conflicts: Vec<(InstanceId, Status)>,
}

/// A recoverer waits on other instances before deciding `id`; `votes` is how
/// many fast-path votes for `id` its Prepare quorum held (EPaxos*'s |Rmax|).
/// Recoverers waiting on each other use it to break the cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub id: InstanceId,
    pub votes: u8,
}

/// What the sender executed and what it knows executed everywhere, per
/// instance space (`stable.rs`): every slot of space q at or below
/// `executed[q]` is executed at the sender, and at or below `stable[q]` at
/// every replica. It rides on other traffic every few milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub executed: [u64; REPLICAS_MAX],
    pub stable: [u64; REPLICAS_MAX],
}
