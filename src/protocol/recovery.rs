//! Recovery of an instance whose leader went silent: EPaxos* (Ryabinin,
//! Gotsman, Sutra, "Making Democracy Work: Fixing and Simplifying
//! Egalitarian Paxos", OPODIS 2025), Figure 5, adapted to batches, prefix
//! dependencies and sequence numbers.
//!
//! Why this variant: it has a published proof (and the authors' TLA+ model),
//! it works with the optimized fast quorum (N - E with N >= max(2E + F - 1,
//! 2F + 1), which F + floor((F+1)/2) satisfies for every N), and it needs no
//! TryPreAccept, the step of SOSP 2013 section 4.4 whose conditions are hard
//! to check and whose corner case (a dependency's seq rising above the
//! recovered command's) broke published implementations.
//!
//! The steps, for instance `id` whose command leader is L:
//! 1. **Prepare** at a ballot above every one seen; each acceptor promises it
//!    and reports its status, its last vote and whether it pre-accepted at
//!    L's initial ballot with L's attributes unchanged (a possible fast-path
//!    vote). Decide once N - F replicas (this one included) answered, quorum Q:
//!    - committed somewhere: commit that value;
//!    - accepted somewhere: accept the value with the highest vote ballot;
//!    - L is in Q: L did not commit (it would say so), so nothing was
//!      decided: a no-op;
//!    - at least |Q| - E unchanged votes: the command may have committed on
//!      the fast path with L's attributes A: **Validate**;
//!    - otherwise it cannot have: a no-op.
//! 2. **Validate**: every member of Q reports the instances it knows that
//!    conflict with the command, lie outside A's dependencies and do not have
//!    `id` in theirs (committed ones by their final dependencies, others by
//!    their leader's initial ones). If the fast path had committed `id`, no
//!    such instance could commit (it would have met a fast-quorum member that
//!    saw `id` first). So: none reported: accept A; one reported committed
//!    (or, with exactly |Q| - E votes, one led from outside Q): a no-op;
//!    otherwise **wait**.
//! 3. **Waiting**: announce it (with the vote count) and wait until the
//!    reported instances commit here: one committed without `id` in its
//!    dependencies means a no-op; all committed with it (or as no-ops) means
//!    A. Two recoveries waiting on each other are broken by the vote count:
//!    a reported instance whose own recovery saw more than N - F - E votes
//!    means a no-op. A late Prepare reply from outside Q that shows a commit,
//!    an accept or L itself also ends the wait, as in step 1.
//!
//! Sequence numbers travel with the dependencies as one value: every path
//! above decides the whole (seq, deps) pair some replica voted for, so seq
//! needs no recovery logic of its own. Real-time order does not rest on seq
//! either: clients are answered after execution, and a command that
//! completed has every instance it can reach in the graph committed, so a
//! later command can only come after it (Moraru's advice in
//! efficient/epaxos issue #16).
//!
//! Where this departs from the paper: executed instances are dropped from
//! memory, so Validate learns of executed conflicting instances from the
//! conflict index's executed slots; every executed instance lacks `id` in
//! its dependencies (it could not execute before `id` committed), so the
//! index says all that is needed. Acceptors answer a stale ballot with a
//! `Nack` so a superseded leader stops early.

use super::config::InjectedBug;
use super::lead::{Lead, Phase, Tally};
use super::message::{Message, Nack, Prepare, PrepareOk, Validate, ValidateOk, Waiting};
use super::ops::{prepare_ok, record, send_to_mask};
use super::outbox::Outbox;
use super::replica::Replica;
use super::space::Lookup;
use super::types::{Attrs, Ballot, InstanceId, ReplicaId, Status};
use crate::command::{Batch, Op};
use crate::state_machine::{Access, StateMachine};

impl<S: StateMachine> Replica<S> {
    /// Starts recovering `id` now (tests script recoveries with this; the
    /// replica calls it itself when a watched instance stays uncommitted).
    pub fn recover(&mut self, now: u64, id: InstanceId, out: &mut Outbox<S::Output>) {
        self.advance(now);
        self.start_recovery(id, out);
        self.settle(out);
    }

