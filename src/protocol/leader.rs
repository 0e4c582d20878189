//! The leader's side: propose, collect votes, decide fast or slow path,
//! commit, and re-send to peers that stay silent. A recoverer leads the
//! instances it recovers through the same Accept and Commit code.

use std::cmp::Reverse;

use super::config::InjectedBug;
use super::lead::{Lead, Phase};
use super::message::{
    AcceptOk, CommitOk, Message, PreAccept, PreAcceptOk, Prepare, Validate, Value, Waiting,
};
use super::ops::{accept, record, reindex, send_to_mask};
use super::outbox::Outbox;
use super::replica::Replica;
use super::space::{Instance, Lookup};
use super::types::{Attrs, Ballot, Deps, Initial, InstanceId, ReplicaId, Status};
use crate::command::Batch;
use crate::constants::{
    INSTANCE_WINDOW_SLOTS_MAX, QUEUE_KEPT_SLOTS_MIN, RESENDS_PER_PACE_MAX, RESEND_PACE_NS,
};
use crate::state_machine::StateMachine;

impl<S: StateMachine> Replica<S> {
    /// Starts one instance for every command in `batch` (the commands that
    /// arrived in one turn of the caller's loop). N = 1 commits at once.
    ///
    /// Refused when this replica already holds `INSTANCE_WINDOW_SLOTS_MAX` of
    /// its own instances (a peer that never acknowledges commits keeps them
    /// all): the caller must stop taking client commands for a while.
    pub fn propose(
        &mut self,
        now: u64,
        batch: Batch,
        out: &mut Outbox<S::Output>,
    ) -> Result<InstanceId, ProposeError> {
        assert!(!batch.is_empty(), "proposing an empty batch");
        self.advance(now);
        let held = self.next_slot - self.spaces.base(self.cfg.me);
        if held >= INSTANCE_WINDOW_SLOTS_MAX {
            return Err(ProposeError::WindowFull { held });
        }
        let id = InstanceId::new(self.cfg.me, self.next_slot);
        self.next_slot += 1;
        self.own_uncommitted += 1;
        self.stats.proposed += 1;
        // Everything executed at every replica is a dependency already met;
        // naming it keeps every acceptor's raise to its floor a no-op (see
        // `stable.rs`), and a seq above everything executed here keeps the
        // seq of a row one acceptor forgot and another did not from
        // mattering: forgetting keys costs no fast path.
        let mut attrs = Attrs {
            seq: self.seq_executed + 1,
            deps: Deps(*self.stability.stable()),
        };
        self.index.add_conflicts_and_record(id, &batch, &mut attrs);
        let stalled = self.stalled_peers();
        let inst = self.spaces.entry(id).expect("own slot in window");
        inst.status = Status::PreAccepted;
        inst.promised = Ballot::initial(self.cfg.me);
        inst.voted = inst.promised;
        inst.attrs = attrs;
        inst.initial = Initial::Same;
        inst.batch = batch;
        inst.indexed_seq = attrs.seq;
        if self.cfg.replicas == 1 {
            self.stats.fast_commits += 1;
            self.stats.commit_latency.record(0);
            self.mark_committed(id, out);
            self.execute_ready(out);
            return Ok(id);
        }
        out.persist.push(record(id, inst));
        // Stalled peers are left out while a fast quorum remains without
        // them: their answers would come too late to count, and their
        // PreAccepts only pile up stale in the link (the Commit carries
        // the batch to them once they answer again).
        let fast = self.cfg.fast_quorum() - 1;
        let awake = self.cfg.peers_mask() & !stalled;
        let candidates = if awake.count_ones() as usize >= fast {
            awake
        } else {
            self.cfg.peers_mask()
        };
        let targets = if self.cfg.thrifty {
            // The fast quorum: the next fast_quorum - 1 peers in ring order.
            self.cfg
                .peers()
                .filter(|p| candidates & p.bit() != 0)
                .take(fast)
                .fold(0, |m, p| m | p.bit())
        } else {
            candidates
        };
        inst.lead = Some(Box::new(Lead {
            ballot: inst.promised,
            phase: Phase::PreAccept,
            initial: attrs,
            merged: attrs,
            sent: targets,
            replied: 0,
            changed: 0,
            recovery: None,
            proposed_at: Some(now),
        }));
        let msg = PreAccept {
            id,
            ballot: inst.promised,
            attrs,
            batch: inst.batch.clone(),
        };
        send_to_mask(out, targets, self.cfg.replicas, |_| {
            Message::PreAccept(msg.clone())
        });
        self.retry
            .push_back((now + self.cfg.retransmit_timeout_ns, id));
        Ok(id)
    }

