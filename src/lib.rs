//! epaxos-fast: a replicated key-value store ordered by EPaxos.
//!
//! - [`command`]: the command and batch format and `shard_of`, shared by all.
//! - [`protocol`]: the EPaxos core, pure and deterministic (no IO, clock or RNG).
//! - [`state_machine`]: the conflict relation and `apply`; the KV store.
//! - [`wire`]: fixed-layout records read in place from receive buffers.
//! - [`node`]: one shard above the sockets, pure: handshakes, batching,
//!   routing, forwarding, and the order persist, then send, then reply.
//! - [`resp`]: the Redis protocol (parser, commands, encoder), pure.
//! - [`storage`]: what must survive a crash (the trait, in-memory impl).
//! - [`runtime`]: the driver of the nodes: a thread and an io_uring ring per
//!   shard for sockets, the log, timers and the cross-core mesh.
//! - [`client`]: the client session (no IO) and a blocking client of the
//!   binary protocol on it (tests, tools).
//! - [`histogram`]: fixed-bucket histograms (latencies, batch sizes), pure.
//! - [`secret`]: the cluster secret and client passwords, never shown.
//! - [`harness`]: a local cluster of real replica processes (tests, blaster).
//! - [`sim`]: a deterministic cluster simulator and the correctness checkers.
//!
//! The core's call contract is in [`protocol`]'s documentation.

pub mod client;
pub mod command;
pub mod constants;
pub mod harness;
pub mod histogram;
pub mod node;
pub mod protocol;
pub mod resp;
pub mod rng;
pub mod runtime;
pub mod secret;
pub mod sim;
pub mod state_machine;
pub mod storage;
pub mod wire;
