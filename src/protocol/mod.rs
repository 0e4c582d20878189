//! The EPaxos core: pure, deterministic, no IO, no clock, no randomness.
//!
//! A [`Replica`] is driven by four calls, each taking the current time as a
//! plain number of nanoseconds and writing what it wants done into an
//! [`Outbox`] the caller owns:
//!
//! - [`Replica::propose`]: a batch of client commands becomes one instance;
//! - [`Replica::handle`]: a message from a peer;
//! - [`Replica::tick`]: time passed (re-sends to silent peers, recovery checks);
//! - [`Replica::next_deadline`]: when `tick` next has something to do.
//!
//! See [`outbox`] for what the caller must do with the output, in which order.
//! The same core runs under the real runtime and under the simulator, which is
//! what makes every simulated failure replayable from its seed.
//!
//! What is implemented (Moraru, Andersen, Kaminsky, "There Is More Consensus
//! in Egalitarian Parliaments", SOSP 2013): PreAccept / Accept / Commit with
//! the optimized fast quorum F + floor((F+1)/2), thrifty or send-to-all, batched
//! instances, execution by strongly connected components; recovery of a
//! silent leader's instances by EPaxos* (see `recovery.rs`), and restart of a
//! crashed replica from the records it persisted ([`Replica::restore`]).
//! Message loss is survived by re-sending to peers that have not answered.

pub mod config;
mod exec;
mod hash;
mod index;
mod lead;
pub mod leader;
pub mod message;
mod ops;
pub mod outbox;
mod recovery;
mod replica;
mod sessions;
mod space;
mod stable;
pub mod types;

pub use config::{Config, ConfigError, InjectedBug};
pub use index::SessionBounds;
pub use leader::ProposeError;
pub use message::{
    AcceptOk, CommitOk, Message, Nack, PreAccept, PreAcceptOk, Prepare, PrepareOk, Progress,
    Validate, ValidateOk, Value, Waiting,
};
pub use outbox::{Outbox, Record, Refused, Reply, TraceEvent};
pub use replica::{Replica, ReplicaStats};
pub use types::{Attrs, Ballot, Deps, Initial, InstanceId, ReplicaId, Slot, Status};
