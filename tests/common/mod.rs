//! The library's local cluster (`epaxos_fast::harness`) with this test
//! crate's binary, cluster id and timeout, panicking on failure.

#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use epaxos_fast::client::Connection;
use epaxos_fast::harness::{ClusterConfig, LocalCluster};

pub const CLUSTER_ID: u64 = 4242;
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct Cluster(LocalCluster);

impl Deref for Cluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.0
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.0
    }
}

fn config(
    replicas: usize,
    cores: u8,
    extra: &[&str],
    data_root: Option<std::path::PathBuf>,
) -> ClusterConfig {
    ClusterConfig {
        binary: env!("CARGO_BIN_EXE_epaxos-fast").into(),
        replicas,
        cores,
        cluster_id: CLUSTER_ID,
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ready_timeout: TIMEOUT,
        data_root,
        remove_data: false,
        resp: false,
        metrics: false,
        password: None,
        stderr_dir: None,
    }
}

impl Cluster {
    pub fn start(replicas: usize, cores: u8) -> Cluster {
        Cluster::start_with(replicas, cores, &[])
    }

    pub fn start_with(replicas: usize, cores: u8, extra: &[&str]) -> Cluster {
        Cluster::start_in(replicas, cores, extra, None)
    }

    /// With `data_root`, replica r keeps its log in `data_root/replica-r`.
    pub fn start_in(
        replicas: usize,
        cores: u8,
        extra: &[&str],
        data_root: Option<std::path::PathBuf>,
    ) -> Cluster {
        Cluster::start_config(config(replicas, cores, extra, data_root))
    }

    /// Serving RESP too (`--resp`, at `resp_addr`).
    pub fn start_resp(replicas: usize, cores: u8, extra: &[&str]) -> Cluster {
        let cfg = ClusterConfig {
            resp: true,
            ..config(replicas, cores, extra, None)
        };
        Cluster::start_config(cfg)
    }

    /// Serving RESP, every replica asking clients for `password`
    /// (`--requirepass-file`, written to a file of mode 600 in `dir`).
    pub fn start_resp_protected(
        replicas: usize,
        cores: u8,
        password: &str,
        dir: &std::path::Path,
    ) -> Cluster {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.join("requirepass");
        std::fs::write(&file, password).expect("password file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let path = file.to_str().expect("a UTF-8 path");
        let cfg = ClusterConfig {
            resp: true,
            password: Some(epaxos_fast::secret::Secret::new(password.as_bytes())),
            ..config(replicas, cores, &["--requirepass-file", path], None)
        };
        Cluster::start_config(cfg)
    }

    /// In memory, every replica with a metrics endpoint
    /// (`LocalCluster::metrics_addr`).
    pub fn start_with_metrics(replicas: usize, cores: u8) -> Cluster {
        let cfg = ClusterConfig {
            metrics: true,
            ..config(replicas, cores, &[], None)
        };
        Cluster::start_config(cfg)
    }

    fn start_config(cfg: ClusterConfig) -> Cluster {
        Cluster(LocalCluster::start(cfg).unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn cores(&self) -> u8 {
        self.config().cores
    }

    /// Kills replica `id` outright (SIGKILL) and starts it again.
    pub fn kill_and_restart(&mut self, id: usize) {
        self.0
            .kill_and_restart(id)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn connect(&self, replica: usize, shard: u8) -> Connection {
        self.0
            .connect(replica, shard, TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to replica {replica} shard {shard}: {e}"))
    }

    /// Digest of every shard of every replica: `[replica][shard]`.
    pub fn digests(&self) -> Vec<Vec<(u64, u64)>> {
        (0..self.peers.len())
            .map(|r| {
                (0..self.cores())
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
}
