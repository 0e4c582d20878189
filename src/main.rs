//! `epaxos-fast`: one replica of the cluster. Flags are checked first (a bad
//! value is one line on stderr and exit status 2), then resolved into a
//! `RuntimeConfig`; the runtime runs until SIGINT or SIGTERM.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use epaxos_fast::constants::{
    BATCH_COMMANDS_MAX, CLIENTS_PER_SHARD_DEFAULT, FRAME_DEADLINE_MS, REPLICAS_MAX,
    SESSIONS_MAX_DEFAULT, SESSION_IDLE_NS_DEFAULT,
};
use epaxos_fast::protocol::ReplicaId;
use epaxos_fast::runtime::{self, RuntimeConfig};
use epaxos_fast::secret::{Secret, SecretKind};
use epaxos_fast::storage::{Backend, Volatile};
use epaxos_fast::wire::client::shard_addr;

mod data_dir;
mod peers;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A replica of the epaxos-fast key-value store (EPaxos, thread-per-core)"
)]
struct Args {
    /// This replica's index in --peers (0-based).
    #[arg(long)]
    id: u8,
    /// Every replica's address, HOST:PORT, comma-separated, the same list in
    /// the same order on every replica (1, 3, 5, 7 or 9 of them), written the
    /// same way (a peer whose list differs is refused). Shard s of a replica
    /// uses PORT + s; ranges must not overlap. A single address runs one
    /// unreplicated replica.
    #[arg(long, value_delimiter = ',', required = true)]
    peers: Vec<String>,
    /// Shards, one thread and io_uring ring each; must be the same on every replica.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    cores: u16,
    /// Address to bind, if not this replica's own entry in --peers
    /// (e.g. 0.0.0.0:7000 behind NAT).
    #[arg(long)]
    listen: Option<String>,
    /// Serve the Redis protocol (RESP2 and RESP3) on HOST:PORT, shard s on
    /// PORT + s, for redis-cli, redis-benchmark and Redis client libraries
    /// (GET, SET [NX|XX], DEL, EXISTS, INCR[BY], DECR[BY], MGET, MSET, ...;
    /// see the README). Off when absent. The ports must not meet --listen's.
    #[arg(long, value_name = "HOST:PORT")]
    resp: Option<String>,
    /// CPUs to pin shard executors to: "auto" (shard s on CPU s), "none"
    /// (let the kernel place them; use this when several replicas share a
    /// host), or a comma-separated list with one CPU per shard.
    #[arg(long, default_value = "auto")]
    cpus: String,
    /// Cluster id; every frame carries it and a mismatch is refused, so two
    /// clusters on one network cannot mix.
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// Send PreAccepts to a fast quorum only instead of to every peer.
    #[arg(long)]
    thrifty: bool,
    /// Most client commands in one instance (one batch).
    #[arg(long, default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=BATCH_COMMANDS_MAX as i64))]
    batch_max: u32,
    /// Instances a shard leads that may be uncommitted before a partial
    /// batch waits: commands arriving meanwhile join it, so batches grow
    /// with load instead of instances multiplying. A full batch (--batch-max)
    /// never waits, and a command arriving when fewer are in flight leaves
    /// at once.
    /// The default is high enough to never hold a batch in the runs
    /// measured (see perf/RESULTS.md, Part 2, for a lower limit tried).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pipeline: u32,
    /// Microseconds an idle shard polls its ring for work before it sleeps
    /// in the kernel: saves a sleep and a wake-up per message under load, at
    /// the price of CPU. 0 never polls (best when replicas share few cores).
    /// Needs pinned shards (not --cpus none): a spinning shard the kernel
    /// moves around competes with whatever else runs on its CPU.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    spin_us: u32,
    /// Where this replica keeps its state: DIR/shard-S.log (each shard's
    /// log), DIR/meta (the cluster, replica and shape the data belongs to),
    /// DIR/lock. kill -9 and a restart with the same flags and directory
    /// lose nothing acknowledged. [default: epaxos-data/replica-<ID>, in the
    /// working directory]
    #[arg(long, value_name = "DIR", conflicts_with = "in_memory")]
    data_dir: Option<PathBuf>,
    /// Keep state in memory only (no data directory): a restarted replica
    /// comes back empty and must not rejoin under the same id. For
    /// benchmarks and throwaway clusters.
    #[arg(long)]
    in_memory: bool,
    /// Seconds a client session may go without a command before it is
    /// expired (its exactly-once state dropped, at every replica at the
    /// same point of the order). A client that comes back later is told
    /// its session expired and starts a new one; requests it still had
    /// outstanding then have an unknown outcome.
    #[arg(long, default_value_t = SESSION_IDLE_NS_DEFAULT / 1_000_000_000,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    session_idle_s: u64,
    /// Most client sessions each shard keeps; past it the least recently
    /// used are expired first. Each costs about 200 bytes on every replica.
    #[arg(long, default_value_t = SESSIONS_MAX_DEFAULT as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    sessions_max: u64,
    /// Client connections each shard serves at once; the next client's
    /// hello is refused with a message naming this limit (peer links do not
    /// count). Bounds what idle or hostile clients can hold: descriptors,
    /// and their buffers.
    #[arg(long, default_value_t = CLIENTS_PER_SHARD_DEFAULT as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_clients: u32,
    /// Close a client connection that sent nothing for this many seconds
    /// (0: never). Off by default: pooled client connections may rightly
    /// sit idle for long, keepalive already closes those whose host
    /// vanished, and --max-clients bounds how many can be held.
    #[arg(long, default_value_t = 0)]
    client_idle_timeout_s: u64,
    /// TEST ONLY: milliseconds a frame may take to arrive once its first
    /// bytes did (a connection that sits inside a frame longer is closed).
    #[arg(long, default_value_t = FRAME_DEADLINE_MS, hide = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    test_frame_deadline_ms: u64,
    /// TEST ONLY: acknowledge each shard's Nth PUT without applying it (a
    /// deliberately lost write, to show that `blaster --verify` finds it).
    #[arg(long, default_value_t = 0, hide = true)]
    test_lose_write: u64,
    /// Serve Prometheus metrics and a health check over HTTP on HOST:PORT,
    /// one listener for the whole process: GET /metrics (text format) and
    /// GET /health (200 "ok" when every shard has a quorum of peer links
    /// and takes writes, else 503 naming the shard and why). Off when absent.
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<String>,
    /// A file holding the cluster secret (at least 16 bytes, one trailing
    /// newline cut, not readable by all: chmod 600). Peers prove they know
    /// it in their handshake (HMAC-SHA-256 both ways, fresh nonces); a peer
    /// that does not is refused. Every replica needs the same file, or
    /// none. Authenticates only: traffic is not encrypted.
    #[arg(long, value_name = "FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// A file holding the password clients must send before any command
    /// (same format). It crosses the network in clear text: use a private
    /// network or a tunnel.
    #[arg(long, value_name = "FILE")]
    requirepass_file: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace (the last one given wins).
    #[arg(long, default_value = "info", overrides_with = "log_level")]
    log_level: tracing::Level,
}

