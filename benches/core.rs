//! The EPaxos core alone, no IO: replicas wired in memory, commands per
//! second through propose -> commit -> execute (every replica executes every
//! command). Each round, every replica proposes one batch of `batch`
//! commands from `batch` closed-loop clients, then messages are delivered
//! until none is left (CommitOks included). The 1-replica group is the
//! unreplicated baseline.
//!
//! Run: `cargo bench --bench core`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use epaxos_fast::sim::wired::WiredCluster;
use epaxos_fast::wire::{Batch, BatchBuilder, CommandRef, Op};

/// As in the real binary: the allocator is part of what is measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VALUE: &[u8; 16] = b"0123456789abcdef";

/// Builds each round's batches; keys and clients are fixed per replica so
/// the key space (and memory) stays bounded however long criterion runs.
struct Workload {
    replicas: usize,
    batch: usize,
    hot: bool,
    round: u64,
    keys: Vec<Vec<Vec<u8>>>,
    builder: BatchBuilder,
}

impl Workload {
    fn new(replicas: usize, batch: usize, conflicts_pct: u32) -> Workload {
        let keys = (0..replicas)
            .map(|r| {
                (0..batch)
                    .map(|i| format!("r{r}-client{i}").into_bytes())
                    .collect()
            })
            .collect();
        Workload {
            replicas,
            batch,
            hot: conflicts_pct == 100,
            round: 0,
            keys,
            builder: BatchBuilder::new(),
        }
    }

    fn next_round(&mut self) -> Vec<Batch> {
        self.round += 1;
        (0..self.replicas)
            .map(|r| {
                for i in 0..self.batch {
                    let key: &[u8] = if self.hot { b"hot" } else { &self.keys[r][i] };
                    self.builder.push(&CommandRef {
                        client: (r * self.batch + i) as u64 + 1,
                        request: self.round,
                        first_outstanding: self.round,
                        op: Op::Put,
                        key,
                        value: VALUE,
                    });
                }
                self.builder.finish()
            })
            .collect()
    }
}

fn bench_cluster(c: &mut Criterion, replicas: usize) {
    let mut group = c.benchmark_group(format!("core_{replicas}_replicas"));
    for conflicts in [0u32, 100] {
        for batch in [1usize, 16, 256] {
            group.throughput(Throughput::Elements((replicas * batch) as u64));
            let name = format!("conflicts_{conflicts}pct/batch_{batch}");
            group.bench_function(name, |b| {
                let mut cluster = WiredCluster::new(replicas, |_| {});
                let mut work = Workload::new(replicas, batch, conflicts);
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
                assert_eq!(executed, work.round * (replicas * batch) as u64);
            });
        }
    }
    group.finish();
}

fn five_replicas(c: &mut Criterion) {
    bench_cluster(c, 5);
}

fn one_replica(c: &mut Criterion) {
    bench_cluster(c, 1);
}

criterion_group!(benches, five_replicas, one_replica);
criterion_main!(benches);
