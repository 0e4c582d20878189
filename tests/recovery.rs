//! Scripted recovery scenarios: each one is a bug found in a published
//! EPaxos specification or implementation, replayed message by message
//! against the real core. Each scenario runs twice: as is, where it must
//! end safely, and with the matching fix removed (an `InjectedBug`), where
//! the same script must end in the failure the bug report describes. So
//! every test shows it can fail.

use epaxos_fast::command::{Batch, BatchBuilder, CommandRef, Op};
use epaxos_fast::protocol::{
    Attrs, Config, InjectedBug, InstanceId, Message, Outbox, Record, Refused, Replica, ReplicaId,
    Status, TraceEvent,
};
use epaxos_fast::state_machine::{KvResult, KvStore};

const MS: u64 = 1_000_000;

/// A committed value as a replica reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Decided {
    attrs: Attrs,
    batch: Batch,
}

/// Replicas whose messages wait in a list until the script delivers or drops
/// them. Crashes keep exactly what was persisted.
struct Net {
    n: usize,
    bug: Option<InjectedBug>,
    replicas: Vec<Option<Replica<KvStore>>>,
    stores: Vec<Vec<Record>>,
    held: Vec<(ReplicaId, ReplicaId, Message)>,
    /// Per replica (all incarnations): what it committed, in order.
    committed: Vec<Vec<(InstanceId, Decided)>>,
    /// Per replica, current incarnation: the execution order.
    executed: Vec<Vec<InstanceId>>,
    replies: Vec<(u64, u64, KvResult)>,
    /// Requests answered with a refusal instead of a result.
    refused: Vec<(u64, u64, Refused)>,
    now: u64,
    client: u64,
}

impl Net {
    fn new(n: usize, bug: Option<InjectedBug>) -> Net {
        let replicas = (0..n)
            .map(|r| Some(Replica::new(config(n, r, bug), KvStore::new())))
            .collect();
        Net {
            n,
            bug,
            replicas,
            stores: vec![Vec::new(); n],
            held: Vec::new(),
            committed: vec![Vec::new(); n],
            executed: vec![Vec::new(); n],
            replies: Vec::new(),
            refused: Vec::new(),
            now: 0,
            client: 100,
        }
    }

    fn call(
        &mut self,
        r: usize,
        f: impl FnOnce(&mut Replica<KvStore>, u64, &mut Outbox<KvResult>),
    ) {
        let mut out = Outbox::new(self.n);
        let replica = self.replicas[r].as_mut().expect("calling a live replica");
        f(replica, self.now, &mut out);
        self.absorb(r, out);
    }

    fn absorb(&mut self, r: usize, mut out: Outbox<KvResult>) {
        self.stores[r].append(&mut out.persist);
        for (to, msgs) in out.messages.iter_mut().enumerate() {
            for m in msgs.drain(..) {
                self.held.push((ReplicaId(r as u8), ReplicaId(to as u8), m));
            }
        }
        for reply in out.replies.drain(..) {
            match reply.result {
                Ok(result) => self.replies.push((reply.client, reply.request, result)),
                Err(why) => self.refused.push((reply.client, reply.request, why)),
            }
        }
        for event in out.trace.drain(..) {
            match event {
                TraceEvent::Committed { id, attrs, batch } => {
                    self.committed[r].push((id, Decided { attrs, batch }));
                }
                TraceEvent::Executed { id } => self.executed[r].push(id),
            }
        }
    }

    /// A client command on `key` proposed at replica `r` as one instance.
    fn propose(&mut self, r: usize, op: Op, key: &str, value: &str) -> InstanceId {
        self.client += 1;
        let mut builder = BatchBuilder::new();
        builder.push(&CommandRef {
            client: self.client,
            request: 1,
            first_outstanding: 1,
            op,
            key: key.as_bytes(),
            value: value.as_bytes(),
        });
        let batch = builder.finish();
        let mut id = None;
        self.call(r, |rep, now, out| {
            id = Some(rep.propose(now, batch, out).unwrap())
        });
        id.unwrap()
    }