fn usage_error(msg: String) -> ! {
    Args::command()
        .error(ErrorKind::ValueValidation, msg)
        .exit()
}

fn resolve(addr: &str, what: &str) -> SocketAddr {
    match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) => usage_error(format!("{what} {addr:?} resolves to no address")),
        Err(e) => usage_error(format!("{what} {addr:?}: {e} (want HOST:PORT)")),
    }
}

fn config(args: &Args) -> RuntimeConfig {
    let n = args.peers.len();
    if n > REPLICAS_MAX || n % 2 == 0 {
        usage_error(format!(
            "--peers lists {n} replicas; a cluster has 1, 3, 5, 7 or 9"
        ));
    }
    if usize::from(args.id) >= n {
        usage_error(format!(
            "--id {} is not an index of --peers (0..{n})",
            args.id
        ));
    }
    let peers: Vec<SocketAddr> = args
        .peers
        .iter()
        .map(|p| resolve(p, "--peers entry"))
        .collect();
    let cores = usize::from(args.cores);
    // Shard s uses port + s: every replica's ports, and the listening ones.
    let ports_exist = |a: &SocketAddr| a.port() != 0 && shard_addr(*a, cores - 1).is_some();
    for (i, p) in peers.iter().enumerate() {
        if !ports_exist(p) {
            usage_error(format!(
                "replica {i} at {p}: ports {}..{} do not all exist",
                p.port(),
                usize::from(p.port()) + cores
            ));
        }
    }
    let listen = match &args.listen {
        Some(l) => resolve(l, "--listen"),
        None => peers[usize::from(args.id)],
    };
    if !ports_exist(&listen) {
        usage_error(format!(
            "--listen {listen}: ports {}..{} do not all exist",
            listen.port(),
            usize::from(listen.port()) + cores
        ));
    }
    let peer_names: Vec<String> = args.peers.iter().map(|p| peers::normalise(p)).collect();
    if let Err(e) = peers::check(&peer_names, &peers, usize::from(args.id), listen, cores) {
        usage_error(e);
    }
    let resp = args.resp.as_ref().map(|r| resolve(r, "--resp"));
    if let Some(resp) = resp {
        if !ports_exist(&resp) {
            usage_error(format!(
                "--resp {resp}: ports {}..{} do not all exist",
                resp.port(),
                usize::from(resp.port()) + cores
            ));
        }
        let id = usize::from(args.id);
        if let Err(e) = peers::check_resp(&peer_names, &peers, id, listen, resp, cores) {
            usage_error(e);
        }
    }
    let metrics = args.metrics.as_deref().map(|m| resolve(m, "--metrics"));
    if let Some(m) = metrics {
        let shard_port =
            (listen.port()..=listen.port().saturating_add(cores as u16 - 1)).contains(&m.port());
        if shard_port
            && (m.ip() == listen.ip() || m.ip().is_unspecified() || listen.ip().is_unspecified())
        {
            usage_error(format!(
                "--metrics {m} takes a port of the shards' listeners ({}..{})",
                listen.port(),
                usize::from(listen.port()) + cores
            ));
        }
        let resp_port = resp.is_some_and(|r| {
            (r.port()..=r.port().saturating_add(cores as u16 - 1)).contains(&m.port())
                && (m.ip() == r.ip() || m.ip().is_unspecified() || r.ip().is_unspecified())
        });
        if resp_port {
            usage_error(format!(
                "--metrics {m} takes a port of the RESP listeners (--resp)"
            ));
        }
    }
    let cpus = cpus(&args.cpus, cores);
    if args.spin_us > 0 && cpus.is_none() {
        usage_error(
            "--spin-us needs pinned shards (--cpus auto or a list): an unpinned shard that \
             spins competes with whatever shares its CPU"
                .into(),
        );
    }
    RuntimeConfig {
        replica: ReplicaId(args.id),
        peers,
        peer_names,
        incarnation: peers::incarnation(),
        listen,
        resp,
        cores,
        cpus,
        cluster_id: args.cluster_id,
        thrifty: args.thrifty,
        batch_max: args.batch_max as usize,
        pipeline: args.pipeline as usize,
        spin: std::time::Duration::from_micros(u64::from(args.spin_us)),
        test_lose_write: args.test_lose_write,
        session_idle_ns: args.session_idle_s * 1_000_000_000,
        sessions_max: args.sessions_max as usize,
        max_clients: args.max_clients as usize,
        client_idle_timeout_s: args.client_idle_timeout_s,
        frame_deadline_ms: args.test_frame_deadline_ms,
        metrics,
        cluster_secret: None,
        password: None,
    }
}