    pub(super) fn on_pre_accept_ok(
        &mut self,
        from: ReplicaId,
        m: PreAcceptOk,
        out: &mut Outbox<S::Output>,
    ) {
        let fast_needed = self.cfg.fast_quorum() - 1;
        let f = self.cfg.f();
        let drops_deps = self.cfg.injected_bug == Some(InjectedBug::FastPathDropsDependencies);
        let Some(inst) = self.spaces.get_mut(m.id) else {
            return;
        };
        let promised = inst.promised;
        let Some(lead) = inst.lead.as_deref_mut() else {
            return;
        };
        if lead.phase != Phase::PreAccept
            || m.ballot != lead.ballot
            || lead.ballot != promised
            || lead.replied & from.bit() != 0
        {
            return; // late, duplicate, or the instance was taken over
        }
        lead.replied |= from.bit();
        lead.sent |= from.bit();
        if m.attrs != lead.initial {
            lead.changed += 1;
        }
        lead.merged.union(&m.attrs);
        let replies = lead.replied.count_ones() as usize;
        let unchanged = replies - lead.changed as usize;
        let pending = (lead.sent & !lead.replied).count_ones() as usize;
        let fast = if drops_deps {
            replies >= fast_needed
        } else {
            unchanged >= fast_needed
        };
        if fast {
            let initial = lead.initial;
            inst.set_attrs(initial);
            self.stats.fast_commits += 1;
            self.commit_led(m.id, out);
        } else if replies >= f && unchanged + pending < fast_needed {
            self.start_accept(m.id, out);
        }
    }

    /// The slow path: Accept the union of the replies on a majority.
    fn start_accept(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) {
        let replicas = self.cfg.replicas;
        let thrifty = self.cfg.thrifty;
        let f = self.cfg.f();
        let peers = self.cfg.peers_mask();
        let inst = self.spaces.get_mut(id).expect("own instance");
        let lead = inst.lead.as_deref_mut().expect("leading");
        assert_eq!(lead.phase, Phase::PreAccept);
        assert!(lead.replied.count_ones() as usize >= f);
        let merged = lead.merged;
        inst.set_attrs(merged);
        inst.status = Status::Accepted;
        let lead = inst.lead.as_deref_mut().expect("leading");
        lead.phase = Phase::Accept;
        // Thrifty: F of the peers that answered PreAccept (the lowest-numbered),
        // known alive.
        lead.sent = if thrifty {
            first_bits(lead.replied, f)
        } else {
            peers
        };
        lead.replied = 0;
        let targets = lead.sent;
        reindex(&mut self.index, id, inst);
        out.persist.push(record(id, inst));
        let msg = Value {
            id,
            ballot: inst.promised,
            attrs: inst.attrs,
            batch: inst.batch.clone(),
            noop: false,
        };
        send_to_mask(out, targets, replicas, |_| Message::Accept(msg.clone()));
    }

    /// A recoverer's Accept: votes for the value here at its ballot, then
    /// asks every peer to.
    pub(super) fn accept_as_recoverer(
        &mut self,
        id: InstanceId,
        attrs: Attrs,
        batch: crate::command::Batch,
        noop: bool,
        out: &mut Outbox<S::Output>,
    ) {
        let peers = self.cfg.peers_mask();
        let inst = self
            .spaces
            .get_mut(id)
            .expect("recovering a known instance");
        let lead = inst.lead.as_deref_mut().expect("recovering");
        lead.phase = Phase::Accept;
        lead.sent = peers;
        lead.replied = 0;
        lead.recovery = None;
        if noop {
            self.stats.recovered_noops += 1;
        } else {
            self.stats.recovered_commands += 1;
        }
        let batch = (!batch.is_empty()).then_some(batch);
        let ballot = inst.promised;
        accept(&mut self.index, id, inst, ballot, attrs, noop, batch);
        out.persist.push(record(id, inst));
        let msg = Message::Accept(Value {
            id,
            ballot: inst.promised,
            attrs: inst.attrs,
            batch: inst.value_batch(),
            noop,
        });
        send_to_mask(out, peers, self.cfg.replicas, |_| msg.clone());
    }

    pub(super) fn on_accept_ok(
        &mut self,
        from: ReplicaId,
        m: AcceptOk,
        out: &mut Outbox<S::Output>,
    ) {
        let f = self.cfg.f();
        let Some(inst) = self.spaces.get_mut(m.id) else {
            return;
        };
        let promised = inst.promised;
        let Some(lead) = inst.lead.as_deref_mut() else {
            return;
        };
        if lead.phase != Phase::Accept || m.ballot != lead.ballot || lead.ballot != promised {
            return;
        }
        lead.replied |= from.bit();
        if lead.replied.count_ones() as usize >= f {
            self.stats.slow_commits += 1;
            self.commit_led(m.id, out);
        }
    }

