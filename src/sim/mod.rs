//! A deterministic cluster simulator and the checkers that judge its runs.
//!
//! N replicas of `shards` shards each run in one thread on a virtual clock.
//! Every shard is the real node (`crate::node::Node`, the same code the
//! runtime drives, with the real core inside) on an in-memory storage whose
//! appends become durable after a simulated fdatasync. A seeded network
//! carries the real encoded peer frames and delays, reorders, duplicates
//! and drops them, partitions the cluster for a while, and cuts one link one
//! way; replicas crash at arbitrary points (also in the middle of a sync)
//! and restart from what their storage made durable. Clients speak the real
//! client frames to random shards of random replicas (commands for another
//! shard's keys are forwarded), over a few shared keys (how often is the
//! conflict rate), and retry at another replica when a reply is late.
//! Faults stop after a fixed virtual time. As frames leave, the node's
//! contract is checked (`contract.rs`: nothing before its record is durable,
//! no connection answered more often than asked); after the run the
//! checkers assert agreement, execution order, linearizability of what
//! clients saw, liveness (every request completed within a bound after the
//! last fault) and convergence (every replica ends in the same state).
//! Everything comes from the seed, so a failing seed replays exactly.
//!
//! The simulator never touches a real clock, socket or thread.

pub mod check;
mod clients;
mod cluster;
pub mod contract;
mod counters;
pub mod linearizability;
pub use crate::rng;
pub mod wired;

pub use cluster::run;

use crate::node::NodeBug;
use crate::protocol::InjectedBug;

/// Which faults the network injects while faults are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultMix {
    /// Delays with little jitter, nothing lost.
    None,
    /// Large jitter: messages overtake each other.
    Reorder,
    /// Messages lost and duplicated.
    Loss,
    /// The cluster splits into two sides for a while, then heals.
    Partition,
    /// One direction of one link drops everything for a while (A hears B,
    /// B does not hear A).
    Asymmetric,
    /// Up to F replicas crash at arbitrary points (between calls, after
    /// persisting but before sending, right after deciding a commit) and
    /// restart from what they persisted.
    Crash,
    /// Everything above at once.
    All,
}

impl FaultMix {
    pub fn name(self) -> &'static str {
        match self {
            FaultMix::None => "none",
            FaultMix::Reorder => "reorder",
            FaultMix::Loss => "loss",
            FaultMix::Partition => "partition",
            FaultMix::Asymmetric => "asymmetric",
            FaultMix::Crash => "crash",
            FaultMix::All => "all",
        }
    }

    pub const ALL: [FaultMix; 7] = [
        FaultMix::None,
        FaultMix::Reorder,
        FaultMix::Loss,
        FaultMix::Partition,
        FaultMix::Asymmetric,
        FaultMix::Crash,
        FaultMix::All,
    ];

    fn reorders(self) -> bool {
        matches!(self, FaultMix::Reorder | FaultMix::All)
    }

    fn loses(self) -> bool {
        matches!(self, FaultMix::Loss | FaultMix::All)
    }

    fn partitions(self) -> bool {
        matches!(self, FaultMix::Partition | FaultMix::All)
    }

    fn cuts_one_way(self) -> bool {
        matches!(self, FaultMix::Asymmetric | FaultMix::All)
    }

    fn crashes(self) -> bool {
        matches!(self, FaultMix::Crash | FaultMix::All)
    }
}

/// Virtual time during which faults are injected (from 0).
pub const FAULT_PHASE_NS: u64 = 300_000_000;
/// Every client request must complete within this long after the last fault.
pub const LIVENESS_BOUND_NS: u64 = 2_000_000_000;

/// The simulated shards' pipeline limit: the runtime's default (`--pipeline`).
pub const NODE_PIPELINE_DEFAULT: usize = 64;

/// Client sessions idle this long (virtual time) are expired in the
/// simulator: a client waiting out a partition loses its session.
pub const SESSION_IDLE_NS_SIM: u64 = 200_000_000;

