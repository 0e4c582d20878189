//! `blaster`: the load tool for epaxos-fast.
//!
//! Connections are spread over the targets' replicas and shards (shard-aware:
//! each connection uses keys its shard owns, but for the shared hot key of
//! `--conflicts`). One executor thread per `--cores` (`exec`, blaster's own,
//! on io_uring). A progress line each second; at the end a summary, and on
//! request the HdrHistogram percentile table (`--hgrm`) and a JSON summary
//! (`--json`).

mod cluster;
mod cpu;
mod exec;
mod history;
mod load;
mod nemesis;
mod report;
mod scrape;
mod verify;
mod wake;
mod written;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use epaxos_fast::constants::{CLIENT_WINDOW_REQUESTS_MAX, REPLICAS_MAX, VALUE_BYTES_MAX};
use load::{Tally, Target, Workload};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(
    version,
    about = "Load generator for epaxos-fast, with HDR latency histograms"
)]
pub struct Args {
    /// Replicas to load, HOST:PORT (base port), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present_any = ["local_cluster", "nemesis"]
    )]
    targets: Vec<String>,
    /// Start N local replicas on free loopback ports, load them, stop them.
    #[arg(long, conflicts_with = "targets")]
    local_cluster: Option<usize>,
    /// Shards per local replica (--local-cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub replica_cores: u8,
    /// Local replicas send PreAccepts to a fast quorum only.
    #[arg(long)]
    pub thrifty: bool,
    /// Local replicas keep their state in memory only (`--in-memory`).
    /// By default each keeps its logs on disk (`--data-dir`), in a fresh
    /// directory under the system's temporary one, removed at the end.
    #[arg(long, conflicts_with = "nemesis")]
    pub in_memory: bool,
    /// Faults on the local replicas while the load runs. `kill`: every
    /// --nemesis-interval, SIGKILL to a random replica (never more than
    /// (N-1)/2 down at once), restarted from its data dir
    /// --nemesis-downtime later. Needs --local-cluster of 3 or more (on
    /// disk, not --in-memory). Connections reconnect and send their unanswered
    /// requests again (as they do requests answered Overloaded), under the
    /// same numbers. The kill choices come from --seed.
    #[arg(long, value_enum)]
    nemesis: Option<NemesisKind>,
    /// Seconds between kills on average (each wait drawn from half to one
    /// and a half times this).
    #[arg(long, default_value_t = 3.0, requires = "nemesis")]
    nemesis_interval: f64,
    /// Seconds a killed replica stays down before it is restarted.
    #[arg(long, default_value_t = 1.0, requires = "nemesis")]
    nemesis_downtime: f64,
    /// Extra flag for every local replica (repeat it), e.g.
    /// `--replica-arg=--batch-max=64`.
    #[arg(long, allow_hyphen_values = true)]
    pub replica_arg: Vec<String>,
    /// With --local-cluster: run the replicas with --metrics and GET
    /// /metrics from each every this many seconds during the run (to
    /// measure what scraping costs).
    #[arg(long, value_name = "S", requires = "local_cluster")]
    pub scrape_metrics: Option<f64>,
    /// Cluster id the replicas run with.
    #[arg(long, default_value_t = 1)]
    pub cluster_id: u64,
    /// Connections in all, spread over replicas, then shards.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests in flight per connection (closed loop).
    #[arg(long, default_value_t = 64)]
    outstanding: usize,
    /// Open loop: requests per second in all, instead of --outstanding.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop at each of these rates in turn (requests per second in all,
    /// comma-separated), against the same replicas, each with its own
    /// warm-up and --duration; then one row per rate (throughput, p50, p99,
    /// p99.9, CPU per command). With --plot, latency against throughput;
    /// with --json, one object per rate.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["rate", "nemesis", "history", "hgrm"])]
    pub rates: Option<Vec<f64>>,
    /// Distinct keys per connection.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Before the load starts, write every key of every connection once
    /// (pipelined, one thread per connection), so that what is measured is
    /// the steady state of a full key set, not its first touch. Not with
    /// --verify, which knows only the load's own writes (a key whose load
    /// writes all went unanswered would hold the preloaded value).
    #[arg(long, conflicts_with_all = ["nemesis", "verify"])]
    preload: bool,
    /// Choose keys by Zipf's law with this exponent (e.g. 0.99) instead of
    /// uniformly.
    #[arg(long)]
    zipf: Option<f64>,
    /// Percent of commands on one key every connection shares.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    conflicts: u32,
    /// Percent of commands that are GETs.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    reads: u32,
    /// Bytes per PUT value.
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Load executors (threads).
    #[arg(long, default_value_t = 1)]
    cores: usize,
    /// At the end, read every key this run wrote back through every replica
    /// and count lost (acknowledged, then missing) and mismatched values;
    /// exit non-zero if either is not zero. Writes then carry unique values.
    #[arg(long)]
    verify: bool,
    /// Write every operation here as one JSON line (client, op, key, value,
    /// invoke_ns, return_ns, result) for offline linearizability checking.
    /// Kept in memory until the end: for short or slow runs.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Write HdrHistogram's percentile distribution (µs) here.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Draw the latency-by-percentile chart here (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write a JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum NemesisKind {
    /// kill -9 a replica, restart it later
    Kill,
}

