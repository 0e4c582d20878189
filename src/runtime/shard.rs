//! One shard's loop on its own thread and io_uring: the node, its sockets,
//! its log file, its timers, and its queues to the other shards.
//!
//! Each pass of the loop:
//! 1. reaps every completion the ring holds, handing whole frames to the
//!    node (receives are multishot, into the ring's provided buffers; the
//!    bytes are copied into the connection's buffer and the buffer goes
//!    straight back);
//! 2. hands the node what other shards queued for it;
//! 3. fires the driver's own timers (handshakes, reconnects, a stalled log
//!    write);
//! 4. runs one node turn if input arrived or the node's deadline passed;
//! 5. starts the log's next group if none is in flight, and a send on every
//!    connection with bytes queued and no send in flight (so everything
//!    queued while a send is in flight leaves in the next one);
//! 6. submits everything and waits for the next completion, the node's next
//!    deadline or a driver timer: one `io_uring_enter`.
//!
//! So under load a pass drains every completion before it runs the node
//! once, and the work per kernel entry grows with the load. The node decides
//! everything; this file only connects its outputs to the ring.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use io_uring::{opcode, types};
use rustc_hash::FxHashMap;
use tracing::{debug, error, info, warn};

use super::auth::{AuthLog, Nonces};
use super::log_writer::{LogWriter, ShardNode};
use super::mesh::Mesh;
use super::metrics::{Metrics, Publisher};
use super::uring::{Done, Op, OpKind, Ring, RECV_GROUP};
use super::{sockopt, RunError, RuntimeConfig};
use crate::constants::{
    ACCEPT_FAILURE_LOG_MS, ACCEPT_RETRY_MS_MAX, ACCEPT_RETRY_MS_MIN, HANDSHAKE_TIMEOUT_MS,
    LOG_WRITE_STALL_MS, PEER_RECONNECT_MS_MAX, PEER_RECONNECT_MS_MIN, SEND_BUFFER_KEPT_BYTES_MAX,
    SHARD_INPUT_BYTES_MAX, STOP_CHECK_MS, STOP_DRAIN_MS, UNACKED_MS_MAX,
};
use crate::node::{
    ConnError, ConnId, LinkAnswer, Node, NodeConfig, Output, Peer, RespEnd, RespServerInfo,
};
use crate::protocol::ReplicaId;
use crate::storage::Backend;
use crate::wire::client::{shard_addr, Refusal, REFUSED_AUTH};
use crate::wire::{Frame, FrameError, FrameReader, Inbound, InputBudget, Kind};

/// How long a stopping shard waits for the kernel to let go of its buffers.
const SHUTDOWN_DRAIN_MS: u64 = 200;
/// Entries of each shard's submission queue.
const RING_ENTRIES: u32 = 1024;
/// Provided receive buffers per shard, and their size: 4 MiB a shard,
/// however many connections it holds.
const RECV_BUFFERS: u16 = 256;
const RECV_BUFFER_BYTES: usize = 16 << 10;
/// A stopping shard has drained once its clients sent nothing for this
/// long (and every answer due is out): requests they sent just before the
/// signal are still on their way in.
const STOP_QUIET_MS: u64 = 100;
/// After the drain, how long a stopping shard waits for its last answers
/// to leave.
const STOP_FLUSH_MS: u64 = 500;

/// What one shard needs to know about the cluster and itself.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// This shard's index, 0..`shards()`.
    pub shard: usize,
    /// What the replica was started with, shared by its shards.
    pub node: Arc<RuntimeConfig>,
    /// The metrics endpoint's blocks, with `--metrics`.
    pub metrics: Option<Arc<Metrics>>,
}

impl ShardConfig {
    /// Replicas in the cluster.
    pub fn replicas(&self) -> usize {
        self.node.peers.len()
    }

    /// Shards of each replica.
    pub fn shards(&self) -> usize {
        self.node.cores
    }

    /// Where shard `self.shard` of `replica` listens.
    pub fn peer_addr(&self, replica: ReplicaId) -> SocketAddr {
        shard_addr(self.node.peers[replica.index()], self.shard).expect("ports checked at start-up")
    }

