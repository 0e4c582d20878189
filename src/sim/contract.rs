//! Checks of the node's output contract, made on every frame as it leaves a
//! simulated replica (before the network can lose it):
//!
//! - **durability**: a message leaves only once the record it reports or
//!   relies on is durable at its shard: a vote (PreAcceptOk; Accept,
//!   AcceptOk at an accepted record; the command leader's PreAccept needs
//!   its vote, or at the initial ballot a durable record taking the slot:
//!   a reservation), a
//!   promise (Prepare, Validate, PrepareOk), a commit (Commit, CommitOk);
//!   and a client's answer only once a commit record holding that command
//!   is durable at the replica (on any of its shards: a forwarded command
//!   commits at its owner and is answered at the shard the client is
//!   connected to); a Progress report only once the commit of the highest
//!   slot it reports executed is durable (and, checked by the cluster,
//!   only calling stable what every replica holds a durable commit of). Nack, ValidateOk and Waiting
//!   report nothing voted;
//! - **proposals**: a command leader never proposes a slot twice at the
//!   initial ballot with other commands (a PreAccept may leave before the
//!   leader's record of it, on a reserved slot: a restart must not reuse
//!   the slot);
//! - **answers**: no connection gets more answers to a request than it
//!   carried copies of it (a retry on the same connection may be answered
//!   twice, once per copy; an answer sent twice is a defect).
//!
//! What is durable is learned from the simulated storage as it becomes
//! durable, so a crash does not reset it: durable records survive.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::command::Batch;
use crate::protocol::{Attrs, Ballot, InstanceId, Message, PreAccept, Record, ReplicaId, Status};

/// What one shard of one replica has made durable, as far as the checks need.
#[derive(Default)]
pub struct DurableView {
    /// Per instance, the highest ballot a durable record promised, voted at
    /// (any vote), and voted at with the instance accepted or committed.
    promised: FxHashMap<InstanceId, Ballot>,
    voted: FxHashMap<InstanceId, Ballot>,
    accepted: FxHashMap<InstanceId, Ballot>,
    committed: FxHashSet<InstanceId>,
    /// Per replica, the highest slot of its space a durable record names
    /// (a vote, a promise or a reservation): its slots up to here are taken.
    taken: FxHashMap<ReplicaId, u64>,
    /// How many of the storage's records have been read.
    seen: usize,
    /// The batch of every PreAccept this shard sent at the initial ballot
    /// of its own instances, in any incarnation.
    proposed: FxHashMap<InstanceId, (Attrs, Batch)>,
}

fn raise(map: &mut FxHashMap<InstanceId, Ballot>, id: InstanceId, b: Ballot) {
    let e = map.entry(id).or_insert(b);
    *e = (*e).max(b);
}

fn covers(map: &FxHashMap<InstanceId, Ballot>, id: InstanceId, b: Ballot) -> bool {
    map.get(&id).is_some_and(|&d| d >= b)
}

impl DurableView {
    /// Reads the records that became durable since the last call; adds the
    /// (client, request) of every command in a newly durable commit.
    pub fn learn(&mut self, durable: &[Record], commands: &mut FxHashSet<(u64, u64)>) {
        for rec in &durable[self.seen.min(durable.len())..] {
            raise(&mut self.promised, rec.id, rec.promised);
            let taken = self.taken.entry(rec.id.replica).or_default();
            *taken = (*taken).max(rec.id.slot.0);
            if rec.status >= Status::PreAccepted {
                raise(&mut self.voted, rec.id, rec.voted);
            }
            if rec.status >= Status::Accepted {
                raise(&mut self.accepted, rec.id, rec.voted);
            }
            if rec.status >= Status::Committed && self.committed.insert(rec.id) {
                commands.extend(rec.batch.iter().map(|c| (c.client, c.request)));
            }
        }
        self.seen = durable.len();
    }

