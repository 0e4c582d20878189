//! `--local-cluster N`: N `epaxos-fast` processes on free loopback ports,
//! stopped when the run ends, fails, or is interrupted (the guard's `Drop`).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use epaxos_fast::client::Connection;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct LocalCluster {
    pub peers: Vec<SocketAddr>,
    procs: Vec<Child>,
}

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

/// Base addresses with `cores` free ports each. Each blaster process takes a
/// loopback address of its own (127.0.0.0/8 is all loopback on Linux), so
/// local clusters of runs going on at the same time never meet.
fn free_bases(n: usize, cores: u16) -> Result<Vec<SocketAddr>, String> {
    let pid = std::process::id();
    let ip = std::net::Ipv4Addr::new(127, (pid >> 8) as u8, pid as u8, 200);
    let mut bases = Vec::new();
    let mut port = 7000u16;
    while bases.len() < n {
        if (0..cores).all(|s| TcpListener::bind((ip, port + s)).is_ok()) {
            bases.push(SocketAddr::from((ip, port)));
        }
        port += cores.max(1) + 2;
        if port > 32_000 {
            return Err(format!("no free ports on {ip} below 32000"));
        }
    }
    Ok(bases)
}

impl LocalCluster {
    pub fn start(n: usize, args: &crate::Args) -> Result<LocalCluster, String> {
        let (cores, cluster_id) = (args.replica_cores, args.cluster_id);
        let binary = replica_binary()?;
        let peers = free_bases(n, cores)?;
        let list: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        let mut cluster = LocalCluster {
            peers,
            procs: Vec::new(),
        };
        for id in 0..n {
            let mut cmd = Command::new(&binary);
            cmd.args(["--id", &id.to_string(), "--peers", &list.join(",")])
                .args(["--cores", &cores.to_string(), "--cpus", "none"])
                .args([
                    "--cluster-id",
                    &cluster_id.to_string(),
                    "--log-level",
                    "warn",
                ])
                .stdout(Stdio::null());
            if args.thrifty {
                cmd.arg("--thrifty");
            }
            cmd.args(&args.replica_arg);
            let child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
            cluster.procs.push(child);
        }
        eprintln!("blaster: started {n} local replicas at {}", list.join(","));
        cluster.wait_ready(cores, cluster_id)?;
        Ok(cluster)
    }

    fn wait_ready(&mut self, cores: u16, cluster_id: u64) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for (r, &addr) in self.peers.iter().enumerate() {
            for s in 0..cores {
                loop {
                    let info =
                        Connection::connect(addr, s as u8, cluster_id, Duration::from_secs(2))
                            .and_then(|mut c| c.admin());
                    if matches!(&info, Ok(i) if usize::from(i.peers_connected) + 1 == self.peers.len())
                    {
                        break;
                    }
                    if let Some(Ok(Some(status))) = self.procs.get_mut(r).map(|p| p.try_wait()) {
                        return Err(format!("replica {r} exited at start-up: {status}"));
                    }
                    if Instant::now() > deadline {
                        return Err(format!(
                            "replica {r} shard {s} not ready after {READY_TIMEOUT:?}"
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL for any replica still running after 5 s.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        for p in &self.procs {
            let _ = Command::new("kill")
                .arg(p.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &mut self.procs {
            while matches!(p.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
        self.procs.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// How many shards the replica at `addr` runs.
pub fn shards_of(addr: SocketAddr, cluster_id: u64) -> Result<u8, String> {
    let c = Connection::connect(addr, 0, cluster_id, Duration::from_secs(5))
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok(c.server.shards)
}
