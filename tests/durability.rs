//! `--data-dir`: real replicas killed with SIGKILL and restarted from their
//! logs lose nothing they acknowledged; a directory of another replica, and
//! a log corrupted before its tail, are refused with exit status 2 and the
//! reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Cluster, CLUSTER_ID};
use epaxos_fast::command::Op;
use epaxos_fast::wire::client::Code;

/// A fresh directory for this test, under the system's temporary one.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("epx-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}").into_bytes()
}

#[test]
fn every_acknowledged_write_survives_killing_all_replicas_at_once() {
    const KEYS: u32 = 300;
    let root = scratch("kill-all");
    let mut cluster = Cluster::start_in(3, 2, &[], Some(root.clone()));
    let mut c = cluster.connect(0, 0);
    for i in 0..KEYS {
        c.queue(Op::Put, format!("k{i}").as_bytes(), &value(i))
            .unwrap();
    }
    for _ in 0..KEYS {
        assert_eq!(c.recv().unwrap().code, Code::Done);
    }
    drop(c);
    cluster
        .kill_all_and_restart()
        .unwrap_or_else(|e| panic!("{e}"));
    for r in 0..3 {
        let mut c = cluster.connect(r, 1);
        for i in 0..KEYS {
            let got = c.call(Op::Get, format!("k{i}").as_bytes(), b"").unwrap();
            assert_eq!(
                (got.code, &got.value[..]),
                (Code::Value, &value(i)[..]),
                "replica {r}, key k{i} after every replica was killed"
            );
        }
    }
    // And the restarted cluster takes writes again.
    let r = cluster.connect(1, 0).call(Op::Put, b"after", b"x").unwrap();
    assert_eq!(r.code, Code::Done);
    drop(cluster);
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_replica_killed_between_rounds_of_writes_comes_back_with_its_log() {
    let root = scratch("kill-one");
    let mut cluster = Cluster::start_in(3, 1, &[], Some(root.clone()));
    let mut c = cluster.connect(0, 0);
    for round in 0..3u32 {
        for i in 0..50 {
            let key = format!("r{round}k{i}");
            assert_eq!(
                c.call(Op::Put, key.as_bytes(), b"v").unwrap().code,
                Code::Done
            );
        }
        cluster.kill_and_restart(2);
    }
    let digests = cluster.converged_digests();
    assert_eq!(digests[0].1, 150, "keys at every replica: {digests:?}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(root);
}

/// Runs the replica binary with `args`; its exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_epaxos-fast"))
        .args(args)
        .output()
        .expect("run epaxos-fast");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_replica(dir: &Path, id: &str, peers: &str) -> (Option<i32>, String) {
    let dir = dir.to_str().unwrap();
    let cluster = CLUSTER_ID.to_string();
    run(&[
        "--id",
        id,
        "--peers",
        peers,
        "--data-dir",
        dir,
        "--cluster-id",
        &cluster,
        "--log-level",
        "warn",
    ])
}

#[test]
fn a_directory_in_use_or_missing_a_log_is_refused() {
    let root = scratch("in-use");
    let mut cluster = Cluster::start_in(1, 1, &[], Some(root.clone()));
    let peers = cluster.peers[0].to_string();
    let dir = root.join("replica-0");
    // A second process on the running replica's directory: refused before
    // it reads (and could cut) the live log.
    let (code, err) = one_replica(&dir, "0", "127.0.0.1:1");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("another process holds"), "{err}");
    cluster.terminate();
    drop(cluster);
    // A log gone from a directory that was in use: refused, not recreated.
    std::fs::remove_file(dir.join("shard-0.log")).unwrap();
    let (code, err) = one_replica(&dir, "0", &peers);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("shard-0.log is missing"), "{err}");
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn logs_with_records_but_no_meta_file_are_refused() {
    let root = scratch("no-meta");
    let mut cluster = Cluster::start_in(1, 1, &[], Some(root.clone()));
    let r = cluster.connect(0, 0).call(Op::Put, b"k", b"v").unwrap();
    assert_eq!(r.code, Code::Done);
    let peers = cluster.peers[0].to_string();
    cluster.terminate();
    drop(cluster);
    let dir = root.join("replica-0");
    std::fs::remove_file(dir.join("meta")).unwrap();
    let (code, err) = one_replica(&dir, "0", &peers);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("meta is missing but the shard logs hold records"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_directory_of_another_replica_or_a_corrupt_log_is_refused() {
    let root = scratch("refused");
    let mut cluster = Cluster::start_in(1, 1, &[], Some(root.clone()));
    for i in 0..5u32 {
        let key = format!("k{i}");
        let r = cluster
            .connect(0, 0)
            .call(Op::Put, key.as_bytes(), b"v")
            .unwrap();
        assert_eq!(r.code, Code::Done);
    }
    let peers = cluster.peers[0].to_string();
    cluster.terminate();
    drop(cluster);
    let dir = root.join("replica-0");

    // Another replica's flags on this directory: refused, naming both ids.
    let three = format!("{peers},127.0.0.1:1,127.0.0.1:2");
    let (code, err) = one_replica(&dir, "1", &three);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("replica is 0 there, 1 now"), "{err}");

    // A byte flipped in the first entry: refused, naming file and offset.
    let log = dir.join("shard-0.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&log, bytes).unwrap();
    let (code, err) = one_replica(&dir, "0", &peers);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("shard-0.log") && err.contains("offset 0"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(root);
}
