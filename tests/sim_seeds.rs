//! Simulator seeds run in CI: 1,000 each for 3 and 5 replicas, spread over the
//! fault mixes and conflict rates, plus a few for 1, 7 and 9 replicas and in
//! thrifty mode, several shards a replica, a node pipeline of one, and a
//! storage that syncs at once. The long soaks are `epaxos-sim` commands (see
//! the README).

use epaxos_fast::sim::{self, FaultMix, SimConfig};

fn run_seeds(replicas: usize, seeds: std::ops::Range<u64>, tweak: impl Fn(&mut SimConfig)) {
    let mut failed = Vec::new();
    for seed in seeds {
        let mut cfg = SimConfig::new(seed, replicas);
        // Rotate through fault mixes and conflict rates with the seed.
        cfg.faults = FaultMix::ALL[(seed % FaultMix::ALL.len() as u64) as usize];
        cfg.conflicts_pct = [0, 10, 50, 100][(seed / FaultMix::ALL.len() as u64 % 4) as usize];
        tweak(&mut cfg);
        let report = sim::run(&cfg);
        if !report.passed() {
            failed.push(format!(
                "seed {seed}: {}\n  replay: {}",
                report.failures.join("; "),
                cfg.replay_command()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn three_replicas_1000_seeds() {
    run_seeds(3, 0..1000, |_| {});
}

#[test]
fn five_replicas_1000_seeds() {
    run_seeds(5, 0..1000, |_| {});
}

#[test]
fn five_replicas_thrifty() {
    run_seeds(5, 1000..1060, |c| c.thrifty = true);
}

#[test]
fn pipelined_clients() {
    // Several requests in flight per client: exactly-once windows, results
    // forgotten on acknowledgement, retries of older requests. Conflict rates
    // stay at or below 50 %: with every request on three keys, the
    // linearizability search over that much overlap takes seconds a seed
    // (the soak in the README covers it).
    let pipelined = |c: &mut SimConfig, depth| {
        c.pipeline = depth;
        c.conflicts_pct = c.conflicts_pct.min(50);
    };
    run_seeds(5, 2000..2100, |c| pipelined(c, 4));
    run_seeds(3, 2000..2100, |c| pipelined(c, 4));
}

#[test]
fn one_seven_and_nine_replicas() {
    run_seeds(1, 0..20, |_| {});
    run_seeds(7, 0..40, |_| {});
    run_seeds(9, 0..20, |_| {});
}

#[test]
fn several_shards_forward_commands() {
    // Clients send to any shard; commands for another shard's keys are
    // forwarded to it and answered back through the shard they came in on.
    run_seeds(3, 3000..3150, |c| c.shards = 2);
    run_seeds(5, 3000..3060, |c| c.shards = 3);
}

#[test]
fn a_shallow_node_pipeline() {
    // Batches wait while the shard leads this many uncommitted instances.
    run_seeds(5, 4000..4100, |c| c.node_pipeline = 1);
}

#[test]
fn storage_that_syncs_at_once() {
    // As the runtime's storage does today: each turn's output leaves within
    // the turn; crashes armed for a sync strike after a call instead.
    run_seeds(3, 5000..5150, |c| c.sync_at_once = true);
    run_seeds(5, 5000..5060, |c| {
        c.sync_at_once = true;
        c.shards = 2;
    });
}