    /// Why a PreAccept the command leader sends is a defect, if it is: a
    /// second proposal at the initial ballot of a slot it proposed before
    /// with other commands (a restarted leader that forgot a slot whose
    /// PreAccept left before its record was durable).
    pub fn reproposed(&mut self, m: &PreAccept) -> Option<String> {
        if m.ballot != Ballot::initial(m.id.replica) {
            return None;
        }
        let first = self
            .proposed
            .entry(m.id)
            .or_insert_with(|| (m.attrs, m.batch.clone()));
        (first.0 != m.attrs || first.1.bytes() != m.batch.bytes()).then(|| {
            format!(
                "slot {} proposed twice at the initial ballot, with other commands or \
                 attributes",
                m.id
            )
        })
    }

    /// A durable record here commits `id`.
    pub fn committed(&self, id: InstanceId) -> bool {
        self.committed.contains(&id)
    }

    /// Why `msg` must not have left yet, if it must not: every message that
    /// reports or relies on a vote, a promise or a commit needs that record
    /// durable first (`protocol::outbox` lists them).
    pub fn premature(&self, msg: &Message) -> Option<String> {
        let need = |ok: bool, what: &str, id: InstanceId| {
            (!ok).then(|| format!("{what} of {id} before its record was durable"))
        };
        let committed = |id| self.committed.contains(&id);
        match msg {
            // The command leader's, at the initial ballot, on a durably
            // taken slot (a reservation): it reports no vote.
            Message::PreAccept(m)
                if m.ballot == Ballot::initial(m.id.replica)
                    && self
                        .taken
                        .get(&m.id.replica)
                        .is_some_and(|&s| s >= m.id.slot.0) =>
            {
                None
            }
            Message::PreAccept(m) => need(covers(&self.voted, m.id, m.ballot), "a PreAccept", m.id),
            Message::PreAcceptOk(m) => {
                need(covers(&self.voted, m.id, m.ballot), "a PreAcceptOk", m.id)
            }
            Message::Accept(m) => need(covers(&self.accepted, m.id, m.ballot), "an Accept", m.id),
            Message::AcceptOk(m) => {
                need(covers(&self.accepted, m.id, m.ballot), "an AcceptOk", m.id)
            }
            Message::Commit(m) => need(committed(m.id), "a Commit", m.id),
            Message::CommitOk(m) => need(committed(m.id), "a CommitOk", m.id),
            Message::Prepare(m) => need(covers(&self.promised, m.id, m.ballot), "a Prepare", m.id),
            Message::Validate(m) => {
                need(covers(&self.promised, m.id, m.ballot), "a Validate", m.id)
            }
            // An instance executed and dropped here has no promise to keep.
            Message::PrepareOk(m) if m.status == Status::Executed => None,
            Message::PrepareOk(m) => {
                need(covers(&self.promised, m.id, m.ballot), "a PrepareOk", m.id)
            }
            // Executed here means committed here, durably: a report must
            // not outlive a crash that forgets what it reports.
            Message::Progress(m) => (0..m.executed.len()).find_map(|q| {
                let id = InstanceId::new(ReplicaId(q as u8), m.executed[q]);
                (m.executed[q] > 0 && !committed(id)).then(|| {
                    format!("a Progress reporting {id} executed before its commit was durable")
                })
            }),
            Message::Nack(_) | Message::ValidateOk(_) | Message::Waiting(_) => None,
        }
    }
}

/// Per connection and request: copies that arrived, answers that left.
#[derive(Default)]
pub struct AnswerCount {
    counts: FxHashMap<ConnKey, (u32, u32)>,
}

/// A connection of one incarnation of a shard, and a request on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub replica: usize,
    pub shard: usize,
    pub incarnation: u64,
    pub conn: u64,
    pub client: u64,
    pub request: u64,
}

impl AnswerCount {
    pub fn sent(&mut self, key: ConnKey) {
        self.counts.entry(key).or_default().0 += 1;
    }

    /// Counts an answer; an error if it is one more than the copies sent.
    pub fn answered(&mut self, key: ConnKey) -> Result<(), String> {
        let (sent, answered) = self.counts.entry(key).or_default();
        *answered += 1;
        if *answered > *sent {
            return Err(format!(
                "replica {} shard {} answered request {} of client {} {} times on one \
                 connection that carried it {} times",
                key.replica, key.shard, key.request, key.client, answered, sent
            ));
        }
        Ok(())
    }
}
