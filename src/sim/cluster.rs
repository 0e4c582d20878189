//! The simulated cluster: event loop, network, clients.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::check::{check_agreement, check_all_executed, check_execution_order, ReplicaLog};
use super::linearizability::{check_history, HistoryOp, OpKind};
use super::{SimConfig, SimReport, FAULT_PHASE_NS, LIVENESS_BOUND_NS};
use crate::command::{BatchBuilder, CommandRef, Op};
use crate::protocol::{Config, Message, Outbox, Record, Refused, Replica, ReplicaId, TraceEvent};
use crate::rng::Rng;
use crate::state_machine::{KvResult, KvStore};

const MESSAGE_DELAY_NS: u64 = 100_000;
const JITTER_SMALL_NS: u64 = 50_000;
const JITTER_REORDER_NS: u64 = 3_000_000;
const LOSS_PCT: u32 = 5;
const DUPLICATE_PCT: u32 = 5;
/// A replica's event-loop turn: requests arriving within it form one batch.
const TURN_NS: u64 = 2_000;
const CLIENT_TIMEOUT_NS: u64 = 60_000_000;
const THINK_NS_MAX: u64 = 1_000_000;
/// After the last client finishes, time for commits to reach every replica.
const DRAIN_NS: u64 = 1_000_000_000;
const EVENTS_MAX: u64 = 20_000_000;
const SHARED_KEYS: u64 = 3;
const PRIVATE_KEYS: u64 = 4;
const CLIENT_ID_BASE: u64 = 1000;
const LIN_SEARCH_STEPS_MAX: u64 = 50_000_000;
/// How long a crashed replica stays down, and the gap between crashes.
const DOWN_NS_MIN: u64 = 5_000_000;
const DOWN_NS_MAX: u64 = 80_000_000;
const CRASH_GAP_NS_MAX: u64 = 60_000_000;

/// Where a scheduled crash strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashPoint {
    /// At once, between two calls: everything persisted survives.
    Now,
    /// In the replica's next call, after its records are durable and before
    /// any of its messages or replies leave.
    BeforeSend,
    /// In the next call that decides a commit this replica leads (a command
    /// leader in the middle of its fast path), after persisting, before the
    /// Commit leaves.
    BeforeSendingCommit,
}

/// A client command on its way to, or waiting at, a replica.
#[derive(Clone, Debug)]
struct Request {
    client: u64,
    request: u64,
    first_outstanding: u64,
    op: Op,
    key: Vec<u8>,
    value: Vec<u8>,
}

enum EventKind {
    Deliver {
        from: ReplicaId,
        to: ReplicaId,
        msg: Message,
    },
    Arrive {
        replica: usize,
        request: Request,
    },
    Flush {
        replica: usize,
    },
    Tick {
        replica: usize,
    },
    Reply {
        client: usize,
        request: u64,
        result: KvResult,
    },
    ClientTimeout {
        client: usize,
        request: u64,
        attempt: u32,
    },
    ClientNext {
        client: usize,
    },
    PartitionStart,
    PartitionHeal,
    OneWayStart,
    OneWayHeal,
    Crash,
    Restart {
        replica: usize,
    },
    FaultsEnd,
}

