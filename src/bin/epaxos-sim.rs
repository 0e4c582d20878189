//! `epaxos-sim`: runs the deterministic cluster simulator over many seeds.
//!
//! One line per failing seed, with the command that replays it; the last line
//! is exactly `N passed, M failed`; exit status 1 if any seed failed.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use epaxos_fast::node::NodeBug;
use epaxos_fast::sim::{self, FaultMix, SimConfig, LIVENESS_BOUND_NS};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Deterministic EPaxos cluster simulator with correctness checkers"
)]
struct Args {
    /// Run seeds 0..SEEDS (ignored when --seed is given).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Run this one seed, verbosely.
    #[arg(long)]
    seed: Option<u64>,
    /// First seed of the range (with --seeds).
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Number of replicas (1, 3, 5, 7 or 9).
    #[arg(long, default_value_t = 5, value_parser = parse_replicas)]
    replicas: usize,
    /// Which faults the network injects during the fault phase.
    #[arg(long, value_enum, default_value_t = FaultMix::All)]
    faults: FaultMix,
    /// Percent of commands on keys shared by all clients (0..=100).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=100))]
    conflicts: u32,
    /// Percent of commands that are reads (0..=100).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(0..=100))]
    reads: u32,
    /// Percent of the other commands that read and write in one step: an
    /// INCR of a counter all clients share, or a conditional PUT (0..=100).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(0..=100))]
    rmw: u32,
    /// Closed-loop clients (default: twice the replica count).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    clients: Option<u64>,
    /// Keys of its own each client picks among: many keys make the
    /// replicas forget and re-create index entries under faults.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    keys: u64,
    /// Requests per client.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    ops: u64,
    /// Requests each client keeps in flight (1: closed loop).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pipeline: u64,
    /// Send PreAccept to a fast quorum only.
    #[arg(long)]
    thrifty: bool,
    /// Shards per replica, each its own EPaxos group; clients send to any
    /// shard, which forwards commands for keys another shard owns.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8))]
    shards: u64,
    /// Each shard's pipeline limit: uncommitted instances it leads at once.
    #[arg(long, default_value_t = sim::NODE_PIPELINE_DEFAULT as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    node_pipeline: u64,
    /// Storage syncs complete at once, as the runtime's do today, instead of
    /// after a simulated fdatasync of 20 to 400 µs.
    #[arg(long)]
    sync_at_once: bool,
    /// Most client sessions a shard keeps [default: 2 x replicas - 1, one
    /// fewer than the clients, so that sessions in use are expired too].
    #[arg(long)]
    sessions_max: Option<u64>,
    /// Milliseconds (virtual) a client session may idle before it expires.
    #[arg(long, default_value_t = epaxos_fast::sim::SESSION_IDLE_NS_SIM / 1_000_000)]
    session_idle_ms: u64,
    /// Test only: give every node this defect, to see the checkers catch it
    /// (release-before-durable, answer-forwarded-twice).
    #[arg(long, hide = true)]
    node_bug: Option<NodeBug>,
}

/// Prints a line to stdout. When the reader has gone away (`| head`), stops
/// quietly instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(1);
        }
    }};
}

fn parse_replicas(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    match n {
        1 | 3 | 5 | 7 | 9 => Ok(n),
        _ => Err(format!("{n} replicas: must be 1, 3, 5, 7 or 9")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut worst_recovery_ns = 0;
    let (mut crashes, mut recoveries, mut noops, mut unparked) = (0u64, 0u64, 0u64, 0u64);
    let mut torn_tails = 0u64;
    let mut forwarded = 0u64;
    let mut forgotten = 0u64;
    let (mut expiries, mut sessions_lost) = (0u64, 0u64);
    let mut last_progress = Instant::now();
    for (i, &seed) in seeds.iter().enumerate() {
        let mut cfg = SimConfig::new(seed, args.replicas);
        cfg.faults = args.faults;
        cfg.conflicts_pct = args.conflicts;
        cfg.reads_pct = args.reads;
        cfg.rmw_pct = args.rmw;
        cfg.clients = args.clients.map_or(2 * args.replicas, |c| c as usize);
        cfg.keys_per_client = args.keys;
        cfg.ops_per_client = args.ops as usize;
        cfg.pipeline = args.pipeline as usize;
        cfg.thrifty = args.thrifty;
        cfg.shards = args.shards as usize;
        cfg.node_pipeline = args.node_pipeline as usize;
        cfg.node_bug = args.node_bug;
        cfg.sync_at_once = args.sync_at_once;
        if let Some(max) = args.sessions_max {
            cfg.sessions_max = max as usize;
        }
        cfg.session_idle_ns = args.session_idle_ms * 1_000_000;
        let report = sim::run(&cfg);
        worst_recovery_ns = worst_recovery_ns.max(report.recovery_ns);
        crashes += report.crashes;
        torn_tails += report.torn_tails;
        recoveries += report.recoveries;
        noops += report.recovered_noops;
        unparked += report.commits_unparked;
        forwarded += report.forwarded;
        forgotten += report.keys_forgotten;
        expiries += report.expiries;
        sessions_lost += report.sessions_lost;
        if args.seed.is_some() {
            say!(
                "seed {seed}: {} requests ({} completed during faults), {} instances ({} fast, {} slow), \
                 {} crashes, {} recoveries ({} ended in a no-op), {} messages \
                 ({} dropped), virtual time {} ms, last request {} ms after the last fault",
                report.ops_completed,
                report.ops_during_faults,
                report.instances_proposed,
                report.fast_commits,
                report.slow_commits,
                report.crashes,
                report.recoveries,
                report.recovered_noops,
                report.messages_sent,
                report.messages_dropped,
                report.end_ns / 1_000_000,
                report.recovery_ns / 1_000_000
            );
        }
        if report.passed() {
            passed += 1;
        } else {
            failed += 1;
            say!(
                "FAILED seed {seed}: {} | replay: {}",
                report.failures.join("; "),
                cfg.replay_command()
            );
        }
        if last_progress.elapsed().as_secs() >= 5 {
            last_progress = Instant::now();
            eprintln!("... {}/{} seeds, {failed} failed", i + 1, seeds.len());
        }
    }
    say!(
        "{} seeds in {:.1}s; {crashes} crashes ({torn_tails} keeping part of what was not yet durable), {recoveries} recoveries ({noops} no-ops), \
         {unparked} commits released from parking, {forwarded} commands forwarded between shards, {forgotten} keys forgotten by the conflict indexes, {expiries} session expiries executed ({sessions_lost} sessions clients were told had expired); liveness: every request completed within {:.1} ms of the last fault (bound {} ms)",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        worst_recovery_ns as f64 / 1e6,
        LIVENESS_BOUND_NS / 1_000_000
    );
    say!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
