//! Starts real `epaxos-fast` processes on 127.0.0.1 for integration tests,
//! and stops them when dropped (also when a test panics).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use epaxos_fast::client::Connection;

pub const CLUSTER_ID: u64 = 4242;
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct Cluster {
    pub peers: Vec<SocketAddr>,
    pub cores: u8,
    procs: Vec<Child>,
    extra: Vec<String>,
}

/// Where replica `r` of this cluster listens. Every test process, and every
/// cluster in it, gets a loopback address of its own (127.0.0.0/8 is all
/// loopback on Linux), so clusters of tests running at the same time never
/// compete for ports, even while a replica is down and its ports are free.
fn address(nth: u16, r: usize) -> SocketAddr {
    let pid = std::process::id();
    let ip = [127, (pid >> 8) as u8, pid as u8, 1 + (nth % 250) as u8];
    SocketAddr::from((ip, 7000 + 16 * r as u16))
}

fn free(addr: SocketAddr, cores: u8) -> bool {
    (0..u16::from(cores)).all(|s| TcpListener::bind((addr.ip(), addr.port() + s)).is_ok())
}

impl Cluster {
    pub fn start(replicas: usize, cores: u8) -> Cluster {
        Cluster::start_with(replicas, cores, &[])
    }

    pub fn start_with(replicas: usize, cores: u8, extra: &[&str]) -> Cluster {
        static CLUSTERS: AtomicU16 = AtomicU16::new(0);
        let nth = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let peers: Vec<SocketAddr> = (0..replicas).map(|r| address(nth, r)).collect();
        for p in &peers {
            assert!(free(*p, cores), "{p} is taken");
        }
        let mut cluster = Cluster {
            peers,
            cores,
            procs: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        cluster.procs = (0..replicas).map(|id| cluster.spawn(id)).collect();
        cluster.wait_ready();
        cluster
    }

    fn spawn(&self, id: usize) -> Child {
        let list: Vec<String> = self.peers.iter().map(|p| p.to_string()).collect();
        Command::new(env!("CARGO_BIN_EXE_epaxos-fast"))
            .args(["--id", &id.to_string(), "--peers", &list.join(",")])
            .args(["--cores", &self.cores.to_string(), "--cpus", "none"])
            .args([
                "--cluster-id",
                &CLUSTER_ID.to_string(),
                "--log-level",
                "warn",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start epaxos-fast")
    }

    /// Kills replica `id` outright (SIGKILL) and starts it again.
    pub fn kill_and_restart(&mut self, id: usize) {
        self.procs[id].kill().expect("kill");
        self.procs[id].wait().expect("reap");
        self.procs[id] = self.spawn(id);
        self.wait_ready();
    }

    /// SIGTERM to every replica; how each exited (bounded wait).
    pub fn terminate(&mut self) -> Vec<Option<std::process::ExitStatus>> {
        for p in &mut self.procs {
            let _ = Command::new("kill")
                .arg(p.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        self.procs
            .iter_mut()
            .map(|p| {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    if let Ok(Some(status)) = p.try_wait() {
                        return Some(status);
                    }
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .collect()
    }

    /// The process id of replica `r`.
    pub fn pid(&self, r: usize) -> u32 {
        self.procs[r].id()
    }

    pub fn connect(&self, replica: usize, shard: u8) -> Connection {
        Connection::connect(self.peers[replica], shard, CLUSTER_ID, TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to replica {replica} shard {shard}: {e}"))
    }

    /// Every shard answers, with every peer link up.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + TIMEOUT;
        for r in 0..self.peers.len() {
            for s in 0..self.cores {
                loop {
                    let ready = Connection::connect(self.peers[r], s, CLUSTER_ID, TIMEOUT)
                        .and_then(|mut c| c.admin())
                        .map(|info| usize::from(info.peers_connected) + 1 == self.peers.len());
                    if let Ok(true) = ready {
                        break;
                    }
                    assert!(Instant::now() < deadline, "replica {r} shard {s} not ready");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Digest of every shard of every replica: `[replica][shard]`.
    pub fn digests(&self) -> Vec<Vec<(u64, u64)>> {
        (0..self.peers.len())
            .map(|r| {
                (0..self.cores)
                    .map(|s| {
                        let info = self.connect(r, s).admin().expect("admin");
                        (info.digest.get(), info.keys.get())
                    })
                    .collect()
            })
            .collect()
    }

    /// Waits (bounded) until every replica reports the same digests.
    pub fn converged_digests(&self) -> Vec<(u64, u64)> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let d = self.digests();
            if d.iter().all(|x| *x == d[0]) {
                return d[0].clone();
            }
            assert!(Instant::now() < deadline, "digests never agreed: {d:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether every process is still running.
    pub fn all_alive(&mut self) -> bool {
        self.procs
            .iter_mut()
            .all(|p| matches!(p.try_wait(), Ok(None)))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            // SIGTERM first: the replica should stop cleanly on it.
            let _ = Command::new("kill")
                .arg(p.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        for p in &mut self.procs {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(p.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}
