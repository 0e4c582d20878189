//! A local cluster of real `epaxos-fast` processes on loopback, for the
//! integration tests and blaster's `--local-cluster N`.
//!
//! It starts N replicas on free ports, waits until every shard of every
//! replica reports all its peer links up (through the admin frame), can
//! kill one outright and start it again (at once, or later: `kill`, then
//! `restart`), and stops them all when dropped (also when a test panics):
//! SIGTERM, then SIGKILL for any still running after `STOP_GRACE`.
//!
//! Every replica is told where its state lives: `--data-dir` under
//! `data_root`, or else `--in-memory` where the binary has that flag (so
//! the harness means the same thing whichever the binary's default is).
//!
//! It is a tool for tests and load runs, never part of a replica: the
//! replica binary and its flags come from the caller, and it signals only
//! processes it started and has not reaped (a reaped pid may be anyone's).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crate::client::{ClientError, Connection};

/// How long a stopped replica has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Bound of each connect while waiting for a replica to come up.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READY_POLL: Duration = Duration::from_millis(20);
/// Ports tried for base addresses: from the first, a stride apart.
const PORT_FIRST: u16 = 7000;
const PORT_LAST: u16 = 32_000;
const PORT_STRIDE_MIN: u16 = 16;
/// With `ClusterConfig::resp`, replica r serves RESP from its base port
/// plus this (so at most this many cores).
const RESP_PORT_OFFSET: u16 = PORT_STRIDE_MIN / 2;

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The replica binary (tests: `env!("CARGO_BIN_EXE_epaxos-fast")`).
    pub binary: PathBuf,
    pub replicas: usize,
    /// Shards per replica.
    pub cores: u8,
    pub cluster_id: u64,
    /// Flags every replica gets after the harness's own.
    pub extra_args: Vec<String>,
    /// How long a start or a restart waits for every peer link.
    pub ready_timeout: Duration,
    /// Replica r keeps its log in `data_root/replica-r` (`--data-dir`);
    /// `None`: in memory only (`--in-memory`).
    pub data_root: Option<PathBuf>,
    /// Remove `data_root` when the cluster is dropped (a scratch directory).
    pub remove_data: bool,
    /// Serve RESP too (`--resp`), at `LocalCluster::resp_addr`.
    pub resp: bool,
    /// Give every replica a metrics endpoint (`--metrics`) on a free port
    /// of the cluster's address: `LocalCluster::metrics_addr`.
    pub metrics: bool,
    /// The password `connect` sends (the replicas run with
    /// `--requirepass-file` among `extra_args`).
    pub password: Option<crate::secret::Secret>,
    /// Replica r's stderr is appended to `stderr_dir/replica-r.log`
    /// (restarts included) instead of going to this process's.
    pub stderr_dir: Option<PathBuf>,
}

pub struct LocalCluster {
    /// Base address of each replica (shard s listens on port + s).
    pub peers: Vec<SocketAddr>,
    cfg: ClusterConfig,
    procs: Vec<Child>,
    /// The binary takes `--in-memory` (passed when there is no data root).
    in_memory_flag: bool,
    /// Each replica's metrics endpoint, with `ClusterConfig::metrics`; kept
    /// across restarts.
    metrics: Vec<SocketAddr>,
}

/// Whether `binary --help` lists `--in-memory`. A binary without it keeps
/// state in memory when given no `--data-dir`.
fn has_in_memory_flag(binary: &std::path::Path) -> Result<bool, String> {
    let out = Command::new(binary)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} --help: {e}", binary.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--in-memory"))
}

/// The loopback address of this process's `nth` cluster. Every process,
/// and every cluster in it, gets its own (127.0.0.0/8 is all loopback on
/// Linux), so clusters of tests or runs going on at the same time never
/// compete for ports, even while a replica is down and its ports are free.
fn cluster_ip(nth: u16) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, (pid >> 8) as u8, pid as u8, 1 + (nth % 250) as u8)
}