struct Event {
    at: u64,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct InFlight {
    request: u64,
    op: Op,
    key: Vec<u8>,
    value: Vec<u8>,
    invoke_ns: u64,
    attempt: u32,
}

struct Client {
    id: u64,
    /// Requests not yet completed.
    ops_left: usize,
    /// Requests not yet scheduled to be issued.
    unscheduled: usize,
    next_request: u64,
    /// Up to `SimConfig::pipeline` requests at once.
    in_flight: Vec<InFlight>,
}

struct Sim<'c> {
    cfg: &'c SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    events: u64,
    queue: BinaryHeap<Reverse<Event>>,
    replicas: Vec<Replica<KvStore>>,
    /// What each replica persisted, in order: all a restart gets back.
    stores: Vec<Vec<Record>>,
    down: Vec<bool>,
    /// A crash waiting for the replica's next call (or commit decision).
    crash_armed: Vec<Option<CrashPoint>>,
    /// Per replica, the peers it was last told are unreachable (as the
    /// runtime tells the core when a link goes down or comes back).
    told_unreachable: Vec<u16>,
    crashes: u64,
    /// Logs of incarnations that crashed: still checked for agreement and
    /// execution order.
    dead_logs: Vec<ReplicaLog>,
    outbox: Outbox<KvResult>,
    arrived: Vec<Vec<Request>>,
    flush_pending: Vec<bool>,
    tick_at: Vec<Option<u64>>,
    builder: BatchBuilder,
    logs: Vec<ReplicaLog>,
    clients: Vec<Client>,
    clients_done: usize,
    last_completion_ns: u64,
    history: Vec<HistoryOp>,
    faults_on: bool,
    /// Replicas on one side of the current partition, if any.
    partition: Option<u16>,
    /// A link that drops everything sent from the first to the second.
    one_way: Option<(ReplicaId, ReplicaId)>,
    messages_sent: u64,
    messages_dropped: u64,
    /// Commits released from parking when a peer became reachable again.
    commits_unparked: u64,
    ops_during_faults: usize,
}

/// Runs one simulation and checks it.
pub fn run(cfg: &SimConfig) -> SimReport {
    let mut sim = Sim::new(cfg);
    let finished = sim.run();
    sim.report(finished)
}