/// Reads the secret files named by the flags into `cfg`, once, at start.
fn read_secrets(args: &Args, cfg: &mut RuntimeConfig) -> Result<(), String> {
    if let Some(path) = &args.cluster_secret_file {
        let secret = Secret::read_file(path, SecretKind::Cluster)
            .map_err(|e| format!("--cluster-secret-file: {e}"))?;
        cfg.cluster_secret = Some(secret);
    }
    if let Some(path) = &args.requirepass_file {
        let secret = Secret::read_file(path, SecretKind::Password)
            .map_err(|e| format!("--requirepass-file: {e}"))?;
        cfg.password = Some(secret);
    }
    Ok(())
}

fn cpus(spec: &str, cores: usize) -> Option<Vec<usize>> {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    match spec {
        "none" => None,
        "auto" => {
            if cores > online {
                usage_error(format!(
                    "--cores {cores} with --cpus auto needs {cores} CPUs, this host has {online} \
                     (use --cpus none to share them)"
                ));
            }
            Some((0..cores).collect())
        }
        list => {
            let cpus: Vec<usize> = list
                .split(',')
                .map(|c| {
                    c.trim().parse().unwrap_or_else(|_| {
                        usage_error(format!("--cpus: {c:?} is not a CPU number"))
                    })
                })
                .collect();
            if cpus.len() != cores {
                usage_error(format!(
                    "--cpus lists {} CPUs for {cores} shards",
                    cpus.len()
                ));
            }
            Some(cpus)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut cfg = config(&args);
    if let Err(e) = read_secrets(&args, &mut cfg) {
        eprintln!("epaxos-fast: {e}");
        return ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let stop = Arc::new(AtomicBool::new(false));
    // The first SIGINT or SIGTERM starts a graceful stop (the shards answer
    // what they received, then exit 0); a second one exits at once, status 1.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let registered = signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone())
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()));
        if let Err(e) = registered {
            eprintln!("epaxos-fast: cannot handle signal {signal}: {e}");
            return ExitCode::from(1);
        }
    }
    let storages = if args.in_memory {
        tracing::warn!(
            replica = args.id,
            "--in-memory: state is in memory only; a restart loses this replica's state"
        );
        (0..cfg.cores)
            .map(|_| Backend::Memory(Volatile::default()))
            .collect()
    } else {
        let dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("epaxos-data").join(format!("replica-{}", args.id)));
        match data_dir::open(&dir, &cfg) {
            Ok(logs) => {
                tracing::info!(replica = args.id, "data directory {}", dir.display());
                logs
            }
            Err(e) => {
                eprintln!("epaxos-fast: data directory {}: {e}", dir.display());
                return ExitCode::from(2);
            }
        }
    };
    tracing::info!(
        replica = args.id,
        "starting: {} replicas, {} shards, listening on {}; peers {}, clients {}",
        cfg.peers.len(),
        cfg.cores,
        cfg.listen,
        if cfg.cluster_secret.is_some() {
            "prove the cluster secret"
        } else {
            "unauthenticated"
        },
        if cfg.password.is_some() {
            "need the password"
        } else {
            "unauthenticated"
        }
    );
    match runtime::run(cfg, stop, storages) {
        Ok(()) => {
            tracing::info!(replica = args.id, "stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(runtime::RunError::Refused(why)) => {
            eprintln!("epaxos-fast: {why}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("epaxos-fast: error: {e}");
            ExitCode::from(1)
        }
    }
}
