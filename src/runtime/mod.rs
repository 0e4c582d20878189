//! The thread-per-core runtime: one thread per shard, pinned, each with its
//! own io_uring (`uring`), which carries its sockets, its log file and its
//! wake-ups; no async executor.
//!
//! `--cores C` starts C shard threads. Shard s owns the keys with
//! `shard_of(key, C) == s` (see `command::shard_of`) and is a complete
//! EPaxos group with shard s of every peer: its own node, its own listener
//! on base port + s, its own links. Shards of one process share nothing but
//! the cross-core mesh (`mesh`: lock-free queues and an eventfd per shard),
//! which carries commands a client sent to the wrong shard, and their
//! answers.
//!
//! This module never decides anything: its loop (`shard`) moves frames
//! between sockets and the node (`crate::node`), carries the node's
//! cross-shard messages, gives it the storage the binary opened
//! (`storage::Backend`: the shard's log file, written by `log_writer` on the
//! same ring beside the turns, or `Volatile` with `--in-memory`, which syncs
//! at once), and runs a turn when input arrived or a deadline passed. The
//! simulator drives the same node.

mod auth;
mod log_writer;
mod mesh;
pub mod metrics;
mod shard;
mod sockopt;
pub mod uring;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, info_span};

use crate::constants::BIND_RETRY_MS;
use crate::protocol::ReplicaId;
use crate::storage::Backend;
use crate::wire::client::shard_addr;
use mesh::Mesh;
pub use shard::ShardConfig;
use shard::ShardLoop;

/// Everything the binary resolved from its flags.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub replica: ReplicaId,
    /// Advertised base address of every replica, this one's at `replica`.
    pub peers: Vec<SocketAddr>,
    /// The `--peers` entries as given, normalised (what the configuration
    /// digest covers: `node::Topology`).
    pub peer_names: Vec<String>,
    /// This process's incarnation: random, drawn at start.
    pub incarnation: u64,
    /// Base address to bind (shard s binds port + s).
    pub listen: SocketAddr,
    /// Base address of the RESP listeners (`--resp`; shard s on port + s).
    pub resp: Option<SocketAddr>,
    pub cores: usize,
    /// CPU of each shard's executor; `None` leaves placement to the kernel.
    pub cpus: Option<Vec<usize>>,
    pub cluster_id: u64,
    pub thrifty: bool,
    pub batch_max: usize,
    /// Most uncommitted instances a shard leads at once.
    pub pipeline: usize,
    /// How long an idle executor polls before it sleeps.
    pub spin: Duration,
    /// Test only: acknowledge each shard's Nth PUT (from 1) without
    /// proposing it, so that tests can show a lost write is caught. 0: off.
    pub test_lose_write: u64,
    /// Client sessions idle this long are expired (nanoseconds).
    pub session_idle_ns: u64,
    /// Most client sessions a shard keeps.
    pub sessions_max: usize,
    /// Client connections each shard serves at once (`--max-clients`).
    pub max_clients: usize,
    /// Seconds a client may send nothing before it is closed; 0: never.
    pub client_idle_timeout_s: u64,
    /// How long a frame may take to arrive once its first bytes did
    /// (`FRAME_DEADLINE_MS`; tests shorten it).
    pub frame_deadline_ms: u64,
    /// Where the metrics endpoint listens (`--metrics`); `None`: off.
    pub metrics: Option<SocketAddr>,
    /// `--cluster-secret-file`: what peers prove in their handshake.
    pub cluster_secret: Option<crate::secret::Secret>,
    /// `--requirepass-file`: what clients send before any command.
    pub password: Option<crate::secret::Secret>,
}

