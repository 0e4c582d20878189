//! Data directories: real replicas killed with SIGKILL and restarted from
//! their logs lose nothing they acknowledged; a torn tail is cut off and
//! named; a directory of another replica, a log corrupted before its tail,
//! and a directory that cannot be created or written are refused with exit
//! status 2 and the reason; a full disk stops the shard with an explicit
//! error, and what it had acknowledged survives.

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

/// A tmpfs mounted for a test (needs root), unmounted when dropped, also
/// when the test fails half-way.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (with the reason printed) where this machine cannot mount one.
    fn mount(at: &Path, options: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "skipped: cannot mount a tmpfs at {} (not root?)",
                at.display()
            );
        }
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A listener the test holds, so that a replica told to use its port fails
/// to bind after opening its data directory, and exits: what it logged at
/// start is then in its stderr.
fn taken_port() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

#[test]
fn a_torn_tail_is_cut_off_with_file_offset_and_bytes_named_and_nothing_acknowledged_is_lost() {
    let root = scratch("torn");
    let mut cluster = Cluster::start_in(3, 1, &[], Some(root.clone()));
    let mut c = cluster.connect(0, 0);
    for i in 0..20u32 {
        let r = c
            .call(Op::Put, format!("k{i}").as_bytes(), &value(i))
            .unwrap();
        assert_eq!(r.code, Code::Done);
    }
    drop(c);
    cluster.terminate();
    drop(cluster);
    // Replica 2's last entry loses its last bytes, as a write cut short by
    // power loss would leave it (the zeros after it are pre-allocated).
    let log = root.join("replica-2").join("shard-0.log");
    let bytes = std::fs::read(&log).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(end as u64 - 3).unwrap();
    drop(f);
    // It starts, cuts the entry off and says so.
    let (_held, addr) = taken_port();
    let three = format!("127.0.0.1:1,127.0.0.1:2,{addr}");
    let (code, err) = one_replica(&root.join("replica-2"), "2", &three);
    assert_eq!(code, Some(1), "it fails only to bind: {err}");
    assert!(
        err.contains("shard-0.log: torn last entry at offset") && err.contains("bytes cut off"),
        "{err}"
    );
    // And the cluster on those directories has every write, at every replica.
    let cluster = Cluster::start_in(3, 1, &[], Some(root.clone()));
    for r in 0..3 {
        let mut c = cluster.connect(r, 0);
        for i in 0..20u32 {
            let got = c.call(Op::Get, format!("k{i}").as_bytes(), b"").unwrap();
            assert_eq!(
                (got.code, &got.value[..]),
                (Code::Value, &value(i)[..]),
                "replica {r} k{i}"
            );
        }
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_data_directory_that_cannot_be_created_or_written_is_refused_with_the_reason() {
    let root = scratch("unwritable");
    let file = root.join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let (code, err) = one_replica(&file.join("replica-0"), "0", "127.0.0.1:1");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot create it") && err.contains("Not a directory"),
        "{err}"
    );
    // A read-only file system (a tmpfs mounted read-only; needs root).
    let ro = root.join("ro");
    if let Some(_mounted) = Tmpfs::mount(&ro, "ro,size=1m") {
        let (code, err) = one_replica(&ro.join("replica-0"), "0", "127.0.0.1:1");
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("Read-only file system"), "{err}");
    }
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_full_disk_stops_the_shard_with_an_explicit_error_and_nothing_invented() {
    let root = scratch("full");
    let disk = root.join("disk");
    // 9 MiB: the log's first 4 MiB of zeros, one more 4 MiB chunk, and not
    // a third.
    let Some(mounted) = Tmpfs::mount(&disk, "size=9m") else {
        return;
    };
    let cluster = Cluster::start_in(1, 1, &[], Some(disk.clone()));
    let mut c = cluster.connect(0, 0);
    let big = vec![b'x'; 64 << 10];
    let mut done = 0u32;
    let failed = loop {
        let r = c
            .call(Op::Put, format!("k{done}").as_bytes(), &big)
            .unwrap();
        if r.code != Code::Done {
            break r;
        }
        done += 1;
        assert!(done < 1000, "9 MiB took 64 MB of values");
    };
    assert_eq!(failed.code, Code::Unavailable, "{failed:?}");
    let why = String::from_utf8_lossy(&failed.value).into_owned();
    assert!(why.contains("No space left"), "{why}");
    assert!(done > 0, "some writes fit before the disk filled");
    // The shard stays stopped: later commands get the same answer, reads
    // too, and the admin frame says why.
    let again = c.call(Op::Get, b"k0", b"").unwrap();
    assert_eq!(again.code, Code::Unavailable);
    let info = c.admin().unwrap();
    assert_eq!(info.log_failed, 1);
    drop(c);
    let mut cluster = cluster;
    cluster.terminate();
    drop(cluster);
    // What the log holds, copied off the full disk and restarted: every
    // acknowledged write, and not the one that failed.
    let copy = root.join("copy").join("replica-0");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["meta", "shard-0.log"] {
        std::fs::copy(disk.join("replica-0").join(f), copy.join(f)).unwrap();
    }
    drop(mounted);
    let cluster = Cluster::start_in(1, 1, &[], Some(root.join("copy")));
    let mut c = cluster.connect(0, 0);
    for i in 0..done {
        let got = c.call(Op::Get, format!("k{i}").as_bytes(), b"").unwrap();
        assert_eq!(
            (got.code, got.value.len()),
            (Code::Value, big.len()),
            "k{i}"
        );
    }
    // The one answered Unavailable has an unknown outcome (its write may
    // have reached the disk before the shard stopped): absent or whole.
    let got = c.call(Op::Get, format!("k{done}").as_bytes(), b"").unwrap();
    assert!(
        got.code == Code::NotFound || (got.code == Code::Value && got.value[..] == big[..]),
        "the write that failed: {got:?}"
    );
    drop(c);
    drop(cluster);
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_replica_restarted_on_an_emptied_directory_is_refused_when_its_peers_hold_its_instances() {
    let root = scratch("emptied");
    let mut cluster = Cluster::start_in(3, 1, &[], Some(root.clone()));
    // Replica 2 leads these, so its peers hold instances of its space.
    let mut c = cluster.connect(2, 0);
    for i in 0..10u32 {
        let r = c
            .call(Op::Put, format!("k{i}").as_bytes(), &value(i))
            .unwrap();
        assert_eq!(r.code, Code::Done);
    }
    drop(c);
    cluster.kill(2).unwrap();
    // Its disk "replaced": the directory is empty again.
    let dir = root.join("replica-2");
    std::fs::remove_dir_all(&dir).unwrap();
    let peers: Vec<String> = cluster.peers.iter().map(|p| p.to_string()).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_epaxos-fast"))
        .args(["--id", "2", "--peers", &peers.join(","), "--cpus", "none"])
        .args([
            "--cluster-id",
            &CLUSTER_ID.to_string(),
            "--log-level",
            "warn",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("an emptied replica was not refused within 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("refused to take part")
            && err.contains("holds instances of this replica's space"),
        "{err}"
    );
    // The other two still serve.
    let r = cluster.connect(0, 0).call(Op::Get, b"k3", b"").unwrap();
    assert_eq!((r.code, &r.value[..]), (Code::Value, &value(3)[..]));
    drop(cluster);
    let _ = std::fs::remove_dir_all(root);
}
