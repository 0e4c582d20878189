//! One shard: the EPaxos core for the keys `shard_of(key) == s`, its turn
//! loop, and the buffers its connections read from and write to.
//!
//! Everything here lives on one executor thread (`Rc`, `RefCell`, `Cell`);
//! nothing is shared with another core but the cross-core channels, which
//! carry owned values. A turn never awaits while it holds a borrow.
//!
//! One turn: every peer message queued since the last turn goes through the
//! core, every client command queued becomes part of one instance (a batch
//! closes at `--batch-max` commands or `BATCH_BYTES_MAX` bytes), due timers
//! tick, and the outbox is flushed: records (in memory for now), then
//! messages into each peer's send buffer, then replies to clients.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;

use super::notify::Notify;
use super::RuntimeConfig;
use crate::command::{Batch, BatchBuilder, CommandRef, Op};
use crate::constants::{
    CLIENT_SEND_BUFFER_BYTES_MAX, PEER_SEND_BUFFER_BYTES_MAX, SEND_BUFFER_KEPT_BYTES_MAX,
};
use crate::protocol::{
    Config, InstanceId, Message, Outbox, Refused, Replica, ReplicaId, Reply, Status,
};
use crate::state_machine::{KvResult, KvStore};
use crate::wire::client::{put_response, shard_addr, AdminInfo, Code};
use crate::wire::{peer, FrameEncoder, Kind};

/// What one shard needs to know about the cluster and itself.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// This shard's index, 0..`shards()`.
    pub shard: usize,
    /// What the replica was started with, shared by its shards.
    pub node: std::sync::Arc<RuntimeConfig>,
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
    pub fn peer_addr(&self, replica: ReplicaId) -> std::net::SocketAddr {
        shard_addr(self.node.peers[replica.index()], self.shard).expect("ports checked at start-up")
    }

    pub fn encoder(&self) -> FrameEncoder {
        FrameEncoder {
            cluster_id: self.node.cluster_id,
            sender: self.node.replica.0,
            shard: self.shard as u8,
        }
    }
}

/// Bytes waiting to be written to one connection, and its writer's wake-up.
#[derive(Default)]
pub struct SendQueue {
    pub buf: RefCell<BytesMut>,
    spare: RefCell<BytesMut>,
    pub notify: Notify,
    /// A writer is attached; while false, frames for it are dropped.
    pub open: Cell<bool>,
    /// Wakes a writer blocked on a socket when its connection is closed.
    pub closed: Notify,
    /// The writer has ended (closed, or its socket failed): a client
    /// connection's reader stops too, so the socket is closed and the
    /// client sees it, instead of waiting for answers that will not come.
    pub writer_gone: Notify,
}

impl SendQueue {
    /// What is queued, for the writer; the queue goes on with the buffer the
    /// writer gave back last time, so buffers are reused instead of being
    /// allocated (and their pages faulted in) for every write.
    pub fn take(&self) -> BytesMut {
        let spare = std::mem::take(&mut *self.spare.borrow_mut());
        std::mem::replace(&mut *self.buf.borrow_mut(), spare)
    }

    /// The writer is done with `written`: kept for the next write unless a
    /// burst made it larger than `SEND_BUFFER_KEPT_BYTES_MAX`.
    pub fn give_back(&self, mut written: BytesMut) {
        written.clear();
        let mut spare = self.spare.borrow_mut();
        if written.capacity() > spare.capacity() && written.capacity() <= SEND_BUFFER_KEPT_BYTES_MAX
        {
            *spare = written;
        }
    }

    /// Stops the connection: what is queued is dropped, and a writer blocked
    /// on the socket gives up.
    pub fn close(&self) {
        self.open.set(false);
        self.notify.notify();
        self.closed.notify();
    }

    pub fn push_frame(&self, enc: &FrameEncoder, kind: Kind, body: impl FnOnce(&mut BytesMut)) {
        enc.frame(&mut self.buf.borrow_mut(), kind, body);
        self.notify.notify();
    }
}

/// Who waits for a command's answer: a client connection of `origin`.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub origin: u8,
    pub conn: u64,
}

/// An answer to one command, as it crosses to another shard.
#[derive(Debug)]
pub struct Answer {
    pub client: u64,
    pub request: u64,
    pub code: Code,
    pub value: Bytes,
}

/// What shards send each other over the cross-core channels.
#[derive(Debug)]
pub enum Cross {
    /// Commands of a client connected to `origin`, for the receiving shard.
    Commands {
        origin: u8,
        conn: u64,
        batch: Batch,
    },
    Answer {
        conn: u64,
        answer: Answer,
    },
}