    /// Commits an instance this replica leads with the value now in it and
    /// tells every peer; the commit is re-sent until each acknowledges it.
    pub(super) fn commit_led(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) {
        let peers = self.cfg.peers_mask();
        let inst = self.spaces.get_mut(id).expect("led instance");
        inst.voted = inst.promised;
        let lead = inst.lead.as_deref_mut().expect("leading");
        // Peers that answered this ballot's PreAccept or Accept stored its
        // batch with their vote: their Commit leaves the batch out.
        let holders = match lead.phase {
            Phase::PreAccept | Phase::Accept => lead.replied,
            _ => 0,
        };
        lead.phase = Phase::Commit;
        lead.sent = peers;
        lead.replied = 0;
        lead.recovery = None;
        if let Some(at) = lead.proposed_at.take() {
            self.stats
                .commit_latency
                .record(self.now.saturating_sub(at));
        }
        self.mark_committed(id, out);
        let inst = self.spaces.get_mut(id).expect("led instance");
        let full = inst.commit_message(id);
        let slim = match &full {
            Message::Commit(v) if !v.noop => Message::Commit(Value {
                batch: Batch::empty(),
                ..v.clone()
            }),
            _ => full.clone(),
        };
        send_to_mask(out, peers, self.cfg.replicas, |to| {
            if holders & to.bit() != 0 {
                slim.clone()
            } else {
                full.clone()
            }
        });
    }

    pub(super) fn on_commit_ok(&mut self, from: ReplicaId, m: CommitOk) {
        let Some(inst) = self.spaces.get_mut(m.id) else {
            return;
        };
        let Some(lead) = inst.lead.as_deref_mut() else {
            return;
        };
        if lead.phase != Phase::Commit {
            return;
        }
        lead.replied |= from.bit();
        if lead.replied == lead.sent {
            inst.lead = None;
            self.spaces.compact(m.id.replica);
        }
    }

    /// Re-sends to peers that have not answered in time. After a timeout in
    /// the PreAccept phase with a majority of answers, the slow path starts:
    /// waiting longer for a fast quorum could wait forever.
    ///
    /// Also runs the recovery checks that are due: an instance still
    /// uncommitted at its check, and not being led here, is recovered.
    ///
    /// At most `RESENDS_PER_PACE_MAX` re-sends and recovery starts go out
    /// per call; the rest wait `RESEND_PACE_NS` (`next_deadline` says so),
    /// so a backlog (a peer back from a pause, a restart) leaves paced.
    pub fn tick(&mut self, now: u64, out: &mut Outbox<S::Output>) {
        self.advance(now);
        let spent = |r: &Self| r.stats.retransmits + r.stats.recoveries;
        let start = spent(self);
        let budget_left = |r: &Self| spent(r) - start < RESENDS_PER_PACE_MAX;
        if now >= self.paced_until {
            while let Some(&(at, id)) = self.retry.front() {
                if at > now || !budget_left(self) {
                    break;
                }
                self.retry.pop_front();
                if self.retransmit(id, out) {
                    self.retry
                        .push_back((now + self.cfg.retransmit_timeout_ns, id));
                }
            }
            while let Some(&Reverse((at, id))) = self.watches.peek() {
                if at > now || !budget_left(self) {
                    break;
                }
                self.watches.pop();
                self.watch_due(at, id, out);
            }
            if !budget_left(self) {
                self.paced_until = now + RESEND_PACE_NS;
            }
            let (len, cap) = (self.retry.len(), self.retry.capacity());
            if cap > QUEUE_KEPT_SLOTS_MIN && cap > 4 * len {
                self.retry.shrink_to((2 * len).max(QUEUE_KEPT_SLOTS_MIN));
            }
        }
        if !self.parked.is_empty() {
            self.probe_stalled(now, out);
        }
        self.settle(out);
        self.flush_acks(now, out);
    }