/// `n` base addresses on `ip`, each with `cores` free ports (and as many
/// from `RESP_PORT_OFFSET` with `resp`).
fn free_bases(ip: Ipv4Addr, n: usize, cores: u8, resp: bool) -> Result<Vec<SocketAddr>, String> {
    let stride = u16::from(cores).max(PORT_STRIDE_MIN);
    let ports =
        |base: u16| (0..u16::from(cores)).all(|s| TcpListener::bind((ip, base + s)).is_ok());
    let free = |base: u16| ports(base) && (!resp || ports(base + RESP_PORT_OFFSET));
    let bases: Vec<SocketAddr> = (PORT_FIRST..PORT_LAST)
        .step_by(usize::from(stride))
        .filter(|&base| free(base))
        .take(n)
        .map(|base| SocketAddr::from((ip, base)))
        .collect();
    if bases.len() < n {
        return Err(format!(
            "no {n} free bases of {cores} ports on {ip} below {PORT_LAST}"
        ));
    }
    Ok(bases)
}

/// `n` ports on `ip` the kernel says are free now (ephemeral ones, above
/// the bases' range).
fn free_ports(ip: Ipv4Addr, n: usize) -> Result<Vec<SocketAddr>, String> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((ip, 0)).map_err(|e| format!("no free port on {ip}: {e}")))
        .collect::<Result<_, _>>()?;
    held.iter()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .collect()
}

/// Sends `signal` to `child` if it is still running. A child not reaped
/// yet keeps its pid (a zombie holds it), so the signal cannot reach
/// another process.
fn signal(child: &mut Child, signal: libc::c_int) {
    if matches!(child.try_wait(), Ok(None)) {
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) takes any pid and signal number; it touches no memory.
        unsafe { libc::kill(pid, signal) };
    }
}