/// Counters the admin frame reports, besides the core's own.
#[derive(Default)]
pub struct Counters {
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub frames_in: Cell<u64>,
    pub frames_out: Cell<u64>,
    pub bad_frames: Cell<u64>,
    pub batched_commands: Cell<u64>,
    pub forwarded_out: Cell<u64>,
    pub forwarded_in: Cell<u64>,
    /// Peer messages dropped because the link was down or backed up; the
    /// core re-sends what matters.
    pub dropped_messages: Cell<u64>,
    /// PUTs submitted (counted only with `test_lose_write`).
    pub puts_seen: Cell<u64>,
}

pub fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get() + by);
}

#[derive(Default)]
struct Inbox {
    messages: Vec<(ReplicaId, Message)>,
    open: BatchBuilder,
    closed: std::collections::VecDeque<Batch>,
}

pub struct Shard {
    pub cfg: ShardConfig,
    core: RefCell<Replica<KvStore>>,
    outbox: RefCell<Outbox<KvResult>>,
    inbox: RefCell<Inbox>,
    /// Spare vector swapped with the inbox's each turn (keeps capacity).
    spare_messages: RefCell<Vec<(ReplicaId, Message)>>,
    /// Wakes the turn loop.
    pub wake: Notify,
    /// Send buffers of the outgoing link to each replica (own one unused).
    pub links: Vec<SendQueue>,
    clients: RefCell<FxHashMap<u64, Rc<SendQueue>>>,
    next_conn: Cell<u64>,
    /// Where the answer to each (client, request) this shard owns goes;
    /// removed when it is answered (or found acknowledged already).
    pending: RefCell<FxHashMap<(u64, u64), Route>>,
    /// Instances this shard leads that are not committed yet, oldest first.
    in_flight: RefCell<std::collections::VecDeque<InstanceId>>,
    /// Per destination shard: what to send it over the cross-core channel.
    pub cross_out: Vec<RefCell<Vec<Cross>>>,
    pub cross_notify: Vec<Notify>,
    pub counters: Counters,
    epoch: Instant,
}

impl Shard {
    pub fn new(cfg: ShardConfig, rng_seed: u64) -> Shard {
        let mut core_cfg =
            Config::new(cfg.replicas(), cfg.node.replica).expect("validated replica count");
        core_cfg.thrifty = cfg.node.thrifty;
        core_cfg.rng_seed = rng_seed;
        let replicas = cfg.replicas();
        let shards = cfg.shards();
        Shard {
            core: RefCell::new(Replica::new(core_cfg, KvStore::new())),
            outbox: RefCell::new(Outbox::new(replicas)),
            inbox: RefCell::default(),
            spare_messages: RefCell::default(),
            wake: Notify::default(),
            links: (0..replicas).map(|_| SendQueue::default()).collect(),
            clients: RefCell::default(),
            next_conn: Cell::new(1),
            pending: RefCell::default(),
            in_flight: RefCell::default(),
            cross_out: (0..shards).map(|_| RefCell::default()).collect(),
            cross_notify: (0..shards).map(|_| Notify::default()).collect(),
            counters: Counters::default(),
            epoch: Instant::now(),
            cfg,
        }
    }

