//! Real replicas on 127.0.0.1: writes and reads through every replica and
//! shard, every reply checked, and the same state digest everywhere at the end.

mod common;

use common::Cluster;
use epaxos_fast::client::Connection;
use epaxos_fast::command::shard_of;
use epaxos_fast::command::Op;
use epaxos_fast::wire::client::Code;

const KEYS: usize = 10_000;
/// Requests in flight per connection (well inside the client window).
const PIPELINE: usize = 256;

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: usize, round: usize) -> Vec<u8> {
    format!("value-{i}-{round}").into_bytes()
}

/// Sends `ops` for the keys `keys` on `conn`, `PIPELINE` at a time; checks
/// each answer with `check`.
fn pipelined(
    conn: &mut Connection,
    keys: &[usize],
    op: impl Fn(usize) -> (Op, Vec<u8>),
    check: impl Fn(usize, Code, &[u8]),
) {
    for chunk in keys.chunks(PIPELINE) {
        let mut sent = std::collections::HashMap::new();
        for &i in chunk {
            let (o, v) = op(i);
            let request = conn.queue(o, &key(i), &v).expect("queue");
            sent.insert(request, i);
        }
        for _ in chunk {
            let r = conn.recv().expect("response");
            let i = sent
                .remove(&r.request)
                .expect("an answer to a request sent");
            check(i, r.code, &r.value);
        }
    }
}

/// Every key written through replica i % n and shard (i / n) % cores, so
/// most commands land on a shard that does not own their key and cross
/// cores; then read back through the next replica, then overwritten and
/// read again.
fn write_read_everywhere(replicas: usize, cores: u8) {
    let mut cluster = Cluster::start(replicas, cores);
    let n = replicas;
    let c = usize::from(cores);
    let paths: Vec<(usize, u8)> = (0..n)
        .flat_map(|r| (0..cores).map(move |s| (r, s)))
        .collect();
    let mut conns: Vec<Connection> = paths.iter().map(|&(r, s)| cluster.connect(r, s)).collect();
    let keys_via = |shift: usize| -> Vec<Vec<usize>> {
        let mut by_path = vec![Vec::new(); paths.len()];
        for i in 0..KEYS {
            let path = ((i + shift) % n) * c + (i / n) % c;
            by_path[path].push(i);
        }
        by_path
    };
    for round in 0..2 {
        for (conn, keys) in conns.iter_mut().zip(keys_via(round)) {
            pipelined(
                conn,
                &keys,
                |i| (Op::Put, value(i, round)),
                |i, code, _| assert_eq!(code, Code::Done, "PUT key {i}"),
            );
        }
        for (conn, keys) in conns.iter_mut().zip(keys_via(round + 1)) {
            pipelined(
                conn,
                &keys,
                |_| (Op::Get, Vec::new()),
                |i, code, v| {
                    assert_eq!(code, Code::Value, "GET key {i}");
                    assert_eq!(v, &value(i, round)[..], "GET key {i}");
                },
            );
        }
    }
    let digests = cluster.converged_digests();
    let keys: u64 = digests.iter().map(|d| d.1).sum();
    assert_eq!(keys, KEYS as u64);
    // Each shard holds exactly the keys it owns.
    for (s, d) in digests.iter().enumerate() {
        let owned = (0..KEYS).filter(|&i| shard_of(&key(i), c) == s).count();
        assert_eq!(d.1, owned as u64, "shard {s}");
    }
    let forwarded: u64 = (0..n)
        .flat_map(|r| (0..cores).map(move |s| (r, s)))
        .map(|(r, s)| cluster.connect(r, s).admin().unwrap().forwarded_in.get())
        .sum();
    if c > 1 {
        assert!(forwarded > 0, "no command crossed cores");
    }
    assert!(cluster.all_alive());
}

#[test]
fn three_replicas_two_cores_agree() {
    write_read_everywhere(3, 2);
}

#[test]
fn five_replicas_two_cores_agree() {
    write_read_everywhere(5, 2);
}

#[test]
fn one_unreplicated_replica_serves() {
    write_read_everywhere(1, 2);
}

#[test]
fn links_come_back_after_a_peer_restarts() {
    let mut cluster = Cluster::start(3, 1);
    let mut conn = cluster.connect(0, 0);
    assert_eq!(
        conn.call(Op::Put, b"before", b"1").unwrap().code,
        Code::Done
    );
    // wait_ready inside checks that every shard of every replica sees all
    // its peers connected again.
    cluster.kill_and_restart(2);
    assert_eq!(conn.call(Op::Put, b"after", b"2").unwrap().code, Code::Done);
    let mut fresh = cluster.connect(2, 0);
    assert_eq!(fresh.admin().unwrap().peers_connected, 2);
}