    /// The node's configuration for this shard.
    pub fn node_config(&self, rng_seed: u64) -> NodeConfig {
        let n = &self.node;
        NodeConfig {
            replica: n.replica,
            replicas: self.replicas(),
            shard: self.shard,
            shards: self.shards(),
            cluster_id: n.cluster_id,
            peers: n.peer_names.clone(),
            incarnation: n.incarnation,
            thrifty: n.thrifty,
            batch_max: n.batch_max,
            pipeline: n.pipeline,
            rng_seed,
            trace: false,
            injected_bug: None,
            node_bug: None,
            test_lose_write: n.test_lose_write,
            session_idle_ns: n.session_idle_ns,
            sessions_max: n.sessions_max,
            max_clients: n.max_clients,
            cluster_secret: n.cluster_secret.clone(),
            password: n.password.clone(),
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum Closed {
    /// The other side closed it.
    End,
    Io(std::io::Error),
    Frame(FrameError),
    /// Refused in the handshake; the text was sent to the other side.
    Refused(String),
    /// Our link refused the peer: its proof of the cluster secret failed.
    AuthFailed(String),
    Timeout,
    /// Closed before sending anything (a port probe, a health check).
    EndBeforeHello,
    /// The node closed it (a client that does not read).
    ByNode,
    /// The shard is stopping.
    Stopping,
    /// It sat inside a frame past the frame deadline, holding this much.
    FrameDeadline {
        held: usize,
        ms: u64,
    },
    /// A client that sent nothing for the idle timeout.
    Idle {
        s: u64,
    },
    /// A RESP client quit, or broke the protocol (its error reply is sent).
    Resp(RespEnd),
}

impl From<ConnError> for Closed {
    fn from(e: ConnError) -> Closed {
        match e {
            ConnError::Frame(e) => Closed::Frame(e),
            ConnError::Refused(why) => Closed::Refused(why),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Accepted: a peer's link to us, or a client; the node has it as `ConnId`.
    Accepted(ConnId),
    /// Our link to a peer.
    Link(ReplicaId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Our link's connect is in flight.
    Connecting,
    /// Waiting for the Hello (accepted) or the HelloOk (our link).
    Handshake,
    Open,
    /// Ended: what is queued goes out (a refusal), then it closes.
    Draining,
    /// Shut down; the slot is freed once the kernel holds none of its
    /// buffers.
    Closed,
}

struct Conn {
    sock: TcpStream,
    remote: SocketAddr,
    role: Role,
    state: State,
    /// Bumped whenever the slot is reused, so that a stale timer is ignored.
    generation: u32,
    /// Received bytes not yet cut into frames, counted in the shard's
    /// input budget.
    inbound: Inbound,
    recv_armed: bool,
    /// Its receive is being cancelled because the input budget ran out.
    recv_cancelling: bool,
    /// Not receiving until the input budget frees (in `ShardLoop::paused`).
    recv_paused: bool,
    connecting: bool,
    /// The buffer of the send in flight, and how much of it went already.
    sending: Option<(BytesMut, usize)>,
    spare: BytesMut,
    /// The address a connect is made to (the kernel reads it).
    addr: Box<SockAddr>,
    /// A RESP client (`--resp`): its bytes go to the node whole, not cut
    /// into frames.
    resp: bool,
}

/// A socket address as the kernel takes it.
#[repr(C)]
union SockAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

fn sock_addr(addr: SocketAddr) -> (SockAddr, libc::socklen_t) {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            (
                SockAddr { v4: s },
                std::mem::size_of::<libc::sockaddr_in>() as _,
            )
        }
        SocketAddr::V6(a) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut s: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_addr.s6_addr = a.ip().octets();
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_scope_id = a.scope_id();
            (
                SockAddr { v6: s },
                std::mem::size_of::<libc::sockaddr_in6>() as _,
            )
        }
    }
}

/// Our link to one peer.
struct Link {
    slot: Option<u32>,
    up: bool,
    backoff_ms: u64,
    logged_down: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A connection's handshake (or drain) must be over by now.
    Handshake {
        slot: u32,
        generation: u32,
    },
    Reconnect(ReplicaId),
    AcceptAgain,
    /// Time to check that the log's write in flight is not stalled.
    LogStall,
    /// Time to look for connections inside a frame past its deadline, and
    /// idle clients.
    Sweep,
}

pub struct ShardLoop {
    cfg: ShardConfig,
    node: ShardNode,
    ring: Ring,
    epoch: Instant,
    listener: TcpListener,
    /// The RESP listener (`--resp`), and whether its accept is armed.
    resp_listener: Option<TcpListener>,
    resp_accept_armed: bool,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    generation: u32,
    by_id: FxHashMap<ConnId, u32>,
    links: Vec<Link>,
    timers: BinaryHeap<Reverse<(u64, Timer)>>,
    mesh: Arc<Mesh>,
    wake_buf: Box<u64>,
    /// The eventfd read and the multishot accept are in the kernel.
    wake_armed: bool,
    accept_armed: bool,
    log: Option<LogWriter>,
    reader: FrameReader,
    stop: Arc<AtomicBool>,
    refusal: Option<String>,
    /// Input reached the node since its last turn.
    dirty: bool,
    done: Vec<Done>,
    /// Connections with bytes to send, found by the outputs of this pass.
    to_send: Vec<u32>,
    /// Per other shard, the emptied vector of the last cross-shard batch.
    cross_spare: Vec<Vec<crate::node::Cross>>,
    /// A `LogStall` timer is pending (one at a time, not one a group).
    stall_armed: bool,
    /// The shard is shutting down: nothing is armed again.
    stopping: bool,
    /// The clock at the start of this pass.
    clock: u64,
    /// Passes of the loop, turns run, and sends started (logged at stop).
    passes: u64,
    turns: u64,
    sends: u64,
    /// Bytes held in partial frames by every connection, against the limit.
    budget: InputBudget,
    /// Connections whose receive waits for the budget: (slot, generation).
    paused: Vec<(u32, u32)>,
    /// Receives were stopped since the budget last ran out (logged once).
    pause_logged: bool,
    /// Delay before the next accept after a failed one, failures not yet
    /// logged, and when failures were last logged.
    accept_retry_ms: u64,
    accept_failures: u64,
    accept_logged_at: Option<u64>,
    /// Once SIGTERM (or SIGINT) came: how far the stop is.
    stop_phase: Option<StopPhase>,
    /// Copies the node's counters to the metrics endpoint, with `--metrics`.
    publisher: Option<Publisher>,
    /// Each connection's handshake nonce.
    nonces: Nonces,
    /// Refused authentications logged, against the rate limit.
    auth_log: AuthLog,
}

/// A graceful stop: no new connections; requests already received are
/// answered (new ones refused `Unavailable`), for at most `STOP_DRAIN_MS`;
/// then what is left is refused, and the answers leave.
#[derive(Clone, Copy, Debug)]
enum StopPhase {
    Draining { since: u64, responses_before: u64 },
    Flushing { since: u64, responses_before: u64 },
}

impl ShardLoop {
    pub fn new(
        cfg: ShardConfig,
        rng_seed: u64,
        storage: Backend,
        (listener, resp_listener): (TcpListener, Option<TcpListener>),
        mesh: Arc<Mesh>,
        stop: Arc<AtomicBool>,
    ) -> Result<ShardLoop, String> {
        let log_path = match &storage {
            Backend::File(log) => Some(log.path().to_path_buf()),
            Backend::Memory(_) => None,
        };
        let log = match &log_path {
            Some(p) => Some(LogWriter::open(p)?),
            None => None,
        };
        let ring = Ring::new(RING_ENTRIES, RECV_BUFFERS, RECV_BUFFER_BYTES).map_err(|e| {
            format!(
                "cannot set up io_uring: {e} (the replica needs Linux 6.0 or later, for \
                     multishot receives and provided-buffer rings, and io_uring not disabled \
                     by kernel.io_uring_disabled)"
            )
        })?;
        let epoch = Instant::now();
        let mut node = Node::start(cfg.node_config(rng_seed), storage, 0);
        if let Some(l) = &resp_listener {
            node.set_resp_info(RespServerInfo {
                process_id: std::process::id(),
                tcp_port: l.local_addr().map_or(0, |a| a.port()),
            });
        }
        let links = (0..cfg.replicas())
            .map(|_| Link {
                slot: None,
                up: false,
                backoff_ms: PEER_RECONNECT_MS_MIN,
                logged_down: false,
            })
            .collect();
        let cross_spare = (0..cfg.shards()).map(|_| Vec::new()).collect();
        let publisher = cfg.metrics.as_ref().map(|m| m.publisher(cfg.shard));
        Ok(ShardLoop {
            reader: FrameReader::new(cfg.node.cluster_id),
            cfg,
            node,
            ring,
            epoch,
            listener,
            resp_listener,
            resp_accept_armed: false,
            conns: Vec::new(),
            free: Vec::new(),
            generation: 0,
            by_id: FxHashMap::default(),
            links,
            timers: BinaryHeap::new(),
            mesh,
            wake_buf: Box::new(0),
            wake_armed: false,
            accept_armed: false,
            log,
            stop,
            refusal: None,
            dirty: true,
            done: Vec::new(),
            to_send: Vec::new(),
            cross_spare,
            stall_armed: false,
            stopping: false,
            clock: 0,
            passes: 0,
            turns: 0,
            sends: 0,
            budget: InputBudget::new(SHARD_INPUT_BYTES_MAX),
            paused: Vec::new(),
            pause_logged: false,
            accept_retry_ms: ACCEPT_RETRY_MS_MIN,
            accept_failures: 0,
            accept_logged_at: None,
            stop_phase: None,
            publisher,
            nonces: Nonces::new()?,
            auth_log: AuthLog::default(),
        })
    }

    pub fn node(&self) -> &ShardNode {
        &self.node
    }

    pub fn local_addr(&self) -> String {
        self.listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string())
    }

    /// Nanoseconds since the shard started: the node's clock.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The clock as read at the start of this pass (one read a pass, not
    /// one a frame: the node's clock only needs to be non-decreasing).
    fn pass_now(&self) -> u64 {
        self.clock
    }

    fn at(&mut self, after_ms: u64, timer: Timer) {
        let when = self.pass_now() + after_ms * 1_000_000;
        self.timers.push(Reverse((when, timer)));
    }

    /// Runs until the stop flag is set or the node refuses to take part.
    pub fn run(mut self) -> Result<(), RunError> {
        self.arm_accept();
        self.arm_accept_resp();
        self.arm_wake();
        for r in 0..self.cfg.replicas() {
            let peer = ReplicaId(r as u8);
            if peer != self.cfg.node.replica {
                self.connect(peer);
            }
        }
        let stop_check = Duration::from_millis(STOP_CHECK_MS);
        let spin = self.cfg.node.spin;
        let mut done = std::mem::take(&mut self.done);
        self.clock = self.now();
        self.at(self.sweep_ms(), Timer::Sweep);
        loop {
            if self.refusal.is_some() {
                break;
            }
            self.passes += 1;
            self.clock = self.now();
            if self.stop.load(Ordering::Relaxed) && self.stopped() {
                break;
            }
            self.ring.reap(&mut done);
            for d in done.drain(..) {
                self.on_done(d);
            }
            self.balance_input();
            self.take_cross_messages();
            self.fire_timers();
            let now = self.pass_now();
            if self.dirty || self.node.next_deadline().is_some_and(|d| d <= now) {
                self.dirty = false;
                self.turns += 1;
                self.node.turn(now);
            }
            self.outputs();
            self.publish();
            let mut wait = stop_check;
            let now = self.now();
            if let Some(d) = self.node.next_deadline() {
                wait = wait.min(Duration::from_nanos(d.saturating_sub(now)));
            }
            if let Some(Reverse((t, _))) = self.timers.peek() {
                wait = wait.min(Duration::from_nanos(t.saturating_sub(now)));
            }
            if self.dirty {
                wait = Duration::ZERO;
            }
            if !spin.is_zero() && !wait.is_zero() {
                wait = self.spin(spin, wait);
            }
            if let Err(e) = self.ring.submit_and_wait(wait) {
                if !self.shut_down() {
                    std::mem::forget(self); // as at the end of `run`
                }
                return Err(RunError::Failed(format!("io_uring: {e}")));
            }
        }
        let released = self.shut_down();
        info!(
            "{} passes, {} turns, {} sends, {} kernel entries",
            self.passes, self.turns, self.sends, self.ring.enters
        );
        let result = match self.refusal.take() {
            Some(why) => Err(RunError::Refused(why)),
            None => Ok(()),
        };
        if !released {
            // The kernel may still write into buffers of this shard (a
            // send or a log write that did not end in time): they are
            // leaked, not freed, and go with the process, which is ending.
            warn!("operations still in the kernel after {SHUTDOWN_DRAIN_MS} ms; their buffers are left to the process's exit");
            std::mem::forget(self);
        }
        result
    }

    /// Hands the metrics endpoint this shard's numbers, if it is on and
    /// `METRICS_PUBLISH_MS` passed since the last time (see
    /// `metrics::Publisher`): a few dozen stores, not per command.
    fn publish(&mut self) {
        if let Some(p) = self.publisher.as_mut() {
            let links = self.links.iter().map(|l| l.up);
            p.maybe_publish(self.clock, &self.node, links, self.stop_phase.is_some());
        }
    }

    /// Polls for up to `spin` before the loop sleeps; what is left to wait.
    fn spin(&mut self, spin: Duration, wait: Duration) -> Duration {
        let started = Instant::now();
        let until = spin.min(wait);
        while started.elapsed() < until {
            if self.ring.poll() || self.mesh.pending(self.cfg.shard) {
                return Duration::ZERO;
            }
            std::hint::spin_loop();
        }
        wait.saturating_sub(started.elapsed())
    }

    // ---- completions ----

    fn on_done(&mut self, d: Done) {
        match d.op.kind {
            OpKind::Accept => self.on_accept(d, false),
            OpKind::AcceptResp => self.on_accept(d, true),
            OpKind::Recv => self.on_recv(d),
            OpKind::Send => self.on_sent(d),
            OpKind::Connect => self.on_connected(d),
            OpKind::Wake => {
                self.wake_armed = false;
                self.mesh.woken(self.cfg.shard);
                // (EINTR: try again; ECANCELED: the shard is stopping.)
                if d.error().is_some_and(|e| {
                    !matches!(e.raw_os_error(), Some(libc::EINTR | libc::ECANCELED))
                }) {
                    // Not a wake-up: the queues are still drained every pass.
                    warn!(
                        "reading the cross-core eventfd failed: {}",
                        d.error().unwrap()
                    );
                    return;
                }
                self.arm_wake();
            }
            OpKind::LogWrite | OpKind::LogAllocate | OpKind::LogAllocateSync => {
                if let Some(log) = self.log.as_mut() {
                    log.on_done(&d, &mut self.node, &mut self.ring);
                }
            }
            OpKind::Ignore => {}
        }
    }

    fn arm_accept(&mut self) {
        self.accept_armed = true;
        let entry = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build();
        // SAFETY: the entry points at no memory.
        unsafe { self.ring.push(entry, Op::new(OpKind::Accept, 0)) };
    }

    fn arm_accept_resp(&mut self) {
        let Some(l) = &self.resp_listener else {
            return;
        };
        if self.resp_accept_armed {
            return;
        }
        self.resp_accept_armed = true;
        let entry = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build();
        // SAFETY: the entry points at no memory.
        unsafe { self.ring.push(entry, Op::new(OpKind::AcceptResp, 0)) };
    }

    fn arm_wake(&mut self) {
        self.wake_armed = true;
        let fd = self.mesh.wake_fd(self.cfg.shard);
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(fd), buf.cast(), 8).build();
        // SAFETY: `wake_buf` is boxed and lives as long as the ring.
        unsafe { self.ring.push(entry, Op::new(OpKind::Wake, 0)) };
    }

    fn on_accept(&mut self, d: Done, resp: bool) {
        let stopping = self.stopping || self.stop_phase.is_some();
        if !d.more() {
            if resp {
                self.resp_accept_armed = false;
            } else {
                self.accept_armed = false;
            }
            if !stopping {
                self.arm_accept_later(d.error().is_some(), resp);
            }
        }
        if stopping {
            if d.result >= 0 {
                // SAFETY: a successful accept's result is a descriptor we own.
                drop(unsafe { TcpStream::from_raw_fd(d.result) });
            }
            return;
        }
        if let Some(e) = d.error() {
            return self.accept_failed(e);
        }
        self.accept_retry_ms = ACCEPT_RETRY_MS_MIN;
        // SAFETY: a successful accept's result is a new descriptor we own.
        let sock = unsafe { TcpStream::from_raw_fd(d.result) };
        let remote = sock
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        tune(&sock, remote);
        if resp {
            return self.accepted_resp(sock, remote);
        }
        let id = self
            .node
            .accept_from(remote.to_string(), self.nonces.next());
        let slot = self.insert(sock, remote, Role::Accepted(id), State::Handshake);
        self.by_id.insert(id, slot);
        self.arm_recv(slot);
    }

    /// A RESP client: no handshake, a session of its own from the start.
    fn accepted_resp(&mut self, sock: TcpStream, remote: SocketAddr) {
        let client = crate::client::fresh_client_id();
        let (id, refused) = match self.node.accept_resp(remote.to_string(), client) {
            Ok(id) => (id, false),
            Err(id) => (id, true),
        };
        let slot = self.insert(sock, remote, Role::Accepted(id), State::Open);
        self.by_id.insert(id, slot);
        let c = self.conn(slot);
        c.resp = true;
        c.inbound.trust();
        debug!(%remote, "RESP client connected");
        if refused {
            let why = "over --max-clients".to_string();
            return self.end(slot, Closed::Refused(why));
        }
        self.arm_recv(slot);
    }

    fn arm_accept_later(&mut self, failed: bool, resp: bool) {
        if !failed && resp {
            return self.arm_accept_resp();
        }
        if failed {
            // Out of descriptors, say: try again after a growing delay
            // rather than spin.
            let delay = self.accept_retry_ms;
            self.accept_retry_ms = (delay * 2).min(ACCEPT_RETRY_MS_MAX);
            self.at(delay, Timer::AcceptAgain);
        } else {
            self.arm_accept();
        }
    }

    /// Counts a failed accept; logs the count at most once per
    /// `ACCEPT_FAILURE_LOG_MS`, not once per retry.
    fn accept_failed(&mut self, e: std::io::Error) {
        self.accept_failures += 1;
        let now = self.pass_now();
        let due = self
            .accept_logged_at
            .is_none_or(|t| now.saturating_sub(t) >= ACCEPT_FAILURE_LOG_MS * 1_000_000);
        if due {
            warn!(
                "accept failed {} time(s) since the last report: {e}; retrying in {} ms \
                 (growing to {ACCEPT_RETRY_MS_MAX} ms while it fails)",
                self.accept_failures, self.accept_retry_ms
            );
            self.accept_failures = 0;
            self.accept_logged_at = Some(now);
        }
    }

    fn insert(&mut self, sock: TcpStream, remote: SocketAddr, role: Role, state: State) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        let (addr, _) = sock_addr(remote);
        let now = self.pass_now();
        let inbound = match role {
            Role::Accepted(_) => Inbound::new(now),
            Role::Link(_) => Inbound::trusted(now),
        };
        let conn = Conn {
            sock,
            remote,
            role,
            state,
            generation: self.generation,
            inbound,
            recv_armed: false,
            recv_cancelling: false,
            recv_paused: false,
            connecting: false,
            sending: None,
            spare: BytesMut::new(),
            addr: Box::new(addr),
            resp: false,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.conns[s as usize] = Some(conn);
                s
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        };
        let generation = self.generation;
        self.at(HANDSHAKE_TIMEOUT_MS, Timer::Handshake { slot, generation });
        slot
    }

