//! Authentication with real replicas: a cluster with a cluster secret and a
//! password serves clients that send the password and answers `NoAuth` to
//! those that do not; a process started as one of its replicas with the
//! wrong secret is refused (its log and its peers' logs say so, with the
//! address) while the cluster keeps serving; secrets never reach a log; a
//! bad secret file stops the replica with exit status 2.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{CLUSTER_ID, TIMEOUT};
use epaxos_fast::client::{ClientError, Connection};
use epaxos_fast::command::Op;
use epaxos_fast::harness::{ClusterConfig, LocalCluster};
use epaxos_fast::secret::Secret;
use epaxos_fast::wire::client::{Code, NO_AUTH_TEXT};

const SECRET: &str = "right-cluster-secret-0123456789";
const WRONG: &str = "wrong-cluster-secret-9876543210";
const PASSWORD: &str = "client-password-4242";
const BINARY: &str = env!("CARGO_BIN_EXE_epaxos-fast");

/// A scratch directory of this test process, emptied.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("epaxos-auth-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// `text` and a newline in `dir/name`, with `mode`.
fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).expect("write secret file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits (bounded) until `path` holds a line with every one of `parts`;
/// that line.
fn wait_for_line(path: &Path, parts: &[&str]) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = read(path);
        if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{} has no line with {parts:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One PUT and its GET through `conn`: the cluster serves.
fn serves(conn: &mut Connection, key: &[u8]) {
    let put = conn.call(Op::Put, key, b"v").expect("put");
    assert_eq!(put.code, Code::Done, "{put:?}");
    let get = conn.call(Op::Get, key, b"").expect("get");
    assert_eq!((get.code, &get.value[..]), (Code::Value, &b"v"[..]));
}

/// `replicas` in memory with `extra` flags, whose clients send
/// `PASSWORD`, their logs in `dir`.
fn protected(replicas: usize, extra: Vec<String>, dir: &Path) -> LocalCluster {
    LocalCluster::start(ClusterConfig {
        binary: BINARY.into(),
        replicas,
        cores: 1,
        cluster_id: CLUSTER_ID,
        extra_args: extra,
        ready_timeout: TIMEOUT,
        data_root: None,
        remove_data: false,
        metrics: false,
        resp: false,
        password: Some(Secret::new(PASSWORD.as_bytes())),
        stderr_dir: Some(dir.to_path_buf()),
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The fourth process: `--id id` of `cluster`, with the secret in `secret`.
/// A process killed when dropped, so a failing test leaves none behind
/// (one left running would hold whatever its parent's descriptors held).
struct Impostor(Child);

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn impostor(cluster: &LocalCluster, id: usize, secret: &Path, log: &Path) -> Impostor {
    let list: Vec<String> = cluster.peers.iter().map(|p| p.to_string()).collect();
    let stderr = std::fs::File::create(log).expect("impostor log");
    Command::new(BINARY)
        .args(["--id", &id.to_string(), "--peers", &list.join(",")])
        .args(["--cores", "1", "--cpus", "none", "--in-memory"])
        .args([
            "--cluster-id",
            &CLUSTER_ID.to_string(),
            "--log-level",
            "warn",
        ])
        .arg("--cluster-secret-file")
        .arg(secret)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map(Impostor)
        .expect("start the impostor")
}

#[test]
fn a_peer_with_the_wrong_secret_is_refused_while_the_cluster_serves() {
    let dir = scratch("cluster");
    let right = secret_file(&dir, "secret", SECRET, 0o600);
    let wrong = secret_file(&dir, "wrong", WRONG, 0o600);
    let pass = secret_file(&dir, "password", PASSWORD, 0o600);
    let extra = vec![
        format!("--cluster-secret-file={}", right.display()),
        format!("--requirepass-file={}", pass.display()),
    ];
    let mut cluster = protected(3, extra, &dir);
    // Ready means every link passed the handshake with the secret.
    let mut c = cluster
        .connect(0, 0, TIMEOUT)
        .expect("connect with the password");
    serves(&mut c, b"before");

    // Replica 2 is replaced by a process with the wrong secret.
    cluster.kill(2).expect("kill replica 2");
    let impostor_log = dir.join("impostor.log");
    let fake = impostor(&cluster, 2, &wrong, &impostor_log);
    let at = |r: usize| cluster.peers[r].to_string();
    // It refuses the peers' answers (naming each peer's address) ...
    wait_for_line(&impostor_log, &["authentication failed", &at(0)]);
    // ... and they refuse its answers when they dial it, naming its address.
    for r in [0, 1] {
        let log = dir.join(format!("replica-{r}.log"));
        wait_for_line(&log, &["authentication failed", "replica 2", &at(2)]);
        // Their acceptors see its Refused, from its address.
        wait_for_line(&log, &["refused this replica's proof", "remote="]);
    }
    serves(&mut c, b"during");
    let info = cluster.connect(1, 0, TIMEOUT).unwrap().admin().unwrap();
    assert_eq!(
        info.peers_connected, 1,
        "replica 1's link to the impostor is not up"
    );
    drop(fake);

    // The real replica 2 rejoins: the secret passes again.
    cluster.restart(2).expect("restart replica 2");
    cluster.wait_ready().expect("replica 2 rejoins");
    serves(&mut cluster.connect(2, 0, TIMEOUT).unwrap(), b"after");
    let mut logs = vec![impostor_log];
    logs.extend((0..3).map(|r| dir.join(format!("replica-{r}.log"))));
    for log in &logs {
        let text = read(log);
        for secret in [SECRET, WRONG, PASSWORD] {
            assert!(
                !text.contains(secret),
                "{} shows a secret:\n{text}",
                log.display()
            );
        }
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_without_the_password_gets_no_auth_and_a_wrong_one_is_refused() {
    let dir = scratch("password");
    let pass = secret_file(&dir, "password", PASSWORD, 0o600);
    let cluster = protected(
        1,
        vec![format!("--requirepass-file={}", pass.display())],
        &dir,
    );
    let addr = cluster.peers[0];
    let mut open = Connection::connect(addr, 0, CLUSTER_ID, TIMEOUT).expect("connect");
    let r = open.call(Op::Put, b"k", b"v").expect("an answer");
    assert_eq!(
        (r.code, &r.value[..]),
        (Code::NoAuth, NO_AUTH_TEXT.as_bytes())
    );
    assert!(matches!(open.admin(), Err(ClientError::Refused(_))));
    let wrong = Secret::new(b"not the password");
    let refused = Connection::connect_with_password(addr, 0, CLUSTER_ID, TIMEOUT, Some(&wrong));
    assert!(
        matches!(refused, Err(ClientError::Refused(ref why)) if why.contains("wrong password")),
        "{:?}",
        refused.err()
    );
    serves(&mut cluster.connect(0, 0, TIMEOUT).unwrap(), b"k");
    assert!(!read(&dir.join("replica-0.log")).contains(PASSWORD));
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_secret_files_stop_the_replica_with_exit_2_and_the_reason() {
    let dir = scratch("files");
    let cases = [
        (
            "--cluster-secret-file",
            secret_file(&dir, "empty", "", 0o600),
            "is empty",
        ),
        (
            "--cluster-secret-file",
            secret_file(&dir, "open", SECRET, 0o644),
            "chmod 600",
        ),
        (
            "--cluster-secret-file",
            secret_file(&dir, "short", "short", 0o600),
            "at least 16",
        ),
        (
            "--requirepass-file",
            dir.join("missing"),
            "--requirepass-file",
        ),
    ];
    for (flag, path, expected) in cases {
        let out = Command::new(BINARY)
            .args([
                "--id",
                "0",
                "--peers",
                "127.0.0.1:7000",
                "--in-memory",
                flag,
            ])
            .arg(&path)
            .output()
            .expect("run the replica");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} {}: {stderr}",
            path.display()
        );
        assert!(stderr.contains(expected), "{flag}: {stderr}");
        assert!(!stderr.contains(SECRET), "{stderr}");
    }
    let help = Command::new(BINARY).arg("--help").output().expect("--help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--cluster-secret-file <FILE>") && help.contains("--requirepass-file"));
    let _ = std::fs::remove_dir_all(&dir);
}
