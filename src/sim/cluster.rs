//! The simulated cluster: event loop, network, storage, crashes.
//!
//! Every replica is `shards` nodes (`crate::node::Node`), exactly what the
//! runtime drives, each on an in-memory storage whose appends become durable
//! after a simulated fdatasync. Peer messages travel as the real encoded
//! frames, one frame an event (so the network can delay, reorder, duplicate
//! or lose each), and are decoded by the receiving node; clients (in
//! `clients.rs`) speak the real client frames over simulated connections;
//! shards of one replica pass forwarded commands and answers to each other.
//! A crash keeps what each shard's storage had made durable and, half the
//! time, a prefix of what it had not yet (a write that reached the disk
//! before the process died).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use bytes::BytesMut;
use rustc_hash::FxHashSet;

use super::check::{check_agreement, check_all_executed, check_execution_order, ReplicaLog};
use super::clients::{Client, ClientEvent};
use super::contract::{AnswerCount, DurableView};
use super::linearizability::{check_history, HistoryOp};
use super::{SimConfig, SimReport, FAULT_PHASE_NS, LIVENESS_BOUND_NS};
use crate::node::{ConnId, Cross, LinkAnswer, Node, NodeConfig, Nonce, Output};
use crate::protocol::{InstanceId, Message, ReplicaId, TraceEvent};
use crate::rng::Rng;
use crate::storage::{MemStorage, Token};
use crate::wire::{peer, Frame, FrameReader, Kind};

pub(super) const MESSAGE_DELAY_NS: u64 = 100_000;
const JITTER_SMALL_NS: u64 = 50_000;
const JITTER_REORDER_NS: u64 = 3_000_000;
const LOSS_PCT: u32 = 5;
const DUPLICATE_PCT: u32 = 5;
/// A replica's event-loop turn: requests arriving within it form one batch.
const TURN_NS: u64 = 2_000;
/// A hop between two shards of one replica (a cross-core channel).
const CROSS_NS: u64 = 1_000;
/// How long an fdatasync takes: appends become durable this long after.
const SYNC_NS_MIN: u64 = 20_000;
const SYNC_NS_MAX: u64 = 400_000;
/// After the last client finishes, time for commits to reach every replica.
const DRAIN_NS: u64 = 1_000_000_000;
const EVENTS_MAX: u64 = 20_000_000;
pub(super) const CLUSTER_ID: u64 = 0x5157;
const LIN_SEARCH_STEPS_MAX: u64 = 50_000_000;
/// Contract violations named in a report (the rest are counted).
const VIOLATIONS_SHOWN: usize = 3;
/// How long a crashed replica stays down, and the gap between crashes.
const DOWN_NS_MIN: u64 = 5_000_000;
const DOWN_NS_MAX: u64 = 80_000_000;
const CRASH_GAP_NS_MAX: u64 = 60_000_000;
/// An armed crash that found no sync (or commit) to strike at within this
/// long strikes at the next crash event instead.
const ARMED_NS_MAX: u64 = 20_000_000;
/// The cluster secret of runs with `SimConfig::cluster_secret`.
const SIM_CLUSTER_SECRET: &[u8] = b"the simulator's cluster secret";
/// Mixed into the seed for the handshake nonces' generator.
const NONCE_SEED_SALT: u64 = 0x6e6f_6e63_6573_2121;

/// Where a scheduled crash strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashPoint {
    /// At once, between two events: everything durable survives.
    Now,
    /// At the replica's next fdatasync, before it completes: what that sync
    /// covered is lost (and nothing that waited on it left).
    DuringSync,
    /// At the replica's next fdatasync, once it completed and before
    /// anything it released leaves.
    AfterSync,
    /// At the first fdatasync whose release holds a Commit this replica
    /// sends (a command leader in the middle of its fast path): durable,
    /// and the Commit never leaves.
    BeforeSendingCommit,
}

