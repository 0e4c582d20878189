//! One shard of a replica above the sockets: pure, deterministic, no IO.
//!
//! A [`Node`] is everything a shard does between the bytes its connections
//! carry and the EPaxos core: handshakes, decoding frames, folding the client
//! commands of one turn into one instance, the pipeline limit, routing each
//! answer to the connection (or the shard) that waits for it, forwarding
//! commands another shard owns, the state of the links to peers, and the
//! order "persist, then send, then reply". The io_uring runtime drives it
//! with real sockets and the simulator drives it with a seeded network; both
//! see the same behaviour, because it is all here.
//!
//! Inputs, each taking the current time where it matters:
//! - [`Node::accept`] / [`Node::on_frame`] / [`Node::closed`]: a connection
//!   was accepted, one whole frame arrived on it, it ended;
//! - [`Node::link_up`] / [`Node::link_down`]: the outgoing link to a peer;
//! - [`Node::on_cross`]: a message from another shard of this replica;
//! - [`Node::durable`]: the records up to a token are durable;
//! - [`Node::turn`]: end of one loop turn: timers, proposals, then the
//!   turn's output is sealed behind its records.
//!
//! Outputs, in buffers the node owns and the driver drains:
//! - [`Node::poll_output`] names what has something new: bytes for a peer's
//!   link or a connection, a connection to close, messages for another shard;
//! - [`Node::take_link_bytes`], [`Node::take_conn_bytes`],
//!   [`Node::take_cross`] hand them over;
//! - [`Node::sync_wanted`] names the token the driver must make durable,
//!   after which it calls [`Node::durable`] (only for a storage whose sync
//!   completes later: one that syncs at once, `Synced::Now`, needs neither).
//!
//! The contract (see `protocol::outbox`): nothing that depends on a record
//! (a vote, a commit, a reply) leaves before the driver reports that record
//! durable. The node holds each turn's messages and replies behind the token
//! of the records that turn appended, and releases turns in order.
//!
//! This module must never import glommio, `std::net`, `std::time`, or a
//! random number generator, nor use `Rc`/`RefCell` wake-ups: time comes in
//! as a number, and the driver decides when to call.

mod auth;
pub mod config;
mod hello;
mod release;
mod resp;
mod resp_local;
mod routes;

use std::collections::VecDeque;

use bytes::BytesMut;
use rustc_hash::FxHashMap;

use crate::command::{Batch, BatchBuilder};
use crate::constants::{
    EXPIRE_BATCHES_MAX, EXPIRE_BATCH_MAX, EXPIRE_CHECK_NS, EXPIRE_OVER_CHECK_NS,
};
use crate::histogram::{Commands, Histogram, Nanos};
use crate::protocol::{Config, InjectedBug, Outbox, Replica, ReplicaId, TraceEvent};
use crate::state_machine::{KvResult, KvStore};
use crate::storage::{Storage, Token};
use crate::wire::client::AdminInfo;
use crate::wire::{peer, Frame, FrameEncoder, FrameError, Kind};

pub use auth::{AuthOutcome, Nonce};
pub use config::Topology;
pub use hello::LinkAnswer;
pub use resp::{RespEnd, RespFed};
pub use resp_local::RespServerInfo;
pub use routes::{Answer, Cross};

/// What one shard needs to know about the cluster and itself.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub replica: ReplicaId,
    /// N, the replicas of the cluster.
    pub replicas: usize,
    /// This shard's index, 0..`shards`.
    pub shard: usize,
    /// Shards of every replica (`--cores`).
    pub shards: usize,
    pub cluster_id: u64,
    /// Every replica's advertised address, in `--peers` order, as the
    /// binary normalised them (strings: this layer has no `std::net`);
    /// their digest is checked in every peer's Hello (`Topology`).
    pub peers: Vec<String>,
    /// This process's incarnation: random, drawn at its start, the same
    /// for all its shards (see `hello`).
    pub incarnation: u64,
    pub thrifty: bool,
    /// Most commands in one instance.
    pub batch_max: usize,
    /// Most uncommitted instances this shard leads at once.
    pub pipeline: usize,
    /// The core's random seed (recovery back-off only).
    pub rng_seed: u64,
    /// Keep the core's trace events for the simulator's checkers.
    pub trace: bool,
    /// Test only: a defect of the core.
    pub injected_bug: Option<InjectedBug>,
    /// Test only: a defect of the node.
    pub node_bug: Option<NodeBug>,
    /// Test only: acknowledge the shard's Nth PUT (from 1) without
    /// proposing it, so that tests can show a lost write is caught. 0: off.
    pub test_lose_write: u64,
    /// A client session no command of which executed for this long is
    /// expired (`--session-idle-s`).
    pub session_idle_ns: u64,
    /// Most sessions the shard keeps; past it the least recently used are
    /// expired (`--sessions-max`).
    pub sessions_max: usize,
    /// Client connections served at once; the next client's Hello is
    /// refused with a text naming the limit.
    pub max_clients: usize,
    /// Peers must prove this secret in their handshake
    /// (`--cluster-secret-file`; see `auth`). `None`: no proof, none asked.
    pub cluster_secret: Option<crate::secret::Secret>,
    /// Clients must send this password before any command
    /// (`--requirepass-file`). `None`: every client is served.
    pub password: Option<crate::secret::Secret>,
}