#[test]
fn sigterm_stops_every_replica_cleanly() {
    let mut cluster = Cluster::start(3, 2);
    let mut conn = cluster.connect(1, 1);
    assert_eq!(conn.call(Op::Put, b"k", b"v").unwrap().code, Code::Done);
    for (id, status) in cluster.terminate().into_iter().enumerate() {
        let status = status.unwrap_or_else(|| panic!("replica {id} ignored SIGTERM"));
        assert!(status.success(), "replica {id}: {status}");
    }
}

/// Bad flag values are refused before anything starts: one error naming the
/// value, exit status 2.
#[test]
fn bad_flag_values_exit_2_with_the_reason() {
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--id",
                "0",
                "--peers",
                "127.0.0.1:7000",
                "--cores",
                "2",
                "--listen",
                "127.0.0.1:65535",
            ],
            "--listen 127.0.0.1:65535: ports 65535..65537 do not all exist",
        ),
        (
            &[
                "--id",
                "3",
                "--peers",
                "127.0.0.1:7000,127.0.0.1:7010,127.0.0.1:7020",
            ],
            "--id",
        ),
        (
            &[
                "--id",
                "0",
                "--peers",
                "127.0.0.1:7000",
                "--data-dir",
                "/proc/no/such/dir",
            ],
            "data directory /proc/no/such/dir: cannot create it",
        ),
        (
            &[
                "--id",
                "0",
                "--peers",
                "127.0.0.1:7000",
                "--cpus",
                "none",
                "--spin-us",
                "30",
            ],
            "--spin-us needs pinned shards",
        ),
    ];
    for (args, says) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_epaxos-fast"))
            .args(args)
            .output()
            .expect("run epaxos-fast");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// A client that stops reading is closed once its unread answers pass the
/// replica's limit (64 MiB), and sees the connection end instead of waiting
/// on a socket nobody writes to any more.
#[test]
fn a_client_that_does_not_read_is_disconnected() {
    let cluster = Cluster::start(1, 1);
    let mut conn = cluster.connect(0, 0);
    let big = vec![b'v'; epaxos_fast::constants::VALUE_BYTES_MAX];
    let r = conn.call(Op::Put, b"big", &big).expect("put");
    assert_eq!(r.code, Code::Done);
    // 100 answers of 1 MiB, and nothing read while they pile up.
    for _ in 0..100 {
        conn.queue(Op::Get, b"big", b"").expect("queue");
    }
    conn.flush().expect("flush");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let ended = loop {
        match conn.recv() {
            Ok(r) => assert_eq!(r.code, Code::Value),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&ended, epaxos_fast::client::ClientError::Closed)
            || matches!(&ended, epaxos_fast::client::ClientError::Io(e)
                if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection did not end: {ended}"
    );
}

/// The socket inodes a process holds (`socket:[N]` links under /proc/PID/fd).
fn socket_inodes(pid: u32) -> std::collections::HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the replica's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect()
}

/// Every established TCP connection of every replica, accepted or opened,
/// peer link or client, has TCP keepalive armed: /proc/net/tcp shows timer
/// 2 (keepalive) on each once it is idle (timer 1, retransmission, while
/// data is unacknowledged; so this looks again until the links are idle).
#[test]
fn every_connection_of_a_replica_has_keepalive() {
    let cluster = Cluster::start(3, 1);
    let mut client = cluster.connect(0, 0);
    assert_eq!(client.call(Op::Put, b"k", b"v").unwrap().code, Code::Done);
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        let mut problems = Vec::new();
        for r in 0..3 {
            let inodes = socket_inodes(cluster.pid(r));
            // Fields: sl, local, remote, state, queues, timer:when,
            // retransmits, uid, timeout, inode, ...
            let established: Vec<Vec<&str>> = table
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .filter(|f| f.len() > 9 && f[3] == "01" && inodes.contains(f[9]))
                .collect();
            // Links to and from both peers; replica 0 also has the client.
            let expected = if r == 0 { 5 } else { 4 };
            if established.len() != expected {
                problems.push(format!(
                    "replica {r}: {} connections, not {expected}",
                    established.len()
                ));
            }
            for f in established.iter().filter(|f| !f[5].starts_with("02:")) {
                problems.push(format!("replica {r}, no keepalive timer: {f:?}"));
            }
        }
        if problems.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{problems:#?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// More connections than a shard has provided receive buffers (256), all
/// sending at once: the multishot receives that run out of buffers start
/// again, and every request is answered.
#[test]
fn a_burst_on_more_connections_than_receive_buffers_is_all_answered() {
    let cluster = Cluster::start(1, 1);
    let mut conns: Vec<_> = (0..400).map(|_| cluster.connect(0, 0)).collect();
    let value = vec![b'v'; 8 << 10];
    for (i, c) in conns.iter_mut().enumerate() {
        for j in 0..4 {
            c.queue(Op::Put, format!("k{i}-{j}").as_bytes(), &value)
                .unwrap();
        }
    }
    for c in &mut conns {
        c.flush().unwrap();
    }
    for c in &mut conns {
        for _ in 0..4 {
            assert_eq!(c.recv().unwrap().code, Code::Done);
        }
    }
}