    /// A recovery check fell due.
    pub(super) fn watch_due(&mut self, at: u64, id: InstanceId, out: &mut Outbox<S::Output>) {
        let Some(inst) = self.spaces.get_mut(id) else {
            return;
        };
        if inst.watch_at != at {
            return; // superseded by a later check
        }
        inst.watch_at = 0;
        if inst.is_committed() {
            return;
        }
        let leading = inst.lead.is_some() && !inst.lead_superseded();
        if !leading {
            inst.attempts = inst.attempts.saturating_add(1);
            self.start_recovery(id, out);
        }
        self.watch(id);
    }

    fn start_recovery(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) {
        let me = self.cfg.me;
        let peers = self.cfg.peers_mask();
        if self.cfg.replicas == 1 {
            return;
        }
        let Some(inst) = self.spaces.entry(id) else {
            return;
        };
        if inst.is_committed() {
            return;
        }
        let ballot = inst.promised.next(me);
        inst.promised = ballot;
        inst.lead = Some(Box::new(Lead {
            ballot,
            phase: Phase::Prepare,
            initial: Attrs::default(),
            merged: Attrs::default(),
            sent: peers,
            replied: 0,
            changed: 0,
            recovery: Some(Box::default()),
            proposed_at: None,
        }));
        out.persist.push(record(id, inst));
        let own = prepare_ok(id, ballot, inst);
        self.stats.recoveries += 1;
        let tally = self.tally_mut(id);
        add_prepare_reply(tally, id, me, &own);
        let msg = Message::Prepare(Prepare { id, ballot });
        send_to_mask(out, peers, self.cfg.replicas, |_| msg.clone());
        self.retry
            .push_back((self.now + self.cfg.retransmit_timeout_ns, id));
        self.watch(id);
    }

    fn tally_mut(&mut self, id: InstanceId) -> &mut Tally {
        let inst = self.spaces.get_mut(id).expect("recovering");
        let lead = inst.lead.as_deref_mut().expect("recovering");
        lead.recovery.as_deref_mut().expect("recovering")
    }

    /// The lead of a recovery in progress at `ballot`, if still current.
    fn recovering(&mut self, id: InstanceId, ballot: Ballot) -> Option<&mut Lead> {
        let inst = self.spaces.get_mut(id)?;
        if inst.is_committed() || inst.promised != ballot {
            return None;
        }
        let lead = inst.lead.as_deref_mut()?;
        (lead.ballot == ballot && lead.recovery.is_some()).then_some(lead)
    }

    pub(super) fn on_prepare_ok(
        &mut self,
        from: ReplicaId,
        m: PrepareOk,
        out: &mut Outbox<S::Output>,
    ) {
        let f = self.cfg.f();
        let Some(lead) = self.recovering(m.id, m.ballot) else {
            return;
        };
        if lead.replied & from.bit() != 0 {
            return;
        }
        match lead.phase {
            Phase::Prepare => {
                lead.replied |= from.bit();
                let replies = lead.replied.count_ones() as usize;
                let tally = lead.recovery.as_deref_mut().expect("recovering");
                add_prepare_reply(tally, m.id, from, &m);
                if replies == f {
                    tally.quorum = lead.replied;
                    self.decide_prepare(m.id, out);
                }
            }
            Phase::Validate | Phase::Waiting => {
                // EPaxos* Figure 5: a late reply from outside Q may settle it.
                lead.replied |= from.bit();
                if m.status >= Status::Committed {
                    self.finish_with_committed(m.id, m.attrs, m.batch, m.noop, m.status, out);
                } else if m.status == Status::Accepted {
                    self.accept_as_recoverer(m.id, m.attrs, m.batch, m.noop, out);
                } else if from == m.id.replica {
                    self.accept_noop(m.id, out);
                }
            }
            _ => {}
        }
    }