/// A deliberate defect of the node, for proving that the simulator catches
/// it. Never set outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeBug {
    /// Each turn's messages and replies leave at once, without waiting for
    /// the turn's records to be durable.
    ReleaseBeforeDurable,
    /// An answer to a command forwarded from another shard is sent back
    /// twice.
    AnswerForwardedTwice,
    /// A restart ignores the slot reservations in the log, so it may
    /// propose again on a slot whose PreAccept left before its record.
    IgnoreReservations,
}

impl NodeBug {
    pub const ALL: [NodeBug; 3] = [
        NodeBug::ReleaseBeforeDurable,
        NodeBug::AnswerForwardedTwice,
        NodeBug::IgnoreReservations,
    ];

    /// Its name on the simulator's command line.
    pub fn name(self) -> &'static str {
        match self {
            NodeBug::ReleaseBeforeDurable => "release-before-durable",
            NodeBug::AnswerForwardedTwice => "answer-forwarded-twice",
            NodeBug::IgnoreReservations => "ignore-reservations",
        }
    }
}

impl std::str::FromStr for NodeBug {
    type Err = String;

    fn from_str(s: &str) -> Result<NodeBug, String> {
        NodeBug::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = NodeBug::ALL.iter().map(|b| b.name()).collect();
                format!("unknown node bug {s:?}; one of {}", names.join(", "))
            })
    }
}

/// A connection the node was told about, by the number it gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Something the driver should act on after a call into the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Bytes are waiting for the outgoing link to this peer.
    Link(ReplicaId),
    /// Bytes are waiting for this connection.
    Conn(ConnId),
    /// Close this connection. Nothing more is queued for it; what is queued
    /// already may be dropped (the runtime abandons a client that stopped
    /// reading mid-write). A refused handshake's answer is queued before
    /// this, and the runtime writes it itself before any writer exists.
    Close(ConnId),
    /// Messages are waiting for this other shard.
    Cross(usize),
    /// Close the link to this peer and open it again: two processes claim
    /// its id, and the node must learn which one answers at its advertised
    /// address (`Node::peer_incarnation`).
    Reprobe(ReplicaId),
    /// A RESP connection that stopped reading whole commands
    /// (`RespFed::blocked`) may read on: feed it its bytes again.
    Resume(ConnId),
    /// A RESP connection's session expired: answer with
    /// `Node::resp_client_id` and a fresh client id at or above `above`
    /// (`client::fresh_client_id_above`).
    ClientId { conn: ConnId, above: u64 },
}

/// Why a connection must end, from the node's side.
#[derive(Debug)]
pub enum ConnError {
    /// A frame failed a check; it never reached the core.
    Frame(FrameError),
    /// The handshake was refused; a `Refused` frame saying why is queued.
    Refused(String),
}

impl From<FrameError> for ConnError {
    fn from(e: FrameError) -> ConnError {
        ConnError::Frame(e)
    }
}

/// Counters the admin frame reports, besides the core's own. The driver adds
/// the byte counts and the log's; the node counts the rest.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bad_frames: u64,
    pub batched_commands: u64,
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    /// Peer messages dropped because the link was down or backed up; the
    /// core re-sends what matters.
    pub dropped_messages: u64,
    /// PUTs submitted (counted only with `test_lose_write`).
    pub puts_seen: u64,
    /// `Op::Expire` commands this shard proposed.
    pub expiries_proposed: u64,
    /// Responses written to this shard's clients.
    pub responses: u64,
    /// Requests answered `Unavailable` because the shard is stopping.
    pub refused_stopping: u64,
    /// Answers that came back for commands forwarded to another shard.
    pub forwarded_answers: u64,
    /// Commands in each instance this shard proposed.
    pub batch_commands: Histogram<Commands>,
    pub log: LogCounters,
}