    /// Delivers, in order, every held message `pick` selects (also ones
    /// produced meanwhile), until none is left to pick.
    fn deliver(&mut self, pick: impl Fn(usize, usize, &Message) -> bool) {
        while let Some(i) = self
            .held
            .iter()
            .position(|(f, t, m)| pick(f.index(), t.index(), m))
        {
            let (from, to, msg) = self.held.remove(i);
            if self.replicas[to.index()].is_some() {
                self.call(to.index(), |rep, now, out| rep.handle(now, from, msg, out));
            }
        }
    }

    fn drop_held(&mut self, pick: impl Fn(usize, usize, &Message) -> bool) {
        self.held.retain(|(f, t, m)| !pick(f.index(), t.index(), m));
    }

    fn crash(&mut self, r: usize) {
        self.replicas[r] = None;
        self.held
            .retain(|(f, t, _)| f.index() != r && t.index() != r);
    }

    fn restart(&mut self, r: usize) {
        let mut out = Outbox::new(self.n);
        let cfg = config(self.n, r, self.bug);
        let replica = Replica::restore(cfg, KvStore::new(), self.now, &self.stores[r], &mut out);
        self.replicas[r] = Some(replica);
        self.executed[r].clear();
        self.absorb(r, out);
    }

    fn recover(&mut self, r: usize, id: InstanceId) {
        self.call(r, |rep, now, out| rep.recover(now, id, out));
    }

    fn tick(&mut self, r: usize, ns: u64) {
        self.now += ns;
        self.call(r, |rep, now, out| rep.tick(now, out));
    }

    /// Runs the live replicas on a perfect network (timers included) until
    /// nothing is left to do or `limit_ns` of virtual time passed.
    fn settle(&mut self, limit_ns: u64) {
        let end = self.now + limit_ns;
        loop {
            self.deliver(|_, _, _| true);
            let next = (0..self.n)
                .filter_map(|r| {
                    self.replicas[r]
                        .as_ref()
                        .and_then(|x| x.next_deadline())
                        .map(|d| (d, r))
                })
                .min();
            match next {
                Some((at, r)) if at <= end => {
                    self.now = self.now.max(at);
                    self.call(r, |rep, now, out| rep.tick(now, out));
                }
                _ => break,
            }
        }
    }

    fn status(&self, r: usize, id: InstanceId) -> Status {
        self.replicas[r].as_ref().expect("live").status(id)
    }

    fn value(&self, r: usize, key: &str) -> Option<Vec<u8>> {
        let sm = self.replicas[r].as_ref().expect("live").state_machine();
        sm.get(key.as_bytes()).map(|v| v.to_vec())
    }

    /// Every committed value of `id`, across replicas and incarnations.
    fn decisions(&self, id: InstanceId) -> Vec<Decided> {
        let mut all: Vec<Decided> = Vec::new();
        let of_id = self.committed.iter().flatten().filter(|(i, _)| *i == id);
        for (_, d) in of_id {
            if !all.contains(d) {
                all.push(d.clone());
            }
        }
        all
    }
}

fn config(n: usize, r: usize, bug: Option<InjectedBug>) -> Config {
    let mut c = Config::new(n, ReplicaId(r as u8)).unwrap();
    c.trace = true;
    c.injected_bug = bug;
    c.rng_seed = 7 + r as u64;
    c
}

fn pre_accept(m: &Message) -> bool {
    matches!(m, Message::PreAccept(_))
}

fn commit(m: &Message) -> bool {
    matches!(m, Message::Commit(_))
}

// ---------------------------------------------------------------------------

