//! What the metrics endpoint (`--metrics`) serves, and how the shards hand
//! it over without slowing down.
//!
//! One [`Metrics`] per process holds a block of atomics per shard. Each
//! shard owns a [`Publisher`] for its block: at most every
//! `METRICS_PUBLISH_MS`, from its loop (never per command), it copies its
//! node's counters, its core's stats, its histograms and its links' states
//! into the block with relaxed stores. The endpoint's threads (`http`) read
//! the blocks with relaxed loads on each scrape and encode them (`expose`).
//! Nothing is shared on a command's path: the shard's own counters stay
//! plain fields of its node, and a publish is a few dozen stores.
//!
//! The one lock, the text of why a shard refuses writes, is taken by the
//! shard with `try_lock` only when that reason changed; if the endpoint
//! holds it, the shard tries again at its next publish. So a shard never
//! waits for the endpoint.
//!
//! Counters need no snapshot consistency with each other (Prometheus reads
//! each on its own); a histogram's buckets are published per bucket, not
//! cumulative, and summed by the scrape, so its buckets never decrease
//! along `le` even when read mid-publish.

pub mod expose;
mod http;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::constants::{METRICS_PUBLISH_MS, REPLICAS_MAX};
use crate::histogram::{Histogram, Scale, BUCKETS_MAX};
use crate::node::Node;
use crate::storage::Storage;

pub use http::serve;

/// One number a shard publishes, with its name, help and type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    CommandsProposed,
    BatchesProposed,
    FastCommits,
    SlowCommits,
    CommandsExecuted,
    RecoveriesStarted,
    RecoveryNoops,
    Retransmits,
    BytesIn,
    BytesOut,
    FramesIn,
    FramesOut,
    BadFrames,
    PeerMessagesDropped,
    ForwardedOut,
    ForwardedIn,
    SessionsExpired,
    LogFsyncs,
    LogBytes,
    InstancesHeld,
    ClientConnections,
    SessionsHeld,
    AwaitingAnswers,
    Keys,
    PeerLinksUp,
}

/// Whether a number only grows (a counter) or goes up and down (a gauge);
/// whether its unit is bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Counter,
    CounterBytes,
    Gauge,
}

impl Scalar {
    pub const ALL: [Scalar; 25] = [
        Scalar::CommandsProposed,
        Scalar::BatchesProposed,
        Scalar::FastCommits,
        Scalar::SlowCommits,
        Scalar::CommandsExecuted,
        Scalar::RecoveriesStarted,
        Scalar::RecoveryNoops,
        Scalar::Retransmits,
        Scalar::BytesIn,
        Scalar::BytesOut,
        Scalar::FramesIn,
        Scalar::FramesOut,
        Scalar::BadFrames,
        Scalar::PeerMessagesDropped,
        Scalar::ForwardedOut,
        Scalar::ForwardedIn,
        Scalar::SessionsExpired,
        Scalar::LogFsyncs,
        Scalar::LogBytes,
        Scalar::InstancesHeld,
        Scalar::ClientConnections,
        Scalar::SessionsHeld,
        Scalar::AwaitingAnswers,
        Scalar::Keys,
        Scalar::PeerLinksUp,
    ];

    /// Its name after `epaxos_`, before the unit and `_total` the encoder
    /// appends; its type; its help text.
    pub fn spec(self) -> (&'static str, Type, &'static str) {
        use Type::*;
        match self {
            Scalar::CommandsProposed => ("commands_proposed", Counter,
                "Commands in the instances this shard proposed (client commands and session expiries)."),
            Scalar::BatchesProposed => ("batches_proposed", Counter,
                "Instances (batches of commands) this shard proposed as command leader."),
            Scalar::FastCommits => ("fast_commits", Counter,
                "Instances this shard led that committed on the fast path (one round trip)."),
            Scalar::SlowCommits => ("slow_commits", Counter,
                "Instances this shard led that committed after an Accept round (the slow path)."),
            Scalar::CommandsExecuted => ("commands_executed", Counter,
                "Commands this shard applied to its store, of every replica's instances."),
            Scalar::RecoveriesStarted => ("recoveries_started", Counter,
                "Recoveries this shard started (a Prepare for an instance that waited too long)."),
            Scalar::RecoveryNoops => ("recovery_noops", Counter,
                "Recoveries this shard decided as a no-op (their commands are answered Overloaded)."),
            Scalar::Retransmits => ("retransmits", Counter,
                "Protocol messages this shard sent again after a timeout."),
            Scalar::BytesIn => ("received", CounterBytes,
                "Bytes this shard received, on peer links and client connections."),
            Scalar::BytesOut => ("sent", CounterBytes,
                "Bytes this shard sent, on peer links and client connections."),
            Scalar::FramesIn => ("frames_received", Counter,
                "Frames this shard received, on peer links and client connections."),
            Scalar::FramesOut => ("frames_sent", Counter,
                "Frames this shard queued to send, on peer links and client connections."),
            Scalar::BadFrames => ("bad_frames", Counter,
                "Frames refused for failing a check; each closed its connection."),
            Scalar::PeerMessagesDropped => ("peer_messages_dropped", Counter,
                "Messages for a peer dropped while its link was down or backed up (the core re-sends what matters)."),
            Scalar::ForwardedOut => ("commands_forwarded_out", Counter,
                "Client commands this shard passed to the shard of this replica that owns their key."),
            Scalar::ForwardedIn => ("commands_forwarded_in", Counter,
                "Client commands another shard of this replica passed to this one."),
            Scalar::SessionsExpired => ("sessions_expired", Counter,
                "Client sessions expired (idle, or least recently used past --sessions-max)."),
            Scalar::LogFsyncs => ("log_fsyncs", Counter,
                "Group commits of this shard's log, one O_DSYNC write each (none with --in-memory)."),
            Scalar::LogBytes => ("log_synced", CounterBytes,
                "Bytes of log entries this shard's group commits made durable."),
            Scalar::InstancesHeld => ("instances_held", Gauge,
                "Instances this shard holds in memory, of every replica's space."),
            Scalar::ClientConnections => ("client_connections", Gauge,
                "Client connections this shard serves (handshake done)."),
            Scalar::SessionsHeld => ("sessions_held", Gauge,
                "Client sessions this shard keeps (their exactly-once state)."),
            Scalar::AwaitingAnswers => ("commands_awaiting_answer", Gauge,
                "Commands this shard received whose answer is not out yet."),
            Scalar::Keys => ("keys", Gauge, "Keys in this shard's store."),
            Scalar::PeerLinksUp => ("peer_links_up", Gauge,
                "This shard's links to its peers that are up (itself not counted)."),
        }
    }

