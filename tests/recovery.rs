//! Scripted recovery scenarios: each one is a bug found in a published
//! EPaxos specification or implementation, replayed message by message
//! against the real core. Each scenario runs twice: as is, where it must
//! end safely, and with the matching fix removed (an `InjectedBug`), where
//! the same script must end in the failure the bug report describes. So
//! every test shows it can fail.

use std::collections::BTreeMap;

use epaxos_fast::protocol::{
    Attrs, Config, InjectedBug, InstanceId, Message, Outbox, Record, Replica, ReplicaId, Status,
    TraceEvent,
};
use epaxos_fast::state_machine::{KvResult, KvStore};
use epaxos_fast::wire::{Batch, BatchBuilder, CommandRef, Op};

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
    /// Per replica (all incarnations): what it committed.
    committed: Vec<BTreeMap<InstanceId, Decided>>,
    /// Per replica, current incarnation: the execution order.
    executed: Vec<Vec<InstanceId>>,
    replies: Vec<(u64, u64, KvResult)>,
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
            committed: vec![BTreeMap::new(); n],
            executed: vec![Vec::new(); n],
            replies: Vec::new(),
            now: 0,
            client: 100,
        }
    }

    fn call(&mut self, r: usize, f: impl FnOnce(&mut Replica<KvStore>, u64, &mut Outbox<KvResult>)) {
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
            let result = reply.result.expect("in window");
            self.replies.push((reply.client, reply.request, result));
        }
        for event in out.trace.drain(..) {
            match event {
                TraceEvent::Committed { id, attrs, batch } => {
                    let decided = Decided { attrs, batch };
                    if let Some(before) = self.committed[r].insert(id, decided.clone()) {
                        assert_eq!(before, decided, "replica {r} changed its mind on {id}");
                    }
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
        self.call(r, |rep, now, out| id = Some(rep.propose(now, batch, out).unwrap()));
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
        self.held.retain(|(f, t, _)| f.index() != r && t.index() != r);
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
                .filter_map(|r| self.replicas[r].as_ref().and_then(|x| x.next_deadline()).map(|d| (d, r)))
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
        for d in self.committed.iter().filter_map(|c| c.get(&id)) {
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

fn is<F: Fn(&Message) -> bool>(kind: F) -> F {
    kind
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
    net.deliver(|f, t, m| (f == a || t == a) && !is(commit)(m));
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
    assert_eq!(decisions.len(), 2, "expected op1 at B and a no-op at A: {decisions:?}");
}
