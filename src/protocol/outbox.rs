//! What the core wants done, in a buffer the caller owns and reuses.
//!
//! The contract: after each call into the core, the driver
//! 1. makes every [`Record`] in `persist` durable (one flush for all of them),
//! 2. then sends `messages` (per peer, in order),
//! 3. then delivers `replies` to clients,
//! 4. then calls [`Outbox::clear`] (which keeps the capacity).
//!
//! A message never leaves before the records of the same call are durable
//! (with the one exception below, a leader's PreAccept on a reserved slot),
//! and a reply never reaches a client before them either. What depends on
//! what:
//! - PreAcceptOk, AcceptOk and PrepareOk report a vote or a promise: the
//!   acceptor's record of it must survive a crash, or a restarted acceptor
//!   could vote again differently (efficient/epaxos issue #28).
//! - A command leader's PreAccept at the initial ballot needs its slot
//!   durably taken: its own record, or a durable reservation covering the
//!   slot ([`Record::reservation`]). After a restart the leader must know
//!   the slot is taken, so that it never proposes anything else there; it
//!   recovers a reserved slot it holds no vote for. (Its own vote is what
//!   its later commit relies on, and that commit leaves after every earlier
//!   record is durable.) A driver may send such a PreAccept before the
//!   records of its call are durable: the node does, so that the leader's
//!   own fdatasync runs beside its peers' instead of before them.
//! - Commit, CommitOk and client replies need the commit record: nothing is
//!   executed visibly, nor acknowledged, before its commit is durable
//!   (efficient/epaxos issue #27).
//! - Prepare, Validate and Accept of a recoverer need its own promise and vote.
//!
//! One flush per call covers all of these at once. A crash at any point
//! leaves a state the protocol tolerates: records durable and messages
//! never sent looks to everyone else like lost messages.

use super::message::Message;
use super::types::{Attrs, Ballot, InstanceId, ReplicaId, Status};
use crate::command::Batch;

/// An instance's state as it must be found after a crash.
/// A replica restarted from the records it persisted, in order (a later record
/// of an instance replaces an earlier one), rebuilds its state from them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: InstanceId,
    pub promised: Ballot,
    pub voted: Ballot,
    pub status: Status,
    pub attrs: Attrs,
    /// The command leader's initial attributes, if known (by value: a
    /// record is copied, never allocated).
    pub initial: Option<Attrs>,
    pub batch: Batch,
    pub noop: bool,
}

impl Record {
    /// A slot reservation: "this replica's slots up to `id.slot` may be in
    /// use". It carries no vote. A restarted replica proposes only above
    /// every own slot its log names (`Replica::restore`), and recovers the
    /// own slots below that its log holds no vote for. Once a reservation
    /// covering a slot is durable, the command leader's PreAccept for that
    /// slot may leave before its own record of it is durable (the driver's
    /// choice: `node::release`).
    pub fn reservation(id: InstanceId) -> Record {
        Record {
            id,
            promised: Ballot::default(),
            voted: Ballot::default(),
            status: Status::None,
            attrs: Attrs::default(),
            initial: None,
            batch: Batch::empty(),
            noop: false,
        }
    }
}

/// The answer to one client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply<O> {
    pub client: u64,
    pub request: u64,
    pub result: Result<O, Refused>,
}

/// Why a command was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The request number ran more than `CLIENT_WINDOW_REQUESTS_MAX` ahead
    /// of the client's oldest outstanding request. Decided in execution
    /// order, so every replica refuses the same commands.
    BeyondClientWindow,
    /// Recovery committed the instance this replica proposed the command in
    /// as a no-op: the command never ran anywhere, and the client may send
    /// it again under the same request number.
    Superseded,
    /// The client had acknowledged this request before this copy of it
    /// executed (a retry that lost the race to an earlier copy): it was not
    /// applied again, and its result is forgotten. Nobody waits for it, so
    /// the runtime answers nobody; it only drops the copy's route.
    Acknowledged,
    /// The client's session is gone (it expired, or the id was never
    /// seen and is below the watermark): not applied. Session ids below
    /// the watermark carried here are never taken again; the client starts
    /// a new session with an id above it. Its requests still outstanding
    /// in the old session have an unknown outcome.
    SessionExpired { retired_below: u64 },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::BeyondClientWindow => write!(
                f,
                "request number more than {} ahead of the oldest outstanding one",
                crate::constants::CLIENT_WINDOW_REQUESTS_MAX
            ),
            Refused::Superseded => write!(
                f,
                "recovery replaced the command's instance with a no-op; it did not run, send it again"
            ),
            Refused::Acknowledged => write!(
                f,
                "the client had acknowledged this request before this copy of it executed"
            ),
            Refused::SessionExpired { retired_below } => write!(
                f,
                "the client's session expired (new sessions need an id from {retired_below} on)"
            ),
        }
    }
}

/// What the simulator's checkers observe (only produced with `Config::trace`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    Committed {
        id: InstanceId,
        attrs: Attrs,
        batch: Batch,
    },
    Executed {
        id: InstanceId,
    },
}

pub struct Outbox<O> {
    /// Messages per destination replica, indexed by `ReplicaId`.
    pub messages: Vec<Vec<Message>>,
    pub persist: Vec<Record>,
    pub replies: Vec<Reply<O>>,
    pub trace: Vec<TraceEvent>,
}

impl<O> Outbox<O> {
    pub fn new(replicas: usize) -> Outbox<O> {
        Outbox {
            messages: (0..replicas).map(|_| Vec::new()).collect(),
            persist: Vec::new(),
            replies: Vec::new(),
            trace: Vec::new(),
        }
    }

    pub fn clear(&mut self) {
        self.messages.iter_mut().for_each(Vec::clear);
        self.persist.clear();
        self.replies.clear();
        self.trace.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.messages.iter().all(Vec::is_empty)
            && self.persist.is_empty()
            && self.replies.is_empty()
            && self.trace.is_empty()
    }

    pub(crate) fn send(&mut self, to: ReplicaId, message: Message) {
        self.messages[to.index()].push(message);
    }
}