/// What the driver's log writer did: group commits, what they carried, how
/// long each took.
#[derive(Clone, Debug)]
pub struct LogCounters {
    pub fsyncs: u64,
    pub records: u64,
    pub bytes: u64,
    /// Microseconds per group commit (its O_DSYNC write).
    pub micros: hdrhistogram::Histogram<u64>,
    /// The same times in fixed buckets (nanoseconds), for the metrics
    /// endpoint.
    pub latency: Histogram<Nanos>,
}

impl Default for LogCounters {
    fn default() -> LogCounters {
        LogCounters {
            fsyncs: 0,
            records: 0,
            bytes: 0,
            // Up to a minute, three significant digits.
            micros: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("valid bounds"),
            latency: Histogram::default(),
        }
    }
}

impl LogCounters {
    /// One group commit of `records` records, `bytes` bytes, `micros` long.
    pub fn synced(&mut self, records: u64, bytes: u64, micros: u64) {
        self.fsyncs += 1;
        self.records += records;
        self.bytes += bytes;
        self.micros.saturating_record(micros.max(1));
        self.latency.record(micros.saturating_mul(1_000));
    }
}

/// Who a connection turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// No Hello yet.
    Unknown,
    /// Shard s of this replica, which sends protocol messages on it.
    Replica(ReplicaId),
    Client,
}

struct Conn {
    who: Peer,
    /// The remote address, as the driver wrote it (for logs and refusals).
    remote: String,
    /// This side's nonce for the connection's handshake (the driver's).
    nonce: Nonce,
    /// A peer's Hello that passed, while its proof of the cluster secret
    /// is awaited (`who` stays `Unknown` until it checks out).
    awaiting_proof: Option<crate::wire::client::HelloBody>,
    /// A client may send commands: it sent the password, or none is asked.
    authenticated: bool,
    /// Wrong passwords it sent (`AUTH_FAILURES_PER_CONNECTION_MAX`).
    auth_failures: u32,
    out: BytesMut,
    /// Named in `outputs` since the last take.
    listed: bool,
    /// Closed by the node (refused, or not reading its answers): no more
    /// bytes are queued for it.
    closing: bool,
    /// A RESP connection's state (`--resp`); `None` for the binary protocol.
    resp: Option<Box<resp::RespConn>>,
}

/// The outgoing link to one peer.
#[derive(Default)]
struct Link {
    up: bool,
    out: BytesMut,
    listed: bool,
    /// The nonce its latest Hello carried (`link_hello`).
    nonce: Nonce,
}

/// One shard's logic above the sockets; see the module docs.
pub struct Node<S: Storage> {
    cfg: NodeConfig,
    enc: FrameEncoder,
    core: Replica<KvStore>,
    storage: S,
    /// Where the core writes during the current turn.
    out: Outbox<KvResult>,
    /// Sealed turns waiting for their records, oldest first.
    held: VecDeque<(Token, Outbox<KvResult>)>,
    /// Cleared outboxes kept for reuse (their capacity stays).
    spare: Vec<Outbox<KvResult>>,
    /// Covers every record appended so far.
    appended: Token,
    /// The driver reported this durable.
    durable: Token,
    /// The token last named by `sync_wanted`.
    sync_asked: Token,
    /// Own slots up to here are durably reserved (`Record::reservation`):
    /// the PreAccept for one may leave before its record is durable.
    reserved: u64,
    /// The highest slot a reservation was appended for.
    reserving: u64,
    /// Reservations appended, not yet known durable: (token, slot).
    reservations: VecDeque<(Token, u64)>,
    /// A reservation in this turn's records, for `seal` to give a token.
    reservation_in_turn: Option<u64>,
    /// Client commands of this turn not yet in an instance.
    open: BatchBuilder,
    /// Full batches waiting for the pipeline.
    closed: VecDeque<Batch>,
    /// Per shard, commands of one request being forwarded there.
    forward: Vec<BatchBuilder>,
    /// Where the answer to each (client, request) this shard owns goes;
    /// removed when it is answered (or found acknowledged already).
    pending: FxHashMap<(u64, u64), routes::Pending>,
    conns: FxHashMap<ConnId, Conn>,
    next_conn: u64,
    links: Vec<Link>,
    /// Per replica id: who holds it, and what our link to it found.
    claims: Vec<hello::Claim>,
    /// Per destination shard: what to send it.
    cross: Vec<Vec<Cross>>,
    cross_listed: Vec<bool>,
    /// In the order they arose (a Close after the bytes before it).
    outputs: VecDeque<Output>,
    trace: Vec<TraceEvent>,
    counters: Counters,
    /// Why the shard stopped, once its storage failed (`storage_failed`)
    /// or it refused to rejoin (`peer_knows`).
    failed: Option<String>,
    /// It refused to take part: it started on an empty log, and a peer holds
    /// instances of its space (the driver stops the process).
    refused: bool,
    /// Started on an empty log in a cluster: until enough peers said they
    /// hold nothing of this replica's space (`peer_knows`), it neither votes
    /// nor proposes. The peers that said so, as a bit mask.
    probation: Option<u16>,
    /// When the next turn looks for sessions to expire, and when the last
    /// one did.
    expiry_due: u64,
    expiry_last: u64,
    /// Client connections that completed their Hello (`max_clients`).
    clients: usize,
    /// Set by `stop_taking`: new requests are answered `Unavailable` with it.
    stopping: Option<String>,
    /// The RESP commands of one read, and where each record sits in it.
    resp_batch: BatchBuilder,
    resp_staged: Vec<resp::StagedWaiter>,
    resp_info: RespServerInfo,
    /// The clock at the last RESP read (INFO's uptime).
    resp_clock_ns: u64,
}