/// How long connections may take after the end to get their answers: with
/// the nemesis, long enough for a replica killed just before the end to
/// come back (the drain ends as soon as every request is answered).
const DRAIN: Duration = Duration::from_secs(2);
const DRAIN_NEMESIS: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = check(&args) {
        eprintln!("blaster: error: {e}");
        return ExitCode::from(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(s, stop.clone());
    }
    match run(&args, &stop) {
        Ok(ok) if ok => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("blaster: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Flag values clap's types cannot rule out; a failure is a usage error.
fn check(args: &Args) -> Result<(), String> {
    if args.connections == 0 || args.cores == 0 || args.duration <= 0.0 {
        return Err("--connections, --cores and --duration must be positive".into());
    }
    if args
        .local_cluster
        .is_some_and(|n| n == 0 || n > REPLICAS_MAX)
    {
        return Err(format!(
            "--local-cluster takes 1 to {REPLICAS_MAX} replicas"
        ));
    }
    // A connection's requests in flight stay within the replica's window.
    let window = CLIENT_WINDOW_REQUESTS_MAX as usize;
    if args.outstanding == 0 || args.outstanding > window {
        return Err(format!(
            "--outstanding takes 1 to {window} requests per connection"
        ));
    }
    if args.zipf.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
        return Err("--zipf must be a positive exponent".into());
    }
    let rates = args.rate.iter().chain(args.rates.iter().flatten());
    if rates.clone().any(|r| !(*r > 0.0 && r.is_finite())) {
        return Err("--rate and --rates take positive numbers of requests per second".into());
    }
    if args.rates.as_ref().is_some_and(|r| r.is_empty()) {
        return Err("--rates needs at least one rate".into());
    }
    if args.value_size > VALUE_BYTES_MAX {
        return Err(format!(
            "--value-size {} is over the replica's limit of {VALUE_BYTES_MAX} bytes",
            args.value_size
        ));
    }
    if args
        .scrape_metrics
        .is_some_and(|s| !(s > 0.0 && s.is_finite()))
    {
        return Err("--scrape-metrics takes a positive number of seconds".into());
    }
    if args.warmup < 0.0 || !args.warmup.is_finite() || !args.duration.is_finite() {
        return Err("--warmup and --duration must be finite, --warmup not negative".into());
    }
    if args.nemesis.is_some() {
        match args.local_cluster {
            None => return Err("--nemesis needs --local-cluster: it kills local replicas".into()),
            Some(n) if n < 3 => {
                return Err(format!(
                    "--nemesis needs --local-cluster of 3 or more replicas: with {n}, \
                     (N-1)/2 = 0 may be down"
                ))
            }
            Some(_) => {}
        }
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !positive(args.nemesis_interval) || !positive(args.nemesis_downtime) {
            return Err(
                "--nemesis-interval and --nemesis-downtime must be positive seconds".into(),
            );
        }
    }
    Ok(())
}

fn run(args: &Args, stop: &Arc<AtomicBool>) -> Result<bool, String> {
    let local = match args.local_cluster {
        Some(n) => Some(cluster::start(n, args)?),
        None => None,
    };
    let targets: Vec<SocketAddr> = match &local {
        Some(c) => c.peers.clone(),
        None => args
            .targets
            .iter()
            .map(|t| {
                t.to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| format!("--targets: cannot resolve {t:?}"))
            })
            .collect::<Result<_, _>>()?,
    };
    let shards = cluster::shards_of(targets[0], args.cluster_id)?;
    let scraper = match (&local, args.scrape_metrics) {
        (Some(c), Some(every)) => {
            let addrs = (0..c.peers.len())
                .filter_map(|r| c.metrics_addr(r))
                .collect();
            Some(scrape::start(addrs, Duration::from_secs_f64(every)))
        }
        _ => None,
    };
    let result = run_on(args, stop, local, &targets, shards);
    if let Some(s) = scraper {
        s.finish();
    }
    result
}

/// The run once the replicas are there: the preload, then one load phase
/// or one per `--rates` rate.
fn run_on(
    args: &Args,
    stop: &Arc<AtomicBool>,
    local: Option<cluster::LocalCluster>,
    targets: &[SocketAddr],
    shards: u8,
) -> Result<bool, String> {
    let targets = targets.to_vec();
    if args.preload {
        preload(args, &targets, shards)?;
    }
    let Some(rates) = &args.rates else {
        let (ok, local, _) = load(args, stop, local, &targets, shards)?;
        if let Some(c) = local {
            c.stop();
        }
        return Ok(ok);
    };
    // One phase per rate against the same replicas; the per-run outputs
    // (JSON, plot) describe the whole sweep instead.
    let mut phase = args.clone();
    (phase.json, phase.plot) = (None, None);
    let (mut rows, mut all_ok, mut local) = (Vec::new(), true, local);
    for &rate in rates {
        if stop_requested(stop) {
            break;
        }
        phase.rate = Some(rate);
        eprintln!("blaster: --rates: {rate} requests/s");
        let (ok, back, row) = load(&phase, stop, local, &targets, shards)?;
        local = back;
        all_ok &= ok;
        rows.push(row);
    }
    report::rates(&rows, args)?;
    if let Some(c) = local {
        c.stop();
    }
    Ok(all_ok)
}

/// Connection i's replica and shard, as the load spreads them.
fn target(i: usize, targets: &[SocketAddr], shards: u8) -> Target {
    Target {
        addr: targets[i % targets.len()],
        shard: ((i / targets.len()) % usize::from(shards)) as u8,
        index: i,
    }
}

/// `--preload`: every connection's keys written once, each connection's by
/// a thread of its own on the blocking client, up to `PRELOAD_WINDOW`
/// requests in flight.
fn preload(args: &Args, targets: &[SocketAddr], shards: u8) -> Result<(), String> {
    const PRELOAD_WINDOW: usize = 512;
    let started = Instant::now();
    let value = vec![b'p'; args.value_size];
    let threads: Vec<_> = (0..args.connections)
        .map(|i| {
            let t = target(i, targets, shards);
            let (keys, cluster_id, value) = (args.keys.max(1), args.cluster_id, value.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let keys = load::own_keys(t.index, keys, t.shard, usize::from(shards));
                let mut c = epaxos_fast::client::Connection::connect(
                    t.addr,
                    t.shard,
                    cluster_id,
                    Duration::from_secs(10),
                )
                .map_err(|e| format!("preload: {}: {e}", t.addr))?;
                let mut in_flight = 0;
                let mut done = 0u64;
                for key in &keys {
                    if in_flight == PRELOAD_WINDOW {
                        answered(&mut c, t.addr)?;
                        (in_flight, done) = (in_flight - 1, done + 1);
                    }
                    c.queue(epaxos_fast::command::Op::Put, key, &value)
                        .map_err(|e| format!("preload: {}: {e}", t.addr))?;
                    in_flight += 1;
                }
                for _ in 0..in_flight {
                    answered(&mut c, t.addr)?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut written = 0;
    for t in threads {
        written += t
            .join()
            .map_err(|_| "preload: a thread panicked".to_string())??;
    }
    eprintln!(
        "blaster: preloaded {written} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The next answer of a preload connection, which must be `Done`.
fn answered(c: &mut epaxos_fast::client::Connection, addr: SocketAddr) -> Result<(), String> {
    let r = c.recv().map_err(|e| format!("preload: {addr}: {e}"))?;
    if r.code != epaxos_fast::wire::client::Code::Done {
        return Err(format!("preload: {addr}: a PUT was answered {:?}", r.code));
    }
    Ok(())
}

/// One load phase against `targets` (the local cluster, if any, is handed
/// back, still running): whether it passed, and its row for `--rates`.
fn load(
    args: &Args,
    stop: &Arc<AtomicBool>,
    local: Option<cluster::LocalCluster>,
    targets: &[SocketAddr],
    shards: u8,
) -> Result<(bool, Option<cluster::LocalCluster>, report::Row), String> {
    let workload = Workload {
        cluster_id: args.cluster_id,
        outstanding: args.outstanding,
        rate: args.rate.map(|r| r / args.connections as f64),
        connections: args.connections,
        keys: args.keys,
        conflicts_pct: args.conflicts,
        reads_pct: args.reads,
        value_bytes: args.value_size,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        drain: if args.nemesis.is_some() {
            DRAIN_NEMESIS
        } else {
            DRAIN
        },
        stop: stop.clone(),
        reconnect: args.nemesis.is_some(),
        verify: args.verify,
        history: args.history.is_some(),
        zipf: args.zipf,
    };
    let conns: Vec<Target> = (0..args.connections)
        .map(|i| target(i, targets, shards))
        .collect();
    let start = Instant::now() + Duration::from_millis(100);
    let live: Vec<Arc<Mutex<Tally>>> = (0..args.cores)
        .map(|_| Arc::new(Mutex::new(Tally::new())))
        .collect();
    let mut per_core: Vec<Vec<Target>> = (0..args.cores).map(|_| Vec::new()).collect();
    for (i, t) in conns.into_iter().enumerate() {
        per_core[i % args.cores].push(t);
    }
    let mut handles = Vec::new();
    for (core, targets) in per_core.into_iter().enumerate() {
        let (w, seed, live) = (workload.clone(), args.seed, live[core].clone());
        let h = exec::start(&format!("blaster-{core}"), move || {
            drive(targets, w, seed, start, live)
        })
        .map_err(|e| format!("cannot start executor {core}: {e}"))?;
        handles.push(h);
    }
    // Started last: from here on nothing returns early, so the nemesis
    // always hands the cluster back (and the cluster's drop stops it).
    let (mut local, nemesis) = match (local, args.nemesis) {
        (Some(cluster), Some(NemesisKind::Kill)) => {
            let cfg = nemesis::Config {
                interval: Duration::from_secs_f64(args.nemesis_interval),
                downtime: Duration::from_secs_f64(args.nemesis_downtime),
                seed: args.seed,
                origin: start,
                end: start + workload.warmup + workload.duration,
                stop: stop.clone(),
            };
            eprintln!(
                "blaster: nemesis kill: a replica every {:.1} s on average, down {:.1} s, \
                 at most {} of {} down at once; seed {} (--seed)",
                args.nemesis_interval,
                args.nemesis_downtime,
                (targets.len() - 1) / 2,
                targets.len(),
                args.seed
            );
            (None, Some(nemesis::start(cluster, cfg)))
        }
        (local, _) => (local, None),
    };
    // Replica CPU is measured only while the same processes run throughout.
    let pids: Vec<u32> = match (&local, args.nemesis) {
        (Some(c), None) => (0..targets.len()).map(|r| c.pid(r)).collect(),
        _ => Vec::new(),
    };
    let cpu_from = report::progress(&live, start, &workload, stop, &pids);
    let cpu_to = cpu::sample(&pids);
    // Ctrl-C ends the measured window early: throughput is over what ran.
    let measured = if stop_requested(stop) {
        Instant::now()
            .saturating_duration_since(start + workload.warmup)
            .clamp(Duration::from_millis(1), workload.duration)
    } else {
        workload.duration
    };
    let mut tally = Tally::new();
    let mut failures = Vec::new();
    for h in handles {
        match h.join() {
            Ok((t, errors)) => {
                tally.absorb(t);
                failures.extend(errors);
            }
            Err(_) => failures.push("a load executor thread panicked".into()),
        }
    }
    let mut faults = None;
    if let Some(h) = nemesis {
        // It stopped killing when the measured time ended; it returns once
        // every replica is back.
        match h.join() {
            Ok(o) => {
                failures.extend(o.error.map(|e| format!("nemesis: {e}")));
                faults = Some((o.kills, o.restarts));
                local = Some(o.cluster);
            }
            Err(_) => failures.push("the nemesis thread panicked".into()),
        }
    }
    report::replica_counters(targets, shards, args.cluster_id);
    if !pids.is_empty() {
        let rss: Vec<String> = pids
            .iter()
            .map(|&p| cpu::rss_bytes(p).map_or("?".into(), |b| format!("{:.1}", b as f64 / 1e6)))
            .collect();
        eprintln!("replicas' resident memory (MB): {}", rss.join(" "));
    }
    for f in &failures {
        eprintln!("blaster: {f}");
    }
    let cpu = cpu::per_op(&cpu_from, &cpu_to, tally.ops);
    report::summary(&tally, measured, args, faults, cpu)?;
    let row = report::Row::new(args.rate.unwrap_or(0.0), &tally, measured, cpu);
    if let Some(path) = &args.history {
        let mut text = tally.history.join("\n");
        text.push('\n');
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!(
            "blaster: {} operations written to {}",
            tally.history.len(),
            path.display()
        );
    }
    let verified =
        !args.verify || verify::read_back(targets, args.cluster_id, &tally.checks).passed();
    let ok = verified && failures.is_empty() && tally.errors == 0 && tally.timeouts == 0;
    Ok((ok, local, row))
}

/// All connections of one executor: the tallies of those that finished,
/// merged, and why each other one failed (a failed connection does not
/// take the others' figures with it).
async fn drive(
    targets: Vec<Target>,
    w: Workload,
    seed: u64,
    start: Instant,
    shared: Arc<Mutex<Tally>>,
) -> (Tally, Vec<String>) {
    let live = Rc::new(std::cell::RefCell::new(Tally::new()));
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|t| {
            let seed = seed.wrapping_mul(1_000_003).wrapping_add(t.index as u64);
            exec::spawn(load::run(t, w.clone(), seed, start, live.clone()))
        })
        .collect();
    // Hand the live tally to the progress reporter every 100 ms.
    let publisher = {
        let live = live.clone();
        exec::spawn(async move {
            loop {
                exec::sleep(Duration::from_millis(100)).await;
                let mut l = live.borrow_mut();
                shared.lock().expect("progress lock").add(&l);
                l.clear();
            }
        })
    };
    let mut tally = Tally::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (x, failure) = t.await;
        tally.absorb(x);
        errors.extend(failure);
    }
    drop(publisher);
    (tally, errors)
}

pub fn stop_requested(stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed)
}