    fn read<S: Storage>(self, node: &Node<S>, stats: &crate::protocol::ReplicaStats) -> u64 {
        let c = node.counters();
        let core = node.core();
        match self {
            Scalar::CommandsProposed => c.batched_commands,
            Scalar::BatchesProposed => stats.proposed,
            Scalar::FastCommits => stats.fast_commits,
            Scalar::SlowCommits => stats.slow_commits,
            Scalar::CommandsExecuted => stats.executed_commands,
            Scalar::RecoveriesStarted => stats.recoveries,
            Scalar::RecoveryNoops => stats.recovered_noops,
            Scalar::Retransmits => stats.retransmits,
            Scalar::BytesIn => c.bytes_in,
            Scalar::BytesOut => c.bytes_out,
            Scalar::FramesIn => c.frames_in,
            Scalar::FramesOut => c.frames_out,
            Scalar::BadFrames => c.bad_frames,
            Scalar::PeerMessagesDropped => c.dropped_messages,
            Scalar::ForwardedOut => c.forwarded_out,
            Scalar::ForwardedIn => c.forwarded_in,
            Scalar::SessionsExpired => stats.sessions_expired,
            Scalar::LogFsyncs => c.log.fsyncs,
            Scalar::LogBytes => c.log.bytes,
            Scalar::InstancesHeld => core.instances_in_memory() as u64,
            Scalar::ClientConnections => node.clients() as u64,
            Scalar::SessionsHeld => core.client_sessions() as u64,
            Scalar::AwaitingAnswers => node.awaiting_answers() as u64,
            Scalar::Keys => core.state_machine().len() as u64,
            Scalar::PeerLinksUp => node.links_up() as u64,
        }
    }
}

/// A histogram a shard publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hist {
    BatchCommands,
    CommitLatency,
    LogFsync,
}

impl Hist {
    pub const ALL: [Hist; 3] = [Hist::BatchCommands, Hist::CommitLatency, Hist::LogFsync];

    /// Its name after `epaxos_` (before `_seconds` for times), whether it
    /// is a time (recorded in nanoseconds, exposed in seconds), its help.
    pub fn spec(self) -> (&'static str, bool, &'static str) {
        match self {
            Hist::BatchCommands => ("batch_commands", false,
                "Commands in each instance this shard proposed."),
            Hist::CommitLatency => ("commit_latency", true,
                "From proposal to commit of each instance this shard led, at the leader (recoveries not counted)."),
            Hist::LogFsync => ("log_fsync", true,
                "Time of each group commit of this shard's log (its O_DSYNC write)."),
        }
    }
}

/// Bits of `ShardBlock::state`: why a shard refuses writes.
pub(crate) const STATE_FAILED: u8 = 1;
pub(crate) const STATE_MISCONFIGURED: u8 = 2;
pub(crate) const STATE_PROBATION: u8 = 4;
pub(crate) const STATE_STOPPING: u8 = 8;

/// One published histogram: counts per bucket (not cumulative) and the sum.
#[derive(Debug)]
struct HistBlock {
    counts: [AtomicU64; BUCKETS_MAX],
    sum: AtomicU64,
}