/// Sutra's counterexample ("On the correctness of Egalitarian Paxos", 2019;
/// efficient/epaxos issue #20), 3 replicas, 2 commands: with one ballot per
/// instance, a promise made after a vote makes the old vote look newer than
/// a value a majority accepted since, and a later recovery undoes a chosen
/// value.
fn sutra(bug: Option<InjectedBug>) -> Net {
    let (a, b, c) = (0, 1, 2);
    let mut net = Net::new(3, bug);
    // op2 at C reaches B only, so B's view of op1 will differ from A's.
    net.propose(c, Op::Put, "k", "op2");
    net.deliver(|f, t, m| f == c && t == b && pre_accept(m));
    net.drop_held(|_, _, _| true);
    // op1 at A: only B answers, with changed attributes: A goes to the slow
    // path at its initial ballot (after a retransmission timeout), votes
    // for op1 itself, and its Accepts are lost. A crashes.
    let alpha = net.propose(a, Op::Put, "k", "op1");
    net.deliver(|f, t, m| f == a && t == b && pre_accept(m));
    net.deliver(|f, t, m| f == b && t == a && matches!(m, Message::PreAcceptOk(_)));
    net.drop_held(|_, _, _| true);
    net.tick(a, 25 * MS);
    assert_eq!(net.status(a, alpha), Status::Accepted);
    net.drop_held(|_, _, _| true);
    net.crash(a);
    // C recovers with B: nothing accepted, leader silent, no fast-path vote:
    // a no-op, which only C votes for (its Accepts are lost).
    net.recover(c, alpha);
    net.deliver(|f, t, m| f == c && t == b && matches!(m, Message::Prepare(_)));
    net.deliver(|f, t, m| f == b && t == c && matches!(m, Message::PrepareOk(_)));
    assert_eq!(net.status(c, alpha), Status::Accepted);
    net.drop_held(|_, _, _| true);
    // A comes back; B recovers with A, finds op1 accepted, and gets it
    // accepted by A and itself: op1 is chosen, and B commits it. The commit
    // reaches nobody.
    net.restart(a);
    net.drop_held(|_, _, _| true);
    net.recover(b, alpha);
    net.deliver(|f, t, m| f == b && t == a && matches!(m, Message::Prepare(_)));
    net.deliver(|f, t, m| f == a && t == b && matches!(m, Message::PrepareOk(_)));
    net.deliver(|f, t, m| f == b && t == a && matches!(m, Message::Accept(_)));
    net.deliver(|f, t, m| f == a && t == b && matches!(m, Message::AcceptOk(_)));
    assert_eq!(net.status(b, alpha), Status::Committed);
    net.drop_held(|_, _, _| true);
    // A recovers with C. C promises A's ballot, which is higher than the
    // one op1 was chosen at; C's own vote (the no-op) is older.
    net.recover(a, alpha);
    net.deliver(|f, t, m| f == a && t == c && matches!(m, Message::Prepare(_)));
    net.deliver(|f, t, m| f == c && t == a && matches!(m, Message::PrepareOk(_)));
    net.deliver(|f, t, m| (f == a || t == a) && !commit(m));
    net.settle(2_000 * MS);
    net
}

#[test]
fn sutra_single_ballot_counterexample_keeps_the_chosen_value() {
    let net = sutra(None);
    let alpha = InstanceId::new(ReplicaId(0), 1);
    let decisions = net.decisions(alpha);
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0].batch.len(), 1, "op1 was chosen, not a no-op");
}

#[test]
fn sutra_counterexample_breaks_agreement_with_a_single_ballot() {
    let net = sutra(Some(InjectedBug::SingleBallot));
    let alpha = InstanceId::new(ReplicaId(0), 1);
    let decisions = net.decisions(alpha);
    assert_eq!(
        decisions.len(),
        2,
        "expected op1 at B and a no-op at A: {decisions:?}"
    );
}

/// Five replicas A..E: A commits op1 on the fast path with C and D, answers
/// its client, and crashes before its Commit reaches anyone; B proposes op2
/// (after op1 completed) and it reaches D and E only, B's attributes not
/// knowing op1, and B crashes. C, D and E must recover both so that op1
/// comes before op2 everywhere: op2 then sees op1's write.
fn fast_path_then_conflict(bug: Option<InjectedBug>) -> Net {
    let (a, b, c, d, e) = (0, 1, 2, 3, 4);
    let mut net = Net::new(5, bug);
    let alpha = net.propose(a, Op::Put, "k", "op1");
    net.deliver(|f, t, m| f == a && (t == c || t == d) && pre_accept(m));
    net.deliver(|f, t, m| (f == c || f == d) && t == a && matches!(m, Message::PreAcceptOk(_)));
    assert_eq!(net.status(a, alpha), Status::Executed);
    assert_eq!(net.replies.len(), 1, "op1's client saw it complete");
    net.crash(a);
    let beta = net.propose(b, Op::Put, "k", "op2");
    net.deliver(|f, t, m| f == b && (t == d || t == e) && pre_accept(m));
    net.crash(b);
    // A read at C depends on both (C knows op1, D and E op2): executing it
    // makes C, D and E wait on both, so they recover both.
    net.propose(c, Op::Get, "k", "");
    net.settle(5_000 * MS);
    for r in [c, d, e] {
        assert!(net.status(r, alpha) >= Status::Committed, "op1 at {r}");
        assert!(net.status(r, beta) >= Status::Committed, "op2 at {r}");
    }
    net
}

