//! The replica: its state, the call contract, the message dispatch, and the
//! acceptor's handlers. The command leader's side is in `leader.rs`, execution
//! in `exec.rs`.

use std::collections::VecDeque;

use super::config::Config;
use super::exec::ExecScratch;
use super::index::ConflictIndex;
use super::message::{Accept, AcceptOk, Commit, CommitOk, Message, PreAccept, PreAcceptOk};
use super::outbox::{Outbox, Record, TraceEvent};
use super::space::{Instance, Lookup, Spaces};
use super::types::{InstanceId, ReplicaId, Status};
use crate::state_machine::StateMachine;

/// One replica of one EPaxos group.
pub struct Replica<S: StateMachine> {
    pub(super) cfg: Config,
    pub(super) sm: S,
    pub(super) spaces: Spaces,
    pub(super) index: ConflictIndex<S>,
    pub(super) exec: ExecScratch,
    /// The slot this replica's next own instance takes.
    pub(super) next_slot: u64,
    /// Own instances with a pending re-send, by deadline. Every entry is
    /// pushed `retransmit_timeout_ns` after a non-decreasing `now`, so a FIFO
    /// is already sorted.
    pub(super) retry: VecDeque<(u64, u64)>,
    pub(super) now: u64,
    pub(super) stats: ReplicaStats,
}

/// Counters, for tests, benches and the admin interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    pub proposed: u64,
    pub fast_commits: u64,
    pub slow_commits: u64,
    pub executed_instances: u64,
    pub executed_commands: u64,
    pub retransmits: u64,
}

impl<S: StateMachine> Replica<S> {
    pub fn new(cfg: Config, sm: S) -> Replica<S> {
        Replica {
            spaces: Spaces::new(cfg.replicas),
            index: ConflictIndex::new(cfg.replicas),
            cfg,
            sm,
            exec: ExecScratch::default(),
            next_slot: 1,
            retry: VecDeque::new(),
            now: 0,
            stats: ReplicaStats::default(),
        }
    }

    pub fn id(&self) -> ReplicaId {
        self.cfg.me
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    /// Instances held in memory (a measure of compaction).
    pub fn instances_in_memory(&self) -> usize {
        self.spaces.len()
    }

    /// Keys in the conflict index.
    pub fn indexed_keys(&self) -> usize {
        self.index.keys()
    }

    /// Client sessions in the exactly-once table.
    pub fn client_sessions(&self) -> usize {
        self.index.clients()
    }

    /// When `tick` next has work, if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        self.retry.front().map(|&(at, _)| at)
    }

    /// A message from peer `from`. Messages from peers are trusted to be well
    /// formed (the wire layer validated them); stale and duplicate ones are
    /// expected and ignored or answered again.
    pub fn handle(&mut self, now: u64, from: ReplicaId, msg: Message, out: &mut Outbox<S::Output>) {
        assert!(from != self.cfg.me && from.index() < self.cfg.replicas);
        self.advance(now);
        match msg {
            Message::PreAccept(m) => self.on_pre_accept(from, m, out),
            Message::PreAcceptOk(m) => self.on_pre_accept_ok(from, m, out),
            Message::Accept(m) => self.on_accept(from, m, out),
            Message::AcceptOk(m) => self.on_accept_ok(from, m, out),
            Message::Commit(m) => self.on_commit(from, m, out),
            Message::CommitOk(m) => self.on_commit_ok(from, m),
        }
        self.execute_ready(out);
    }

    pub(super) fn advance(&mut self, now: u64) {
        assert!(now >= self.now, "time went backwards: {now} < {}", self.now);
        self.now = now;
    }