    /// Nanoseconds since the shard started: the core's clock.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.core.borrow().next_deadline()
    }

    /// The link to `peer` came up or went down. While it is down, the core
    /// holds its commits for that peer instead of re-sending them every
    /// timeout; when it is back they are due at once, so wake the turn loop.
    pub fn peer_reachable(&self, peer: ReplicaId, reachable: bool) {
        self.core.borrow_mut().set_reachable(peer, reachable);
        if reachable {
            self.wake.notify();
        }
    }

    pub fn peer_message(&self, from: ReplicaId, msg: Message) {
        self.inbox.borrow_mut().messages.push((from, msg));
        self.wake.notify();
    }

    pub fn register_client(&self) -> (u64, Rc<SendQueue>) {
        let conn = self.next_conn.get();
        self.next_conn.set(conn + 1);
        let queue = Rc::new(SendQueue::default());
        queue.open.set(true);
        self.clients.borrow_mut().insert(conn, queue.clone());
        (conn, queue)
    }

    pub fn unregister_client(&self, conn: u64) {
        if let Some(q) = self.clients.borrow_mut().remove(&conn) {
            q.close();
        }
    }

    /// Queues a command this shard owns for the next instance.
    pub fn submit(&self, route: Route, cmd: &CommandRef<'_>) {
        self.pending
            .borrow_mut()
            .insert((cmd.client, cmd.request), route);
        if self.cfg.node.test_lose_write != 0 && cmd.op == Op::Put {
            bump(&self.counters.puts_seen, 1);
            if self.counters.puts_seen.get() == self.cfg.node.test_lose_write {
                tracing::warn!("--test-lose-write: acknowledging a PUT and dropping it");
                self.answer(cmd.client, cmd.request, Code::Done, b"");
                return;
            }
        }
        let mut inbox = self.inbox.borrow_mut();
        if !inbox.open.is_empty() && !inbox.open.fits(cmd, self.cfg.node.batch_max) {
            let batch = inbox.open.finish();
            inbox.closed.push_back(batch);
        }
        inbox.open.push(cmd);
        drop(inbox);
        self.wake.notify();
    }

    /// Sends commands another shard owns to it; its answers come back.
    pub fn forward(&self, owner: usize, conn: u64, batch: Batch) {
        bump(&self.counters.forwarded_out, batch.len() as u64);
        self.cross_out[owner].borrow_mut().push(Cross::Commands {
            origin: self.cfg.shard as u8,
            conn,
            batch,
        });
        self.cross_notify[owner].notify();
    }

    /// What arrived over a cross-core channel.
    pub fn cross_in(&self, msg: Cross) {
        match msg {
            Cross::Commands {
                origin,
                conn,
                batch,
            } => {
                bump(&self.counters.forwarded_in, batch.len() as u64);
                for cmd in batch.iter() {
                    self.submit(Route { origin, conn }, &cmd);
                }
            }
            Cross::Answer { conn, answer } => self.respond(
                conn,
                answer.client,
                answer.request,
                answer.code,
                &answer.value,
            ),
        }
    }

    /// Writes a response to a client connection of this shard, if it is
    /// still there.
    pub fn respond(&self, conn: u64, client: u64, request: u64, code: Code, value: &[u8]) {
        let clients = self.clients.borrow();
        let Some(q) = clients.get(&conn) else {
            return;
        };
        if !q.open.get() {
            return;
        }
        if q.buf.borrow().len() > CLIENT_SEND_BUFFER_BYTES_MAX {
            // The client does not read its answers: close it rather than
            // hold them without bound.
            tracing::warn!(
                "client connection {conn}: over {CLIENT_SEND_BUFFER_BYTES_MAX} bytes of \
                 unread responses; closing it"
            );
            q.close();
            return;
        }
        q.push_frame(&self.cfg.encoder(), Kind::Response, |b| {
            put_response(b, client, request, code, value)
        });
    }

    /// One turn: see the module docs.
    pub fn turn(&self) {
        let now = self.now();
        let mut core = self.core.borrow_mut();
        let mut out = self.outbox.borrow_mut();
        let mut messages = self.spare_messages.take();
        std::mem::swap(&mut messages, &mut self.inbox.borrow_mut().messages);
        for (from, msg) in messages.drain(..) {
            core.handle(now, from, msg, &mut out);
        }
        self.spare_messages.replace(messages);
        // Timers before proposals: a tick that commits an instance of ours
        // lets a held batch go in this same turn.
        if core.next_deadline().is_some_and(|d| d <= now) {
            core.tick(now, &mut out);
        }
        let mut in_flight = self.in_flight.borrow_mut();
        loop {
            // A single replica commits in `propose` itself: retire before
            // each proposal, not once per turn.
            while in_flight
                .front()
                .is_some_and(|&id| core.status(id) >= Status::Committed)
            {
                in_flight.pop_front();
            }
            let Some(batch) = self.next_batch(in_flight.len() < self.cfg.node.pipeline) else {
                break;
            };
            bump(&self.counters.batched_commands, batch.len() as u64);
            match core.propose(now, batch.clone(), &mut out) {
                Ok(id) => in_flight.push_back(id),
                Err(e) => {
                    let reason = e.to_string();
                    for cmd in batch.iter() {
                        self.answer(cmd.client, cmd.request, Code::Overloaded, reason.as_bytes());
                    }
                }
            }
        }
        drop(in_flight);
        drop(core);
        self.flush(&mut out);
        out.clear();
    }

    /// The oldest full batch; else, if `partial` allows, what the open one
    /// holds. A full batch never waits: the pipeline limit only lets a
    /// partial batch grow while earlier instances are in flight.
    fn next_batch(&self, partial: bool) -> Option<Batch> {
        let mut inbox = self.inbox.borrow_mut();
        if let Some(b) = inbox.closed.pop_front() {
            return Some(b);
        }
        (partial && !inbox.open.is_empty()).then(|| inbox.open.finish())
    }

    fn flush(&self, out: &mut Outbox<KvResult>) {
        // State is in memory only (no --data-dir yet): nothing to make durable.
        out.persist.clear();
        let enc = self.cfg.encoder();
        for (to, messages) in out.messages.iter().enumerate() {
            if messages.is_empty() {
                continue;
            }
            let link = &self.links[to];
            let mut buf = link.buf.borrow_mut();
            if !link.open.get() || buf.len() > PEER_SEND_BUFFER_BYTES_MAX {
                bump(&self.counters.dropped_messages, messages.len() as u64);
                continue;
            }
            for m in messages {
                peer::encode(&enc, &mut buf, m);
            }
            bump(&self.counters.frames_out, messages.len() as u64);
            drop(buf);
            link.notify.notify();
        }
        for reply in out.replies.drain(..) {
            self.reply(reply);
        }
    }

    fn reply(&self, reply: Reply<KvResult>) {
        let reason;
        let (code, value): (Code, &[u8]) = match &reply.result {
            Ok(KvResult::Done) => (Code::Done, b""),
            Ok(KvResult::Value(v)) => (Code::Value, v.as_slice()),
            Ok(KvResult::NotFound) => (Code::NotFound, b""),
            Err(Refused::BeyondClientWindow) => (Code::BeyondWindow, b""),
            // Retryable, with the reason as text, like a full window.
            Err(e @ Refused::Superseded) => {
                reason = e.to_string();
                (Code::Overloaded, reason.as_bytes())
            }
            // The client is past this request: forget the copy's route (it
            // would otherwise stay for the life of the shard), answer nobody.
            Err(Refused::Acknowledged) => {
                self.pending
                    .borrow_mut()
                    .remove(&(reply.client, reply.request));
                return;
            }
        };
        self.answer(reply.client, reply.request, code, value);
    }

    /// Routes the answer to a command this shard owns to whoever waits.
    fn answer(&self, client: u64, request: u64, code: Code, value: &[u8]) {
        let Some(route) = self.pending.borrow_mut().remove(&(client, request)) else {
            return; // a duplicate, or answered already
        };
        if usize::from(route.origin) == self.cfg.shard {
            self.respond(route.conn, client, request, code, value);
            return;
        }
        let origin = usize::from(route.origin);
        self.cross_out[origin].borrow_mut().push(Cross::Answer {
            conn: route.conn,
            answer: Answer {
                client,
                request,
                code,
                value: Bytes::copy_from_slice(value),
            },
        });
        self.cross_notify[origin].notify();
    }

    pub fn admin_info(&self) -> AdminInfo {
        let core = self.core.borrow();
        let stats = core.stats();
        let c = &self.counters;
        let connected = self.links.iter().filter(|l| l.open.get()).count();
        AdminInfo {
            replica: self.cfg.node.replica.0,
            shard: self.cfg.shard as u8,
            replicas: self.cfg.replicas() as u8,
            shards: self.cfg.shards() as u8,
            peers_connected: connected as u8,
            padding: [0; 3],
            digest: core.state_machine().digest().into(),
            keys: (core.state_machine().len() as u64).into(),
            batches: stats.proposed.into(),
            batched_commands: c.batched_commands.get().into(),
            fast_commits: stats.fast_commits.into(),
            slow_commits: stats.slow_commits.into(),
            executed_instances: stats.executed_instances.into(),
            executed_commands: stats.executed_commands.into(),
            retransmits: stats.retransmits.into(),
            recoveries: stats.recoveries.into(),
            recovered_noops: stats.recovered_noops.into(),
            bytes_in: c.bytes_in.get().into(),
            bytes_out: c.bytes_out.get().into(),
            frames_in: c.frames_in.get().into(),
            frames_out: c.frames_out.get().into(),
            bad_frames: c.bad_frames.get().into(),
            forwarded_out: c.forwarded_out.get().into(),
            forwarded_in: c.forwarded_in.get().into(),
            instances_in_memory: (core.instances_in_memory() as u64).into(),
            dropped_messages: c.dropped_messages.get().into(),
            awaiting_answers: (self.pending.borrow().len() as u64).into(),
        }
    }
}
