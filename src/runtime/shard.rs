//! One shard's driver state: the node, the clock, and the wake-ups of the
//! tasks that move its bytes.
//!
//! Everything here lives on one executor thread (`Rc`, `RefCell`, `Cell`);
//! nothing is shared with another core but the cross-core channels, which
//! carry owned values. No task awaits while it holds the node's borrow.
//!
//! Every call into the node goes through [`Shard::call`], which afterwards
//! wakes whoever the node's outputs name: the writer of a peer link or a
//! client connection, the sender towards another shard. The node decides
//! everything; this file only connects its outputs to tasks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use rustc_hash::FxHashMap;

use super::notify::Notify;
use super::RuntimeConfig;
use crate::constants::SEND_BUFFER_KEPT_BYTES_MAX;
use crate::node::{ConnId, Cross, Node, NodeConfig, Output};
use crate::protocol::ReplicaId;
use crate::storage::file::FileLog;
use crate::storage::Backend;
use crate::wire::client::shard_addr;

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

    /// The node's configuration for this shard.
    pub fn node_config(&self, rng_seed: u64) -> NodeConfig {
        let n = &self.node;
        NodeConfig {
            replica: n.replica,
            replicas: self.replicas(),
            shard: self.shard,
            shards: self.shards(),
            cluster_id: n.cluster_id,
            thrifty: n.thrifty,
            batch_max: n.batch_max,
            pipeline: n.pipeline,
            rng_seed,
            trace: false,
            injected_bug: None,
            node_bug: None,
            test_lose_write: n.test_lose_write,
        }
    }
}

/// A client connection's writer wake-ups.
#[derive(Default)]
pub struct ConnIo {
    /// Bytes are waiting in the node for this connection.
    pub ready: Notify,
    /// The node closed the connection: wakes a writer blocked on a socket.
    pub closed: Notify,
    pub closing: Cell<bool>,
    /// The writer has ended (closed, or its socket failed): the reader stops
    /// too, so the socket is closed and the client sees it, instead of
    /// waiting for answers that will not come.
    pub writer_gone: Notify,
}

impl ConnIo {
    fn close(&self) {
        self.closing.set(true);
        self.ready.notify();
        self.closed.notify();
    }
}

pub struct Shard {
    pub cfg: ShardConfig,
    node: RefCell<Node<Backend>>,
    /// Wakes the turn loop.
    pub wake: Notify,
    /// Wakes the log writer (`runtime::wal`): a turn appended records.
    pub log_ready: Notify,
    refusal: RefCell<Option<String>>,
    /// Per peer: bytes are waiting for the outgoing link.
    pub link_ready: Vec<Notify>,
    conns: RefCell<FxHashMap<ConnId, Rc<ConnIo>>>,
    /// Per other shard: messages are waiting for it.
    pub cross_ready: Vec<Notify>,
    epoch: Instant,
}

impl Shard {
    pub fn new(cfg: ShardConfig, rng_seed: u64, storage: Backend) -> Shard {
        let epoch = Instant::now();
        let node = Node::start(cfg.node_config(rng_seed), storage, 0);
        Shard {
            node: RefCell::new(node),
            wake: Notify::default(),
            log_ready: Notify::default(),
            refusal: RefCell::new(None),
            link_ready: (0..cfg.replicas()).map(|_| Notify::default()).collect(),
            conns: RefCell::default(),
            cross_ready: (0..cfg.shards()).map(|_| Notify::default()).collect(),
            epoch,
            cfg,
        }
    }

