//! The replica: its state, the call contract, the message dispatch, and the
//! acceptor's handlers. The command leader's side is in `leader.rs`,
//! recovery in `recovery.rs`, execution in `exec.rs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rustc_hash::FxHashMap;

use super::config::{Config, InjectedBug};
use super::exec::ExecScratch;
use super::index::ConflictIndex;
use super::lead::{Lead, Phase};
use super::message::{
    AcceptOk, CommitOk, Message, PreAccept, PreAcceptOk, Prepare, PrepareOk, Progress, Validate,
    ValidateOk, Value,
};
use super::ops::{accept, committed_event, nack, prepare_ok, record, reindex, send_to_mask};
use super::outbox::{Outbox, Record};
use super::space::{Instance, Lookup, Spaces};
use super::stable::Stability;
use super::types::{Attrs, Ballot, Deps, Initial, InstanceId, ReplicaId, Status};
use crate::command::Batch;
use crate::constants::QUEUE_KEPT_SLOTS_MIN;
use crate::histogram::{Histogram, Nanos};
use crate::rng::Rng;
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
    /// Own instances proposed (or found in the log at restart) and not
    /// committed here yet: what the driver's pipeline limit counts.
    pub(super) own_uncommitted: usize,
    /// Led instances with a pending re-send, by deadline. Every entry is
    /// pushed `retransmit_timeout_ns` after a non-decreasing `now`, so a FIFO
    /// is already sorted.
    pub(super) retry: VecDeque<(u64, InstanceId)>,
    /// Peers the runtime reports unreachable (their link is down): commits
    /// are not re-sent to them.
    pub(super) unreachable: u16,
    /// Committed instances of ours whose only unacknowledged peers are
    /// unreachable: off the retry queue (re-sending to a peer that is down
    /// would cost more the longer it stays down) until one comes back.
    pub(super) parked: Vec<InstanceId>,
    /// Per replica, when this replica last handled a message from it. A
    /// peer silent for a whole re-send timeout is *stalled*
    /// (`stalled_peers`): stopped, or too far behind to answer. Commits it
    /// lacks are parked as for an unreachable peer, and it gets one of them
    /// per timeout (`probe_stalled`) until it answers again.
    pub(super) heard: Vec<u64>,
    /// Per replica, when a stalled peer may get its next probe.
    pub(super) probe_at: Vec<u64>,
    /// `tick` re-sends and recovers nothing before this: the last one
    /// spent its `RESENDS_PER_PACE_MAX`.
    pub(super) paced_until: u64,
    /// Recovery checks, by deadline (randomised, hence a heap). An entry is
    /// live only while it matches its instance's `watch_at`.
    pub(super) watches: BinaryHeap<Reverse<(u64, InstanceId)>>,
    /// Recoveries in their waiting phase, re-examined when something commits
    /// or a `Waiting` arrives.
    pub(super) waiting: Vec<InstanceId>,
    pub(super) waiting_dirty: bool,
    /// `Waiting` announcements heard: instance -> most fast-path votes its
    /// recoverer reported.
    pub(super) waiting_votes: FxHashMap<InstanceId, u8>,
    /// CommitOks owed to each peer, not sent yet: they ride on the next
    /// message to that peer (`flush_acks`), or go on their own once the
    /// oldest has waited `ack_delay` (`acks_due`). Only the re-sending of
    /// commits waits on them, so holding them costs no latency, and it
    /// saves a message (a send, a receive and often a wake-up) for each
    /// commit at low load.
    pub(super) acks: Vec<Vec<InstanceId>>,
    pub(super) acks_due: Vec<Option<u64>>,
    /// What is executed at every replica (`stable.rs`), learnt from the
    /// `Progress` reports that ride on other traffic.
    pub(super) stability: Stability,
    /// `stats.executed_instances` when this replica last computed its own
    /// executed prefix: a report may be owed while they differ.
    pub(super) executed_reported: u64,
    /// The highest seq of an instance executed here. A command leader
    /// starts its instances' seq above it, so that the seq of a forgotten
    /// row (an instance executed everywhere, hence here) never raises an
    /// acceptor's: a replica that still holds the row and one that forgot
    /// it compute the same attributes.
    pub(super) seq_executed: u64,
    /// Scratch for `expire_sessions`.
    pub(super) expiring: Vec<(u64, u64)>,
    /// `Op::Expire`s this replica proposed that have not executed here (or
    /// become a no-op) yet: while any is, it proposes no more, so that a
    /// look never proposes again what the last one did, and a minority
    /// side of a partition does not pile them up.
    pub(super) expiries_in_flight: usize,
    pub(super) rng: Rng,
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
    /// Recoveries started (Prepare sent).
    pub recoveries: u64,
    /// Recoveries this replica decided, by outcome.
    pub recovered_commands: u64,
    pub recovered_noops: u64,
    /// Keys the conflict index forgot once every instance it recorded for
    /// them was executed at every replica.
    pub keys_forgotten: u64,
    /// Client sessions expired (idle, or the least recently used past the
    /// bound), and client entries dropped once stale.
    pub sessions_expired: u64,
    pub clients_dropped: u64,
    /// From `propose` to the commit, for the instances this replica led
    /// at their initial ballot (a recovered one is not counted), in the
    /// core's nanoseconds.
    pub commit_latency: Histogram<Nanos>,
}

