//! A cluster that refuses a wrong configuration: real replicas on
//! loopback, and one more process started with a flag wrong (a swapped
//! peer list, another --cores, a second process with an id in use), or
//! flags that cannot work at all.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Instant;

use common::{Cluster, CLUSTER_ID, TIMEOUT};
use epaxos_fast::client::Connection;
use epaxos_fast::command::Op;
use epaxos_fast::wire::client::Code;

/// A replica process this test started, killed when dropped, and its
/// stderr, line by line.
struct Extra {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Extra {
    fn start(args: &[String]) -> Extra {
        let mut child = Command::new(env!("CARGO_BIN_EXE_epaxos-fast"))
            .args(args)
            .args(["--cpus", "none", "--in-memory", "--log-level", "warn"])
            .args(["--cluster-id", &CLUSTER_ID.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start epaxos-fast");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("extra: {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Extra {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stderr line (from now on) with every one of `parts`.
    fn line_with(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(l) = self
                .seen
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("no line with {parts:?} in {:#?}", self.seen),
            }
        }
    }

    fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running: {:#?}", self.seen);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Extra {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peers_arg(peers: &[SocketAddr]) -> String {
    let list: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    list.join(",")
}

fn args(id: usize, peers: &[SocketAddr], more: &[&str]) -> Vec<String> {
    let mut a = vec!["--id".to_string(), id.to_string()];
    a.extend(["--peers".to_string(), peers_arg(peers)]);
    a.extend(more.iter().map(|s| s.to_string()));
    a
}

/// The cluster goes on serving through `replica`.
fn serves(cluster: &Cluster, replica: usize, key: &[u8]) {
    let mut c = cluster.connect(replica, 0);
    assert_eq!(c.call(Op::Put, key, b"v").unwrap().code, Code::Done);
}

/// Replica 2 is restarted with entries 0 and 1 of --peers swapped: the
/// others refuse it, and the refusal names both lists and the first
/// entry that differs; more than F peers refusing it, it answers its
/// clients Unavailable instead of holding their requests for ever.
#[test]
fn a_replica_with_two_peers_swapped_is_refused_naming_both_lists() {
    let mut cluster = Cluster::start(3, 1);
    cluster.kill(2).unwrap();
    let right = cluster.peers.clone();
    let mut swapped = right.clone();
    swapped.swap(0, 1);
    let mut extra = Extra::start(&args(2, &swapped, &[]));
    let line = extra.line_with(&["refused us: configuration mismatch", "first difference"]);
    assert!(
        line.contains(&format!("--peers {}", peers_arg(&right))),
        "{line}"
    );
    assert!(
        line.contains(&format!("--peers {}", peers_arg(&swapped))),
        "{line}"
    );
    let first = format!(
        "entry 0: \"{}\" here, \"{}\" at replica 2",
        right[0], right[1]
    );
    assert!(line.contains(&first), "{line}");
    extra.line_with(&["cannot serve: 2 of its 2 peers refuse its configuration"]);
    let mut client =
        Connection::connect(right[2], 0, CLUSTER_ID, TIMEOUT).expect("connect to the bad one");
    let r = client.call(Op::Put, b"k", b"v").unwrap();
    assert_eq!(r.code, Code::Unavailable);
    assert!(String::from_utf8_lossy(&r.value).contains("configuration mismatch"));
    serves(&cluster, 0, b"still");
}

/// Replica 2 is restarted with --cores 2 where the others run 1: refused,
/// its shard 0 names both shard counts to its clients (Unavailable) and in
/// its log.
#[test]
fn a_replica_with_another_core_count_answers_its_clients_unavailable() {
    let mut cluster = Cluster::start(3, 1);
    cluster.kill(2).unwrap();
    let peers = cluster.peers.clone();
    let mut extra = Extra::start(&args(2, &peers, &["--cores", "2"]));
    extra.line_with(&["cannot serve", "runs 1 shards (--cores), replica 2 says 2"]);
    // Shard 0, which the peers refuse. (Its shard 1 finds no port to talk
    // to at all, as if its peers were down: its own keys wait.)
    let key = (0..)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| epaxos_fast::command::shard_of(k, 2) == 0)
        .unwrap();
    let mut client = Connection::connect(peers[2], 0, CLUSTER_ID, TIMEOUT).expect("connect");
    let r = client.call(Op::Put, &key, b"v").unwrap();
    assert_eq!(r.code, Code::Unavailable);
    let text = String::from_utf8_lossy(&r.value).into_owned();
    assert!(
        text.contains("runs 1 shards") && text.contains("says 2"),
        "{text}"
    );
    serves(&cluster, 1, b"still");
}

/// A second process started as --id 2, listening elsewhere, while replica
/// 2 runs: the peers refuse it once they see replica 2 at its advertised
/// address, and it exits with status 2; the cluster goes on serving,
/// replica 2 included, with all its links.
#[test]
fn a_second_process_with_a_live_replica_id_exits_2_and_the_cluster_serves_on() {
    let cluster = Cluster::start(3, 1);
    let ip = cluster.peers[0].ip();
    let free = std::net::TcpListener::bind((ip, 0)).unwrap();
    let elsewhere = free.local_addr().unwrap().to_string();
    drop(free);
    let mut extra = Extra::start(&args(2, &cluster.peers, &["--listen", &elsewhere]));
    let status = extra.exit_status();
    assert_eq!(status.code(), Some(2), "{status}: {:#?}", extra.seen);
    extra.line_with(&[
        "refused this process as a second one with --id 2",
        "duplicate replica id",
    ]);
    serves(&cluster, 2, b"after-2");
    serves(&cluster, 0, b"after-0");
    let mut c = cluster.connect(2, 0);
    assert_eq!(c.admin().unwrap().peers_connected, 2);
}

/// Peer lists that cannot work are refused before anything starts: one
/// message naming the entries, exit status 2.
#[test]
fn repeated_or_overlapping_peers_exit_2_with_the_entries() {
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "--id",
                "0",
                "--peers",
                "127.0.0.1:7000,127.0.0.1:7010,127.0.0.1:7000",
            ],
            "--peers entries 0 (127.0.0.1:7000) and 2 (127.0.0.1:7000) are the same address",
        ),
        (
            &[
                "--id",
                "2",
                "--cores",
                "2",
                "--peers",
                "127.0.0.1:7800,127.0.0.1:7801,127.0.0.1:7900",
            ],
            "--peers entries 0 (127.0.0.1:7800) and 1 (127.0.0.1:7801) overlap: with --cores 2",
        ),
        (
            &[
                "--id",
                "0",
                "--cores",
                "2",
                "--peers",
                "127.0.0.1:7000,127.0.0.1:7010,127.0.0.1:7020",
                "--listen",
                "127.0.0.1:7019",
            ],
            "--listen 127.0.0.1:7019 overlaps replica 2 (127.0.0.1:7020)",
        ),
    ];
    for (args, says) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_epaxos-fast"))
            .args(args)
            .args(["--cpus", "none", "--in-memory"])
            .output()
            .expect("run epaxos-fast");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