/// One simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub replicas: usize,
    pub faults: FaultMix,
    /// Percent of client commands on the few keys every client shares.
    pub conflicts_pct: u32,
    /// Percent of client commands that are GETs.
    pub reads_pct: u32,
    /// Percent of the other commands that read and write in one step: an
    /// INCR of one of the counters every client shares, or a conditional
    /// PUT (SET NX or XX) of the key drawn.
    pub rmw_pct: u32,
    pub clients: usize,
    /// Keys of its own each client picks among (the rest go to shared keys).
    pub keys_per_client: u64,
    pub ops_per_client: usize,
    /// Requests each client keeps in flight at once (1: closed loop).
    pub pipeline: usize,
    pub thrifty: bool,
    /// Shards per replica (each its own EPaxos group).
    pub shards: usize,
    /// Each shard's pipeline limit (uncommitted instances it leads).
    pub node_pipeline: usize,
    /// Test-only: every replica's core carries this defect.
    pub injected_bug: Option<InjectedBug>,
    /// Test-only: every replica's node carries this defect.
    pub node_bug: Option<NodeBug>,
    /// Storage syncs complete in the call that asks (as the runtime's do
    /// today) instead of after a simulated fdatasync.
    pub sync_at_once: bool,
    /// Client sessions idle this long (virtual time) are expired; short,
    /// so that expiry happens under the faults.
    pub session_idle_ns: u64,
    /// Most sessions a shard keeps: fewer than the clients, so that the
    /// least recently used are expired while in use.
    pub sessions_max: usize,
}

impl SimConfig {
    pub fn new(seed: u64, replicas: usize) -> SimConfig {
        SimConfig {
            seed,
            replicas,
            faults: FaultMix::All,
            conflicts_pct: 30,
            reads_pct: 40,
            rmw_pct: 15,
            clients: 2 * replicas,
            keys_per_client: 4,
            ops_per_client: 25,
            pipeline: 1,
            thrifty: false,
            shards: 1,
            node_pipeline: NODE_PIPELINE_DEFAULT,
            injected_bug: None,
            node_bug: None,
            sync_at_once: false,
            session_idle_ns: SESSION_IDLE_NS_SIM,
            sessions_max: 2 * replicas - 1,
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release --bin epaxos-sim -- --seed {} --replicas {} --faults {} \
             --conflicts {} --reads {} --rmw {} --clients {} --keys {} --ops {} --pipeline {} --shards {} \
             --node-pipeline {} --sessions-max {} --session-idle-ms {}{}{}{}",
            self.seed,
            self.replicas,
            self.faults.name(),
            self.conflicts_pct,
            self.reads_pct,
            self.rmw_pct,
            self.clients,
            self.keys_per_client,
            self.ops_per_client,
            self.pipeline,
            self.shards,
            self.node_pipeline,
            self.sessions_max,
            self.session_idle_ns / 1_000_000,
            if self.thrifty { " --thrifty" } else { "" },
            if self.sync_at_once {
                " --sync-at-once"
            } else {
                ""
            },
            self.node_bug
                .map_or(String::new(), |b| format!(" --node-bug {}", b.name()))
        )
    }
}

/// What one run did and what the checkers found.
#[derive(Clone, Debug)]
pub struct SimReport {
    pub seed: u64,
    /// One line per violated property; empty when the run passed.
    pub failures: Vec<String>,
    pub ops_completed: usize,
    /// Client requests that completed while faults were on.
    pub ops_during_faults: usize,
    pub instances_proposed: usize,
    pub fast_commits: u64,
    pub slow_commits: u64,
    pub crashes: u64,
    /// Crashes after which part of what was not yet durable survived.
    pub torn_tails: u64,
    /// Recoveries started, and how many ended in a no-op.
    pub recoveries: u64,
    pub recovered_noops: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    /// Commits a replica held for an unreachable peer and released when it
    /// became reachable again.
    pub commits_unparked: u64,
    /// Keys the replicas' conflict indexes forgot (stable) and may have
    /// re-created since (in the incarnations running at the end).
    pub keys_forgotten: u64,
    /// Sessions expired, summed over replicas (each replica expires each).
    pub expiries: u64,
    /// Sessions clients were told had expired (each started a new one).
    pub sessions_lost: u64,
    /// Commands forwarded from the shard a client sent them to, to their
    /// owner.
    pub forwarded: u64,
    /// How long after the last fault the last client request completed.
    pub recovery_ns: u64,
    pub end_ns: u64,
}

impl SimReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}