#[test]
fn five_replicas_recover_a_fast_commit_before_a_later_conflict() {
    let net = fast_path_then_conflict(None);
    let alpha = InstanceId::new(ReplicaId(0), 1);
    let decided = net.decisions(alpha);
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(
        decided[0].batch.len(),
        1,
        "op1 committed, as its client saw"
    );
    let beta = net.decisions(InstanceId::new(ReplicaId(1), 1));
    assert_eq!(beta.len(), 1, "{beta:?}");
    let op2_ran = !beta[0].batch.is_empty();
    for r in 2..5 {
        let expected: &[u8] = if op2_ran { b"op2" } else { b"op1" };
        assert_eq!(net.value(r, "k").as_deref(), Some(expected), "replica {r}");
        let order = &net.executed[r];
        let at = |leader: usize| order.iter().position(|i| i.replica.index() == leader);
        let op1_first = matches!((at(0), at(1)), (Some(x), Some(y)) if x < y);
        assert!(!op2_ran || op1_first, "replica {r} executed {order:?}");
    }
    // The read saw op1's write or a later one, never the initial state.
    assert!(
        net.replies.iter().all(|r| r.2 != KvResult::NotFound),
        "{:?}",
        net.replies
    );
}

/// The visibility violation the scenario is about: op1 and op2 both
/// committed as commands, neither depending on the other (so replicas may
/// run them in either order), or op2 run before op1 somewhere.
fn op2_not_ordered_after_op1(net: &Net) -> bool {
    let alpha = net.decisions(InstanceId::new(ReplicaId(0), 1));
    let beta = net.decisions(InstanceId::new(ReplicaId(1), 1));
    let op2_ran = beta.iter().any(|d| !d.batch.is_empty());
    let independent =
        alpha.iter().all(|d| d.attrs.deps.0[1] < 1) && beta.iter().all(|d| d.attrs.deps.0[0] < 1);
    let overtaken = (2..5).any(|r| {
        let order = &net.executed[r];
        let at = |leader: usize| order.iter().position(|i| i.replica.index() == leader);
        matches!((at(0), at(1)), (Some(x), Some(y)) if y < x)
    });
    op2_ran && (independent || overtaken)
}

#[test]
fn five_replicas_without_validate_put_op2_before_op1() {
    assert!(!op2_not_ordered_after_op1(&fast_path_then_conflict(None)));
    let net = fast_path_then_conflict(Some(InjectedBug::RecoverySkipsValidate));
    assert!(
        op2_not_ordered_after_op1(&net),
        "the defect went unnoticed: {:?}",
        net.executed
    );
}

/// efficient/epaxos issue #29, 3 replicas: op2 commits on the fast path
/// (B with C) while the link from B to A drops everything; A then proposes
/// op1 without knowing op2, only C answers (adding op2), and A crashes. A
/// restarts holding op1 pre-accepted with its own, incomplete, attributes.
/// Recovery must not commit those: op1 would not depend on op2 nor op2 on
/// op1, and replicas would apply them in different orders.
fn lost_dependency(bug: Option<InjectedBug>) -> Net {
    let (a, b, c) = (0, 1, 2);
    let mut net = Net::new(3, bug);
    let beta = net.propose(b, Op::Put, "k", "op2");
    net.drop_held(|f, t, _| f == b && t == a);
    net.deliver(|f, t, _| (f == b && t == c) || (f == c && t == b));
    assert_eq!(net.status(c, beta), Status::Executed);
    net.propose(a, Op::Put, "k", "op1");
    net.deliver(|f, t, m| f == a && t == c && pre_accept(m));
    net.drop_held(|f, t, _| f == b && t == a);
    net.crash(a);
    net.restart(a);
    net.settle(5_000 * MS);
    net
}