    /// Whether receiving on `slot` stops while the input budget is spent:
    /// every connection but a peer's (a peer link carries the protocol,
    /// and there are at most REPLICAS_MAX - 1 of them).
    fn pausable(&self, slot: u32) -> bool {
        let c = self.conns[slot as usize].as_ref().expect("a live slot");
        match c.role {
            Role::Accepted(id) => !matches!(self.node.who(id), Peer::Replica(_)),
            Role::Link(_) => false,
        }
    }

    /// Stops receiving on pausable connections once the input budget is
    /// spent (their multishot receives are cancelled; bytes that arrive
    /// meanwhile are still counted), and starts them again once it frees.
    fn balance_input(&mut self) {
        if self.budget.exhausted() {
            if !self.pause_logged {
                self.pause_logged = true;
                warn!(
                    "{} bytes held in partial frames (limit {}): receiving stops on client \
                     connections inside a frame until the frames complete or close",
                    self.budget.held(),
                    self.budget.max()
                );
            }
            for slot in 0..self.conns.len() as u32 {
                let Some(c) = self.conns[slot as usize].as_ref() else {
                    continue;
                };
                if c.state == State::Closed || !c.recv_armed || c.recv_cancelling {
                    continue;
                }
                if c.inbound.held() == 0 && !self.budget.overflowing() {
                    continue; // holds no partial frame: see `overflowing`
                }
                if !self.pausable(slot) {
                    continue;
                }
                self.conn(slot).recv_cancelling = true;
                let entry = opcode::AsyncCancel::new(Op::new(OpKind::Recv, slot).pack()).build();
                // SAFETY: the entry points at no memory.
                unsafe { self.ring.push(entry, Op::new(OpKind::Ignore, slot)) };
            }
        } else if !self.paused.is_empty() && self.budget.may_resume() {
            self.pause_logged = false;
            for (slot, generation) in std::mem::take(&mut self.paused) {
                let Some(c) = self.conns[slot as usize].as_mut() else {
                    continue;
                };
                if c.generation != generation {
                    continue;
                }
                c.recv_paused = false;
                self.arm_recv(slot);
            }
        }
    }

