//! `blaster --nemesis kill`: replicas killed with SIGKILL and restarted
//! from their data dirs under load lose no acknowledged write, and the
//! connections to them reconnect and carry on; flags that cannot work are
//! usage errors.

mod common;

use common::{blaster, blaster_exit};

/// The number before `what` on the nemesis summary line.
fn count(out: &str, what: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("nemesis: "))
        .unwrap_or_else(|| panic!("no nemesis summary in:\n{out}"));
    let before = line
        .split(what)
        .next()
        .filter(|b| b.len() < line.len())
        .unwrap_or_else(|| panic!("no {what:?} in {line:?}"));
    before
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {line:?}"))
}

/// Three replicas, a kill due about every second for 6 s, each down half a
/// second (so with F = 1 each kill waits for the last replica to be back):
/// bounded by the run's length, not by how fast this machine is.
#[test]
fn killed_replicas_come_back_and_no_acknowledged_write_is_lost() {
    let (ok, out) = blaster(&[
        "--local-cluster",
        "3",
        "--nemesis",
        "kill",
        "--nemesis-interval",
        "1",
        "--nemesis-downtime",
        "0.5",
        "--duration",
        "6",
        "--warmup",
        "0",
        "--connections",
        "6",
        "--outstanding",
        "16",
        "--keys",
        "200",
        "--verify",
        "--seed",
        "3",
    ]);
    assert!(ok, "blaster failed:\n{out}");
    assert!(out.contains(" 0 lost, 0 mismatched"), "{out}");
    let (kills, restarts) = (count(&out, " kills"), count(&out, " restarts"));
    assert!(kills >= 2, "{kills} kills:\n{out}");
    assert_eq!(kills, restarts, "{out}");
    assert!(count(&out, " reconnects") >= 1, "{out}");
    assert!(out.contains("every replica up and linked"), "{out}");
}

#[test]
fn the_nemesis_needs_a_local_cluster_of_three() {
    for (args, says) in [
        (
            &["--targets", "127.0.0.1:7000", "--nemesis", "kill"][..],
            "--nemesis needs --local-cluster",
        ),
        (
            &["--nemesis", "kill"][..],
            "--nemesis needs --local-cluster",
        ),
        (
            &["--local-cluster", "1", "--nemesis", "kill"][..],
            "3 or more replicas",
        ),
        (
            &[
                "--local-cluster",
                "3",
                "--nemesis",
                "kill",
                "--nemesis-interval",
                "0",
            ][..],
            "must be positive",
        ),
        (
            &["--local-cluster", "3", "--nemesis-downtime", "1"][..],
            "--nemesis <NEMESIS>",
        ),
    ] {
        let (code, out) = blaster_exit(args);
        assert_eq!(code, Some(2), "{args:?}:\n{out}");
        assert!(out.contains(says), "{args:?}:\n{out}");
    }
}