/// Why the replica stopped, other than by a signal.
#[derive(Debug)]
pub enum RunError {
    /// A shard refused to take part (`Node::peer_knows`): the binary exits
    /// with status 2, as for other refusals at start.
    Refused(String),
    Failed(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Refused(why) | RunError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<String> for RunError {
    fn from(why: String) -> RunError {
        RunError::Failed(why)
    }
}

/// Runs the replica until `stop` is set. Binding errors come back before
/// any shard starts.
pub fn run(
    cfg: RuntimeConfig,
    stop: Arc<AtomicBool>,
    storages: Vec<Backend>,
) -> Result<(), RunError> {
    assert_eq!(storages.len(), cfg.cores, "one storage a shard");
    let cfg = Arc::new(cfg);
    let mut listeners = Vec::with_capacity(cfg.cores);
    for s in 0..cfg.cores {
        let addr = shard_addr(cfg.listen, s).expect("ports checked at start-up");
        // Bound here, without SO_REUSEPORT: with it, a second replica on
        // the same port would silently share it.
        let listener =
            bind_retrying(addr).map_err(|e| format!("cannot listen on {addr} (shard {s}): {e}"))?;
        let resp = match cfg.resp {
            Some(base) => {
                let addr = shard_addr(base, s).expect("ports checked at start-up");
                let l = bind_retrying(addr).map_err(|e| {
                    format!("cannot listen for RESP on {addr} (shard {s}, --resp): {e}")
                })?;
                Some(l)
            }
            None => None,
        };
        listeners.push((listener, resp));
    }
    let mesh =
        Arc::new(Mesh::new(cfg.cores).map_err(|e| format!("cannot create an eventfd: {e}"))?);
    let metrics = match cfg.metrics {
        Some(addr) => Some(start_metrics(&cfg, addr)?),
        None => None,
    };
    let mut handles = Vec::with_capacity(cfg.cores);
    for (s, (listener, storage)) in listeners.into_iter().zip(storages).enumerate() {
        let shard_cfg = ShardConfig {
            shard: s,
            node: cfg.clone(),
            metrics: metrics.clone(),
        };
        let (mesh, stop) = (mesh.clone(), stop.clone());
        let cpu = cfg.cpus.as_ref().map(|c| c[s]);
        let handle = std::thread::Builder::new()
            .name(format!("shard-{s}"))
            .spawn(move || {
                // If this shard ends with an error, the others stop too: a
                // replica with a dead shard must not keep half running. (A
                // panic aborts the whole process: panic = "abort".)
                let _stop_all = StopOnDrop(stop.clone());
                let _span =
                    info_span!("shard", replica = shard_cfg.node.replica.0, shard = s).entered();
                if let Some(cpu) = cpu {
                    pin(cpu)
                        .map_err(|e| RunError::Failed(format!("cannot pin to CPU {cpu}: {e}")))?;
                }
                run_shard(shard_cfg, listener, mesh, stop, storage)
            })
            .map_err(|e| format!("cannot start the thread of shard {s}: {e}"))?;
        handles.push(handle);
    }
    let mut failure = None;
    for (s, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(RunError::Refused(why))) => {
                failure = Some(RunError::Refused(format!("shard {s}: {why}")))
            }
            Ok(Err(e)) if !matches!(failure, Some(RunError::Refused(_))) => {
                failure = Some(RunError::Failed(format!("shard {s}: {e}")))
            }
            Ok(Err(_)) => {}
            Err(_) => failure = Some(RunError::Failed(format!("shard {s} panicked"))),
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Binds the metrics endpoint and starts its threads (`metrics::serve`).
fn start_metrics(cfg: &RuntimeConfig, addr: SocketAddr) -> Result<Arc<metrics::Metrics>, String> {
    let cannot = |e: std::io::Error| format!("cannot serve metrics on {addr} (--metrics): {e}");
    let listener = bind_retrying(addr).map_err(cannot)?;
    let m = metrics::Metrics::new(cfg.replica.0, cfg.peers.len(), cfg.cores);
    metrics::serve(listener, m.clone()).map_err(cannot)?;
    Ok(m)
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it (the
    // binary checks --cpus against the machine's CPUs).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the stop flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Binds `addr`, retrying for a while if it is in use: right after a
/// replica dies, the kernel may hold its listening socket a little longer
/// (io_uring tears a ring down asynchronously), and a restart should not
/// fail on that.
fn bind_retrying(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + Duration::from_millis(BIND_RETRY_MS);
    let mut warned = false;
    loop {
        match std::net::TcpListener::bind(addr) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                if !warned {
                    tracing::warn!(%addr, "address in use; retrying for {BIND_RETRY_MS} ms");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn run_shard(
    cfg: ShardConfig,
    listener: (std::net::TcpListener, Option<std::net::TcpListener>),
    mesh: Arc<Mesh>,
    stop: Arc<AtomicBool>,
    storage: Backend,
) -> Result<(), RunError> {
    let s = cfg.shard;
    let seed = seed(cfg.node.replica, s);
    let started = std::time::Instant::now();
    let from_file = matches!(storage, Backend::File(_));
    let replicas = cfg.replicas();
    let shards = cfg.shards();
    let shard = ShardLoop::new(cfg, seed, storage, listener, mesh, stop)?;
    if from_file {
        let node = shard.node();
        let core = node.core();
        let highest: Vec<String> = (0..replicas)
            .map(|r| core.highest_slot_known(ReplicaId(r as u8)).to_string())
            .collect();
        info!(
            "restored from the log in {:.3} s: {} keys, {} instances held, \
             highest slot per replica {}",
            started.elapsed().as_secs_f64(),
            core.state_machine().len(),
            core.instances_in_memory(),
            highest.join(",")
        );
    }
    info!(addr = %shard.local_addr(), "listening; {replicas} replicas, {shards} shards");
    shard.run()?;
    info!("stopped");
    Ok(())
}

/// The core's random seed (recovery back-off only): different per process
/// and shard, so recoverers of one instance do not stay in step.
fn seed(replica: ReplicaId, shard: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32) ^ (u64::from(replica.0) << 8) ^ shard as u64
}