/// Visibility for two instances: both commands, and neither depends on the
/// other.
fn unordered(net: &Net, x: InstanceId, y: InstanceId) -> bool {
    let (dx, dy) = (net.decisions(x), net.decisions(y));
    let command = |d: &[Decided]| d.iter().any(|d| !d.batch.is_empty());
    let depends =
        |d: &[Decided], on: InstanceId| d.iter().all(|d| d.attrs.deps.get(on.replica) >= on.slot);
    command(&dx) && command(&dy) && !depends(&dx, y) && !depends(&dy, x)
}

#[test]
fn recovery_keeps_a_dependency_lost_to_asymmetric_loss() {
    let net = lost_dependency(None);
    let (alpha, beta) = (
        InstanceId::new(ReplicaId(0), 1),
        InstanceId::new(ReplicaId(1), 1),
    );
    assert!(!unordered(&net, alpha, beta));
    for r in 0..3 {
        assert!(
            net.status(r, alpha) >= Status::Committed,
            "op1 decided at {r}"
        );
        assert_eq!(net.value(r, "k"), net.value(0, "k"), "replica {r}");
    }
    let buggy = lost_dependency(Some(InjectedBug::RecoveryTrustsOwnPreAccept));
    assert!(
        unordered(&buggy, alpha, beta),
        "trusting the own pre-accept went unnoticed"
    );
}

/// efficient/epaxos issue #27, 3 replicas: A commits op1 on the fast path
/// with B, runs it and answers the client; its Commit is lost and A
/// crashes. What the client saw must survive: op1 stays committed, with
/// the attributes A committed it with, and every replica applies it.
fn executed_then_crashed(bug: Option<InjectedBug>) -> Net {
    let (a, b) = (0, 1);
    let mut net = Net::new(3, bug);
    let alpha = net.propose(a, Op::Put, "k", "op1");
    net.deliver(|f, t, m| f == a && t == b && pre_accept(m));
    net.deliver(|f, t, m| f == b && t == a && matches!(m, Message::PreAcceptOk(_)));
    assert_eq!(net.status(a, alpha), Status::Executed);
    assert_eq!(net.replies, vec![(101, 1, KvResult::Done)]);
    net.crash(a);
    net.restart(a);
    net.settle(5_000 * MS);
    net
}

#[test]
fn a_command_answered_before_a_crash_survives_it() {
    let net = executed_then_crashed(None);
    let alpha = InstanceId::new(ReplicaId(0), 1);
    assert_eq!(net.decisions(alpha).len(), 1);
    for r in 0..3 {
        assert_eq!(
            net.value(r, "k").as_deref(),
            Some(&b"op1"[..]),
            "replica {r}"
        );
    }
    let buggy = executed_then_crashed(Some(InjectedBug::CommitNotPersisted));
    let lost = (0..3).any(|r| buggy.value(r, "k").is_none());
    let disagree = buggy.decisions(alpha).len() > 1;
    assert!(lost || disagree, "an unpersisted commit went unnoticed");
}