    fn decide_prepare(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) {
        let q = self.cfg.f() + 1;
        let e = self.cfg.fast_failures();
        let bug = self.cfg.injected_bug;
        if bug == Some(InjectedBug::RecoveryTrustsOwnPreAccept)
            && self.trust_own_pre_accept(id, out)
        {
            return;
        }
        let tally = self.tally_mut(id);
        if let Some((attrs, batch, noop)) = tally.committed.take() {
            self.finish_with_committed(id, attrs, batch, noop, Status::Committed, out);
        } else if tally.compacted {
            self.finish_with_committed(
                id,
                Attrs::default(),
                Batch::empty(),
                false,
                Status::Executed,
                out,
            );
        } else if let Some((_, attrs, batch, noop)) = tally.accepted.take() {
            self.accept_as_recoverer(id, attrs, batch, noop, out);
        } else if tally.leader_replied {
            self.accept_noop(id, out);
        } else if usize::from(tally.votes) + e >= q && tally.candidate.is_some() {
            if bug == Some(InjectedBug::RecoverySkipsValidate) {
                let (attrs, batch) = tally.candidate.clone().expect("a candidate");
                self.accept_as_recoverer(id, attrs, batch, false, out);
                return;
            }
            self.start_validate(id, out);
        } else {
            self.accept_noop(id, out);
        }
    }

    /// The defect of efficient/epaxos issue #29, for tests: with nothing
    /// accepted or committed in Q, commit what this replica pre-accepted.
    fn trust_own_pre_accept(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) -> bool {
        let inst = self.spaces.get_mut(id).expect("recovering");
        let (status, attrs, batch) = (inst.status, inst.attrs, inst.batch.clone());
        let tally = self.tally_mut(id);
        let undecided = tally.committed.is_none() && tally.accepted.is_none() && !tally.compacted;
        if undecided && status == Status::PreAccepted {
            self.accept_as_recoverer(id, attrs, batch, false, out);
            return true;
        }
        false
    }

    /// A reply showed the instance committed. With its value: commit it here
    /// and lead the commit. Executed and dropped there (value unknown here):
    /// stop; whoever committed it holds it until every replica has it.
    fn finish_with_committed(
        &mut self,
        id: InstanceId,
        attrs: Attrs,
        batch: Batch,
        noop: bool,
        status: Status,
        out: &mut Outbox<S::Output>,
    ) {
        let inst = self.spaces.get_mut(id).expect("recovering");
        if status == Status::Executed {
            inst.lead = None;
            return;
        }
        inst.set_value(attrs, noop, (!batch.is_empty()).then_some(batch));
        self.commit_led(id, out);
    }

    fn accept_noop(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) {
        self.accept_as_recoverer(id, Attrs::default(), Batch::empty(), true, out);
    }

    fn start_validate(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) {
        let inst = self.spaces.get_mut(id).expect("recovering");
        let ballot = inst.promised;
        let lead = inst.lead.as_deref_mut().expect("recovering");
        lead.phase = Phase::Validate;
        let tally = lead.recovery.as_deref_mut().expect("recovering");
        let quorum = tally.quorum;
        let (attrs, batch) = tally.candidate.clone().expect("a candidate");
        if self.validate(id, &attrs, &batch) {
            let inst = self.spaces.get_mut(id).expect("recovering");
            out.persist.push(record(id, inst));
        }
        let own = self.conflicts_beyond(id, &attrs, &batch);
        self.tally_mut(id).conflicts = own;
        let msg = Message::Validate(Validate {
            id,
            ballot,
            attrs,
            batch,
        });
        send_to_mask(out, quorum, self.cfg.replicas, |_| msg.clone());
    }

    pub(super) fn on_validate_ok(
        &mut self,
        from: ReplicaId,
        m: ValidateOk,
        out: &mut Outbox<S::Output>,
    ) {
        let Some(lead) = self.recovering(m.id, m.ballot) else {
            return;
        };
        if lead.phase != Phase::Validate {
            return;
        }
        let tally = lead.recovery.as_deref_mut().expect("recovering");
        if tally.quorum & from.bit() == 0 || tally.validated & from.bit() != 0 {
            return;
        }
        tally.validated |= from.bit();
        for c in m.conflicts {
            if !tally.conflicts.iter().any(|(id, _)| *id == c.0) {
                tally.conflicts.push(c);
            } else if c.1 >= Status::Committed {
                let known = tally.conflicts.iter_mut().find(|(id, _)| *id == c.0);
                known.expect("listed").1 = c.1;
            }
        }
        if tally.validated == tally.quorum {
            self.decide_validate(m.id, out);
        }
    }

