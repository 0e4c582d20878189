//! The thread-per-core runtime: one glommio executor per shard, TCP over
//! glommio's io_uring sockets, timers that drive the core.
//!
//! `--cores C` starts C executors. Shard s owns the keys with
//! `shard_of(key, C) == s` (see `command::shard_of`) and is a complete
//! EPaxos group with shard s of every peer: its own core, its own listener
//! on base port + s, its own links. Shards of one process share nothing but
//! the cross-core channels (glommio's channel mesh, created once at start),
//! which carry commands a client sent to the wrong shard, and their answers.
//!
//! This module never decides anything: it moves frames between sockets and
//! the node (`crate::node`), carries the node's cross-shard messages, gives
//! it the storage the binary opened (`storage::Backend`: the shard's log
//! file, written by `wal` through io_uring off the turn, or `Volatile` with
//! `--in-memory`, which syncs at once), and calls
//! `turn` when input arrived or a deadline passed. The simulator drives the
//! same node.

mod net;
mod notify;
mod shard;
mod sockopt;
mod wal;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{error, info, info_span};

use crate::constants::{BIND_RETRY_MS, STOP_CHECK_MS};
use crate::node::Cross;
use crate::protocol::ReplicaId;
use crate::storage::Backend;
use crate::wire::client::shard_addr;
pub use notify::Notify;
use shard::Shard;
pub use shard::ShardConfig;

/// Everything the binary resolved from its flags.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub replica: ReplicaId,
    /// Advertised base address of every replica, this one's at `replica`.
    pub peers: Vec<SocketAddr>,
    /// Base address to bind (shard s binds port + s).
    pub listen: SocketAddr,
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

/// Cross-core channel depth, per pair of shards.
const CROSS_CHANNEL_DEPTH: usize = 4096;

/// Runs the replica until `stop` is set. Binding errors come back before
/// any shard starts.
pub fn run(
    cfg: RuntimeConfig,
    stop: Arc<AtomicBool>,
    storages: Vec<Backend>,
) -> Result<(), RunError> {
    assert_eq!(storages.len(), cfg.cores, "one storage a shard");
    let cfg = Arc::new(cfg);
    let mut fds = Vec::with_capacity(cfg.cores);
    for s in 0..cfg.cores {
        let addr = shard_addr(cfg.listen, s).expect("ports checked at start-up");
        // std's listener, not glommio's: glommio sets SO_REUSEPORT, with
        // which a second replica on the same port would silently share it.
        let listener =
            bind_retrying(addr).map_err(|e| format!("cannot listen on {addr} (shard {s}): {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener on {addr}: {e}"))?;
        fds.push(listener.into_raw_fd());
    }
    let mesh = MeshBuilder::<Cross, Full>::full(cfg.cores, CROSS_CHANNEL_DEPTH);
    let mut handles = Vec::with_capacity(cfg.cores);
    for (s, (fd, storage)) in fds.into_iter().zip(storages).enumerate() {
        let placement = match &cfg.cpus {
            Some(cpus) => Placement::Fixed(cpus[s]),
            None => Placement::Unbound,
        };
        let shard_cfg = ShardConfig {
            shard: s,
            node: cfg.clone(),
        };
        let (mesh, stop) = (mesh.clone(), stop.clone());
        let mut builder = LocalExecutorBuilder::new(placement);
        if !cfg.spin.is_zero() {
            builder = builder.spin_before_park(cfg.spin);
        }
        let handle = builder
            .name(&format!("shard-{s}"))
            .spawn(move || async move {
                // If this shard ends with an error, the others stop too: a
                // replica with a dead shard must not keep half running. (A
                // panic aborts the whole process: panic = "abort".)
                let _stop_all = StopOnDrop(stop.clone());
                let _span =
                    info_span!("shard", replica = shard_cfg.node.replica.0, shard = s).entered();
                // SAFETY: `fd` is a listening socket this process owns and
                // nothing else uses (into_raw_fd gave up std's ownership).
                let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                run_shard(shard_cfg, listener, mesh, stop, storage).await
            })
            .map_err(|e| format!("cannot start the executor of shard {s}: {e}"))?;
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
            Err(e) => failure = Some(RunError::Failed(format!("shard {s} failed: {e}"))),
        }
    }
    failure.map_or(Ok(()), Err)
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

