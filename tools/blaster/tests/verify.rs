//! `blaster --verify` against real local clusters: a clean run verifies, and
//! a replica that acknowledges a write it never applies is caught.

mod common;

use common::short_local_run;

#[test]
fn a_clean_run_verifies() {
    let (ok, out) = short_local_run(
        "3",
        &[
            "--verify",
            "--connections",
            "4",
            "--outstanding",
            "16",
            "--keys",
            "200",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("0 lost, 0 mismatched"), "{out}");
}

/// Each replica's 5th PUT is acknowledged and dropped. One connection with
/// one request in flight, keys drawn (seeded) from 100,000: the dropped
/// write's key is not written again with this seed, so its loss must show
/// (with seed 7, for one, it is, and the later write hides the loss).
#[test]
fn verify_catches_a_lost_write() {
    let (ok, out) = short_local_run(
        "3",
        &[
            "--verify",
            "--connections",
            "1",
            "--outstanding",
            "1",
            "--keys",
            "100000",
            "--seed",
            "1",
            "--replica-arg=--test-lose-write=5",
        ],
    );
    assert!(!ok, "blaster exited 0 despite a lost write:\n{out}");
    assert!(out.contains(" 3 lost, 0 mismatched"), "{out}");
}