    fn decide_validate(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) {
        let me = self.cfg.me;
        let q = self.cfg.f() + 1;
        let e = self.cfg.fast_failures();
        let tally = self.tally_mut(id);
        let (attrs, batch) = tally.candidate.clone().expect("a candidate");
        if tally.conflicts.is_empty() {
            self.accept_as_recoverer(id, attrs, batch, false, out);
            return;
        }
        let in_q = tally.quorum | me.bit();
        let committed = tally.conflicts.iter().any(|(_, s)| *s >= Status::Committed);
        let led_outside = usize::from(tally.votes) + e == q
            && tally
                .conflicts
                .iter()
                .any(|(x, _)| in_q & x.replica.bit() == 0);
        if committed || led_outside {
            self.accept_noop(id, out);
            return;
        }
        let votes = tally.votes;
        let watched: Vec<InstanceId> = tally.conflicts.iter().map(|(x, _)| *x).collect();
        let lead = self
            .spaces
            .get_mut(id)
            .and_then(|i| i.lead.as_deref_mut())
            .expect("recovering");
        lead.phase = Phase::Waiting;
        lead.replied = 0;
        let msg = Message::Waiting(Waiting { id, votes });
        send_to_mask(out, self.cfg.peers_mask(), self.cfg.replicas, |_| {
            msg.clone()
        });
        for x in watched {
            self.watch(x);
        }
        self.waiting.push(id);
        self.waiting_dirty = true;
    }

    /// Re-examines every recovery in its waiting phase.
    pub(super) fn recheck_waiting(&mut self, out: &mut Outbox<S::Output>) {
        let mut i = 0;
        while i < self.waiting.len() {
            let id = self.waiting[i];
            match self.waiting_outcome(id) {
                Outcome::Gone => {
                    self.waiting.swap_remove(i);
                }
                Outcome::Wait => i += 1,
                Outcome::Noop => {
                    self.waiting.swap_remove(i);
                    self.accept_noop(id, out);
                }
                Outcome::Command => {
                    self.waiting.swap_remove(i);
                    let (attrs, batch) = self.tally_mut(id).candidate.clone().expect("a candidate");
                    self.accept_as_recoverer(id, attrs, batch, false, out);
                }
            }
        }
    }

    fn waiting_outcome(&self, id: InstanceId) -> Outcome {
        let Lookup::Found(inst) = self.spaces.get(id) else {
            return Outcome::Gone;
        };
        let Some(lead) = inst.lead.as_deref() else {
            return Outcome::Gone;
        };
        if inst.is_committed() || lead.phase != Phase::Waiting || lead.ballot != inst.promised {
            return Outcome::Gone;
        }
        let tally = lead.recovery.as_deref().expect("recovering");
        let threshold = self.cfg.replicas - self.cfg.f() - self.cfg.fast_failures();
        let mut all_with_id = true;
        for &(x, _) in &tally.conflicts {
            match self.spaces.get(x) {
                // Executed here while `id` is not even committed here: it
                // cannot depend on `id`.
                Lookup::Compacted => {
                    if !self.spaces.was_noop(x) {
                        return Outcome::Noop;
                    }
                }
                Lookup::Found(xi) if xi.is_committed() => {
                    if !xi.noop && xi.attrs.deps.get(id.replica) < id.slot {
                        return Outcome::Noop;
                    }
                }
                _ => all_with_id = false,
            }
        }
        if all_with_id {
            return Outcome::Command;
        }
        let deadlock = tally.conflicts.iter().any(|(x, _)| {
            self.waiting_votes
                .get(x)
                .is_some_and(|&k| usize::from(k) > threshold)
        });
        if deadlock {
            Outcome::Noop
        } else {
            Outcome::Wait
        }
    }

    pub(super) fn on_waiting(&mut self, m: Waiting) {
        if self.spaces.is_committed(m.id) {
            return;
        }
        let k = self.waiting_votes.entry(m.id).or_insert(0);
        *k = (*k).max(m.votes);
        if !self.waiting.is_empty() {
            self.waiting_dirty = true;
        }
    }