pub(super) enum EventKind {
    /// A peer frame, from shard `shard` of `from` to the same shard of `to`.
    Deliver {
        from: ReplicaId,
        to: ReplicaId,
        shard: usize,
        frame: Frame,
    },
    /// Between two shards of one replica (of incarnation `incarnation`).
    Cross {
        replica: usize,
        to: usize,
        incarnation: u64,
        msg: Cross,
    },
    Turn {
        replica: usize,
        shard: usize,
        incarnation: u64,
    },
    Tick {
        replica: usize,
        shard: usize,
        incarnation: u64,
    },
    /// A simulated fdatasync of one shard's storage completed.
    Synced {
        replica: usize,
        shard: usize,
        incarnation: u64,
        token: Token,
    },
    Client(ClientEvent),
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

/// One shard of one replica, with what the simulator tracks beside it.
pub(super) struct Shard {
    /// `None` while the replica is down; its storage is then in `parked`.
    pub node: Option<Node<MemStorage>>,
    parked: Option<MemStorage>,
    /// The connection each peer's frames arrive on, by sender.
    peer_conns: Vec<Option<ConnId>>,
    turn_pending: bool,
    tick_at: Option<u64>,
    log: ReplicaLog,
    durable: DurableView,
}

pub(super) struct Sim<'c> {
    pub cfg: &'c SimConfig,
    pub rng: Rng,
    pub now: u64,
    seq: u64,
    events: u64,
    queue: BinaryHeap<Reverse<Event>>,
    /// `[replica][shard]`.
    pub shards: Vec<Vec<Shard>>,
    pub down: Vec<bool>,
    /// Bumped at every restart: events of an earlier incarnation are void.
    pub incarnation: Vec<u64>,
    /// A crash waiting for the replica's next fdatasync, and since when.
    crash_armed: Vec<Option<(CrashPoint, u64)>>,
    /// Per replica, the peers its shards were last told are unreachable.
    told_unreachable: Vec<u16>,
    crashes: u64,
    /// Crashes that kept part of what was not yet durable.
    torn_tails: u64,
    /// Logs of incarnations that crashed, per shard: still checked for
    /// agreement and execution order.
    dead_logs: Vec<Vec<ReplicaLog>>,
    /// Per replica: (client, request) of every command in a durable commit.
    pub durable_commands: Vec<FxHashSet<(u64, u64)>>,
    pub answers: AnswerCount,
    pub clients: Vec<Client>,
    pub clients_done: usize,
    pub last_completion_ns: u64,
    pub history: Vec<HistoryOp>,
    pub faults_on: bool,
    /// Replicas on one side of the current partition, if any.
    partition: Option<u16>,
    /// A link that drops everything sent from the first to the second.
    one_way: Option<(ReplicaId, ReplicaId)>,
    messages_sent: u64,
    messages_dropped: u64,
    /// Commits released from parking when a peer became reachable again.
    commits_unparked: u64,
    pub ops_during_faults: usize,
    /// SessionExpired answers clients acted on (each a new session).
    pub sessions_expired: u64,
    /// Contract violations seen as frames left (see `contract.rs`).
    pub violations: Vec<String>,
    reader: FrameReader,
    /// Handshake nonces (`nonce`).
    nonces: Rng,
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
        let rng = Rng::new(cfg.seed);
        let storage = || {
            if cfg.sync_at_once {
                MemStorage::syncing_at_once()
            } else {
                MemStorage::new()
            }
        };
        let shard = || Shard {
            node: None,
            parked: Some(storage()),
            peer_conns: vec![None; n],
            turn_pending: false,
            tick_at: None,
            log: ReplicaLog::default(),
            durable: DurableView::default(),
        };
        let mut sim = Sim {
            cfg,
            rng,
            now: 0,
            seq: 0,
            events: 0,
            queue: BinaryHeap::new(),
            shards: (0..n)
                .map(|_| (0..cfg.shards).map(|_| shard()).collect())
                .collect(),
            down: vec![true; n],
            incarnation: vec![0; n],
            crash_armed: vec![None; n],
            told_unreachable: vec![0; n],
            crashes: 0,
            torn_tails: 0,
            dead_logs: vec![Vec::new(); cfg.shards],
            durable_commands: vec![FxHashSet::default(); n],
            answers: AnswerCount::default(),
            clients: Client::all(cfg),
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
            sessions_expired: 0,
            violations: Vec::new(),
            reader: FrameReader::new(CLUSTER_ID),
            nonces: Rng::new(cfg.seed ^ NONCE_SEED_SALT),
        };
        for r in 0..n {
            sim.start_replica(r);
        }
        sim
    }

    pub(super) fn schedule(&mut self, at: u64, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            kind,
        }));
    }

    pub(super) fn fault_end_ns(&self) -> u64 {
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
        self.start_clients();
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
            EventKind::Deliver {
                from,
                to,
                shard,
                frame,
            } => self.deliver(from, to, shard, frame),
            EventKind::Cross {
                replica,
                to,
                incarnation,
                msg,
            } => {
                if self.incarnation[replica] == incarnation && !self.down[replica] {
                    let forwarded = matches!(msg, Cross::Commands { .. });
                    self.call(replica, to, |node, _| node.on_cross(msg));
                    if forwarded {
                        self.turn_soon(replica, to);
                    }
                }
            }
            EventKind::Turn {
                replica,
                shard,
                incarnation,
            } => {
                if self.incarnation[replica] == incarnation && !self.down[replica] {
                    self.shards[replica][shard].turn_pending = false;
                    self.turn(replica, shard);
                }
            }
            EventKind::Tick {
                replica,
                shard,
                incarnation,
            } => {
                if self.incarnation[replica] == incarnation && !self.down[replica] {
                    let s = &mut self.shards[replica][shard];
                    if s.tick_at == Some(self.now) {
                        s.tick_at = None;
                    }
                    self.turn(replica, shard);
                }
            }
            EventKind::Synced {
                replica,
                shard,
                incarnation,
                token,
            } => {
                if self.incarnation[replica] == incarnation && !self.down[replica] {
                    self.synced(replica, shard, token);
                }
            }
            EventKind::Client(e) => self.on_client_event(e),
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

    // ---- replicas: start, crash, restart ----

    /// The node configuration of shard `s` of replica `r`; `rng_seed`
    /// feeds its recovery back-off and is drawn from the run's seed.
    fn node_config(&self, r: usize, s: usize, rng_seed: u64) -> NodeConfig {
        NodeConfig {
            replica: ReplicaId(r as u8),
            replicas: self.cfg.replicas,
            shard: s,
            shards: self.cfg.shards,
            cluster_id: CLUSTER_ID,
            peers: (0..self.cfg.replicas).map(|p| format!("sim-{p}")).collect(),
            incarnation: self.incarnation[r],
            thrifty: self.cfg.thrifty,
            batch_max: crate::constants::BATCH_COMMANDS_MAX,
            pipeline: self.cfg.node_pipeline,
            rng_seed,
            trace: true,
            injected_bug: self.cfg.injected_bug,
            node_bug: self.cfg.node_bug,
            test_lose_write: 0,
            session_idle_ns: self.cfg.session_idle_ns,
            sessions_max: self.cfg.sessions_max,
            max_clients: usize::MAX,
            cluster_secret: self
                .cfg
                .cluster_secret
                .then(|| crate::secret::Secret::new(SIM_CLUSTER_SECRET)),
            password: None,
        }
    }

    /// A handshake nonce, from its own seeded generator (so that runs with
    /// and without a secret draw the same faults).
    fn nonce(&mut self) -> Nonce {
        let mut nonce = Nonce::default();
        nonce.0[..8].copy_from_slice(&self.nonces.next_u64().to_le_bytes());
        nonce.0[8..].copy_from_slice(&self.nonces.next_u64().to_le_bytes());
        nonce
    }

    /// Starts replica `r`'s shards on their storages (empty at first, what
    /// survived after a crash), and opens the peer connections to and from
    /// it with real Hellos.
    fn start_replica(&mut self, r: usize) {
        self.down[r] = false;
        self.incarnation[r] += 1;
        for s in 0..self.cfg.shards {
            let seed = self.rng.next_u64();
            let cfg = self.node_config(r, s, seed);
            let storage = self.shards[r][s]
                .parked
                .take()
                .expect("a down shard's storage");
            let node = Node::start(cfg, storage, self.now);
            let shard = &mut self.shards[r][s];
            shard.node = Some(node);
            shard.peer_conns.iter_mut().for_each(|c| *c = None);
            shard.tick_at = None;
            shard.turn_pending = false;
        }
        for other in 0..self.cfg.replicas {
            if other != r && !self.down[other] {
                for s in 0..self.cfg.shards {
                    self.connect_peer(other, r, s);
                    self.connect_peer(r, other, s);
                    // Each side's HelloOk says what it holds of the other's
                    // space (what a replica that started empty checks).
                    self.tell_known(r, other, s);
                    self.tell_known(other, r, s);
                }
            }
        }
        // A new incarnation starts with every link up (`report_links` then
        // tells it which are not); what its restore produced (commits
        // re-sent) leaves with its first turn.
        self.told_unreachable[r] = 0;
        for s in 0..self.cfg.shards {
            let node = self.shards[r][s].node.as_mut().expect("up");
            for p in (0..self.cfg.replicas).filter(|&p| p != r) {
                node.link_up(ReplicaId(p as u8));
            }
            self.turn(r, s);
        }
    }

    /// Shard `s` of `to` accepts a connection from the same shard of `from`,
    /// which opens with its Hello (replacing an earlier connection). The
    /// handshake (Hello, HelloOk, and with a cluster secret the proof) is
    /// one exchange, not messages on the simulated network.
    fn connect_peer(&mut self, from: usize, to: usize, s: usize) {
        let (dialer, acceptor) = (ReplicaId(from as u8), ReplicaId(to as u8));
        let mut hello = BytesMut::new();
        let nonce = self.nonce();
        self.node_call(from, s, |node, _| {
            node.link_hello(acceptor, nonce, &mut hello)
        });
        let frame = self
            .reader
            .next(&mut hello)
            .expect("own hello")
            .expect("whole");
        let nonce = self.nonce();
        let shard = &mut self.shards[to][s];
        let node = shard.node.as_mut().expect("up");
        if let Some(old) = shard.peer_conns[from].take() {
            node.closed(old);
        }
        let conn = node.accept_from(String::new(), nonce);
        shard.peer_conns[from] = Some(conn);
        let mut answer = self.call(to, s, |node, now| {
            let accepted = node.on_frame(now, conn, frame);
            // Only a stopped shard refuses a peer (`tell_known` has recorded
            // why it stopped).
            assert!(
                accepted.is_ok() || node.failed().is_some(),
                "a peer's hello is accepted: {accepted:?}"
            );
            node.take_conn_bytes(conn, BytesMut::new())
        });
        let Ok(Some(answer)) = self.reader.next(&mut answer) else {
            return; // a stopped shard's connection, closed
        };
        let mut reply = BytesMut::new();
        let taken = self.node_call(from, s, |node, _| {
            node.on_link_answer(acceptor, &answer, &mut reply)
        });
        let Ok(LinkAnswer::Accepted(_)) = taken else {
            assert!(
                matches!(taken, Ok(LinkAnswer::Refused(_))),
                "replica {} shard {s} refused replica {to}'s answer: {taken:?}",
                dialer.0
            );
            return;
        };
        while let Ok(Some(proof)) = self.reader.next(&mut reply) {
            self.call(to, s, |node, now| {
                let accepted = node.on_frame(now, conn, proof);
                assert!(accepted.is_ok(), "a peer's proof is accepted: {accepted:?}");
            });
        }
    }

    /// Shard `s` of `a` hears from the same shard of `b` how much of `a`'s
    /// space `b` holds, as a HelloOk tells it.
    fn tell_known(&mut self, a: usize, b: usize, s: usize) {
        let known = self.shards[b][s]
            .node
            .as_ref()
            .expect("up")
            .core()
            .highest_slot_known(ReplicaId(a as u8));
        let node = self.shards[a][s].node.as_mut().expect("up");
        node.peer_knows(ReplicaId(b as u8), known);
        if node.refused() {
            // The log keeps every slot a replica proposed, so a restart
            // from it is never refused: this one lost what it made durable.
            let why = node.failed().unwrap_or_default().to_string();
            self.violations
                .push(format!("rejoin: replica {a} shard {s} was refused: {why}"));
        }
    }

    /// Picks a live replica (keeping at most F down) and a point to crash it.
    fn crash_someone(&mut self) {
        if !self.faults_on {
            return;
        }
        // A crash armed for a sync or a commit that never came strikes now,
        // so that it does not hold the others off for the rest of the run.
        for r in 0..self.cfg.replicas {
            if let Some((_, since)) = self.crash_armed[r] {
                if self.now - since > ARMED_NS_MAX {
                    self.crash(r);
                }
            }
        }
        let f = (self.cfg.replicas - 1) / 2;
        let down = self.down.iter().filter(|&&d| d).count()
            + self.crash_armed.iter().filter(|c| c.is_some()).count();
        let r = self.rng.below(self.cfg.replicas as u64) as usize;
        if down < f && !self.down[r] && self.crash_armed[r].is_none() {
            let point = match self.rng.below(4) {
                0 => CrashPoint::Now,
                1 => CrashPoint::DuringSync,
                2 => CrashPoint::AfterSync,
                _ => CrashPoint::BeforeSendingCommit,
            };
            if point == CrashPoint::Now {
                self.crash(r);
            } else {
                self.crash_armed[r] = Some((point, self.now));
            }
        }
        let next = self.now + self.rng.below(CRASH_GAP_NS_MAX);
        self.schedule(next, EventKind::Crash);
    }

    /// The replica loses what its storages had not made durable, but for,
    /// at times, a prefix of it that reached the disk anyway.
    fn crash(&mut self, r: usize) {
        self.down[r] = true;
        self.crash_armed[r] = None;
        self.crashes += 1;
        for s in 0..self.cfg.shards {
            let shard = &mut self.shards[r][s];
            let mut storage = shard.node.take().expect("up").into_storage();
            // Half the time, part of what was written but not yet reported
            // durable survives (a torn tail cut at its last whole entry).
            let pending = storage.not_durable();
            let kept = if pending > 0 && self.rng.below(2) == 0 {
                self.torn_tails += 1;
                1 + self.rng.below(pending as u64) as usize
            } else {
                0
            };
            storage.crash_keeping(kept);
            shard.parked = Some(storage);
            let log = std::mem::take(&mut shard.log);
            self.dead_logs[s].push(log);
            shard.tick_at = None;
            shard.turn_pending = false;
        }
        let back = self.now + self.rng.between(DOWN_NS_MIN, DOWN_NS_MAX);
        self.schedule(back, EventKind::Restart { replica: r });
        self.report_links();
    }

    /// The replica comes back from what it made durable, as a new incarnation.
    fn restart(&mut self, r: usize) {
        if self.down[r] {
            self.start_replica(r);
            self.report_links();
        }
    }

    // ---- links ----

    /// What each live replica's runtime would see of its links: a peer
    /// that is down, or cut off from it, is unreachable. Tells each shard
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
            self.told_unreachable[a] = unreachable;
            for s in 0..self.cfg.shards {
                let node = self.shards[a][s].node.as_mut().expect("up");
                let parked = node.core().parked_commits();
                for b in (0..n).filter(|&b| changed & (1 << b) != 0) {
                    let peer = ReplicaId(b as u8);
                    if unreachable & (1 << b) == 0 {
                        node.link_up(peer);
                    } else {
                        node.link_down(peer);
                    }
                }
                let released = parked - node.core().parked_commits();
                self.commits_unparked += released as u64;
                self.arm_tick(a, s);
            }
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

    // ---- calls into a node, and what comes out ----

    /// Schedules a turn of shard `s` of `r` soon, if none is (client
    /// commands arriving within one turn form one batch).
    pub(super) fn turn_soon(&mut self, r: usize, s: usize) {
        let shard = &mut self.shards[r][s];
        if !shard.turn_pending {
            shard.turn_pending = true;
            let kind = EventKind::Turn {
                replica: r,
                shard: s,
                incarnation: self.incarnation[r],
            };
            self.schedule(self.now + TURN_NS, kind);
        }
    }

    fn turn(&mut self, r: usize, s: usize) {
        self.call_last(r, s, |node, now| node.turn(now));
    }

    /// `call` for the last call an event makes. On a storage that syncs at
    /// once (`--sync-at-once`) the sync happens inside the call, so a crash
    /// armed for a sync strikes here, after the call and before anything it
    /// released leaves (for `BeforeSendingCommit`, only if that includes a
    /// Commit). Returns `None` if the replica crashed.
    fn call_last<T>(
        &mut self,
        r: usize,
        s: usize,
        f: impl FnOnce(&mut Node<MemStorage>, u64) -> T,
    ) -> Option<T> {
        let result = self.node_call(r, s, f);
        if self.cfg.sync_at_once {
            let strike = match self.crash_armed[r].map(|(point, _)| point) {
                Some(CrashPoint::DuringSync | CrashPoint::AfterSync) => true,
                Some(CrashPoint::BeforeSendingCommit) => self.releases_commit(r, s),
                Some(CrashPoint::Now) | None => false,
            };
            if strike {
                self.crash(r);
                return None;
            }
        }
        self.drain(r, s);
        Some(result)
    }

    /// Calls into shard `s` of live replica `r`, then carries out what it
    /// put out: frames onto the network, answers to clients, messages to
    /// its sibling shards, a sync of its storage.
    pub(super) fn call<T>(
        &mut self,
        r: usize,
        s: usize,
        f: impl FnOnce(&mut Node<MemStorage>, u64) -> T,
    ) -> T {
        let result = self.node_call(r, s, f);
        self.drain(r, s);
        result
    }

    /// Calls into shard `s` of live replica `r`, outputs left where they are.
    fn node_call<T>(
        &mut self,
        r: usize,
        s: usize,
        f: impl FnOnce(&mut Node<MemStorage>, u64) -> T,
    ) -> T {
        let now = self.now;
        let node = self.shards[r][s]
            .node
            .as_mut()
            .expect("calls go to live replicas");
        f(node, now)
    }

    /// Carries out shard `s` of `r`'s outputs.
    fn drain(&mut self, r: usize, s: usize) {
        // A storage that syncs at once made records durable in the call.
        let shard = &mut self.shards[r][s];
        let durable = shard.node.as_ref().expect("up").storage().durable_records();
        shard.durable.learn(durable, &mut self.durable_commands[r]);
        let mut frames = Vec::new();
        loop {
            let node = self.shards[r][s].node.as_mut().expect("up");
            let Some(output) = node.poll_output() else {
                break;
            };
            match output {
                Output::Link(peer) => {
                    let mut bytes = node.take_link_bytes(peer, BytesMut::new());
                    self.split(&mut bytes, &mut frames);
                    for frame in frames.drain(..) {
                        self.check_sent(r, s, &frame);
                        self.send(ReplicaId(r as u8), peer, s, frame);
                    }
                }
                Output::Conn(conn) => {
                    let mut bytes = node.take_conn_bytes(conn, BytesMut::new());
                    if self.shards[r][s].peer_conns.contains(&Some(conn)) {
                        continue; // the HelloOk to a peer's connection
                    }
                    self.split(&mut bytes, &mut frames);
                    for frame in frames.drain(..) {
                        self.answer_leaves(r, s, conn, frame);
                    }
                }
                // Simulated clients read everything; nothing is closed.
                // No two incarnations of a replica are connected at once.
                Output::Close(_)
                | Output::Reprobe(_)
                | Output::Resume(_)
                | Output::ClientId { .. } => {}
                Output::Cross(to) => {
                    let incarnation = self.incarnation[r];
                    for msg in node.take_cross(to, Vec::new()) {
                        let kind = EventKind::Cross {
                            replica: r,
                            to,
                            incarnation,
                            msg,
                        };
                        self.schedule(self.now + CROSS_NS, kind);
                    }
                }
            }
        }
        let shard = &mut self.shards[r][s];
        let node = shard.node.as_mut().expect("up");
        if let Some(token) = node.sync_wanted() {
            let at = self.now + self.rng.between(SYNC_NS_MIN, SYNC_NS_MAX);
            let incarnation = self.incarnation[r];
            let kind = EventKind::Synced {
                replica: r,
                shard: s,
                incarnation,
                token,
            };
            self.schedule(at, kind);
        }
        let shard = &mut self.shards[r][s];
        let node = shard.node.as_mut().expect("up");
        for event in node.take_trace() {
            match event {
                TraceEvent::Committed { id, attrs, batch } => {
                    shard.log.committed.push((id, attrs, batch))
                }
                TraceEvent::Executed { id } => {
                    let commits = shard.log.committed.len();
                    shard.log.executed.push((id, commits));
                }
            }
        }
        self.arm_tick(r, s);
    }

    /// Splits the bytes a node queued into frames.
    fn split(&self, bytes: &mut BytesMut, frames: &mut Vec<Frame>) {
        while let Some(frame) = self
            .reader
            .next(bytes)
            .expect("a node encodes valid frames")
        {
            frames.push(frame);
        }
        assert!(bytes.is_empty(), "a node queued part of a frame");
    }

    /// A simulated fdatasync of shard `s` of `r` completed (or the replica
    /// crashes in it, if a crash waits for it).
    fn synced(&mut self, r: usize, s: usize, token: Token) {
        let armed = self.crash_armed[r].map(|(point, _)| point);
        if armed == Some(CrashPoint::DuringSync) {
            self.crash(r);
            return;
        }
        let shard = &mut self.shards[r][s];
        let node = shard.node.as_mut().expect("up");
        node.storage_mut().make_durable(token);
        let durable = node.storage().durable_records();
        shard.durable.learn(durable, &mut self.durable_commands[r]);
        node.durable(token);
        let crash = match armed {
            Some(CrashPoint::AfterSync) => true,
            Some(CrashPoint::BeforeSendingCommit) => self.releases_commit(r, s),
            _ => false,
        };
        if crash {
            // Durable, but nothing it released left: not a message, not an
            // answer.
            self.crash(r);
            return;
        }
        self.drain(r, s);
    }

    /// Whether the link bytes shard `s` of `r` holds include a Commit.
    fn releases_commit(&mut self, r: usize, s: usize) -> bool {
        let node = self.shards[r][s].node.as_mut().expect("up");
        let mut found = false;
        for p in (0..self.cfg.replicas).filter(|&p| p != r) {
            let peer = ReplicaId(p as u8);
            // Read, then put back: `drain` sends them if no crash comes.
            let bytes = node.take_link_bytes(peer, BytesMut::new());
            let mut scan = bytes.clone();
            while let Ok(Some(f)) = self.reader.next(&mut scan) {
                found |= f.kind == Kind::Commit;
            }
            let _empty = node.take_link_bytes(peer, bytes);
        }
        found
    }

    /// A peer frame about to leave shard `s` of `r`: checks the contract.
    fn check_sent(&mut self, r: usize, s: usize, frame: &Frame) {
        if !matches!(
            frame.kind,
            Kind::PreAccept | Kind::PreAcceptOk | Kind::AcceptOk | Kind::Commit | Kind::Progress
        ) {
            return;
        }
        let msg = peer::decode(frame.kind, &frame.body, self.cfg.replicas)
            .expect("a node encodes valid messages");
        if let Message::Progress(m) = &msg {
            // What a replica reports stable must be executed, hence durably
            // committed, at every replica of the group.
            for (q, &slot) in m.stable.iter().enumerate().take(self.cfg.replicas) {
                let id = InstanceId::new(ReplicaId(q as u8), slot);
                if let Some(y) = (0..self.cfg.replicas)
                    .find(|&y| slot > 0 && !self.shards[y][s].durable.committed(id))
                {
                    self.violations.push(format!(
                        "stability: replica {r} shard {s} reported {id} stable, but replica {y} \
                         holds no durable commit of it (at {} ns)",
                        self.now
                    ));
                }
            }
        }
        if let Message::PreAccept(m) = &msg {
            if let Some(why) = self.shards[r][s].durable.reproposed(m) {
                self.violations.push(format!(
                    "proposals: replica {r} shard {s}: {why} (at {} ns)",
                    self.now
                ));
            }
        }
        if let Some(why) = self.shards[r][s].durable.premature(&msg) {
            self.violations.push(format!(
                "durability: replica {r} shard {s} sent {why} (at {} ns)",
                self.now
            ));
        }
    }

    fn deliver(&mut self, from: ReplicaId, to: ReplicaId, s: usize, frame: Frame) {
        let r = to.index();
        if self.down[r] {
            return;
        }
        let Some(conn) = self.shards[r][s].peer_conns[from.index()] else {
            return;
        };
        let accepted = self.call_last(r, s, |node, now| {
            let accepted = node.on_frame(now, conn, frame);
            node.turn(now);
            accepted
        });
        if let Some(Err(e)) = accepted {
            self.violations.push(format!(
                "wire: replica {r} shard {s} refused a frame from replica {}: {e:?}",
                from.0
            ));
        }
    }

    /// Schedules shard `s` of replica `r`'s next tick if its deadline moved
    /// earlier.
    fn arm_tick(&mut self, r: usize, s: usize) {
        let shard = &mut self.shards[r][s];
        let Some(deadline) = shard.node.as_ref().and_then(|n| n.next_deadline()) else {
            return;
        };
        let deadline = deadline.max(self.now);
        if shard.tick_at.is_none_or(|t| deadline < t) {
            shard.tick_at = Some(deadline);
            let kind = EventKind::Tick {
                replica: r,
                shard: s,
                incarnation: self.incarnation[r],
            };
            self.schedule(deadline, kind);
        }
    }

    fn send(&mut self, from: ReplicaId, to: ReplicaId, shard: usize, frame: Frame) {
        self.messages_sent += 1;
        if self.faults_on {
            let cut = self.cut(from, to);
            if cut || (self.cfg.faults.loses() && self.rng.chance(LOSS_PCT)) {
                self.messages_dropped += 1;
                return;
            }
            if self.cfg.faults.loses() && self.rng.chance(DUPLICATE_PCT) {
                let at = self.now + self.delay();
                let copy = frame.clone();
                let kind = EventKind::Deliver {
                    from,
                    to,
                    shard,
                    frame: copy,
                };
                self.schedule(at, kind);
            }
        }
        let at = self.now + self.delay();
        let kind = EventKind::Deliver {
            from,
            to,
            shard,
            frame,
        };
        self.schedule(at, kind);
    }

    pub(super) fn delay(&mut self) -> u64 {
        let jitter = if self.faults_on && self.cfg.faults.reorders() {
            JITTER_REORDER_NS
        } else {
            JITTER_SMALL_NS
        };
        MESSAGE_DELAY_NS + self.rng.below(jitter)
    }

    // ---- the verdict ----

    fn report(self, finished: bool) -> SimReport {
        // The first few contract violations say what went wrong; a defect
        // usually repeats on every frame after.
        let mut failures: Vec<String> = self
            .violations
            .iter()
            .take(VIOLATIONS_SHOWN)
            .cloned()
            .collect();
        if self.violations.len() > VIOLATIONS_SHOWN {
            let more = self.violations.len() - VIOLATIONS_SHOWN;
            failures.push(format!("... and {more} more contract violations"));
        }
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
        for s in 0..self.cfg.shards {
            self.check_shard(s, finished, &mut failures);
        }
        if let Err(e) = check_history(&self.history, LIN_SEARCH_STEPS_MAX) {
            failures.push(format!("linearizability: {e}"));
        }
        let nodes = || self.shards.iter().flatten().filter_map(|s| s.node.as_ref());
        let stats: Vec<_> = nodes().map(|n| n.core().stats()).collect();
        SimReport {
            seed: self.cfg.seed,
            failures,
            ops_completed: self.history.len(),
            ops_during_faults: self.ops_during_faults,
            instances_proposed: stats.iter().map(|s| s.proposed as usize).sum(),
            fast_commits: stats.iter().map(|s| s.fast_commits).sum(),
            slow_commits: stats.iter().map(|s| s.slow_commits).sum(),
            crashes: self.crashes,
            torn_tails: self.torn_tails,
            recoveries: stats.iter().map(|s| s.recoveries).sum(),
            recovered_noops: stats.iter().map(|s| s.recovered_noops).sum(),
            messages_sent: self.messages_sent,
            messages_dropped: self.messages_dropped,
            commits_unparked: self.commits_unparked,
            keys_forgotten: stats.iter().map(|s| s.keys_forgotten).sum(),
            expiries: stats.iter().map(|s| s.sessions_expired).sum(),
            sessions_lost: self.sessions_expired,
            forwarded: nodes().map(|n| n.admin_info().forwarded_in.get()).sum(),
            recovery_ns: self.last_completion_ns.saturating_sub(fault_end),
            end_ns: self.now,
        }
    }

    /// Agreement, execution order, completeness and convergence of one
    /// shard's group.
    fn check_shard(&self, s: usize, finished: bool, failures: &mut Vec<String>) {
        let named = |e: String| {
            if self.cfg.shards == 1 {
                e
            } else {
                format!("shard {s}: {e}")
            }
        };
        let live: Vec<ReplicaLog> = self.shards.iter().map(|r| r[s].log.clone()).collect();
        // Current incarnations first (replica r is log r), then crashed ones.
        let all: Vec<ReplicaLog> = live.iter().chain(&self.dead_logs[s]).cloned().collect();
        if let Err(e) = check_agreement(&all) {
            failures.push(named(e));
        }
        if let Err(e) = check_execution_order(&all) {
            failures.push(named(e));
        }
        if !finished {
            return;
        }
        if let Err(e) = check_all_executed(&live) {
            failures.push(named(e));
        }
        let nodes: Vec<_> = self
            .shards
            .iter()
            .filter_map(|r| r[s].node.as_ref())
            .collect();
        let digests: Vec<u64> = nodes
            .iter()
            .map(|n| n.core().state_machine().digest())
            .collect();
        if digests.iter().any(|&d| d != digests[0]) {
            let executed: Vec<u64> = nodes
                .iter()
                .map(|n| n.core().stats().executed_instances)
                .collect();
            failures.push(named(format!(
                "convergence: replicas end in different states (digests {digests:x?}, \
                 instances executed {executed:?})"
            )));
        }
    }
}