    fn on_pre_accept(&mut self, from: ReplicaId, m: PreAccept, out: &mut Outbox<S::Output>) {
        assert_eq!(
            m.id.replica, from,
            "PreAccept for another leader's instance"
        );
        let Some(inst) = self.spaces.entry(m.id) else {
            return; // executed and compacted here: long decided
        };
        if inst.is_committed() || m.ballot < inst.ballot || inst.status == Status::Accepted {
            return;
        }
        if inst.status == Status::PreAccepted && inst.ballot == m.ballot {
            // A re-send: answer with what was recorded, never recompute.
            let reply = PreAcceptOk {
                id: m.id,
                ballot: m.ballot,
                attrs: inst.attrs,
            };
            out.send(from, Message::PreAcceptOk(reply));
            return;
        }
        let mut attrs = m.attrs;
        self.index
            .add_conflicts_and_record(m.id, &m.batch, &mut attrs);
        inst.status = Status::PreAccepted;
        inst.ballot = m.ballot;
        inst.attrs = attrs;
        inst.batch = m.batch;
        inst.indexed_seq = attrs.seq;
        out.persist.push(record(m.id, inst));
        let reply = PreAcceptOk {
            id: m.id,
            ballot: m.ballot,
            attrs,
        };
        out.send(from, Message::PreAcceptOk(reply));
    }

    fn on_accept(&mut self, from: ReplicaId, m: Accept, out: &mut Outbox<S::Output>) {
        assert_eq!(m.id.replica, from, "Accept for another leader's instance");
        let Some(inst) = self.spaces.entry(m.id) else {
            return;
        };
        if inst.is_committed() || m.ballot < inst.ballot {
            return;
        }
        inst.status = Status::Accepted;
        inst.ballot = m.ballot;
        inst.attrs = m.attrs;
        inst.batch = m.batch;
        reindex(&mut self.index, m.id, inst);
        out.persist.push(record(m.id, inst));
        let reply = AcceptOk {
            id: m.id,
            ballot: m.ballot,
        };
        out.send(from, Message::AcceptOk(reply));
    }

    fn on_commit(&mut self, from: ReplicaId, m: Commit, out: &mut Outbox<S::Output>) {
        let id = m.id;
        match self.spaces.entry(id) {
            Some(inst) => {
                if !inst.is_committed() {
                    inst.ballot = m.ballot;
                    inst.attrs = m.attrs;
                    inst.batch = m.batch;
                    self.mark_committed(id, out);
                }
            }
            // Executed and compacted here: acknowledged again below, so the
            // leader stops re-sending. Otherwise too far ahead of this
            // replica's window to record: not acknowledged, so the leader
            // keeps re-sending until it fits.
            None => {
                if !matches!(self.spaces.get(id), Lookup::Compacted) {
                    return;
                }
            }
        }
        out.send(from, Message::CommitOk(CommitOk { id }));
    }

    /// Makes the instance committed with the attributes and batch already in
    /// it: persist, index, trace, and queue it for execution.
    pub(super) fn mark_committed(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) {
        let inst = self
            .spaces
            .get_mut(id)
            .expect("committing a known instance");
        assert!(!inst.is_committed(), "instance {id} committed twice");
        inst.status = Status::Committed;
        reindex(&mut self.index, id, inst);
        out.persist.push(record(id, inst));
        if self.cfg.trace {
            out.trace.push(TraceEvent::Committed {
                id,
                attrs: inst.attrs,
                batch: inst.batch.clone(),
            });
        }
        self.exec.ready.push(id);
        self.exec.ready.append(&mut inst.waiters);
    }
}

/// Brings the conflict index up to the instance's current seq, once per rise.
fn reindex<S: StateMachine>(index: &mut ConflictIndex<S>, id: InstanceId, inst: &mut Instance) {
    if inst.attrs.seq > inst.indexed_seq {
        index.record(id, inst.attrs.seq, &inst.batch);
        inst.indexed_seq = inst.attrs.seq;
    }
}

pub(super) fn record(id: InstanceId, inst: &Instance) -> Record {
    Record {
        id,
        ballot: inst.ballot,
        status: inst.status,
        attrs: inst.attrs,
        batch: inst.batch.clone(),
    }
}