    fn frame_deadline_ms(&self) -> u64 {
        self.cfg.node.frame_deadline_ms
    }

    /// How often the sweep looks: a quarter of the shortest deadline it
    /// enforces, 10 ms to 1 s.
    fn sweep_ms(&self) -> u64 {
        let idle_ms = self.cfg.node.client_idle_timeout_s.saturating_mul(1000);
        let shortest = match idle_ms {
            0 => self.frame_deadline_ms(),
            ms => ms.min(self.frame_deadline_ms()),
        };
        (shortest / 4).clamp(10, 1000)
    }

    /// Closes connections inside a frame past the frame deadline, and
    /// clients idle past the idle timeout.
    fn sweep(&mut self) {
        let now = self.pass_now();
        let deadline_ms = self.frame_deadline_ms();
        let idle_s = self.cfg.node.client_idle_timeout_s;
        for slot in 0..self.conns.len() as u32 {
            let Some(c) = self.conns[slot as usize].as_ref() else {
                continue;
            };
            if matches!(c.state, State::Closed | State::Draining) {
                continue;
            }
            if c.inbound.overdue(now, deadline_ms * 1_000_000) {
                let held = c.inbound.held();
                self.close(
                    slot,
                    Closed::FrameDeadline {
                        held,
                        ms: deadline_ms,
                    },
                );
                continue;
            }
            let client = matches!(c.role, Role::Accepted(id) if self.node.who(id) == Peer::Client);
            if client && c.inbound.idle(now, idle_s.saturating_mul(1_000_000_000)) {
                self.close(slot, Closed::Idle { s: idle_s });
            }
        }
    }