impl HistBlock {
    fn new() -> HistBlock {
        HistBlock {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    fn store<S: Scale>(&self, h: &Histogram<S>) {
        for (cell, &n) in self.counts.iter().zip(h.counts()) {
            cell.store(n, Relaxed);
        }
        self.sum.store(h.sum(), Relaxed);
    }
}

/// What one shard last published.
#[derive(Debug)]
struct ShardBlock {
    /// Milliseconds since `Metrics::started` of the last publish, plus one;
    /// 0: never published.
    published_ms: AtomicU64,
    /// The shard's loop has ended.
    ended: AtomicBool,
    /// `STATE_*` bits.
    state: AtomicU8,
    scalars: [AtomicU64; Scalar::ALL.len()],
    /// Per replica: the link to it is up (this replica's own entry unused).
    links: [AtomicBool; REPLICAS_MAX],
    hists: [HistBlock; Hist::ALL.len()],
    /// Why the shard refuses writes, when its state says failed or
    /// misconfigured (the node's own text).
    why: Mutex<String>,
}

/// Every shard's published block, shared by the shards and the endpoint.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// This replica's id and the cluster's replica count.
    pub replica: u8,
    pub replicas: usize,
    shards: Vec<ShardBlock>,
}

impl Metrics {
    pub fn new(replica: u8, replicas: usize, shards: usize) -> Arc<Metrics> {
        assert!(replicas <= REPLICAS_MAX && usize::from(replica) < replicas);
        let block = || ShardBlock {
            published_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            state: AtomicU8::new(0),
            scalars: std::array::from_fn(|_| AtomicU64::new(0)),
            links: std::array::from_fn(|_| AtomicBool::new(false)),
            hists: std::array::from_fn(|_| HistBlock::new()),
            why: Mutex::new(String::new()),
        };
        Arc::new(Metrics {
            started: Instant::now(),
            replica,
            replicas,
            shards: (0..shards).map(|_| block()).collect(),
        })
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The publisher of shard `shard`'s block (one per shard).
    pub fn publisher(self: &Arc<Metrics>, shard: usize) -> Publisher {
        assert!(shard < self.shards.len());
        Publisher {
            metrics: self.clone(),
            shard,
            next_ns: 0,
            state: None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// A shard's handle on its block; see the module docs.
#[derive(Debug)]
pub struct Publisher {
    metrics: Arc<Metrics>,
    shard: usize,
    /// The shard's clock (nanoseconds) at which the next publish is due.
    next_ns: u64,
    /// The state whose reason text is in the block (`None`: not yet).
    state: Option<u8>,
}

impl Publisher {
    /// Publishes if `METRICS_PUBLISH_MS` passed since the last time, by the
    /// shard's clock `now_ns`. `links_up[r]`: the link to replica r is up.
    pub fn maybe_publish<S: Storage>(
        &mut self,
        now_ns: u64,
        node: &Node<S>,
        links_up: impl Iterator<Item = bool>,
        stopping: bool,
    ) {
        if now_ns < self.next_ns {
            return;
        }
        self.next_ns = now_ns + METRICS_PUBLISH_MS * 1_000_000;
        self.publish(node, links_up, stopping);
    }

    /// Copies the shard's numbers into its block now.
    pub fn publish<S: Storage>(
        &mut self,
        node: &Node<S>,
        links_up: impl Iterator<Item = bool>,
        stopping: bool,
    ) {
        let block = &self.metrics.shards[self.shard];
        let stats = node.core().stats();
        for (cell, m) in block.scalars.iter().zip(Scalar::ALL) {
            cell.store(m.read(node, &stats), Relaxed);
        }
        for (cell, up) in block.links.iter().zip(links_up) {
            cell.store(up, Relaxed);
        }
        let c = node.counters();
        block.hists[Hist::BatchCommands as usize].store(&c.batch_commands);
        block.hists[Hist::CommitLatency as usize].store(&stats.commit_latency);
        block.hists[Hist::LogFsync as usize].store(&c.log.latency);
        let now_ms = self.metrics.now_ms();
        block.published_ms.store(now_ms + 1, Relaxed);
        self.publish_state(node, stopping);
    }

    /// The shard's health bits, and their reason text when they changed.
    fn publish_state<S: Storage>(&mut self, node: &Node<S>, stopping: bool) {
        let misconfigured = node.misconfigured();
        let mut state = 0;
        if node.failed().is_some() {
            state |= STATE_FAILED;
        }
        if misconfigured.is_some() {
            state |= STATE_MISCONFIGURED;
        }
        if node.on_probation() {
            state |= STATE_PROBATION;
        }
        if stopping {
            state |= STATE_STOPPING;
        }
        let block = &self.metrics.shards[self.shard];
        if self.state != Some(state) {
            // Never wait for a scrape: if it holds the text, try next time.
            let Ok(mut why) = block.why.try_lock() else {
                return;
            };
            why.clear();
            if let Some(failed) = node.failed() {
                why.push_str(failed);
            } else if let Some(m) = &misconfigured {
                why.push_str(m);
            }
            self.state = Some(state);
        }
        block.state.store(state, Relaxed);
    }

    /// The shard's loop has ended: it serves nothing more.
    pub fn ended(&self) {
        self.metrics.shards[self.shard].ended.store(true, Relaxed);
    }
}

#[cfg(test)]
mod tests;