/// How `child` exited, waiting until `deadline`; `None` if it still runs.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl LocalCluster {
    /// Starts every replica and waits until each is ready.
    pub fn start(cfg: ClusterConfig) -> Result<LocalCluster, String> {
        static CLUSTERS: AtomicU16 = AtomicU16::new(0);
        assert!(cfg.replicas > 0 && cfg.cores > 0, "{cfg:?}");
        assert!(
            !cfg.resp || u16::from(cfg.cores) <= RESP_PORT_OFFSET,
            "{cfg:?}"
        );
        let nth = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let ip = cluster_ip(nth);
        let peers = free_bases(ip, cfg.replicas, cfg.cores, cfg.resp)?;
        let in_memory_flag = cfg.data_root.is_none() && has_in_memory_flag(&cfg.binary)?;
        let metrics = match cfg.metrics {
            true => free_ports(ip, cfg.replicas)?,
            false => Vec::new(),
        };
        let mut cluster = LocalCluster {
            peers,
            cfg,
            procs: Vec::new(),
            in_memory_flag,
            metrics,
        };
        for id in 0..cluster.cfg.replicas {
            let child = cluster.spawn(id)?;
            cluster.procs.push(child);
        }
        cluster.wait_ready()?;
        Ok(cluster)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    fn spawn(&self, id: usize) -> Result<Child, String> {
        let list: Vec<String> = self.peers.iter().map(|p| p.to_string()).collect();
        let cfg = &self.cfg;
        let stderr = match &cfg.stderr_dir {
            Some(dir) => {
                let path = dir.join(format!("replica-{id}.log"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                Stdio::from(file)
            }
            None => Stdio::inherit(),
        };
        Command::new(&cfg.binary)
            .args(["--id", &id.to_string(), "--peers", &list.join(",")])
            .args(["--cores", &cfg.cores.to_string(), "--cpus", "none"])
            .args(["--cluster-id", &cfg.cluster_id.to_string()])
            .args(["--log-level", "warn"])
            .args(self.state_args(id))
            .args(self.resp_args(id))
            .args(self.metrics.get(id).map(|a| format!("--metrics={a}")))
            .args(&cfg.extra_args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cfg.binary.display()))
    }

    /// Where replica `r`'s shard `shard` serves RESP (with `resp`).
    pub fn resp_addr(&self, r: usize, shard: u8) -> SocketAddr {
        let mut a = self.peers[r];
        a.set_port(a.port() + RESP_PORT_OFFSET + u16::from(shard));
        a
    }

    fn resp_args(&self, id: usize) -> Vec<String> {
        match self.cfg.resp {
            true => vec!["--resp".into(), self.resp_addr(id, 0).to_string()],
            false => Vec::new(),
        }
    }

    /// Where replica `id` keeps its state, as flags.
    fn state_args(&self, id: usize) -> Vec<std::ffi::OsString> {
        match &self.cfg.data_root {
            Some(root) => {
                let dir = root.join(format!("replica-{id}"));
                vec!["--data-dir".into(), dir.into_os_string()]
            }
            None if self.in_memory_flag => vec!["--in-memory".into()],
            None => Vec::new(),
        }
    }

    /// Where replica `replica` serves `/metrics` and `/health`, with
    /// `ClusterConfig::metrics`.
    pub fn metrics_addr(&self, replica: usize) -> Option<SocketAddr> {
        self.metrics.get(replica).copied()
    }

    /// A client connection to shard `shard` of replica `replica`.
    pub fn connect(
        &self,
        replica: usize,
        shard: u8,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        Connection::connect_with_password(
            self.peers[replica],
            shard,
            self.cfg.cluster_id,
            timeout,
            self.cfg.password.as_ref(),
        )
    }

    /// Waits until every shard of every replica answers with all its peer
    /// links up; fails if a replica exits or the ready timeout passes.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + self.cfg.ready_timeout;
        for r in 0..self.peers.len() {
            for s in 0..self.cfg.cores {
                while !self.shard_ready(r, s)? {
                    if let Ok(Some(status)) = self.procs[r].try_wait() {
                        return Err(format!("replica {r} exited at start-up: {status}"));
                    }
                    if Instant::now() > deadline {
                        return Err(format!(
                            "replica {r} shard {s} not ready after {:?}",
                            self.cfg.ready_timeout
                        ));
                    }
                    std::thread::sleep(READY_POLL);
                }
            }
        }
        Ok(())
    }

    /// Whether shard `s` of replica `r` has every peer link up; an error
    /// if it asks for a password this cluster's config does not give.
    fn shard_ready(&self, r: usize, s: u8) -> Result<bool, String> {
        let info = self
            .connect(r, s, READY_CONNECT_TIMEOUT)
            .and_then(|mut c| c.admin());
        if let Err(ClientError::Refused(why)) = &info {
            if why == crate::wire::client::NO_AUTH_TEXT {
                return Err(format!(
                    "replica {r} asks for a password (--requirepass-file) and none was given"
                ));
            }
        }
        Ok(matches!(info, Ok(i) if usize::from(i.peers_connected) + 1 == self.peers.len()))
    }

    /// Kills replica `id` outright (SIGKILL), starts it again, and waits
    /// until the cluster is ready.
    pub fn kill_and_restart(&mut self, id: usize) -> Result<(), String> {
        self.kill(id)?;
        self.restart(id)?;
        self.wait_ready()
    }

    /// Kills replica `id` outright (SIGKILL) and reaps it; it stays down
    /// until `restart`.
    pub fn kill(&mut self, id: usize) -> Result<(), String> {
        signal(&mut self.procs[id], libc::SIGKILL);
        self.procs[id]
            .wait()
            .map(drop)
            .map_err(|e| format!("reap replica {id}: {e}"))
    }

    /// Starts replica `id` again, with the flags (and data dir) it had,
    /// without waiting for it: see `replica_ready`.
    pub fn restart(&mut self, id: usize) -> Result<(), String> {
        assert!(!self.running(id), "replica {id} restarted while running");
        self.procs[id] = self.spawn(id)?;
        Ok(())
    }

    /// Whether replica `id`'s process runs (it may not be ready yet).
    pub fn running(&mut self, id: usize) -> bool {
        matches!(self.procs[id].try_wait(), Ok(None))
    }

    /// Whether every shard of replica `id` answers with at least
    /// `peers_min` peer links up; an error if its process has exited.
    pub fn replica_ready(&mut self, id: usize, peers_min: usize) -> Result<bool, String> {
        if let Ok(Some(status)) = self.procs[id].try_wait() {
            return Err(format!("replica {id} exited: {status}"));
        }
        Ok((0..self.cfg.cores).all(|s| {
            let info = self
                .connect(id, s, READY_CONNECT_TIMEOUT)
                .and_then(|mut c| c.admin());
            matches!(info, Ok(i) if usize::from(i.peers_connected) >= peers_min)
        }))
    }

    /// Kills every replica at the same moment (SIGKILL to all, then reaps
    /// them), starts them all again, and waits until the cluster is ready.
    pub fn kill_all_and_restart(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            signal(p, libc::SIGKILL);
        }
        for (id, p) in self.procs.iter_mut().enumerate() {
            p.wait().map_err(|e| format!("reap replica {id}: {e}"))?;
        }
        for id in 0..self.procs.len() {
            self.procs[id] = self.spawn(id)?;
        }
        self.wait_ready()
    }

    /// SIGTERM to every replica; how each exited within `STOP_GRACE`
    /// (`None`: still running; dropping the cluster kills it).
    pub fn terminate(&mut self) -> Vec<Option<ExitStatus>> {
        for p in &mut self.procs {
            signal(p, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        self.procs
            .iter_mut()
            .map(|p| wait_until(p, deadline))
            .collect()
    }

    /// Stops every replica (as dropping the cluster does).
    pub fn stop(self) {}

    /// The process id of replica `r`.
    pub fn pid(&self, r: usize) -> u32 {
        self.procs[r].id()
    }

    /// Whether every replica is still running.
    pub fn all_alive(&mut self) -> bool {
        self.procs
            .iter_mut()
            .all(|p| matches!(p.try_wait(), Ok(None)))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // SIGTERM first: a replica should stop cleanly on it.
        let statuses = self.terminate();
        for (p, status) in self.procs.iter_mut().zip(statuses) {
            if status.is_none() {
                signal(p, libc::SIGKILL);
            }
            let _ = p.wait();
        }
        if let (true, Some(root)) = (self.cfg.remove_data, &self.cfg.data_root) {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// A line of a process's `/proc/PID/status` in KiB (`field` as "VmRSS:"
/// or "VmHWM:"), if the process and the line are there.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A process's resident set in bytes (VmRSS), if it is there.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// A client's Hello frame for shard 0 of cluster `cluster_id`, as the
/// hostile-input tests and probes send it by hand.
pub fn client_hello_frame(cluster_id: u64) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    crate::client::Session::new(77, cluster_id, 0).hello(&mut buf);
    buf.to_vec()
}

/// `GET path` on an HTTP server at `addr` (a replica's metrics endpoint),
/// with plain `std::net`: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let what = |e: std::io::Error| format!("GET http://{addr}{path}: {e}");
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(what)?;
    s.set_read_timeout(Some(timeout)).map_err(what)?;
    s.set_write_timeout(Some(timeout)).map_err(what)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(what)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(what)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}{path}: no end of head in {answer:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET http://{addr}{path}: no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// A Request header announcing a body of `len` bytes, without the body:
/// what a connection that never completes its frame sends.
pub fn request_header_announcing(cluster_id: u64, len: u32) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    crate::client::Session::new(77, cluster_id, 0)
        .encoder()
        .frame(&mut buf, crate::wire::Kind::Request, |_| {});
    buf[8..12].copy_from_slice(&len.to_le_bytes());
    buf.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_of_one_process_get_addresses_of_their_own() {
        assert_ne!(cluster_ip(0), cluster_ip(1));
        assert_eq!(cluster_ip(0), cluster_ip(250), "250 clusters, then round");
        let ip = cluster_ip(7);
        let bases = free_bases(ip, 3, 4, false).unwrap();
        assert_eq!(bases.len(), 3);
        for pair in bases.windows(2) {
            assert!(pair[1].port() >= pair[0].port() + PORT_STRIDE_MIN);
        }
        // A taken port moves that base on, not onto another's ports.
        let held = TcpListener::bind((ip, bases[0].port() + 2)).unwrap();
        let moved = free_bases(ip, 1, 4, false).unwrap();
        assert_ne!(moved[0], bases[0]);
        drop(held);
    }
}
