//! The core benchmark's workload for a fixed number of rounds, for tools that
//! count instead of time: `valgrind --tool=cachegrind` gives the same
//! instruction and simulated-miss counts on every run, whatever the machine
//! is doing.
//!
//! `cargo build --release --example core_rounds`
//! `valgrind --tool=cachegrind --cache-sim=yes --LL=2097152,16,64 \
//!     target/release/examples/core_rounds 5 256 0 200`
//! (replicas, batch, conflicts percent 0 or 100, rounds)

use std::time::Instant;

use epaxos_fast::sim::wired::{RoundWorkload, WiredCluster};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(i: usize, name: &str, default: u64) -> u64 {
    match std::env::args().nth(i) {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|e| {
            eprintln!("core_rounds: bad {name} {s:?}: {e}");
            std::process::exit(2)
        }),
    }
}

fn main() {
    let replicas = arg(1, "replicas", 5) as usize;
    let batch = arg(2, "batch", 256) as usize;
    let conflicts = arg(3, "conflicts percent", 0) as u32;
    let rounds = arg(4, "rounds", 200);
    let mut cluster = WiredCluster::new(replicas, |_| {});
    let mut work = RoundWorkload::new(replicas, batch, conflicts);
    let started = Instant::now();
    for _ in 0..rounds {
        for (r, b) in work.next_round().into_iter().enumerate() {
            cluster.propose(r, b);
        }
        cluster.run_until_quiet();
    }
    let commands = rounds * (replicas * batch) as u64;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{commands} commands in {secs:.3} s: {:.0} commands/s (replicas {replicas}, batch {batch}, conflicts {conflicts}%)",
        commands as f64 / secs
    );
}