    /// One step of a graceful stop; whether the loop may end. See
    /// `StopPhase`.
    fn stopped(&mut self) -> bool {
        let now = self.pass_now();
        let responses = self.node.counters_mut().responses;
        let Some(phase) = self.stop_phase else {
            for (armed, kind) in [
                (self.accept_armed, OpKind::Accept),
                (self.resp_accept_armed, OpKind::AcceptResp),
            ] {
                if armed {
                    let entry = opcode::AsyncCancel::new(Op::new(kind, 0).pack()).build();
                    // SAFETY: the entry points at no memory.
                    unsafe { self.ring.push(entry, Op::new(OpKind::Ignore, 0)) };
                }
            }
            let waiting = self.node.awaiting_answers();
            info!("stopping: no new connections; answering the {waiting} request(s) received");
            self.node
                .stop_taking("this replica is stopping; send the request to another replica");
            self.dirty = true;
            self.stop_phase = Some(StopPhase::Draining {
                since: now,
                responses_before: responses,
            });
            return false;
        };
        let quiet_ns = STOP_QUIET_MS * 1_000_000;
        match phase {
            StopPhase::Draining {
                since,
                responses_before,
            } => {
                let over = now.saturating_sub(since) >= STOP_DRAIN_MS * 1_000_000;
                let node = &self.node;
                let quiet = self.conns.iter().flatten().all(|c| match c.role {
                    Role::Accepted(id) if node.who(id) != Peer::Client => true,
                    Role::Accepted(_) => c.inbound.idle(now, quiet_ns),
                    Role::Link(_) => true,
                });
                if self.node.awaiting_answers() == 0 && self.node.forwards_awaiting() == 0 && quiet
                {
                    self.stop_phase = Some(StopPhase::Flushing {
                        since: now,
                        responses_before,
                    });
                } else if over {
                    let left = self.node.refuse_pending(
                        "this replica stopped before answering; send the request to another \
                         replica (it runs at most once)",
                    );
                    warn!("stopping: {left} request(s) not answered within {STOP_DRAIN_MS} ms, refused as unavailable");
                    self.dirty = true;
                    self.stop_phase = Some(StopPhase::Flushing {
                        since: now,
                        responses_before,
                    });
                }
                false
            }
            StopPhase::Flushing {
                since,
                responses_before,
            } => {
                let node = &self.node;
                let out = self.conns.iter().flatten().all(|c| match c.role {
                    Role::Accepted(id) if node.who(id) == Peer::Client => {
                        c.sending.is_none() || c.state == State::Closed
                    }
                    _ => true,
                });
                let over = now.saturating_sub(since) >= STOP_FLUSH_MS * 1_000_000;
                if (out && !self.dirty) || over {
                    let refused = self.node.counters_mut().refused_stopping;
                    let sent = responses - responses_before;
                    info!(
                        "stopped: {} answer(s) sent while stopping, {refused} request(s) \
                         refused as unavailable{}",
                        sent.saturating_sub(refused),
                        if out {
                            ""
                        } else {
                            "; some answers were still being written"
                        }
                    );
                    return true;
                }
                false
            }
        }
    }

    fn conn(&mut self, slot: u32) -> &mut Conn {
        self.conns[slot as usize].as_mut().expect("a live slot")
    }

    fn arm_recv(&mut self, slot: u32) {
        let c = self.conns[slot as usize].as_ref().expect("a live slot");
        if c.state == State::Closed || c.recv_armed {
            return;
        }
        let pause = self.budget.overflowing() || (self.budget.exhausted() && c.inbound.held() > 0);
        if pause && self.pausable(slot) {
            let c = self.conns[slot as usize].as_mut().expect("a live slot");
            if !c.recv_paused {
                c.recv_paused = true;
                self.paused.push((slot, c.generation));
            }
            return;
        }
        let c = self.conn(slot);
        c.recv_armed = true;
        let entry = opcode::RecvMulti::new(types::Fd(c.sock.as_raw_fd()), RECV_GROUP).build();
        // SAFETY: the receive writes only into the ring's provided buffers.
        unsafe { self.ring.push(entry, Op::new(OpKind::Recv, slot)) };
    }

    fn on_recv(&mut self, d: Done) {
        let slot = d.op.slot;
        let more = d.more();
        let c = self.conns[slot as usize].as_mut().expect("a live slot");
        if let Some(bid) = d.buffer() {
            if d.result > 0 && c.state != State::Closed {
                // Counted even past the budget: these are bytes that came
                // in while the receive was being cancelled.
                let bytes = self.ring.buffer(bid, d.result as usize);
                c.inbound.received(bytes, self.clock, &mut self.budget);
            }
            self.ring.recycle(bid);
        }
        if !more {
            c.recv_armed = false;
            c.recv_cancelling = false;
        }
        if c.state == State::Closed {
            return self.free_if_idle(slot);
        }
        if c.state == State::Draining {
            // Its answer is on the way out; what it sends now is moot, and
            // its end of stream waits for the drain (or its timer).
            c.inbound.release(&mut self.budget);
            if d.result <= 0 {
                return;
            }
        } else if d.result > 0 {
            self.node.counters_mut().bytes_in += d.result as u64;
            self.frames(slot);
        } else if d.result == 0 {
            return self.at_end(slot);
        } else if d.result != -libc::ENOBUFS && d.result != -libc::ECANCELED {
            // (ENOBUFS: every provided buffer was in use; they come back
            // within this pass, so receive again. ECANCELED: paused for
            // the input budget; `arm_recv` decides when it starts again.)
            let e = d.error().expect("an error");
            return self.close(slot, Closed::Io(e));
        }
        // The frames may have closed and freed the slot.
        if !more && self.conns[slot as usize].is_some() {
            self.arm_recv(slot);
        }
    }