impl<S: Storage> Node<S> {
    /// A shard started on `storage`: empty, or rebuilt from the durable
    /// records a previous run left there. `now` is the driver's clock.
    pub fn start(cfg: NodeConfig, mut storage: S, now: u64) -> Node<S> {
        assert!(cfg.shard < cfg.shards && cfg.pipeline > 0 && cfg.batch_max > 0);
        let mut core_cfg = Config::new(cfg.replicas, cfg.replica).expect("validated replica count");
        core_cfg.thrifty = cfg.thrifty;
        core_cfg.rng_seed = cfg.rng_seed;
        core_cfg.trace = cfg.trace;
        core_cfg.injected_bug = cfg.injected_bug;
        let mut out = Outbox::new(cfg.replicas);
        let mut records = storage.load();
        if cfg.node_bug == Some(NodeBug::IgnoreReservations) {
            records.retain(|r| *r != crate::protocol::Record::reservation(r.id));
        }
        let mut core = if records.is_empty() {
            Replica::new(core_cfg, KvStore::new())
        } else {
            Replica::restore(core_cfg, KvStore::new(), now, &records, &mut out)
        };
        // Links start down, as the node's do, until the driver says
        // otherwise: commits wait for a peer instead of being lost on the way.
        for p in (0..cfg.replicas).filter(|&p| p != cfg.replica.index()) {
            core.set_reachable(ReplicaId(p as u8), false);
        }
        let appended = Token(records.len() as u64);
        let records_empty = records.is_empty();
        // Every slot below the next one is taken by a durable record.
        let taken = core.next_slot() - 1;
        Node {
            enc: cfg.encoder(),
            core,
            storage,
            out,
            held: VecDeque::new(),
            spare: Vec::new(),
            appended,
            durable: appended,
            sync_asked: appended,
            reserved: taken,
            reserving: taken,
            reservations: VecDeque::new(),
            reservation_in_turn: None,
            open: BatchBuilder::new(),
            closed: VecDeque::new(),
            forward: Vec::new(),
            pending: FxHashMap::default(),
            conns: FxHashMap::default(),
            next_conn: 1,
            links: (0..cfg.replicas).map(|_| Link::default()).collect(),
            claims: vec![hello::Claim::default(); cfg.replicas],
            cross: (0..cfg.shards).map(|_| Vec::new()).collect(),
            cross_listed: vec![false; cfg.shards],
            outputs: VecDeque::new(),
            trace: Vec::new(),
            counters: Counters::default(),
            failed: None,
            refused: false,
            probation: (records_empty && cfg.replicas > 1).then_some(0),
            expiry_due: now,
            expiry_last: now,
            clients: 0,
            stopping: None,
            resp_batch: BatchBuilder::new(),
            resp_staged: Vec::new(),
            resp_info: RespServerInfo::default(),
            resp_clock_ns: now,
            cfg,
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The core, for its counters and state (read only).
    pub fn core(&self) -> &Replica<KvStore> {
        &self.core
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// The storage, for a restart (the node is gone).
    pub fn into_storage(self) -> S {
        self.storage
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// When `turn` next has timer work, if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        // A stopped shard, or one on probation, runs no timers: its turns
        // do nothing, so a due deadline would never move.
        if self.failed.is_some() || self.probation.is_some() {
            return None;
        }
        let expiry = (self.core.client_sessions() > 0).then_some(self.expiry_due);
        match (self.core.next_deadline(), expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Commands whose answer is still due (routes held).
    pub fn awaiting_answers(&self) -> usize {
        self.pending.len()
    }

    // ---- connections ----

    /// A connection was accepted; frames on it go to `on_frame` under the
    /// returned id, and its first must be a Hello. Its handshake nonce is
    /// made from the connection's number: predictable, so for tests only
    /// (a driver of real sockets calls `accept_from` with a random one).
    pub fn accept(&mut self) -> ConnId {
        let mut nonce = Nonce::default();
        nonce.0[..8].copy_from_slice(&self.next_conn.to_le_bytes());
        self.accept_from(String::new(), nonce)
    }

    /// `accept`, with the remote address as text, for what the node logs
    /// and the refusals it writes, and a fresh random nonce for the
    /// handshake (the cluster secret's challenge, see `auth`).
    pub fn accept_from(&mut self, remote: String, nonce: Nonce) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let conn = Conn {
            who: Peer::Unknown,
            remote,
            nonce,
            awaiting_proof: None,
            authenticated: self.cfg.password.is_none(),
            auth_failures: 0,
            out: BytesMut::new(),
            listed: false,
            closing: false,
            resp: None,
        };
        self.conns.insert(id, conn);
        id
    }

    /// The connection ended (either side closed it): what was queued for it
    /// is dropped.
    pub fn closed(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            if let Peer::Replica(_) = c.who {
                self.release_claim(conn);
            }
            if c.who == Peer::Client {
                self.clients -= 1;
            }
        }
    }

    /// Client connections served now.
    pub fn clients(&self) -> usize {
        self.clients
    }

    /// The replica is stopping: from now on a request is answered
    /// `Unavailable` with `why` (the client retries elsewhere); those
    /// already received are still answered as usual.
    pub fn stop_taking(&mut self, why: &str) {
        self.stopping = Some(why.to_string());
    }

    /// Answers every command still waiting `Unavailable` with `why` (a
    /// stopping replica's last step); how many. A client that sends it
    /// again elsewhere has it run at most once (its request number).
    pub fn refuse_pending(&mut self, why: &str) -> usize {
        let waiting: Vec<(u64, u64)> = self.pending.keys().copied().collect();
        for &(client, request) in &waiting {
            self.counters.refused_stopping += 1;
            self.answer(
                client,
                request,
                crate::wire::client::Code::Unavailable,
                why.as_bytes(),
            );
        }
        waiting.len()
    }

    /// Commands forwarded to other shards whose answer has not come back.
    pub fn forwards_awaiting(&self) -> u64 {
        self.counters
            .forwarded_out
            .saturating_sub(self.counters.forwarded_answers)
    }

    /// Who the connection's Hello said it is.
    pub fn who(&self, conn: ConnId) -> Peer {
        self.conns.get(&conn).map_or(Peer::Unknown, |c| c.who)
    }

    /// One whole frame arrived on `conn`. An error means the driver must
    /// close the connection (after writing what is queued for it, which
    /// holds the refusal of a handshake); the frame never reached the core.
    pub fn on_frame(&mut self, now: u64, conn: ConnId, frame: Frame) -> Result<(), ConnError> {
        self.counters.frames_in += 1;
        let result = self.dispatch(now, conn, frame);
        if let Err(ConnError::Frame(_)) = &result {
            self.counters.bad_frames += 1;
        }
        result
    }

    fn dispatch(&mut self, now: u64, conn: ConnId, frame: Frame) -> Result<(), ConnError> {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(()); // closed already: what it still sent is moot
        };
        match c.who {
            Peer::Unknown if c.awaiting_proof.is_some() => self.on_hello_proof(conn, frame),
            Peer::Unknown => self.on_hello(conn, frame),
            // A stopped shard votes on nothing: it closes the link, so the
            // peer sees it down (and parks its commits) instead of
            // re-sending to it for ever. One on probation waits quietly.
            Peer::Replica(_) if self.failed.is_some() => {
                Err(ConnError::Refused(self.failed.clone().unwrap_or_default()))
            }
            Peer::Replica(_) if self.probation.is_some() => Ok(()),
            Peer::Replica(from) => self.on_peer_frame(now, from, frame),
            Peer::Client => self.on_client_frame(conn, frame),
        }
    }

    fn on_peer_frame(&mut self, now: u64, from: ReplicaId, frame: Frame) -> Result<(), ConnError> {
        if !frame.kind.is_peer_message() {
            return Err(FrameError::Unexpected {
                kind: frame.kind,
                reason: "not a protocol message on a peer link",
            }
            .into());
        }
        if frame.sender != from.0 || usize::from(frame.shard) != self.cfg.shard {
            return Err(FrameError::Unexpected {
                kind: frame.kind,
                reason: "sender or shard differs from the handshake's",
            }
            .into());
        }
        let msg = peer::decode(frame.kind, &frame.body, self.cfg.replicas)?;
        self.core.handle(now, from, msg, &mut self.out);
        Ok(())
    }

    fn on_client_frame(&mut self, conn: ConnId, frame: Frame) -> Result<(), ConnError> {
        let authenticated = self.is_authenticated(conn);
        match frame.kind {
            Kind::Auth => self.on_auth(conn, &frame.body),
            Kind::Request => {
                let batch = Batch::parse(frame.body).map_err(|e| FrameError::BadBody {
                    kind: Kind::Request,
                    reason: e.to_string(),
                })?;
                if authenticated {
                    self.on_request(conn, &batch);
                } else {
                    self.refuse_unauthenticated(conn, &batch);
                }
                Ok(())
            }
            Kind::Admin if !authenticated => {
                self.answer_no_auth(conn, 0, 0);
                Ok(())
            }
            Kind::Admin => {
                let info = self.admin_info();
                self.queue_conn(conn, Kind::AdminInfo, zerocopy::IntoBytes::as_bytes(&info));
                Ok(())
            }
            kind => Err(FrameError::Unexpected {
                kind,
                reason: "not a client request",
            }
            .into()),
        }
    }

    // ---- links ----

    /// The outgoing link to `peer` is up (connected, handshake done).
    pub fn link_up(&mut self, peer: ReplicaId) {
        let link = &mut self.links[peer.index()];
        link.up = true;
        link.out.clear();
        // A new connection: whatever it queues is announced again (an
        // announcement for the old one may never have been taken).
        link.listed = false;
        self.claims[peer.index()].config_refusal = None;
        self.core.set_reachable(peer, true);
    }

    /// The outgoing link to `peer` is down. What was queued for it and not
    /// written is dropped: the core re-sends whatever is unacknowledged, and
    /// holds its commits for that peer until the link is up again.
    pub fn link_down(&mut self, peer: ReplicaId) {
        self.claims[peer.index()].at_address = None;
        let link = &mut self.links[peer.index()];
        link.up = false;
        link.out.clear();
        link.listed = false;
        self.core.set_reachable(peer, false);
    }

    /// Peer `peer` answered this shard's Hello: it holds this replica's
    /// space up to `slot` (0: nothing; its HelloOk's `known_slot`).
    ///
    /// A peer can only hold own slots this replica proposed, and this
    /// replica's log names every slot it proposed (its record, or a
    /// reservation, is durable before the PreAccept leaves). So a peer that
    /// holds a slot at or above the next one to propose means this replica
    /// lost its state, or part of it (a wiped or replaced data directory,
    /// a restart with --in-memory, a log cut short): voting again under its
    /// id could contradict what it lost, so it refuses for good (`refused`;
    /// the driver stops the process). Checked on every HelloOk.
    ///
    /// A shard that started on an empty log in a cluster is also on
    /// probation, neither voting nor proposing, until (replicas - 1) / 2 + 1
    /// peers said they hold nothing of its space: any instance it committed
    /// is held by at least (replicas - 1) / 2 peers, so that many answers
    /// must include one of them. (So a replica starting empty needs that
    /// many peers up: in a new three-replica cluster, both others.) One
    /// that only voted on others' instances leaves no trace its peers can
    /// show; safe rejoin needs snapshots and catch-up.
    pub fn peer_knows(&mut self, peer: ReplicaId, slot: u64) {
        if self.failed.is_some() {
            return; // stopped already
        }
        if slot >= self.core.next_slot() {
            let why = format!(
                "refused to take part: replica {} holds instances of this replica's \
                 space up to slot {slot}, but this replica's log ends below slot {}, \
                 so it took part before and lost its state (a wiped or replaced data \
                 directory, a restart with --in-memory, or a log cut short); voting \
                 again as replica {} could contradict what it lost. Restore its data \
                 directory; a replica that lost its state cannot rejoin under its id yet",
                peer.0,
                self.core.next_slot(),
                self.cfg.replica.0
            );
            self.refused = true;
            self.storage_failed(&why);
            return;
        }
        let Some(cleared) = self.probation.as_mut() else {
            return;
        };
        *cleared |= 1 << peer.0;
        if cleared.count_ones() as usize > (self.cfg.replicas - 1) / 2 {
            self.probation = None;
        }
    }

    /// Whether the shard refused to take part (see `peer_knows`).
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Whether the shard waits to hear from its peers before it takes part.
    pub fn on_probation(&self) -> bool {
        self.probation.is_some()
    }

    /// Outgoing links up, not counting this replica.
    pub fn links_up(&self) -> usize {
        self.links.iter().filter(|l| l.up).count()
    }

    // ---- the turn ----

    /// Ends one turn of the driver's loop: due timers fire, the commands
    /// queued become instances (one per batch, within the pipeline limit),
    /// and everything the turn produced is sealed: its records go to
    /// storage, and its messages and replies wait for them to be durable.
    pub fn turn(&mut self, now: u64) {
        if self.failed.is_some() || self.probation.is_some() {
            return; // client commands wait in the open batch meanwhile
        }
        // Timers before proposals: a tick that commits an instance of ours
        // lets a held batch go in this same turn.
        if self.core.next_deadline().is_some_and(|d| d <= now) {
            self.core.tick(now, &mut self.out);
        }
        let over = self.core.client_sessions() > self.cfg.sessions_max;
        if now >= self.expiry_due || (over && now >= self.expiry_last + EXPIRE_OVER_CHECK_NS) {
            self.expire_sessions(now);
        }
        self.propose_batches(now);
        // CommitOks owed to a peer ride with whatever else goes to it.
        self.core.flush_acks(now, &mut self.out);
        self.reserve_slots();
        self.seal();
    }

    fn propose_batches(&mut self, now: u64) {
        loop {
            // A single replica commits in `propose` itself, so the count
            // is read before each proposal.
            let room = self.core.proposals_in_flight() < self.cfg.pipeline;
            let Some(batch) = self.next_batch(room) else {
                return;
            };
            self.counters.batched_commands += batch.len() as u64;
            self.counters.batch_commands.record(batch.len() as u64);
            if let Err(e) = self.core.propose(now, batch.clone(), &mut self.out) {
                let expiries = batch.iter().filter(|c| c.op == crate::command::Op::Expire);
                self.core.expiries_not_proposed(expiries.count());
                let reason = e.to_string();
                for cmd in batch.iter().filter(|c| c.op != crate::command::Op::Expire) {
                    let (c, r) = (cmd.client, cmd.request);
                    self.answer(
                        c,
                        r,
                        crate::wire::client::Code::Overloaded,
                        reason.as_bytes(),
                    );
                }
            }
        }
    }

    /// Proposes the expiry of the sessions idle past the bound, and of the
    /// least recently used past the table's bound, in one batch of
    /// `Op::Expire` commands, ahead of the clients' batches.
    fn expire_sessions(&mut self, now: u64) {
        let every = (self.cfg.session_idle_ns / 4).clamp(1_000_000, EXPIRE_CHECK_NS);
        self.expiry_due = now + every;
        self.expiry_last = now;
        let bounds = crate::protocol::SessionBounds {
            idle_ns: self.cfg.session_idle_ns,
            max: self.cfg.sessions_max,
        };
        let mut batches = Vec::new();
        let limit = EXPIRE_BATCHES_MAX * EXPIRE_BATCH_MAX;
        let found = self.core.expire_sessions(now, bounds, limit, &mut batches);
        self.counters.expiries_proposed += found as u64;
        for batch in batches.into_iter().rev() {
            self.closed.push_front(batch);
        }
    }

    /// The oldest full batch; else, if `partial` allows, what the open one
    /// holds. A full batch never waits: the pipeline limit only lets a
    /// partial batch grow while earlier instances are in flight.
    fn next_batch(&mut self, partial: bool) -> Option<Batch> {
        if let Some(b) = self.closed.pop_front() {
            return Some(b);
        }
        (partial && !self.open.is_empty()).then(|| self.open.finish())
    }

    /// The token the driver should make durable now, if any: everything
    /// appended since it was last asked, which the storage said it would
    /// sync later (`Synced::Later`). The driver calls `durable` with it
    /// once it is.
    pub fn sync_wanted(&mut self) -> Option<Token> {
        (self.appended > self.sync_asked).then(|| {
            self.sync_asked = self.appended;
            self.appended
        })
    }

    // ---- outputs ----

    /// The next thing the driver should act on, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// What is queued for the link to `peer`; `spare` (cleared) takes its
    /// place, so buffers go round instead of being allocated.
    pub fn take_link_bytes(&mut self, peer: ReplicaId, spare: BytesMut) -> BytesMut {
        let link = &mut self.links[peer.index()];
        link.listed = false;
        std::mem::replace(&mut link.out, spare)
    }

    /// What is queued for `conn` (empty if it is gone), `spare` in its place.
    pub fn take_conn_bytes(&mut self, conn: ConnId, spare: BytesMut) -> BytesMut {
        match self.conns.get_mut(&conn) {
            Some(c) => {
                c.listed = false;
                std::mem::replace(&mut c.out, spare)
            }
            None => spare,
        }
    }

    /// What is queued for shard `to`, swapped with `spare` (cleared).
    pub fn take_cross(&mut self, to: usize, spare: Vec<Cross>) -> Vec<Cross> {
        self.cross_listed[to] = false;
        std::mem::replace(&mut self.cross[to], spare)
    }

    /// The core's trace events so far (only with `NodeConfig::trace`).
    pub fn take_trace(&mut self) -> std::vec::Drain<'_, TraceEvent> {
        self.trace.drain(..)
    }

    /// Queues one frame for `conn`, unless it is gone or closing.
    fn queue_conn(&mut self, conn: ConnId, kind: Kind, body: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        self.enc
            .frame(&mut c.out, kind, |b| b.extend_from_slice(body));
        if !c.listed {
            c.listed = true;
            self.outputs.push_back(Output::Conn(conn));
        }
    }

    pub fn admin_info(&self) -> AdminInfo {
        let stats = self.core.stats();
        let c = &self.counters;
        AdminInfo {
            replica: self.cfg.replica.0,
            shard: self.cfg.shard as u8,
            replicas: self.cfg.replicas as u8,
            shards: self.cfg.shards as u8,
            peers_connected: self.links_up() as u8,
            log_failed: u8::from(self.failed.is_some()),
            padding: [0; 2],
            digest: self.core.state_machine().digest().into(),
            keys: (self.core.state_machine().len() as u64).into(),
            batches: stats.proposed.into(),
            batched_commands: c.batched_commands.into(),
            fast_commits: stats.fast_commits.into(),
            slow_commits: stats.slow_commits.into(),
            executed_instances: stats.executed_instances.into(),
            executed_commands: stats.executed_commands.into(),
            retransmits: stats.retransmits.into(),
            recoveries: stats.recoveries.into(),
            recovered_noops: stats.recovered_noops.into(),
            bytes_in: c.bytes_in.into(),
            bytes_out: c.bytes_out.into(),
            frames_in: c.frames_in.into(),
            frames_out: c.frames_out.into(),
            bad_frames: c.bad_frames.into(),
            forwarded_out: c.forwarded_out.into(),
            forwarded_in: c.forwarded_in.into(),
            instances_in_memory: (self.core.instances_in_memory() as u64).into(),
            dropped_messages: c.dropped_messages.into(),
            awaiting_answers: (self.pending.len() as u64).into(),
            fsyncs: c.log.fsyncs.into(),
            synced_records: c.log.records.into(),
            synced_bytes: c.log.bytes.into(),
            fsync_p50_us: c.log.micros.value_at_quantile(0.5).into(),
            fsync_p99_us: c.log.micros.value_at_quantile(0.99).into(),
            fsync_max_us: c.log.micros.max().into(),
            indexed_keys: (self.core.indexed_keys() as u64).into(),
            keys_forgotten: stats.keys_forgotten.into(),
            kv_bytes: (self.core.state_machine().stats().memory_bytes() as u64).into(),
            sessions: (self.core.client_sessions() as u64).into(),
            sessions_expired: stats.sessions_expired.into(),
            sessions_retired_below: self.core.sessions_retired_below().into(),
        }
    }
}

#[cfg(test)]
mod auth_tests;
#[cfg(test)]
pub(crate) mod tests;