impl<'c> Sim<'c> {
    fn new(cfg: &'c SimConfig) -> Sim<'c> {
        let n = cfg.replicas;
        let mut rng = Rng::new(cfg.seed);
        let replicas = (0..n)
            .map(|r| Replica::new(replica_config(cfg, r, rng.next_u64()), KvStore::new()))
            .collect();
        let clients = (0..cfg.clients)
            .map(|i| Client {
                id: CLIENT_ID_BASE + i as u64,
                ops_left: cfg.ops_per_client,
                unscheduled: cfg.ops_per_client,
                next_request: 1,
                in_flight: Vec::new(),
            })
            .collect();
        Sim {
            cfg,
            rng,
            now: 0,
            seq: 0,
            events: 0,
            queue: BinaryHeap::new(),
            replicas,
            stores: vec![Vec::new(); n],
            down: vec![false; n],
            crash_armed: vec![None; n],
            told_unreachable: vec![0; n],
            crashes: 0,
            dead_logs: Vec::new(),
            outbox: Outbox::new(n),
            arrived: vec![Vec::new(); n],
            flush_pending: vec![false; n],
            tick_at: vec![None; n],
            builder: BatchBuilder::new(),
            logs: vec![ReplicaLog::default(); n],
            clients,
            clients_done: 0,
            last_completion_ns: 0,
            history: Vec::new(),
            faults_on: false,
            partition: None,
            one_way: None,
            messages_sent: 0,
            messages_dropped: 0,
            commits_unparked: 0,
            ops_during_faults: 0,
        }
    }

    fn schedule(&mut self, at: u64, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            kind,
        }));
    }

    fn fault_end_ns(&self) -> u64 {
        if self.cfg.faults == super::FaultMix::None {
            0
        } else {
            FAULT_PHASE_NS
        }
    }

    /// Returns whether the run ended on its own (all clients done and drained).
    fn run(&mut self) -> bool {
        if self.fault_end_ns() > 0 {
            self.faults_on = true;
            self.schedule(self.fault_end_ns(), EventKind::FaultsEnd);
            if self.cfg.faults.partitions() {
                let at = self.rng.below(50_000_000);
                self.schedule(at, EventKind::PartitionStart);
            }
            if self.cfg.faults.cuts_one_way() {
                let at = self.rng.below(50_000_000);
                self.schedule(at, EventKind::OneWayStart);
            }
            if self.cfg.faults.crashes() && self.cfg.replicas > 1 {
                let at = self.rng.below(CRASH_GAP_NS_MAX);
                self.schedule(at, EventKind::Crash);
            }
        }
        for c in 0..self.clients.len() {
            for _ in 0..self.cfg.pipeline.min(self.cfg.ops_per_client) {
                self.clients[c].unscheduled -= 1;
                let at = self.rng.below(THINK_NS_MAX);
                self.schedule(at, EventKind::ClientNext { client: c });
            }
        }
        let horizon = self.fault_end_ns() + LIVENESS_BOUND_NS + DRAIN_NS;
        while let Some(Reverse(event)) = self.queue.pop() {
            self.events += 1;
            if event.at > horizon || self.events > EVENTS_MAX {
                return false;
            }
            if self.clients_done == self.clients.len()
                && event.at > self.last_completion_ns.max(self.fault_end_ns()) + DRAIN_NS
            {
                return true;
            }
            self.now = event.at;
            self.dispatch(event.kind);
        }
        self.clients_done == self.clients.len()
    }

    fn dispatch(&mut self, kind: EventKind) {
        match kind {
            EventKind::Deliver { from, to, msg } => {
                if !self.down[to.index()] {
                    self.call(to.index(), |r, now, out| r.handle(now, from, msg, out));
                }
            }
            EventKind::Arrive { replica, .. } if self.down[replica] => {}
            EventKind::Flush { replica } | EventKind::Tick { replica } if self.down[replica] => {}
            EventKind::Arrive { replica, request } => {
                self.arrived[replica].push(request);
                if !self.flush_pending[replica] {
                    self.flush_pending[replica] = true;
                    self.schedule(self.now + TURN_NS, EventKind::Flush { replica });
                }
            }
            EventKind::Flush { replica } => self.flush(replica),
            EventKind::Tick { replica } => {
                if self.tick_at[replica] == Some(self.now) {
                    self.tick_at[replica] = None;
                }
                self.call(replica, |r, now, out| r.tick(now, out));
            }
            EventKind::Reply {
                client,
                request,
                result,
            } => self.on_reply(client, request, result),
            EventKind::ClientTimeout {
                client,
                request,
                attempt,
            } => self.on_client_timeout(client, request, attempt),
            EventKind::ClientNext { client } => self.client_next(client),
            EventKind::PartitionStart => {
                if self.faults_on && self.cfg.replicas > 1 {
                    let all = (1u16 << self.cfg.replicas) - 1;
                    let side = 1 + self.rng.below(u64::from(all) - 1) as u16;
                    self.partition = Some(side);
                    let heal = self.now + self.rng.between(5_000_000, 80_000_000);
                    self.schedule(heal, EventKind::PartitionHeal);
                    self.report_links();
                }
            }
            EventKind::PartitionHeal => {
                self.partition = None;
                self.report_links();
                if self.faults_on {
                    let next = self.now + self.rng.between(5_000_000, 50_000_000);
                    self.schedule(next, EventKind::PartitionStart);
                }
            }
            EventKind::OneWayStart => {
                if self.faults_on && self.cfg.replicas > 1 {
                    let n = self.cfg.replicas as u64;
                    let from = self.rng.below(n);
                    let to = (from + 1 + self.rng.below(n - 1)) % n;
                    self.one_way = Some((ReplicaId(from as u8), ReplicaId(to as u8)));
                    let heal = self.now + self.rng.between(5_000_000, 80_000_000);
                    self.schedule(heal, EventKind::OneWayHeal);
                    self.report_links();
                }
            }
            EventKind::OneWayHeal => {
                self.one_way = None;
                self.report_links();
                if self.faults_on {
                    let next = self.now + self.rng.between(5_000_000, 50_000_000);
                    self.schedule(next, EventKind::OneWayStart);
                }
            }
            EventKind::Crash => self.crash_someone(),
            EventKind::Restart { replica } => self.restart(replica),
            EventKind::FaultsEnd => {
                self.faults_on = false;
                self.partition = None;
                self.one_way = None;
                for r in 0..self.cfg.replicas {
                    self.crash_armed[r] = None;
                    if self.down[r] {
                        self.restart(r);
                    }
                }
                self.report_links();
            }
        }
    }

    /// Picks a live replica (keeping at most F down) and a point to crash it.
    fn crash_someone(&mut self) {
        if !self.faults_on {
            return;
        }
        let f = (self.cfg.replicas - 1) / 2;
        let down = self.down.iter().filter(|&&d| d).count()
            + self.crash_armed.iter().filter(|c| c.is_some()).count();
        let r = self.rng.below(self.cfg.replicas as u64) as usize;
        if down < f && !self.down[r] && self.crash_armed[r].is_none() {
            let point = match self.rng.below(3) {
                0 => CrashPoint::Now,
                1 => CrashPoint::BeforeSend,
                _ => CrashPoint::BeforeSendingCommit,
            };
            if point == CrashPoint::Now {
                self.crash(r);
            } else {
                self.crash_armed[r] = Some(point);
            }
        }
        let next = self.now + self.rng.below(CRASH_GAP_NS_MAX);
        self.schedule(next, EventKind::Crash);
    }

    /// The replica loses everything it did not persist.
    fn crash(&mut self, r: usize) {
        self.down[r] = true;
        self.crash_armed[r] = None;
        self.crashes += 1;
        self.arrived[r].clear();
        self.flush_pending[r] = false;
        self.tick_at[r] = None;
        let back = self.now + self.rng.between(DOWN_NS_MIN, DOWN_NS_MAX);
        self.schedule(back, EventKind::Restart { replica: r });
        self.report_links();
    }

    /// The replica comes back from what it persisted, as a new incarnation.
    fn restart(&mut self, r: usize) {
        if !self.down[r] {
            return;
        }
        self.down[r] = false;
        let log = std::mem::take(&mut self.logs[r]);
        self.dead_logs.push(log);
        let cfg = replica_config(self.cfg, r, self.rng.next_u64());
        let mut out = std::mem::replace(&mut self.outbox, Outbox::new(0));
        self.replicas[r] =
            Replica::restore(cfg, KvStore::new(), self.now, &self.stores[r], &mut out);
        self.outbox = out;
        // A new incarnation starts with every peer reachable.
        self.told_unreachable[r] = 0;
        self.call(r, |_, _, _| {});
        self.report_links();
    }

    /// What each live replica's runtime would see of its links: a peer
    /// that is down, or cut off from it, is unreachable. Tells each replica
    /// what changed since it was last told.
    fn report_links(&mut self) {
        let n = self.cfg.replicas;
        for a in 0..n {
            if self.down[a] {
                continue;
            }
            let from = ReplicaId(a as u8);
            let unreachable = (0..n)
                .filter(|&b| b != a && (self.down[b] || self.cut(from, ReplicaId(b as u8))))
                .fold(0u16, |m, b| m | (1 << b));
            let changed = unreachable ^ self.told_unreachable[a];
            if changed == 0 {
                continue;
            }
            let parked = self.replicas[a].parked_commits();
            for b in (0..n).filter(|&b| changed & (1 << b) != 0) {
                let reachable = unreachable & (1 << b) == 0;
                self.replicas[a].set_reachable(ReplicaId(b as u8), reachable);
            }
            self.commits_unparked += (parked - self.replicas[a].parked_commits()) as u64;
            self.told_unreachable[a] = unreachable;
            self.arm_tick(a);
        }
    }

    /// Whether the network cuts messages from `from` to `to` now.
    fn cut(&self, from: ReplicaId, to: ReplicaId) -> bool {
        self.faults_on
            && (self
                .partition
                .is_some_and(|side| (side & from.bit() != 0) != (side & to.bit() != 0))
                || self.one_way == Some((from, to)))
    }

    /// Schedules replica `r`'s next tick if its deadline moved earlier.
    fn arm_tick(&mut self, r: usize) {
        if let Some(deadline) = self.replicas[r].next_deadline() {
            let deadline = deadline.max(self.now);
            if self.tick_at[r].is_none_or(|t| deadline < t) {
                self.tick_at[r] = Some(deadline);
                self.schedule(deadline, EventKind::Tick { replica: r });
            }
        }
    }

    /// The commands that arrived during one turn become one proposal.
    fn flush(&mut self, replica: usize) {
        self.flush_pending[replica] = false;
        let requests = std::mem::take(&mut self.arrived[replica]);
        for req in &requests {
            self.builder.push(&CommandRef {
                client: req.client,
                request: req.request,
                first_outstanding: req.first_outstanding,
                op: req.op,
                key: &req.key,
                value: &req.value,
            });
        }
        let batch = self.builder.finish();
        self.arrived[replica] = requests;
        self.arrived[replica].clear();
        self.call(replica, |r, now, out| {
            r.propose(now, batch, out)
                .expect("a simulated run stays far below the window");
        });
    }

    /// Calls into replica `r`, then carries out its outbox.
    fn call(
        &mut self,
        r: usize,
        f: impl FnOnce(&mut Replica<KvStore>, u64, &mut Outbox<KvResult>),
    ) {
        let mut out = std::mem::replace(&mut self.outbox, Outbox::new(0));
        f(&mut self.replicas[r], self.now, &mut out);
        self.stores[r].append(&mut out.persist);
        let crash_now = match self.crash_armed[r] {
            Some(CrashPoint::BeforeSend) => true,
            Some(CrashPoint::BeforeSendingCommit) => out
                .messages
                .iter()
                .flatten()
                .any(|m| matches!(m, Message::Commit(_))),
            _ => false,
        };
        if crash_now {
            // Durable, but nothing left: not a message, not a reply.
            self.collect_trace(r, &mut out);
            out.clear();
            self.outbox = out;
            self.crash(r);
            return;
        }
        let from = ReplicaId(r as u8);
        for to in 0..self.cfg.replicas {
            for msg in out.messages[to].drain(..) {
                self.send(from, ReplicaId(to as u8), msg);
            }
        }
        for reply in out.replies.drain(..) {
            let client = (reply.client - CLIENT_ID_BASE) as usize;
            let at = self.now + MESSAGE_DELAY_NS;
            let result = match reply.result {
                Ok(result) => result,
                // The command never ran: the client sends it again when its
                // timer fires, as if no answer had come.
                Err(Refused::Superseded) => continue,
                // A stale copy of a request the client had acknowledged.
                Err(Refused::Acknowledged) => continue,
                Err(e) => panic!("simulated clients stay in their window: {e}"),
            };
            let kind = EventKind::Reply {
                client,
                request: reply.request,
                result,
            };
            self.schedule(at, kind);
        }
        self.collect_trace(r, &mut out);
        out.clear();
        self.outbox = out;
        self.arm_tick(r);
    }

    fn collect_trace(&mut self, r: usize, out: &mut Outbox<KvResult>) {
        for event in out.trace.drain(..) {
            match event {
                TraceEvent::Committed { id, attrs, batch } => {
                    self.logs[r].committed.push((id, attrs, batch))
                }
                TraceEvent::Executed { id } => {
                    let commits = self.logs[r].committed.len();
                    self.logs[r].executed.push((id, commits));
                }
            }
        }
    }

    fn send(&mut self, from: ReplicaId, to: ReplicaId, msg: Message) {
        self.messages_sent += 1;
        if self.faults_on {
            let cut = self.cut(from, to);
            if cut || (self.cfg.faults.loses() && self.rng.chance(LOSS_PCT)) {
                self.messages_dropped += 1;
                return;
            }
            if self.cfg.faults.loses() && self.rng.chance(DUPLICATE_PCT) {
                let at = self.now + self.delay();
                let copy = msg.clone();
                self.schedule(
                    at,
                    EventKind::Deliver {
                        from,
                        to,
                        msg: copy,
                    },
                );
            }
        }
        let at = self.now + self.delay();
        self.schedule(at, EventKind::Deliver { from, to, msg });
    }

    fn delay(&mut self) -> u64 {
        let jitter = if self.faults_on && self.cfg.faults.reorders() {
            JITTER_REORDER_NS
        } else {
            JITTER_SMALL_NS
        };
        MESSAGE_DELAY_NS + self.rng.below(jitter)
    }

    fn client_next(&mut self, c: usize) {
        let cfg = self.cfg;
        let client = &mut self.clients[c];
        assert!(client.in_flight.len() < cfg.pipeline);
        let request = client.next_request;
        client.next_request += 1;
        let id = client.id;
        let key = if self.rng.chance(cfg.conflicts_pct) {
            format!("shared{}", self.rng.below(SHARED_KEYS))
        } else {
            format!("c{id}k{}", self.rng.below(PRIVATE_KEYS))
        };
        let (op, value) = if self.rng.chance(cfg.reads_pct) {
            (Op::Get, Vec::new())
        } else if self.rng.chance(10) {
            (Op::Delete, Vec::new())
        } else {
            (Op::Put, format!("c{id}r{request}").into_bytes())
        };
        self.clients[c].in_flight.push(InFlight {
            request,
            op,
            key: key.into_bytes(),
            value,
            invoke_ns: self.now,
            attempt: 0,
        });
        self.client_send(c, request);
    }

    /// Sends (or re-sends) one of the client's requests to a random replica,
    /// telling it the oldest request the client still waits for.
    fn client_send(&mut self, c: usize, request: u64) {
        let replica = self.rng.below(self.cfg.replicas as u64) as usize;
        let at = self.now + self.delay();
        let client = &self.clients[c];
        let first_outstanding = client.in_flight.iter().map(|f| f.request).min();
        let current = client
            .in_flight
            .iter()
            .find(|f| f.request == request)
            .expect("a request in flight");
        let sent = Request {
            client: client.id,
            request,
            first_outstanding: first_outstanding.expect("one in flight"),
            op: current.op,
            key: current.key.clone(),
            value: current.value.clone(),
        };
        let timeout = EventKind::ClientTimeout {
            client: c,
            request,
            attempt: current.attempt,
        };
        self.schedule(
            at,
            EventKind::Arrive {
                replica,
                request: sent,
            },
        );
        self.schedule(self.now + CLIENT_TIMEOUT_NS, timeout);
    }

    fn on_client_timeout(&mut self, c: usize, request: u64, attempt: u32) {
        let in_flight = &mut self.clients[c].in_flight;
        let Some(current) = in_flight.iter_mut().find(|f| f.request == request) else {
            return;
        };
        if current.attempt != attempt {
            return;
        }
        current.attempt += 1;
        self.client_send(c, request);
    }

    fn on_reply(&mut self, c: usize, request: u64, result: KvResult) {
        let client = &mut self.clients[c];
        let Some(i) = client.in_flight.iter().position(|f| f.request == request) else {
            return; // a late duplicate answer
        };
        let done = client.in_flight.swap_remove(i);
        let (kind, read) = match (done.op, result) {
            (Op::Get, KvResult::Value(v)) => (OpKind::Get, Some(v.to_vec())),
            (Op::Get, KvResult::NotFound) => (OpKind::Get, None),
            (Op::Put, KvResult::Done) => (OpKind::Put(done.value), None),
            (Op::Delete, KvResult::Done) => (OpKind::Delete, None),
            (op, result) => panic!("reply {result:?} does not fit {op:?}"),
        };
        self.history.push(HistoryOp {
            client: client.id,
            key: done.key,
            kind,
            invoke_ns: done.invoke_ns,
            return_ns: Some(self.now),
            read,
        });
        client.ops_left -= 1;
        self.last_completion_ns = self.now;
        if self.faults_on {
            self.ops_during_faults += 1;
        }
        if client.ops_left == 0 {
            self.clients_done += 1;
        } else if client.unscheduled > 0 {
            client.unscheduled -= 1;
            let at = self.now + self.rng.below(THINK_NS_MAX);
            self.schedule(at, EventKind::ClientNext { client: c });
        }
    }

    fn report(self, finished: bool) -> SimReport {
        let mut failures = Vec::new();
        let fault_end = self.fault_end_ns();
        if !finished || self.clients_done < self.clients.len() {
            let pending: usize = self.clients.iter().map(|c| c.ops_left).sum();
            failures.push(format!(
                "liveness: {pending} client requests not completed by {} ms \
                 ({} ms after the last fault; bound {} ms)",
                self.now / 1_000_000,
                self.now.saturating_sub(fault_end) / 1_000_000,
                LIVENESS_BOUND_NS / 1_000_000
            ));
        } else if self.last_completion_ns > fault_end + LIVENESS_BOUND_NS {
            failures.push(format!(
                "liveness: last request completed {} ms after the last fault (bound {} ms)",
                (self.last_completion_ns - fault_end) / 1_000_000,
                LIVENESS_BOUND_NS / 1_000_000
            ));
        }
        // Current incarnations first (replica r is log r), then crashed ones.
        let all_logs: Vec<ReplicaLog> = self.logs.iter().chain(&self.dead_logs).cloned().collect();
        if let Err(e) = check_agreement(&all_logs) {
            failures.push(e);
        }
        if let Err(e) = check_execution_order(&all_logs) {
            failures.push(e);
        }
        if let Err(e) = check_history(&self.history, LIN_SEARCH_STEPS_MAX) {
            failures.push(format!("linearizability: {e}"));
        }
        if finished {
            if let Err(e) = check_all_executed(&self.logs) {
                failures.push(e);
            }
            let digests: Vec<u64> = self
                .replicas
                .iter()
                .map(|r| r.state_machine().digest())
                .collect();
            if digests.iter().any(|&d| d != digests[0]) {
                let executed: Vec<u64> = self
                    .replicas
                    .iter()
                    .map(|r| r.stats().executed_instances)
                    .collect();
                failures.push(format!(
                    "convergence: replicas end in different states (digests {digests:x?}, \
                     instances executed {executed:?})"
                ));
            }
        }
        let stats: Vec<_> = self.replicas.iter().map(|r| r.stats()).collect();
        SimReport {
            seed: self.cfg.seed,
            failures,
            ops_completed: self.history.len(),
            ops_during_faults: self.ops_during_faults,
            instances_proposed: stats.iter().map(|s| s.proposed as usize).sum(),
            fast_commits: stats.iter().map(|s| s.fast_commits).sum(),
            slow_commits: stats.iter().map(|s| s.slow_commits).sum(),
            crashes: self.crashes,
            recoveries: stats.iter().map(|s| s.recoveries).sum(),
            recovered_noops: stats.iter().map(|s| s.recovered_noops).sum(),
            messages_sent: self.messages_sent,
            messages_dropped: self.messages_dropped,
            commits_unparked: self.commits_unparked,
            recovery_ns: self.last_completion_ns.saturating_sub(fault_end),
            end_ns: self.now,
        }
    }
}

/// The core's configuration for replica `r` of a simulated run; `rng_seed`
/// feeds its recovery back-off and is drawn from the run's seed.
fn replica_config(cfg: &SimConfig, r: usize, rng_seed: u64) -> Config {
    let mut c = Config::new(cfg.replicas, ReplicaId(r as u8)).expect("valid replica count");
    c.thrifty = cfg.thrifty;
    c.trace = true;
    c.injected_bug = cfg.injected_bug;
    c.rng_seed = rng_seed;
    c
}
