//! The EPaxos core alone, no IO: replicas wired in memory, commands per
//! second through propose -> commit -> execute (every replica executes every
//! command). Each round, every replica proposes one batch of `batch`
//! commands from `batch` closed-loop clients, then messages are delivered
//! until none is left (CommitOks included). The 1-replica group is the
//! unreplicated baseline. The `_1M_keys` groups write a million distinct
//! keys, each command a cold one.
//!
//! Run: `cargo bench --bench core`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use epaxos_fast::sim::wired::{RoundWorkload, WiredCluster};

/// As in the real binary: the allocator is part of what is measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_cluster(c: &mut Criterion, replicas: usize) {
    let mut group = c.benchmark_group(format!("core_{replicas}_replicas"));
    for conflicts in [0u32, 100] {
        for batch in [1usize, 16, 256] {
            group.throughput(Throughput::Elements((replicas * batch) as u64));
            let name = format!("conflicts_{conflicts}pct/batch_{batch}");
            group.bench_function(name, |b| {
                let mut cluster = WiredCluster::new(replicas, |_| {});
                let mut work = RoundWorkload::new(replicas, batch, conflicts);
                // Batches are encoded outside the timed part, one round at a
                // time (criterion's iter_batched would hold thousands of rounds
                // in memory and measure cache misses on them).
                b.iter_custom(|rounds| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..rounds {
                        let batches = work.next_round();
                        let start = Instant::now();
                        for (r, batch) in batches.into_iter().enumerate() {
                            cluster.propose(r, batch);
                        }
                        cluster.run_until_quiet();
                        timed += start.elapsed();
                    }
                    timed
                });
                let executed = cluster.replicas[0].stats().executed_commands;
                assert_eq!(executed, work.rounds() * (replicas * batch) as u64);
            });
        }
    }
    group.finish();
}

/// Every command writes a cold key of a million (`RoundWorkload::spread_over`),
/// and 1 µs of virtual time passes per command (a cluster doing a million
/// commands a second), so that progress reports flow and the conflict index
/// forgets keys as it does under a real clock.
fn bench_million_keys(c: &mut Criterion, replicas: usize) {
    let mut group = c.benchmark_group(format!("core_{replicas}_replicas_1M_keys"));
    for batch in [16usize, 256] {
        group.throughput(Throughput::Elements((replicas * batch) as u64));
        group.bench_function(format!("conflicts_0pct/batch_{batch}"), |b| {
            let mut cluster = WiredCluster::new(replicas, |_| {});
            let mut work = RoundWorkload::new(replicas, batch, 0).spread_over(1_000_000);
            // Every key written once first: the store holds a million keys.
            while work.rounds() * ((replicas * batch) as u64) < 1_000_000 {
                run_round(&mut cluster, &mut work);
            }
            b.iter_custom(|rounds| {
                let mut timed = Duration::ZERO;
                for _ in 0..rounds {
                    timed += run_round(&mut cluster, &mut work);
                }
                timed
            });
            let held = cluster.replicas[0].indexed_keys();
            assert!(held < 1_000_000 / 4, "the index held {held} keys");
        });
    }
    group.finish();
}

fn run_round(cluster: &mut WiredCluster, work: &mut RoundWorkload) -> Duration {
    let batches = work.next_round();
    let commands: usize = batches.iter().map(|b| b.len()).sum();
    cluster.pass_time(1_000 * commands as u64);
    let start = Instant::now();
    for (r, batch) in batches.into_iter().enumerate() {
        cluster.propose(r, batch);
    }
    cluster.run_until_quiet();
    start.elapsed()
}

fn five_replicas(c: &mut Criterion) {
    bench_cluster(c, 5);
    bench_million_keys(c, 5);
}

fn one_replica(c: &mut Criterion) {
    bench_cluster(c, 1);
    bench_million_keys(c, 1);
}

criterion_group!(benches, five_replicas, one_replica);
criterion_main!(benches);