    /// Returns whether the instance still needs its timer.
    fn retransmit(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) -> bool {
        let replicas = self.cfg.replicas;
        let peers = self.cfg.peers_mask();
        // A stalled peer is left out of commit re-sends like an unreachable
        // one: re-sending every commit to a stopped peer each timeout cost
        // the leader most of a core and filled its link with stale frames.
        let away = self.unreachable | self.stalled_peers();
        let f = self.cfg.f();
        let Some(inst) = self.spaces.get_mut(id) else {
            return false;
        };
        if inst.lead_superseded() {
            inst.lead = None;
        }
        let Some(lead) = inst.lead.as_deref_mut() else {
            return false;
        };
        let silent = peers & !lead.replied;
        if lead.phase == Phase::Commit && silent & !away == 0 {
            // Only unreachable or stalled peers lack it: wait for one to
            // come back (a stalled one is probed, `probe_stalled`).
            self.parked.push(id);
            return false;
        }
        self.stats.retransmits += 1;
        let msg = match lead.phase {
            Phase::Prepare => Message::Prepare(Prepare {
                id,
                ballot: lead.ballot,
            }),
            Phase::Validate => {
                let tally = lead.recovery.as_deref().expect("recovering");
                let (attrs, batch) = tally.candidate.clone().expect("validating a candidate");
                let msg = Message::Validate(Validate {
                    id,
                    ballot: lead.ballot,
                    attrs,
                    batch,
                });
                // `replied` still holds the Prepare replies: the quorum's
                // silence in this phase is what `validated` lacks.
                send_to_mask(out, tally.quorum & !tally.validated, replicas, |_| {
                    msg.clone()
                });
                return true;
            }
            Phase::Waiting => {
                let tally = lead.recovery.as_deref().expect("recovering");
                Message::Waiting(Waiting {
                    id,
                    votes: tally.votes,
                })
            }
            Phase::PreAccept if lead.replied.count_ones() as usize >= f => {
                self.start_accept(id, out);
                return true;
            }
            Phase::PreAccept => {
                lead.sent |= silent;
                Message::PreAccept(PreAccept {
                    id,
                    ballot: lead.ballot,
                    attrs: lead.initial,
                    batch: inst.batch.clone(),
                })
            }
            Phase::Accept => {
                lead.sent |= silent;
                Message::Accept(Value {
                    id,
                    ballot: lead.ballot,
                    attrs: inst.attrs,
                    batch: inst.value_batch(),
                    noop: inst.noop,
                })
            }
            Phase::Commit => {
                let msg = inst.commit_message(id);
                send_to_mask(out, silent & !away, replicas, |_| msg.clone());
                return true;
            }
        };
        send_to_mask(out, silent, replicas, |_| msg.clone());
        true
    }
}

impl<S: StateMachine> Replica<S> {
    /// Sends each reachable, stalled peer one parked commit it lacks, at
    /// most once a re-send timeout: its answer ends the stall (`handle`
    /// unparks), so a peer that only looked stalled (idle, or its answers
    /// lost) still gets everything, one round trip later.
    fn probe_stalled(&mut self, now: u64, out: &mut Outbox<S::Output>) {
        let stalled = self.stalled_peers() & !self.unreachable;
        for p in self.cfg.peers().filter(|p| stalled & p.bit() != 0) {
            if self.probe_at[p.index()] > now {
                continue;
            }
            self.probe_at[p.index()] = now + self.cfg.retransmit_timeout_ns;
            let lacks = |inst: &Instance| {
                inst.lead
                    .as_deref()
                    .is_some_and(|l| l.phase == Phase::Commit && l.replied & p.bit() == 0)
            };
            let lacking = self
                .parked
                .iter()
                .find_map(|&id| match self.spaces.get(id) {
                    Lookup::Found(inst) if lacks(inst) => Some(inst.commit_message(id)),
                    _ => None,
                });
            if let Some(msg) = lacking {
                self.stats.retransmits += 1;
                out.send(p, msg);
            }
        }
    }

    /// When `probe_stalled` next has work: while commits are parked, when
    /// a reachable peer's probe falls due once it has been quiet a timeout.
    pub(super) fn probe_deadline(&self) -> Option<u64> {
        if self.parked.is_empty() {
            return None;
        }
        let quiet = self.cfg.retransmit_timeout_ns;
        self.cfg
            .peers()
            .filter(|p| self.unreachable & p.bit() == 0)
            .map(|p| self.probe_at[p.index()].max(self.heard[p.index()] + quiet + 1))
            .min()
    }
}

/// Why `propose` refused a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This replica holds too many of its own instances; `held` of them.
    WindowFull { held: u64 },
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::WindowFull { held } => write!(
                f,
                "{held} own instances held (limit {INSTANCE_WINDOW_SLOTS_MAX}): \
                 a peer is not acknowledging commits"
            ),
        }
    }
}

impl std::error::Error for ProposeError {}

/// The lowest `n` set bits of `mask`.
fn first_bits(mask: u16, n: usize) -> u16 {
    let mut left = mask;
    let mut taken = 0;
    for _ in 0..n {
        let low = left & left.wrapping_neg();
        taken |= low;
        left &= !low;
    }
    taken
}