async fn run_shard(
    cfg: ShardConfig,
    listener: glommio::net::TcpListener,
    mesh: MeshBuilder<Cross, Full>,
    stop: Arc<AtomicBool>,
    storage: Backend,
) -> Result<(), RunError> {
    let s = cfg.shard;
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| "could not join the cross-core channel mesh".to_string())?;
    if senders.peer_id() != s {
        return Err(RunError::Failed(format!(
            "cross-core channel mesh gave shard {s} the index {}",
            senders.peer_id()
        )));
    }
    let seed = seed(cfg.node.replica, s);
    let started = std::time::Instant::now();
    let log_path = match &storage {
        Backend::File(log) => Some(log.path().to_path_buf()),
        Backend::Memory(_) => None,
    };
    let from_file = log_path.is_some();
    let shard = Rc::new(Shard::new(cfg, seed, storage));
    if from_file {
        let (held, keys, highest) = shard.call(|node, _| {
            let core = node.core();
            let highest: Vec<String> = (0..node.config().replicas)
                .map(|r| core.highest_slot_known(ReplicaId(r as u8)).to_string())
                .collect();
            let held = core.instances_in_memory();
            (held, core.state_machine().len(), highest.join(","))
        });
        info!(
            "restored from the log in {:.3} s: {keys} keys, {held} instances held, \
             highest slot per replica {highest}",
            started.elapsed().as_secs_f64()
        );
    }
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    info!(%addr, "listening; {} replicas, {} shards", shard.cfg.replicas(), shard.cfg.shards());
    if let Some(path) = log_path {
        glommio::spawn_local(wal::writer(shard.clone(), path)).detach();
    }
    glommio::spawn_local(net::accept_loop(shard.clone(), listener)).detach();
    for r in 0..shard.cfg.replicas() {
        let peer = ReplicaId(r as u8);
        if peer != shard.cfg.node.replica {
            glommio::spawn_local(net::peer_link(shard.clone(), peer)).detach();
        }
    }
    start_cross(&shard, senders, receivers);
    turns(&shard, &stop).await;
    if let Some(why) = shard.refusal() {
        return Err(RunError::Refused(why));
    }
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

/// One task per other shard sends what the node queued for it; one per
/// other shard hands what it sent to the node.
fn start_cross(shard: &Rc<Shard>, senders: Senders<Cross>, mut receivers: Receivers<Cross>) {
    let senders = Rc::new(senders);
    for to in 0..shard.cfg.shards() {
        if to == shard.cfg.shard {
            continue;
        }
        let (shard, senders) = (shard.clone(), senders.clone());
        glommio::spawn_local(async move {
            let mut spare = Vec::new();
            loop {
                shard.cross_ready[to].wait().await;
                let mut batch = shard.take_cross(to, spare);
                for msg in batch.drain(..) {
                    if senders.send_to(to, msg).await.is_err() {
                        error!("shard {to} closed its channel");
                        return;
                    }
                }
                spare = batch;
            }
        })
        .detach();
    }
    for (_, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                shard.call(|node, _| node.on_cross(msg));
                shard.wake.notify();
                // A busy channel is always ready: let the turn loop and the
                // sockets run too.
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }
}

/// The shard's loop: wait for input or the core's next deadline, let every
/// task with input ready queue it, then run one turn.
async fn turns(shard: &Shard, stop: &AtomicBool) {
    let stop_check = Duration::from_millis(STOP_CHECK_MS);
    loop {
        if stop.load(Ordering::Relaxed) || shard.refusal().is_some() {
            return;
        }
        let now = shard.now();
        let wait = match shard.next_deadline() {
            Some(d) => Duration::from_nanos(d.saturating_sub(now)).min(stop_check),
            None => stop_check,
        };
        if !wait.is_zero() {
            futures_lite::future::or(shard.wake.wait(), glommio::timer::sleep(wait)).await;
        }
        // Readers woken in the same reactor pass run before this turn, so
        // what arrived together is batched together; no fixed delay.
        futures_lite::future::yield_now().await;
        shard.turn();
    }
}
