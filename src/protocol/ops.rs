//! The steps on one instance that the acceptor (`replica.rs`), the leader
//! (`leader.rs`) and the recoverer (`recovery.rs`) share: a vote and the
//! conflict index following it, and what an instance puts in the outbox (its
//! record, its promise's report, its commit's trace event, a refusal, one
//! message to a set of peers). Free functions over the data, owned here so
//! that the three roles import them from below instead of from each other.

use super::index::ConflictIndex;
use super::message::{Message, Nack, PrepareOk};
use super::outbox::{Outbox, Record, TraceEvent};
use super::space::Instance;
use super::types::{Attrs, Ballot, Initial, InstanceId, ReplicaId, Status};
use crate::command::Batch;
use crate::state_machine::StateMachine;

/// A vote for a value at `ballot`: the acceptor's side of Accept, and the
/// recoverer's own vote before it sends one. `batch` replaces the
/// instance's commands unless it is `None` (a recoverer that already holds
/// them) or the value is a no-op (which keeps them for the leader's answers).
pub(super) fn accept<S: StateMachine>(
    index: &mut ConflictIndex<S>,
    id: InstanceId,
    inst: &mut Instance,
    ballot: Ballot,
    attrs: Attrs,
    noop: bool,
    batch: Option<Batch>,
) {
    inst.status = Status::Accepted;
    inst.promised = ballot;
    inst.voted = ballot;
    inst.set_value(attrs, noop, batch);
    if !noop {
        reindex(index, id, inst);
    }
}

/// Tells `to` that the instance has promised a higher ballot than it used.
pub(super) fn nack<O>(out: &mut Outbox<O>, to: ReplicaId, id: InstanceId, promised: Ballot) {
    out.send(to, Message::Nack(Nack { id, promised }));
}

/// Brings the conflict index up to the instance's current seq, once per rise.
pub(super) fn reindex<S: StateMachine>(
    index: &mut ConflictIndex<S>,
    id: InstanceId,
    inst: &mut Instance,
) {
    if inst.attrs.seq > inst.indexed_seq {
        index.record(id, inst.attrs.seq, &inst.batch);
        inst.indexed_seq = inst.attrs.seq;
    }
}

pub(super) fn prepare_ok(id: InstanceId, ballot: Ballot, inst: &Instance) -> PrepareOk {
    PrepareOk {
        id,
        ballot,
        status: inst.status.min(Status::Committed),
        voted: inst.voted,
        attrs: inst.attrs,
        batch: inst.batch.clone(),
        noop: inst.noop,
        unchanged: inst.status == Status::PreAccepted && inst.initial == Initial::Same,
    }
}

pub(super) fn record(id: InstanceId, inst: &Instance) -> Record {
    Record {
        id,
        promised: inst.promised,
        voted: inst.voted,
        status: inst.status.min(Status::Committed),
        attrs: inst.attrs,
        initial: inst.initial_attrs().copied(),
        batch: inst.batch.clone(),
        noop: inst.noop,
    }
}

/// The trace event of this instance's commit, for the simulator.
pub(super) fn committed_event(id: InstanceId, inst: &Instance) -> TraceEvent {
    TraceEvent::Committed {
        id,
        attrs: inst.attrs,
        batch: inst.value_batch(),
    }
}

/// Sends `msg` to every replica in `mask`.
pub(super) fn send_to_mask<O>(
    out: &mut Outbox<O>,
    mask: u16,
    replicas: usize,
    mut msg: impl FnMut(ReplicaId) -> Message,
) {
    for r in 0..replicas {
        if mask & (1 << r) != 0 {
            let to = ReplicaId(r as u8);
            out.send(to, msg(to));
        }
    }
}