impl<S: StateMachine> Replica<S> {
    pub fn new(cfg: Config, sm: S) -> Replica<S> {
        Replica {
            spaces: Spaces::new(cfg.replicas),
            index: ConflictIndex::new(cfg.replicas),
            rng: Rng::new(cfg.rng_seed),
            acks: (0..cfg.replicas).map(|_| Vec::new()).collect(),
            acks_due: vec![None; cfg.replicas],
            heard: vec![0; cfg.replicas],
            probe_at: vec![0; cfg.replicas],
            paced_until: 0,
            stability: Stability::new(cfg.replicas, cfg.me),
            executed_reported: 0,
            seq_executed: 0,
            expiring: Vec::new(),
            expiries_in_flight: 0,
            cfg,
            sm,
            exec: ExecScratch::default(),
            next_slot: 1,
            own_uncommitted: 0,
            retry: VecDeque::new(),
            unreachable: 0,
            parked: Vec::new(),
            watches: BinaryHeap::new(),
            waiting: Vec::new(),
            waiting_dirty: false,
            waiting_votes: FxHashMap::default(),
            now: 0,
            stats: ReplicaStats::default(),
        }
    }

    /// A replica restarted after a crash, rebuilt from the records it had
    /// persisted (in the order it persisted them; `sm` must be the state
    /// machine's initial state). Committed instances are executed again (the
    /// state machine and the exactly-once table are rebuilt that way),
    /// commits this replica led are sent again to every peer, and every
    /// instance it knew uncommitted is watched for recovery.
    pub fn restore<'r>(
        cfg: Config,
        sm: S,
        now: u64,
        records: impl IntoIterator<Item = &'r Record>,
        out: &mut Outbox<S::Output>,
    ) -> Replica<S> {
        let mut r = Replica::new(cfg, sm);
        r.now = now;
        let me = r.cfg.me;
        for rec in records {
            let inst = r
                .spaces
                .entry(rec.id)
                .expect("a persisted instance fits the window");
            inst.status = rec.status;
            inst.promised = rec.promised;
            inst.voted = rec.voted;
            inst.attrs = rec.attrs;
            inst.initial = match rec.initial {
                None => Initial::Unknown,
                Some(a) if a == rec.attrs => Initial::Same,
                Some(a) => Initial::Other(Box::new(a)),
            };
            inst.batch = rec.batch.clone();
            inst.noop = rec.noop;
            if rec.id.replica == me {
                r.next_slot = r.next_slot.max(rec.id.slot.0 + 1);
            }
        }
        let ids: Vec<InstanceId> = r.spaces.iter().map(|(id, _)| id).collect();
        for id in ids {
            let inst = r.spaces.get_mut(id).expect("listed");
            if !inst.noop && !inst.batch.is_empty() && inst.attrs.seq > 0 {
                r.index.record(id, inst.attrs.seq, &inst.batch);
                inst.indexed_seq = inst.attrs.seq;
            }
            if inst.is_committed() {
                if r.cfg.trace {
                    out.trace.push(committed_event(id, inst));
                }
                r.exec.ready.push(id);
                if id.replica == me || inst.voted.replica == me {
                    r.lead_commit(id, out);
                }
            } else if inst.status >= Status::PreAccepted {
                if id.replica == me {
                    r.own_uncommitted += 1;
                }
                r.watch(id);
            }
        }
        // Own slots below the next one that the log shows taken but holds
        // no vote for: a slot reservation (`Record::reservation`) covered
        // them, so their PreAccepts may have reached peers before this
        // replica's own record was durable. They are recovered like any
        // uncommitted instance (to the value a peer holds, or a no-op), so
        // no slot is proposed twice and no gap stalls compaction.
        let own_slots = if r.cfg.replicas > 1 {
            r.spaces.base(me)..r.next_slot
        } else {
            0..0 // one replica sends no PreAccepts, so it reserves nothing
        };
        for slot in own_slots {
            let id = InstanceId::new(me, slot);
            let known = r.spaces.get_mut(id).map(|i| i.status);
            if known.is_none() || known == Some(Status::None) {
                r.own_uncommitted += 1;
                r.watch(id);
            }
        }
        r.execute_ready(out);
        r
    }

    /// The highest slot of `replica`'s space this replica holds or held
    /// (compacted instances count); 0 if it never heard of any.
    pub fn highest_slot_known(&self, replica: ReplicaId) -> u64 {
        self.spaces.last_slot(replica)
    }

    /// The slot this replica's next proposal takes.
    pub fn next_slot(&self) -> u64 {
        self.next_slot
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
        ReplicaStats {
            keys_forgotten: self.index.forgotten(),
            sessions_expired: self.index.sessions_expired().0,
            clients_dropped: self.index.sessions_expired().1,
            ..self.stats
        }
    }

    /// Instances held in memory (a measure of compaction).
    pub fn instances_in_memory(&self) -> usize {
        self.spaces.len()
    }

    /// Keys in the conflict index.
    pub fn indexed_keys(&self) -> usize {
        self.index.keys()
    }

    /// `n` of the expiries `expire_sessions` gave were never proposed (the
    /// driver's `propose` refused their batch).
    pub fn expiries_not_proposed(&mut self, n: usize) {
        self.expiries_in_flight = self.expiries_in_flight.saturating_sub(n);
    }

    /// Client sessions in the exactly-once table.
    pub fn client_sessions(&self) -> usize {
        self.index.sessions()
    }

    /// Client entries of the conflict index (sessions, and clients whose
    /// rows are not yet stale).
    pub fn client_entries(&self) -> usize {
        self.index.clients()
    }

    /// Session ids below this that hold no session never start one again
    /// (replicated state).
    pub fn sessions_retired_below(&self) -> u64 {
        self.index.retired_below()
    }

    /// Sessions to expire now (see `ConflictIndex::expiry_candidates`), at
    /// most `limit`, as batches of `Op::Expire` commands (each full but the
    /// last) appended to `out`; how many sessions.
    pub fn expire_sessions(
        &mut self,
        now: u64,
        bounds: super::index::SessionBounds,
        limit: usize,
        out: &mut Vec<crate::command::Batch>,
    ) -> usize {
        if self.expiries_in_flight > 0 {
            return 0;
        }
        let mut found = std::mem::take(&mut self.expiring);
        found.clear();
        let (me, n) = (self.cfg.me.index(), self.cfg.replicas);
        self.index
            .expiry_candidates(now, bounds, (me, n), limit, &mut found);
        let mut batch = crate::command::BatchBuilder::new();
        for &(client, executed) in &found {
            if batch.len() == crate::constants::BATCH_COMMANDS_MAX {
                out.push(batch.finish());
            }
            batch.push(&crate::command::CommandRef {
                client,
                request: 0,
                first_outstanding: executed,
                op: crate::command::Op::Expire,
                key: b"",
                value: b"",
            });
        }
        if !batch.is_empty() {
            out.push(batch.finish());
        }
        let count = found.len();
        self.expiring = found;
        self.expiries_in_flight += count;
        count
    }

    /// Instances this replica proposed that are not committed here yet. A
    /// driver that limits how many proposals it keeps in flight (the
    /// pipeline) reads it before each `propose`.
    pub fn proposals_in_flight(&self) -> usize {
        self.own_uncommitted
    }

    /// The instance's status here (`Executed` for one executed and dropped).
    pub fn status(&self, id: InstanceId) -> Status {
        match self.spaces.get(id) {
            Lookup::Compacted => Status::Executed,
            Lookup::Missing => Status::None,
            Lookup::Found(inst) => inst.status,
        }
    }

    /// Whether `peer` can be reached, as the runtime sees its link. While
    /// it cannot, commits of ours it has not acknowledged are not re-sent
    /// to it; when it can again, every one of them is re-sent at the next
    /// `tick`. Peers start reachable. Only commits wait: every other
    /// message is still re-sent on its timer.
    pub fn set_reachable(&mut self, peer: ReplicaId, reachable: bool) {
        assert!(
            peer.index() < self.cfg.replicas && peer != self.cfg.me,
            "peer {}",
            peer.0
        );
        let was = self.unreachable & peer.bit() == 0;
        if reachable {
            self.unreachable &= !peer.bit();
            // What was sent on the old link may be lost, and the peer may
            // have restarted knowing nothing: tell it again.
            self.stability.forget_sent(peer);
            if !was {
                self.unpark();
            }
        } else {
            self.unreachable |= peer.bit();
        }
    }

    /// Puts every parked commit back on the re-send queue, due at once
    /// (ahead of everything queued, so the queue stays sorted), oldest
    /// first: the peer executes each as it arrives instead of holding them
    /// all until the oldest comes last. `tick` paces them. Those still
    /// lacking only away peers park again.
    pub(super) fn unpark(&mut self) {
        for id in self.parked.drain(..).rev() {
            self.retry.push_front((0, id));
        }
        if self.parked.capacity() > QUEUE_KEPT_SLOTS_MIN {
            self.parked = Vec::new();
        }
    }

    /// Peers that sent nothing for longer than a re-send timeout.
    pub(super) fn stalled_peers(&self) -> u16 {
        let quiet = self.cfg.retransmit_timeout_ns;
        self.cfg
            .peers()
            .filter(|p| self.now.saturating_sub(self.heard[p.index()]) > quiet)
            .fold(0, |mask, p| mask | p.bit())
    }

    /// Commits waiting for an unreachable peer to come back.
    pub fn parked_commits(&self) -> usize {
        self.parked.len()
    }

    /// When `tick` next has work, if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        let paced = self.paced_until;
        let retry = self.retry.front().map(|&(at, _)| at.max(paced));
        let watch = self.watches.peek().map(|Reverse((at, _))| (*at).max(paced));
        let acks = self.acks_due.iter().flatten().min().copied();
        [
            retry,
            watch,
            acks,
            self.progress_deadline(),
            self.probe_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When a `Progress` report falls due: this replica's own executed
    /// prefix changed since it was last computed, or a peer has not been
    /// told the latest one.
    fn progress_deadline(&self) -> Option<u64> {
        // One replica has nobody to tell: it forgets keys as its turns go.
        let own = (self.cfg.replicas > 1
            && self.stats.executed_instances != self.executed_reported)
            .then(|| self.stability.next_report());
        let peers = self.cfg.peers().filter(|p| self.unreachable & p.bit() == 0);
        let alone = self.stability.next_alone(peers, self.progress_alone());
        own.into_iter().chain(alone).min()
    }

    /// A report rides on other traffic to its peer at most this often.
    fn progress_interval(&self) -> u64 {
        self.cfg.retransmit_timeout_ns / 4
    }

    /// A report goes alone after this long without traffic to ride on.
    fn progress_alone(&self) -> u64 {
        self.cfg.retransmit_timeout_ns * 5
    }

    /// How long a CommitOk may wait for other traffic to its peer: well
    /// under the commit's re-send timeout, so the leader never re-sends a
    /// commit only because its acknowledgement was held.
    fn ack_delay(&self) -> u64 {
        self.cfg.retransmit_timeout_ns / 4
    }

    /// Owes `to` a CommitOk for `id` (see `acks`).
    pub(super) fn defer_ack(&mut self, to: ReplicaId, id: InstanceId) {
        let i = to.index();
        if self.acks[i].is_empty() {
            self.acks_due[i] = Some(self.now + self.ack_delay());
        }
        self.acks[i].push(id);
    }

    /// Sends the CommitOks owed to every peer that `out` already holds a
    /// message for (they ride in the same write), and those due by `now`.
    /// Drivers call it once their call's messages are all in `out`; `tick`
    /// sends the due ones too.
    ///
    /// It also sends the `Progress` reports due, the same way, and lets the
    /// conflict index drop its old generation once the floor passed it.
    pub fn flush_acks(&mut self, now: u64, out: &mut Outbox<S::Output>) {
        self.send_acks(out, |due, riding| riding || due <= now);
        self.send_progress(now, out);
        self.index.sweep();
    }

    fn send_progress(&mut self, now: u64, out: &mut Outbox<S::Output>) {
        let interval = self.progress_interval();
        if self.stability.report_due(now) && self.stats.executed_instances != self.executed_reported
        {
            self.executed_reported = self.stats.executed_instances;
            // The prefix only grows: start where the last count ended, so a
            // long run of executed instances a leader keeps for acks (a peer
            // down) is not walked again every interval.
            let mut own = *self.stability.own_executed();
            for (q, e) in own.iter_mut().enumerate().take(self.cfg.replicas) {
                *e = self.spaces.executed_below_from(ReplicaId(q as u8), *e + 1) - 1;
            }
            if self.stability.set_own(now, interval, &own) {
                self.index.set_floor(self.stability.floor());
            }
        }
        let alone = self.progress_alone();
        for p in self.cfg.peers() {
            if self.unreachable & p.bit() != 0 {
                continue;
            }
            let riding = !out.messages[p.index()].is_empty();
            if let Some((executed, stable)) =
                self.stability.report_for(p, now, riding, interval, alone)
            {
                out.send(p, Message::Progress(Progress { executed, stable }));
            }
        }
    }

    /// Sends every CommitOk owed, due or not (a harness whose network went
    /// quiet, where time would pass until they are due).
    pub fn flush_all_acks(&mut self, out: &mut Outbox<S::Output>) {
        self.send_acks(out, |_, _| true);
    }

    fn send_acks(&mut self, out: &mut Outbox<S::Output>, send: impl Fn(u64, bool) -> bool) {
        for i in 0..self.cfg.replicas {
            let Some(due) = self.acks_due[i] else {
                continue;
            };
            if !send(due, !out.messages[i].is_empty()) {
                continue;
            }
            self.acks_due[i] = None;
            for id in self.acks[i].drain(..) {
                out.messages[i].push(Message::CommitOk(CommitOk { id }));
            }
        }
    }

    /// A message from peer `from`. Messages from peers are trusted to be well
    /// formed (the wire layer validated them); stale and duplicate ones are
    /// expected and ignored or answered again.
    pub fn handle(&mut self, now: u64, from: ReplicaId, msg: Message, out: &mut Outbox<S::Output>) {
        assert!(from != self.cfg.me && from.index() < self.cfg.replicas);
        self.advance(now);
        let stalled = self.stalled_peers() & from.bit() != 0;
        self.heard[from.index()] = now;
        if stalled && !self.parked.is_empty() {
            // It is back: what it missed goes out again, paced by `tick`.
            self.unpark();
        }
        match msg {
            Message::PreAccept(m) => self.on_pre_accept(from, m, out),
            Message::PreAcceptOk(m) => self.on_pre_accept_ok(from, m, out),
            Message::Accept(m) => self.on_accept(from, m, out),
            Message::AcceptOk(m) => self.on_accept_ok(from, m, out),
            Message::Commit(m) => self.on_commit(from, m, out),
            Message::CommitOk(m) => self.on_commit_ok(from, m),
            Message::Prepare(m) => self.on_prepare(from, m, out),
            Message::PrepareOk(m) => self.on_prepare_ok(from, m, out),
            Message::Nack(m) => self.on_nack(m),
            Message::Validate(m) => self.on_validate(from, m, out),
            Message::ValidateOk(m) => self.on_validate_ok(from, m, out),
            Message::Waiting(m) => self.on_waiting(m),
            Message::Progress(m) => self.on_progress(from, m),
        }
        self.settle(out);
    }

    /// After each call: re-examine waiting recoveries if anything they wait
    /// for changed, then execute what became executable.
    pub(super) fn settle(&mut self, out: &mut Outbox<S::Output>) {
        if self.waiting_dirty {
            self.waiting_dirty = false;
            self.recheck_waiting(out);
        }
        self.execute_ready(out);
    }

    pub(super) fn advance(&mut self, now: u64) {
        assert!(now >= self.now, "time went backwards: {now} < {}", self.now);
        self.now = now;
    }

    fn on_progress(&mut self, from: ReplicaId, m: Progress) {
        if self.stability.on_report(from, &m.executed, &m.stable) {
            self.index.set_floor(self.stability.floor());
        }
    }

    fn on_pre_accept(&mut self, from: ReplicaId, m: PreAccept, out: &mut Outbox<S::Output>) {
        if m.id.replica != from || m.ballot != Ballot::initial(from) {
            debug_assert!(
                false,
                "PreAccept {} from {} at {:?}",
                m.id, from.0, m.ballot
            );
            return;
        }
        let Some(inst) = self.spaces.entry(m.id) else {
            return; // executed and compacted here: long decided
        };
        if inst.is_committed() {
            return;
        }
        if inst.promised > m.ballot {
            nack(out, from, m.id, inst.promised);
            return;
        }
        if inst.status != Status::None {
            if inst.status == Status::PreAccepted && inst.voted == m.ballot {
                // A re-send: answer with what was recorded, never recompute.
                let reply = PreAcceptOk {
                    id: m.id,
                    ballot: m.ballot,
                    attrs: inst.attrs,
                };
                out.send(from, Message::PreAcceptOk(reply));
            }
            return;
        }
        let mut attrs = m.attrs;
        // Rows at or below the floor may be gone from the index: the
        // dependencies must cover them all the same. A leader's PreAccept
        // already does (it carries that leader's stable frontier, never
        // below this floor) unless it was re-sent or the leader restarted.
        attrs.deps.union(&Deps(*self.stability.floor()));
        self.index
            .add_conflicts_and_record(m.id, &m.batch, &mut attrs);
        inst.status = Status::PreAccepted;
        inst.promised = m.ballot;
        inst.voted = m.ballot;
        inst.initial = if attrs == m.attrs {
            Initial::Same
        } else {
            Initial::Other(Box::new(m.attrs))
        };
        inst.attrs = attrs;
        inst.batch = m.batch;
        inst.noop = false;
        inst.indexed_seq = attrs.seq;
        if self.cfg.injected_bug != Some(InjectedBug::PreAcceptNotPersisted) {
            out.persist.push(record(m.id, inst));
        }
        let reply = PreAcceptOk {
            id: m.id,
            ballot: m.ballot,
            attrs,
        };
        out.send(from, Message::PreAcceptOk(reply));
    }

    fn on_accept(&mut self, from: ReplicaId, m: Value, out: &mut Outbox<S::Output>) {
        let Some(inst) = self.spaces.entry(m.id) else {
            return;
        };
        if inst.is_committed() {
            return;
        }
        if m.ballot < inst.promised {
            nack(out, from, m.id, inst.promised);
            return;
        }
        let repeat = inst.status == Status::Accepted && inst.voted == m.ballot;
        if !repeat {
            accept(
                &mut self.index,
                m.id,
                inst,
                m.ballot,
                m.attrs,
                m.noop,
                Some(m.batch),
            );
            drop_superseded_lead(inst);
            out.persist.push(record(m.id, inst));
        }
        let reply = AcceptOk {
            id: m.id,
            ballot: m.ballot,
        };
        out.send(from, Message::AcceptOk(reply));
    }

    fn on_commit(&mut self, from: ReplicaId, m: Value, out: &mut Outbox<S::Output>) {
        let id = m.id;
        // A slim commit (`Value::is_slim`) names commands this replica
        // voted on, so holds; if it does not (a placeholder, a no-op it
        // accepted from a recoverer), it is not acknowledged, and the
        // leader's re-send carries the batch.
        let slim = m.is_slim();
        match self.spaces.entry(id) {
            Some(inst) if slim && !inst.is_committed() && inst.batch.is_empty() => return,
            Some(inst) => {
                if !inst.is_committed() {
                    inst.voted = m.ballot;
                    inst.set_value(m.attrs, m.noop, (!slim).then_some(m.batch));
                    // Somebody else decided it: whatever this replica was
                    // doing to decide it is moot.
                    inst.lead = None;
                    self.mark_committed(id, out);
                }
            }
            // Executed and compacted here: acknowledged again below, so the
            // sender stops re-sending. Otherwise too far ahead of this
            // replica's window to record: not acknowledged, so the sender
            // keeps re-sending until it fits.
            None => {
                if !matches!(self.spaces.get(id), Lookup::Compacted) {
                    return;
                }
            }
        }
        self.defer_ack(from, id);
    }

    fn on_prepare(&mut self, from: ReplicaId, m: Prepare, out: &mut Outbox<S::Output>) {
        if m.ballot.replica != from {
            debug_assert!(false, "Prepare from {} at {:?}", from.0, m.ballot);
            return;
        }
        if let Lookup::Compacted = self.spaces.get(m.id) {
            let reply = PrepareOk {
                id: m.id,
                ballot: m.ballot,
                status: Status::Executed,
                voted: Ballot::default(),
                attrs: Default::default(),
                batch: Default::default(),
                noop: false,
                unchanged: false,
            };
            out.send(from, Message::PrepareOk(reply));
            return;
        }
        let Some(inst) = self.spaces.entry(m.id) else {
            return;
        };
        if !inst.is_committed() {
            if m.ballot < inst.promised {
                nack(out, from, m.id, inst.promised);
                return;
            }
            if m.ballot > inst.promised {
                inst.promised = m.ballot;
                drop_superseded_lead(inst);
                out.persist.push(record(m.id, inst));
            }
        }
        let mut reply = prepare_ok(m.id, m.ballot, inst);
        if self.cfg.injected_bug == Some(InjectedBug::SingleBallot) && !inst.is_committed() {
            reply.voted = inst.promised;
        }
        out.send(from, Message::PrepareOk(reply));
        // Whoever recovers it may die too.
        self.watch(m.id);
    }

    fn on_validate(&mut self, from: ReplicaId, m: Validate, out: &mut Outbox<S::Output>) {
        let Some(inst) = self.spaces.entry(m.id) else {
            return;
        };
        if inst.is_committed() {
            // Decided: tell the recoverer, which then stops.
            let commit = inst.commit_message(m.id);
            out.send(from, commit);
            return;
        }
        if m.ballot != inst.promised {
            if m.ballot < inst.promised {
                nack(out, from, m.id, inst.promised);
            }
            return;
        }
        if self.validate(m.id, &m.attrs, &m.batch) {
            let inst = self.spaces.get_mut(m.id).expect("validated");
            out.persist.push(record(m.id, inst));
        }
        let conflicts = self.conflicts_beyond(m.id, &m.attrs, &m.batch);
        let reply = ValidateOk {
            id: m.id,
            ballot: m.ballot,
            conflicts,
        };
        out.send(from, Message::ValidateOk(reply));
    }

    /// EPaxos*'s Validate at this replica: from now on it knows the
    /// recovered command and its initial attributes, and orders its own
    /// later commands after it. Never touches a vote. Returns whether
    /// anything changed (and must be persisted).
    pub(super) fn validate(&mut self, id: InstanceId, attrs: &Attrs, batch: &Batch) -> bool {
        let inst = self
            .spaces
            .get_mut(id)
            .expect("validating a known instance");
        let mut changed = false;
        if inst.batch.is_empty() && !batch.is_empty() {
            inst.batch = batch.clone();
            changed = true;
        }
        if inst.initial == Initial::Unknown {
            if inst.status == Status::None {
                inst.attrs = *attrs;
                inst.initial = Initial::Same;
            } else {
                inst.initial = Initial::Other(Box::new(*attrs));
            }
            changed = true;
        }
        if changed && !inst.noop && inst.indexed_seq == 0 && attrs.seq > 0 {
            self.index.record(id, attrs.seq, batch);
            inst.indexed_seq = attrs.seq;
        }
        changed
    }

    /// Makes the instance committed with the value already in it: persist,
    /// index, trace, and queue it for execution.
    pub(super) fn mark_committed(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) {
        let inst = self
            .spaces
            .get_mut(id)
            .expect("committing a known instance");
        assert!(!inst.is_committed(), "instance {id} committed twice");
        if id.replica == self.cfg.me {
            // Counted when proposed or restored (a reserved slot the log
            // holds no vote for is counted at restore too); saturating all
            // the same, so that a count can only err low, never wrap.
            self.own_uncommitted = self.own_uncommitted.saturating_sub(1);
        }
        inst.status = Status::Committed;
        if !inst.noop {
            reindex(&mut self.index, id, inst);
        }
        if self.cfg.injected_bug != Some(InjectedBug::CommitNotPersisted) {
            out.persist.push(record(id, inst));
        }
        if self.cfg.trace {
            out.trace.push(committed_event(id, inst));
        }
        self.exec.ready.push(id);
        self.exec.ready.append(&mut inst.waiters);
        if !self.waiting.is_empty() {
            self.waiting_dirty = true;
        }
        if !self.waiting_votes.is_empty() {
            self.waiting_votes.remove(&id);
        }
    }

    /// Leads the commit of an instance committed here: re-sends it to every
    /// peer until each acknowledges it, holding the instance until then (so a
    /// peer that missed the commit can always get it from here).
    pub(super) fn lead_commit(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) {
        let peers = self.cfg.peers_mask();
        let inst = self.spaces.get_mut(id).expect("committed instance");
        debug_assert!(inst.is_committed());
        inst.lead = Some(Box::new(Lead {
            ballot: inst.voted,
            phase: Phase::Commit,
            initial: inst.attrs,
            merged: inst.attrs,
            sent: peers,
            replied: 0,
            changed: 0,
            recovery: None,
            proposed_at: None,
        }));
        let msg = inst.commit_message(id);
        send_to_mask(out, peers, self.cfg.replicas, |_| msg.clone());
        self.retry
            .push_back((self.now + self.cfg.retransmit_timeout_ns, id));
    }

    /// Schedules a recovery check of `id` unless one is pending: if it is
    /// still uncommitted then, this replica recovers it.
    pub(super) fn watch(&mut self, id: InstanceId) {
        if self.cfg.replicas == 1 {
            return;
        }
        let base = self.cfg.recovery_timeout_ns;
        let Some(inst) = self.spaces.entry(id) else {
            return;
        };
        if inst.is_committed() || inst.watch_at != 0 {
            return;
        }
        let delay = base << inst.attempts.min(3);
        let at = self.now + delay + self.rng.below(delay);
        inst.watch_at = at;
        self.watches.push(Reverse((at, id)));
    }
}

/// A lead at a ballot below the one now promised can decide nothing more.
fn drop_superseded_lead(inst: &mut Instance) {
    if inst.lead_superseded() {
        inst.lead = None;
    }
}
