//! `blaster`: the load tool for epaxos-fast.
//!
//! Not built yet: it needs the replica's network runtime and client protocol
//! (see the runtime and blaster issues). Until then it says so and exits non-zero,
//! rather than pretending to measure anything.

fn main() {
    eprintln!("blaster: not implemented yet; the network runtime it drives has not landed");
    std::process::exit(2);
}