    /// Cuts and hands over every whole frame the connection received (a
    /// RESP client's bytes go over whole).
    fn frames(&mut self, slot: u32) {
        if self.conn(slot).resp {
            return self.resp_bytes(slot);
        }
        loop {
            let c = self.conn(slot);
            if matches!(c.state, State::Closed | State::Draining) {
                return;
            }
            let c = self.conns[slot as usize].as_mut().expect("a live slot");
            let next = c.inbound.next(&self.reader, &mut self.budget);
            match next {
                Ok(Some(frame)) => {
                    if let Err(why) = self.on_frame(slot, frame) {
                        return self.end(slot, why);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    self.node.counters_mut().bad_frames += 1;
                    return self.end(slot, Closed::Frame(e));
                }
            }
        }
    }

    /// Hands a RESP client's bytes to the node, which takes the whole
    /// commands at their start.
    fn resp_bytes(&mut self, slot: u32) {
        let now = self.pass_now();
        let c = self.conns[slot as usize].as_mut().expect("a live slot");
        if matches!(c.state, State::Closed | State::Draining) {
            return;
        }
        let Role::Accepted(id) = c.role else {
            return;
        };
        let node = &mut self.node;
        let fed = c.inbound.feed_with(&mut self.budget, |bytes| {
            node.on_resp_bytes(now, id, bytes)
                .map(|f| (f.consumed, f.blocked))
        });
        self.dirty = true;
        if let Err(end) = fed {
            if let RespEnd::Protocol(_) = &end {
                self.node.counters_mut().bad_frames += 1;
            }
            self.end(slot, Closed::Resp(end));
        }
    }

    fn at_end(&mut self, slot: u32) {
        let c = self.conns[slot as usize].as_ref().expect("a live slot");
        if c.resp {
            return self.end(slot, Closed::End);
        }
        let (state, role) = (c.state, c.role);
        let rest = c.inbound.at_end(&self.reader);
        let why = match rest {
            Err(e) => {
                self.node.counters_mut().bad_frames += 1;
                Closed::Frame(e)
            }
            Ok(()) if state == State::Handshake && matches!(role, Role::Accepted(_)) => {
                Closed::EndBeforeHello
            }
            Ok(()) => Closed::End,
        };
        // A bad frame's connection gets what is queued for it first (the
        // HelloOk that came before it, say).
        self.end(slot, why);
    }

    fn on_frame(&mut self, slot: u32, frame: Frame) -> Result<(), Closed> {
        let (role, state) = {
            let c = self.conn(slot);
            (c.role, c.state)
        };
        match role {
            Role::Accepted(id) => {
                let now = self.pass_now();
                self.node.on_frame(now, id, frame)?;
                self.dirty = true;
                // A peer proving the cluster secret is `Unknown` until its
                // proof came: its connection stays in the handshake.
                if state == State::Handshake && self.node.who(id) != Peer::Unknown {
                    let peer = matches!(self.node.who(id), Peer::Replica(_));
                    let c = self.conn(slot);
                    c.state = State::Open;
                    if peer {
                        c.inbound.trust_peer();
                    } else {
                        c.inbound.trust();
                    }
                    let remote = self.conn(slot).remote;
                    match self.node.who(id) {
                        Peer::Replica(r) => info!(%remote, "replica {} connected", r.0),
                        _ => debug!(%remote, "client connected"),
                    }
                }
                Ok(())
            }
            Role::Link(peer) if state == State::Handshake => {
                self.on_link_answer(slot, peer, &frame)
            }
            // An acceptor that checked our proof of the cluster secret
            // may still refuse the replica id it claims.
            Role::Link(peer) if frame.kind == Kind::Refused => {
                let why = String::from_utf8_lossy(&frame.body).into_owned();
                Err(self.link_refused(peer, why))
            }
            Role::Link(_) => {
                self.node.counters_mut().bad_frames += 1;
                Err(Closed::Frame(FrameError::Unexpected {
                    kind: frame.kind,
                    reason: "a frame on a link this replica opened",
                }))
            }
        }
    }

    /// The first frame on our link to `peer`: the answer to its Hello.
    fn on_link_answer(&mut self, slot: u32, peer: ReplicaId, frame: &Frame) -> Result<(), Closed> {
        let mut reply = BytesMut::new();
        let answer = self
            .node
            .on_link_answer(peer, frame, &mut reply)
            .inspect_err(|_| self.node.counters_mut().bad_frames += 1)
            .map_err(Closed::Frame)?;
        match answer {
            LinkAnswer::Accepted(hello) => {
                if !reply.is_empty() {
                    // The proof leaves before anything the link queues: it
                    // is this connection's only send until it completes.
                    let c = self.conn(slot);
                    assert!(
                        c.sending.is_none(),
                        "the Hello's send completed before its answer"
                    );
                    c.sending = Some((reply, 0));
                    self.submit_send(slot);
                }
                self.node.peer_incarnation(peer, hello.incarnation.get());
                self.link_up(slot, peer, hello.known_slot.get());
                Ok(())
            }
            LinkAnswer::Refused(why) => Err(self.link_refused(peer, why)),
            LinkAnswer::Failed(why) => {
                // Tell the peer why, if the socket takes it now (it is
                // closed next: nothing waits for this send).
                let fd = self.conn(slot).sock.as_raw_fd();
                // SAFETY: the buffer outlives the call; no send is in
                // flight on this socket.
                let _ = unsafe {
                    libc::send(
                        fd,
                        reply.as_ptr().cast(),
                        reply.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                Err(Closed::AuthFailed(why))
            }
        }
    }

    /// Our link's Hello was refused: a duplicate of the replica id stops
    /// the process; a configuration the peer refuses is counted by the node.
    fn link_refused(&mut self, peer: ReplicaId, why: String) -> Closed {
        let addr = self.cfg.peer_addr(peer);
        match Refusal::of(&why) {
            Refusal::Duplicate => {
                let why = format!(
                    "replica {} ({addr}) refused this process as a second one with --id {}: \
                     {why}; stopping",
                    peer.0, self.cfg.node.replica.0
                );
                error!("{why}");
                self.refusal = Some(why);
            }
            Refusal::Contested => error!(%addr, "replica {} refused us: {why}", peer.0),
            Refusal::Config => {
                if let Some(cannot) = self.node.link_refused(peer, &why) {
                    error!("{cannot}; client requests are answered Unavailable");
                }
            }
            Refusal::Auth | Refusal::Other => {}
        }
        Closed::Refused(why)
    }

    fn link_up(&mut self, slot: u32, peer: ReplicaId, known: u64) {
        let addr = self.conn(slot).remote;
        info!(%addr, "link to replica {} up", peer.0);
        self.conn(slot).state = State::Open;
        let link = &mut self.links[peer.index()];
        link.up = true;
        link.backoff_ms = PEER_RECONNECT_MS_MIN;
        link.logged_down = false;
        let was = self.node.on_probation();
        self.node.link_up(peer);
        self.node.peer_knows(peer, known);
        if self.node.refused() {
            let why = self.node.failed().unwrap_or_default().to_string();
            error!("{why}");
            self.refusal = Some(why);
            return;
        }
        if was && !self.node.on_probation() {
            info!("started with an empty log: enough peers hold nothing of this replica's space; taking part");
        }
        // Commits parked for this peer are due at once.
        self.dirty = true;
    }

    // ---- sending ----

    /// Sends what the node queued for the connection in `slot`, unless a
    /// send is in flight there (then it goes when that one completes).
    fn send(&mut self, slot: u32) {
        let Some(c) = self.conns[slot as usize].as_mut() else {
            return;
        };
        if c.sending.is_some() || matches!(c.state, State::Closed | State::Connecting) {
            return;
        }
        let spare = std::mem::take(&mut c.spare);
        let data = match c.role {
            Role::Accepted(id) => self.node.take_conn_bytes(id, spare),
            Role::Link(peer) if c.state == State::Open => self.node.take_link_bytes(peer, spare),
            Role::Link(_) => spare,
        };
        if data.is_empty() {
            c.spare = data;
            if c.state == State::Draining {
                self.close(slot, Closed::End);
            }
            return;
        }
        self.node.counters_mut().bytes_out += data.len() as u64;
        self.sends += 1;
        c.sending = Some((data, 0));
        self.submit_send(slot);
    }

    fn submit_send(&mut self, slot: u32) {
        let c = self.conn(slot);
        let fd = c.sock.as_raw_fd();
        let (data, at) = c.sending.as_ref().expect("a send in flight");
        let rest = &data[*at..];
        let entry = opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: the buffer stays in `sending` until this send's
        // completion is reaped.
        unsafe { self.ring.push(entry, Op::new(OpKind::Send, slot)) };
    }

    fn on_sent(&mut self, d: Done) {
        let slot = d.op.slot;
        let c = self.conn(slot);
        let (mut data, at) = c.sending.take().expect("a send in flight");
        if c.state == State::Closed {
            return self.free_if_idle(slot);
        }
        if let Some(e) = d.error() {
            return self.close(slot, Closed::Io(e));
        }
        if d.result == 0 {
            let e = std::io::Error::new(std::io::ErrorKind::WriteZero, "sent nothing");
            return self.close(slot, Closed::Io(e));
        }
        let at = at + d.result as usize;
        if at < data.len() {
            c.sending = Some((data, at));
            return self.submit_send(slot);
        }
        data.clear();
        if data.capacity() <= SEND_BUFFER_KEPT_BYTES_MAX {
            c.spare = data; // a burst's large buffer is not kept
        }
        self.send(slot);
    }

    /// Connects our link to `peer`.
    fn connect(&mut self, peer: ReplicaId) {
        let addr = self.cfg.peer_addr(peer);
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: socket returns a new descriptor or -1.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return self.link_failed(peer, &format!("cannot create a socket: {e}"));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let sock = unsafe { TcpStream::from_raw_fd(fd) };
        let slot = self.insert(sock, addr, Role::Link(peer), State::Connecting);
        self.links[peer.index()].slot = Some(slot);
        let (_, len) = sock_addr(addr);
        let c = self.conn(slot);
        c.connecting = true;
        let ptr: *const SockAddr = &*c.addr;
        let entry = opcode::Connect::new(types::Fd(fd), ptr.cast(), len).build();
        // SAFETY: the address is boxed in the connection, which lives until
        // every entry of its slot has completed.
        unsafe { self.ring.push(entry, Op::new(OpKind::Connect, slot)) };
    }

    fn on_connected(&mut self, d: Done) {
        let slot = d.op.slot;
        let c = self.conn(slot);
        c.connecting = false;
        if c.state == State::Closed {
            return self.free_if_idle(slot);
        }
        if let Some(e) = d.error() {
            return self.close(slot, Closed::Io(e));
        }
        let remote = c.remote;
        tune(&c.sock, remote);
        c.state = State::Handshake;
        let mut hello = std::mem::take(&mut c.spare);
        let peer = match c.role {
            Role::Link(peer) => peer,
            Role::Accepted(_) => unreachable!("only links connect"),
        };
        self.node.link_hello(peer, self.nonces.next(), &mut hello);
        self.conn(slot).sending = Some((hello, 0));
        self.submit_send(slot);
        self.arm_recv(slot);
    }

    fn link_failed(&mut self, peer: ReplicaId, why: &str) {
        let link = &mut self.links[peer.index()];
        let was_up = std::mem::take(&mut link.up);
        link.slot = None;
        let addr = self.cfg.peer_addr(peer);
        if was_up {
            // What was queued and not written is dropped: the core re-sends
            // whatever is still unacknowledged.
            warn!(%addr, "link to replica {} lost: {why}", peer.0);
        } else if !link.logged_down {
            link.logged_down = true;
            if why.starts_with("refused") || why.starts_with(REFUSED_AUTH) {
                warn!(%addr, "replica {} {why}", peer.0);
            } else {
                info!(%addr, "replica {} not reachable yet: {why}", peer.0);
            }
        }
        self.node.link_down(peer);
        let link = &mut self.links[peer.index()];
        let backoff = link.backoff_ms;
        link.backoff_ms = (backoff * 2).min(PEER_RECONNECT_MS_MAX);
        self.at(backoff, Timer::Reconnect(peer));
    }

    // ---- ending connections ----

    /// Ends a connection after an error: what the node queued for it (the
    /// answer to a refused handshake) goes out first.
    fn end(&mut self, slot: u32, why: Closed) {
        let c = self.conn(slot);
        if let Role::Accepted(_) = c.role {
            if matches!(why, Closed::Refused(_) | Closed::Frame(_) | Closed::Resp(_)) {
                self.log_close(slot, &why);
                let c = self.conn(slot);
                c.state = State::Draining;
                let generation = c.generation;
                self.at(HANDSHAKE_TIMEOUT_MS, Timer::Handshake { slot, generation });
                return self.send(slot);
            }
        }
        self.close(slot, why)
    }

    fn close(&mut self, slot: u32, why: Closed) {
        let c = self.conn(slot);
        if c.state == State::Closed {
            return;
        }
        let (was, role) = (c.state, c.role);
        c.state = State::Closed;
        let _ = c.sock.shutdown(std::net::Shutdown::Both);
        let c = self.conns[slot as usize].as_mut().expect("a live slot");
        c.inbound.release(&mut self.budget);
        let cancel = [
            (c.recv_armed, OpKind::Recv),
            (c.connecting, OpKind::Connect),
        ];
        for (armed, kind) in cancel {
            if armed {
                let entry = opcode::AsyncCancel::new(Op::new(kind, slot).pack()).build();
                // SAFETY: the entry points at no memory.
                unsafe { self.ring.push(entry, Op::new(OpKind::Ignore, slot)) };
            }
        }
        if was != State::Draining {
            self.log_close(slot, &why);
        }
        match role {
            Role::Accepted(id) => {
                self.by_id.remove(&id);
                self.node.closed(id);
            }
            Role::Link(peer) => {
                if let Closed::AuthFailed(w) = &why {
                    let addr = self.cfg.peer_addr(peer);
                    self.log_auth_refusal(addr, &format!("replica {}: {w}", peer.0));
                }
                let text = match &why {
                    Closed::Refused(w) => format!("refused us: {w}"),
                    Closed::AuthFailed(w) => w.clone(),
                    Closed::Io(e) => e.to_string(),
                    other => format!("{other:?}"),
                };
                if !matches!(why, Closed::Stopping) {
                    self.link_failed(peer, &text);
                }
            }
        }
        self.free_if_idle(slot);
    }

    fn log_close(&mut self, slot: u32, why: &Closed) {
        let c = self.conn(slot);
        let remote = c.remote;
        let what = match c.role {
            Role::Link(_) => return, // logged by `link_failed`
            Role::Accepted(id) => match self.node.who(id) {
                Peer::Replica(r) => format!("replica {}", r.0),
                Peer::Client => "client".to_string(),
                Peer::Unknown => "new connection".to_string(),
            },
        };
        match why {
            Closed::End => debug!(%remote, "{what} closed the connection"),
            Closed::Frame(e) => {
                warn!(%remote, "{what} sent a bad frame, closing the connection: {e}")
            }
            Closed::Refused(why) => match Refusal::of(why) {
                Refusal::Duplicate | Refusal::Contested => {
                    error!(%remote, "{what} refused: {why}")
                }
                Refusal::Auth => self.log_auth_refusal(remote, &format!("{what} refused: {why}")),
                _ => warn!(%remote, "{what} refused: {why}"),
            },
            Closed::AuthFailed(why) => warn!(%remote, "{what}: {why}"),
            Closed::Timeout => warn!(%remote, "{what}: handshake timed out"),
            Closed::EndBeforeHello => debug!(%remote, "{what} closed before its hello"),
            Closed::Io(e) => debug!(%remote, "{what}: connection lost: {e}"),
            Closed::ByNode => debug!(%remote, "{what}: closed for not reading"),
            Closed::Stopping => {}
            Closed::FrameDeadline { held, ms } => warn!(
                %remote,
                "{what} sat inside a frame for over {ms} ms ({held} bytes held); closing the connection"
            ),
            Closed::Resp(RespEnd::Quit) => debug!(%remote, "{what} sent QUIT"),
            Closed::Resp(RespEnd::Protocol(e)) => {
                warn!(%remote, "{what} broke the RESP protocol, closing the connection: {e}")
            }
            Closed::Idle { s } => info!(
                %remote,
                "{what} sent nothing for {s} s (--client-idle-timeout-s); closing the connection"
            ),
        }
    }

    /// Logs a refused authentication, within `AUTH_FAILURE_LOGS_PER_WINDOW`
    /// a window (a flood of bad handshakes is counted, not logged).
    fn log_auth_refusal(&mut self, remote: SocketAddr, what: &str) {
        let (log, suppressed) = self.auth_log.allow(self.clock / 1_000_000);
        if suppressed > 0 {
            warn!("{suppressed} more refused authentication(s) were not logged");
        }
        if log {
            warn!(%remote, "{what}");
        }
    }

    /// Frees a closed slot once the kernel holds nothing of it.
    fn free_if_idle(&mut self, slot: u32) {
        let c = self.conn(slot);
        if c.state != State::Closed || c.recv_armed || c.connecting || c.sending.is_some() {
            return;
        }
        self.conns[slot as usize] = None; // closes the socket
        self.free.push(slot);
    }

    // ---- the node's outputs, other shards, timers ----

    fn outputs(&mut self) {
        if let Some(log) = self.log.as_mut() {
            let _ = self.node.sync_wanted();
            log.kick(&mut self.node, &mut self.ring);
            if log.writing_since().is_some() && !self.stall_armed {
                self.stall_armed = true;
                self.at(LOG_WRITE_STALL_MS, Timer::LogStall);
            }
        }
        while let Some(o) = self.node.poll_output() {
            match o {
                Output::Link(p) => {
                    if let Some(slot) = self.links[p.index()].slot {
                        self.to_send.push(slot);
                    }
                }
                Output::Conn(c) => {
                    if let Some(&slot) = self.by_id.get(&c) {
                        self.to_send.push(slot);
                    }
                }
                Output::Close(c) => {
                    // A draining connection (a refused handshake) closes
                    // once its answer is out.
                    if let Some(&slot) = self.by_id.get(&c) {
                        if self.conn(slot).state != State::Draining {
                            self.close(slot, Closed::ByNode);
                        }
                    }
                }
                Output::Reprobe(p) => {
                    if let Some(slot) = self.links[p.index()].slot {
                        let why = "re-opened to learn which process answers at its address \
                                   (two processes claim its id)";
                        self.close(slot, Closed::Io(std::io::Error::other(why)));
                    }
                }
                Output::Resume(c) => {
                    if let Some(&slot) = self.by_id.get(&c) {
                        self.resp_bytes(slot);
                    }
                }
                Output::ClientId { conn, above } => {
                    let id = crate::client::fresh_client_id_above(above);
                    self.node.resp_client_id(conn, id);
                    self.dirty = true;
                }
                Output::Cross(to) => {
                    // The node's vector and ours go round: no allocation a
                    // batch of cross-shard messages.
                    let spare = std::mem::take(&mut self.cross_spare[to]);
                    let mut msgs = self.node.take_cross(to, spare);
                    self.mesh.send(self.cfg.shard, to, msgs.drain(..));
                    self.cross_spare[to] = msgs;
                }
            }
        }
        let mut to_send = std::mem::take(&mut self.to_send);
        for slot in to_send.drain(..) {
            self.send(slot);
        }
        self.to_send = to_send;
    }

    fn take_cross_messages(&mut self) {
        let node = &mut self.node;
        let mut any = false;
        self.mesh.drain(self.cfg.shard, |msg| {
            node.on_cross(msg);
            any = true;
        });
        self.dirty |= any;
    }

    fn fire_timers(&mut self) {
        let now = self.pass_now();
        while let Some(Reverse((t, timer))) = self.timers.peek().copied() {
            if t > now {
                return;
            }
            self.timers.pop();
            match timer {
                Timer::Handshake { slot, generation } => {
                    let live = self.conns.get(slot as usize).and_then(|c| c.as_ref());
                    if let Some(c) = live {
                        let pending = matches!(
                            c.state,
                            State::Connecting | State::Handshake | State::Draining
                        );
                        if c.generation == generation && pending {
                            self.close(slot, Closed::Timeout);
                        }
                    }
                }
                Timer::Reconnect(peer) => self.connect(peer),
                Timer::AcceptAgain if self.stop_phase.is_none() => {
                    if !self.accept_armed {
                        self.arm_accept();
                    }
                    self.arm_accept_resp();
                }
                Timer::AcceptAgain => {}
                Timer::Sweep => {
                    self.sweep();
                    self.at(self.sweep_ms(), Timer::Sweep);
                }
                Timer::LogStall => {
                    self.stall_armed = false;
                    let Some(log) = self.log.as_mut() else {
                        continue;
                    };
                    let Some(since) = log.writing_since() else {
                        continue; // nothing in flight; the next write re-arms
                    };
                    let stall = Duration::from_millis(LOG_WRITE_STALL_MS);
                    match stall.checked_sub(since.elapsed()) {
                        None => log.stalled(&mut self.node, stall.as_secs()),
                        Some(left) => {
                            // A later write: check it when its own time is up.
                            self.stall_armed = true;
                            self.at(left.as_millis() as u64 + 1, Timer::LogStall);
                        }
                    }
                }
            }
        }
    }

    /// Closes every connection, cancels the accept and the eventfd read,
    /// and waits (briefly) until the kernel holds none of the shard's
    /// memory. Whether it let go of all of it.
    fn shut_down(&mut self) -> bool {
        self.stopping = true;
        if let Some(p) = &self.publisher {
            p.ended();
        }
        for slot in 0..self.conns.len() as u32 {
            if self.conns[slot as usize].is_some() {
                self.close(slot, Closed::Stopping);
            }
        }
        for (armed, op) in [
            (self.accept_armed, Op::new(OpKind::Accept, 0)),
            (self.resp_accept_armed, Op::new(OpKind::AcceptResp, 0)),
            (self.wake_armed, Op::new(OpKind::Wake, 0)),
        ] {
            if armed {
                let entry = opcode::AsyncCancel::new(op.pack()).build();
                // SAFETY: the entry points at no memory.
                unsafe { self.ring.push(entry, Op::new(OpKind::Ignore, 0)) };
            }
        }
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS);
        let mut done = Vec::new();
        loop {
            let busy = self.conns.iter().any(|c| c.is_some())
                || self.log.as_ref().is_some_and(|l| l.in_flight())
                || self.wake_armed
                || self.accept_armed
                || self.resp_accept_armed;
            if !busy {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let _ = self.ring.submit_and_wait(Duration::from_millis(10));
            self.ring.reap(&mut done);
            for d in done.drain(..) {
                self.on_done(d);
            }
        }
    }
}

/// Sets the options every connection gets: no Nagle delay, and keepalive
/// with a bound on unacknowledged data, so that a peer or client host that
/// vanishes does not hold the connection for ever.
fn tune(sock: &TcpStream, remote: SocketAddr) {
    let _ = sock.set_nodelay(true);
    let fd = sock.as_raw_fd();
    if let Err(e) =
        sockopt::keepalive(fd).and_then(|()| sockopt::unacked_timeout(fd, UNACKED_MS_MAX))
    {
        warn!(%remote, "cannot set TCP keepalive and user timeout: {e}");
    }
}