    /// Nanoseconds since the shard started: the node's clock.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.node.borrow().next_deadline()
    }

    /// Calls into the node with the current time, then wakes whoever its
    /// outputs name.
    pub fn call<R>(&self, f: impl FnOnce(&mut Node<Backend>, u64) -> R) -> R {
        let now = self.now();
        let mut node = self.node.borrow_mut();
        let r = f(&mut node, now);
        while let Some(o) = node.poll_output() {
            match o {
                Output::Link(p) => self.link_ready[p.index()].notify(),
                Output::Conn(c) => {
                    if let Some(io) = self.conns.borrow().get(&c) {
                        io.ready.notify();
                    }
                }
                Output::Close(c) => {
                    if let Some(io) = self.conns.borrow().get(&c) {
                        io.close();
                    }
                }
                Output::Cross(s) => self.cross_ready[s].notify(),
            }
        }
        r
    }

    /// One turn of the shard's loop. With a log file, the records the turn
    /// appended are written by the log writer, which the turn wakes; the
    /// turn's output waits in the node until they are durable. In memory,
    /// they are "durable" at once and the output leaves now.
    pub fn turn(&self) {
        let wanted = self.call(|node, now| {
            node.turn(now);
            node.sync_wanted()
        });
        if wanted.is_some() {
            self.log_ready.notify();
        }
    }

    /// Calls `f` on the shard's log file. Only the log writer calls it, and
    /// only a shard started on one has a writer.
    pub fn with_log<R>(&self, f: impl FnOnce(&mut FileLog) -> R) -> R {
        match self.node.borrow_mut().storage_mut() {
            Backend::File(log) => f(log),
            Backend::Memory(_) => unreachable!("no log writer runs in memory"),
        }
    }

    /// The node refused to take part (see `Node::peer_knows`): the reason
    /// is logged and the shard's loop ends, which stops the process.
    pub fn refuse(&self) {
        let why = self.node.borrow().failed().unwrap_or_default().to_string();
        tracing::error!("{why}");
        *self.refusal.borrow_mut() = Some(why);
        self.wake.notify();
    }

    /// Why the shard refused to take part, if it did.
    pub fn refusal(&self) -> Option<String> {
        self.refusal.borrow().clone()
    }

    /// Whether the shard stopped because its log failed.
    pub fn failed(&self) -> bool {
        self.node.borrow().failed().is_some()
    }

    pub fn count_in(&self, bytes: usize) {
        self.node.borrow_mut().counters_mut().bytes_in += bytes as u64;
    }

    pub fn count_bad_frame(&self) {
        self.node.borrow_mut().counters_mut().bad_frames += 1;
    }

    /// A client connection's writer starts: its wake-ups are registered.
    pub fn register_conn(&self, conn: ConnId) -> Rc<ConnIo> {
        let io = Rc::new(ConnIo::default());
        self.conns.borrow_mut().insert(conn, io.clone());
        io
    }

    /// The connection ended: the node forgets it, its writer stops.
    pub fn unregister_conn(&self, conn: ConnId) {
        if let Some(io) = self.conns.borrow_mut().remove(&conn) {
            io.close();
        }
        self.node.borrow_mut().closed(conn);
    }

    /// What the node queued for the link to `peer`, or for connection
    /// `conn`, in exchange for the buffer the writer used last time.
    pub fn take_link_bytes(&self, peer: ReplicaId, spare: BytesMut) -> BytesMut {
        let mut node = self.node.borrow_mut();
        let data = node.take_link_bytes(peer, spare);
        node.counters_mut().bytes_out += data.len() as u64;
        data
    }

    pub fn take_conn_bytes(&self, conn: ConnId, spare: BytesMut) -> BytesMut {
        let mut node = self.node.borrow_mut();
        let data = node.take_conn_bytes(conn, spare);
        node.counters_mut().bytes_out += data.len() as u64;
        data
    }

    /// Messages for shard `to`, in exchange for the (emptied) vector the
    /// sender used last time.
    pub fn take_cross(&self, to: usize, spare: Vec<Cross>) -> Vec<Cross> {
        self.node.borrow_mut().take_cross(to, spare)
    }
}

/// A written buffer, cleared, to be handed back next time; a burst's large
/// buffer is not kept (it would pin its peak for the life of the link).
pub fn reuse(mut written: BytesMut) -> BytesMut {
    written.clear();
    if written.capacity() > SEND_BUFFER_KEPT_BYTES_MAX {
        return BytesMut::new();
    }
    written
}
