//! `--local-cluster N`: the library's local cluster (`epaxos_fast::harness`)
//! of this build's replica binary, stopped when the run ends, fails, or is
//! interrupted (the cluster's `Drop`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use epaxos_fast::client::{ClientError, Connection};
use epaxos_fast::harness::ClusterConfig;
pub use epaxos_fast::harness::LocalCluster;
use epaxos_fast::secret::{Secret, SecretKind};

/// `--password-file`'s password, read once at start (`read_password`).
static PASSWORD: OnceLock<Option<Secret>> = OnceLock::new();

/// Reads `--password-file` (if given) for every connection of the run.
pub fn read_password(path: Option<&Path>) -> Result<(), String> {
    let password = path
        .map(|p| Secret::read_file(p, SecretKind::Password))
        .transpose()?;
    PASSWORD
        .set(password)
        .map_err(|_| "the password was read twice".to_string())
}

/// The password every connection sends, if any.
pub fn password() -> Option<Secret> {
    PASSWORD.get().cloned().flatten()
}

/// A blocking connection with the run's password: what blaster's set-up,
/// preload, counters and verification use.
pub fn connect(
    addr: SocketAddr,
    shard: u8,
    cluster_id: u64,
    timeout: Duration,
) -> Result<Connection, ClientError> {
    Connection::connect_with_password(addr, shard, cluster_id, timeout, password().as_ref())
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The replica binary: beside this executable, else built by cargo.
fn replica_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let beside = me.with_file_name("epaxos-fast");
    if beside.exists() {
        return Ok(beside);
    }
    eprintln!("blaster: {} not found; building it", beside.display());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--bin",
            "epaxos-fast",
            "--manifest-path",
        ])
        .arg(format!("{root}/Cargo.toml"))
        .status()
        .map_err(|e| format!("cannot run cargo to build epaxos-fast: {e}"))?;
    let built = PathBuf::from(root).join("target/release/epaxos-fast");
    if status.success() && built.exists() {
        Ok(built)
    } else {
        Err("could not build epaxos-fast".into())
    }
}

/// Starts `n` local replicas as the flags say and waits until they are ready.
pub fn start(n: usize, args: &crate::Args) -> Result<LocalCluster, String> {
    let mut extra_args: Vec<String> = Vec::new();
    if args.thrifty {
        extra_args.push("--thrifty".into());
    }
    extra_args.extend(args.replica_arg.iter().cloned());
    let cluster = LocalCluster::start(ClusterConfig {
        binary: replica_binary()?,
        replicas: n,
        cores: args.replica_cores,
        cluster_id: args.cluster_id,
        extra_args,
        ready_timeout: READY_TIMEOUT,
        data_root: (!args.in_memory).then(|| {
            let root = std::env::temp_dir().join(format!("blaster-{}-data", std::process::id()));
            // Fresh: a run killed before its clean-up may have left one.
            let _ = std::fs::remove_dir_all(&root);
            root
        }),
        remove_data: true,
        resp: false,
        metrics: args.scrape_metrics.is_some(),
        password: password(),
        stderr_dir: None,
    })?;
    let list: Vec<String> = cluster.peers.iter().map(|p| p.to_string()).collect();
    eprintln!("blaster: started {n} local replicas at {}", list.join(","));
    Ok(cluster)
}

/// How many shards the replica at `addr` runs.
pub fn shards_of(addr: SocketAddr, cluster_id: u64) -> Result<u8, String> {
    let c =
        connect(addr, 0, cluster_id, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
    Ok(c.server.shards)
}
