//! The messages replicas exchange, as the core sees them (already decoded).

use super::types::{Attrs, Ballot, InstanceId};
use crate::wire::Batch;

/// One protocol message. The dispatch in `Replica::handle` is a single match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    PreAccept(PreAccept),
    PreAcceptOk(PreAcceptOk),
    Accept(Accept),
    AcceptOk(AcceptOk),
    Commit(Commit),
    CommitOk(CommitOk),
}

/// Leader to acceptor: here is a batch with the attributes the leader saw.
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

/// Leader to acceptor (slow path): accept these final attributes. Carries the
/// batch so an acceptor that missed the PreAccept still knows the commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accept {
    pub id: InstanceId,
    pub ballot: Ballot,
    pub attrs: Attrs,
    pub batch: Batch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptOk {
    pub id: InstanceId,
    pub ballot: Ballot,
}

/// The instance is decided with these attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub id: InstanceId,
    pub ballot: Ballot,
    pub attrs: Attrs,
    pub batch: Batch,
}

/// The receiver has the commit durably; the leader stops re-sending it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOk {
    pub id: InstanceId,
}