/// efficient/epaxos issue #26, 3 replicas: op3 commits depending on op1,
/// whose leader A died after one PreAccept. B and C cannot execute op3
/// until op1 is decided: waiting must make them recover op1, through a
/// timer (no polling: a handful of ticks, not one per millisecond).
fn blocked_executor(bug: Option<InjectedBug>) -> (Net, usize) {
    let (a, b, c) = (0, 1, 2);
    let mut net = Net::new(3, bug);
    net.propose(a, Op::Put, "k", "op1");
    net.deliver(|f, t, m| f == a && t == b && pre_accept(m));
    net.crash(a);
    let gamma = net.propose(c, Op::Put, "k", "op3");
    net.deliver(|_, _, _| true);
    net.tick(c, 25 * MS);
    net.deliver(|_, _, _| true);
    assert_eq!(net.status(c, gamma), Status::Committed);
    let mut ticks = 0;
    let end = net.now + 5_000 * MS;
    loop {
        let next = [b, c]
            .iter()
            .filter_map(|&r| {
                net.replicas[r]
                    .as_ref()
                    .unwrap()
                    .next_deadline()
                    .map(|d| (d, r))
            })
            .min();
        match next {
            Some((at, r)) if at <= end => {
                ticks += 1;
                net.now = net.now.max(at);
                net.call(r, |rep, now, out| rep.tick(now, out));
                net.deliver(|_, _, _| true);
            }
            _ => break,
        }
        if [b, c]
            .iter()
            .all(|&r| net.status(r, gamma) == Status::Executed)
        {
            break;
        }
    }
    (net, ticks)
}

#[test]
fn an_executor_waiting_on_a_dead_leader_recovers_it() {
    let gamma = InstanceId::new(ReplicaId(2), 1);
    let (net, ticks) = blocked_executor(None);
    for r in [1, 2] {
        assert_eq!(net.status(r, gamma), Status::Executed, "op3 at {r}");
        assert_eq!(net.value(r, "k").as_deref(), Some(&b"op3"[..]));
    }
    assert!(ticks < 20, "{ticks} timer calls to get there");
    let (buggy, _) = blocked_executor(Some(InjectedBug::ExecutorNeverRecovers));
    assert_eq!(
        buggy.status(1, gamma),
        Status::Committed,
        "op3 should stay blocked without recovery"
    );
}

/// A live command leader whose instance recovery replaced with a no-op: A
/// proposes op1 and every PreAccept it sends is lost; B recovers the
/// instance and commits a no-op. A still holds op1's batch, and its client
/// must hear that op1 did not run (and may be sent again) instead of
/// waiting for an answer that never comes.
#[test]
fn a_leader_answers_commands_that_recovery_replaced_with_a_noop() {
    let (a, b) = (0, 1);
    let mut net = Net::new(3, None);
    let alpha = net.propose(a, Op::Put, "k", "op1");
    let client = net.client;
    net.drop_held(|f, _, m| f == a && pre_accept(m));
    net.recover(b, alpha);
    net.settle(5_000 * MS);
    let decided = net.decisions(alpha);
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert!(
        decided[0].batch.is_empty(),
        "recovery kept op1: {decided:?}"
    );
    for r in 0..3 {
        assert!(net.status(r, alpha) >= Status::Committed, "replica {r}");
        assert_eq!(net.value(r, "k"), None, "replica {r}");
    }
    assert_eq!(net.refused, vec![(client, 1, Refused::Superseded)]);
    assert!(net.replies.is_empty(), "{:?}", net.replies);
}

/// A recovery whose Validate is lost: A proposes op1, only C pre-accepts
/// it, and A crashes. B recovers op1, finds it pre-accepted at C with the
/// leader's attributes and validates it with C; that Validate is lost. B's
/// retransmission timer must send it again, so op1 commits.
#[test]
fn a_lost_validate_is_sent_again() {
    let (a, b, c) = (0, 1, 2);
    let mut net = Net::new(3, None);
    let alpha = net.propose(a, Op::Put, "k", "op1");
    net.deliver(|f, t, m| f == a && t == c && pre_accept(m));
    net.crash(a);
    net.recover(b, alpha);
    net.deliver(|_, _, m| !matches!(m, Message::Validate(_)));
    let lost = net.held.len();
    net.drop_held(|_, _, m| matches!(m, Message::Validate(_)));
    assert!(lost > 0 && net.held.is_empty(), "no Validate to lose");
    net.tick(b, 30 * MS);
    assert!(
        net.held
            .iter()
            .any(|(_, _, m)| matches!(m, Message::Validate(_))),
        "the Validate was not sent again"
    );
    net.deliver(|_, _, _| true);
    assert!(net.status(b, alpha) >= Status::Committed);
}