    pub(super) fn on_nack(&mut self, m: Nack) {
        let Some(inst) = self.spaces.get_mut(m.id) else {
            return;
        };
        if inst.is_committed() || m.promised <= inst.promised {
            return;
        }
        // Not a promise of this replica's own (nothing to persist): it only
        // makes this replica's next ballot for the instance high enough, and
        // ends its lead, which can no longer decide anything.
        inst.promised = m.promised;
        if inst.lead_superseded() {
            inst.lead = None;
        }
        self.watch(m.id);
    }

    /// EPaxos*'s I at this replica: the instances known here that conflict
    /// with `batch`, lie outside `attrs`' dependencies, and do not depend on
    /// `id` (committed ones by their dependencies, others by their leader's
    /// initial ones), each with its status here.
    pub(super) fn conflicts_beyond(
        &mut self,
        id: InstanceId,
        attrs: &Attrs,
        batch: &Batch,
    ) -> Vec<(InstanceId, Status)> {
        let frontier = self.index.frontier(batch);
        let mut found = Vec::new();
        let mut keys: Vec<(&[u8], Access)> = Vec::new();
        let mut clients: Vec<u64> = Vec::new();
        // Client commands and expiries conflict through the session rows
        // (`index.rs`): an expiry with every client command.
        let (mut commands, mut expiries) = (false, false);
        for cmd in batch.iter() {
            clients.push(cmd.client);
            if cmd.op == Op::Expire {
                expiries = true;
            } else {
                commands = true;
            }
            if let Some((key, access)) = S::conflict_key(&cmd) {
                keys.push((key, access));
            }
        }
        let conflicts_with = |other: &Batch| {
            other.iter().any(|cmd| {
                clients.contains(&cmd.client)
                    || if cmd.op == Op::Expire {
                        commands
                    } else {
                        expiries
                    }
                    || S::conflict_key(&cmd).is_some_and(|(k, a)| {
                        keys.iter()
                            .any(|&(k2, a2)| k2 == k && (a == Access::Write || a2 == Access::Write))
                    })
            })
        };
        for r in 0..self.cfg.replicas {
            let replica = ReplicaId(r as u8);
            let beyond = attrs.deps.get(replica).0;
            if frontier.executed[r] > beyond {
                let x = InstanceId::new(replica, frontier.executed[r]);
                found.push((x, Status::Committed));
            }
            let first = (beyond + 1).max(self.spaces.executed_below(replica));
            let last = frontier.latest[r].min(self.spaces.last_slot(replica));
            for slot in first..=last {
                let x = InstanceId::new(replica, slot);
                if x == id {
                    continue;
                }
                let Lookup::Found(xi) = self.spaces.get(x) else {
                    continue;
                };
                let reported = if xi.is_committed() {
                    !xi.noop
                        && xi.status != Status::Executed
                        && xi.attrs.deps.get(id.replica) < id.slot
                        && conflicts_with(&xi.batch)
                } else {
                    xi.initial_attrs()
                        .is_some_and(|a| a.deps.get(id.replica) < id.slot)
                        && conflicts_with(&xi.batch)
                };
                if reported {
                    found.push((x, xi.status.min(Status::Committed)));
                }
            }
        }
        found
    }
}

enum Outcome {
    /// No longer a waiting recovery here.
    Gone,
    Wait,
    Noop,
    Command,
}

fn add_prepare_reply(tally: &mut Tally, id: InstanceId, from: ReplicaId, m: &PrepareOk) {
    if from == id.replica {
        tally.leader_replied = true;
    }
    match m.status {
        Status::Executed => tally.compacted = true,
        Status::Committed => tally.committed = Some((m.attrs, m.batch.clone(), m.noop)),
        Status::Accepted if tally.accepted.as_ref().is_none_or(|(b, ..)| m.voted > *b) => {
            tally.accepted = Some((m.voted, m.attrs, m.batch.clone(), m.noop));
        }
        Status::PreAccepted if m.unchanged => {
            tally.votes += 1;
            tally.candidate = Some((m.attrs, m.batch.clone()));
        }
        _ => {}
    }
}
