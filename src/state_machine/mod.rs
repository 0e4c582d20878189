//! What the replicated state is: the conflict relation and `apply`.
//!
//! The core orders commands; a [`StateMachine`] says which commands must be
//! ordered against each other and what executing one does. Two commands
//! conflict when they touch the same key and at least one of them writes it,
//! which is what lets the core find conflicts with one hash lookup per key.

pub mod kv;

pub use kv::{KvResult, KvStats, KvStore, Value};

/// A key as hash maps store it: short keys (up to 24 bytes) live inside the
/// map's entry, so comparing one after a hash match costs no extra cache
/// miss; longer keys spill to the heap.
pub type InlineKey = smallvec::SmallVec<[u8; 24]>;

use crate::command::CommandRef;

/// How a command uses its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Conflicts only with writes of the same key.
    Read,
    /// Conflicts with every command on the same key.
    Write,
}

/// A deterministic state machine replicated by the core.
pub trait StateMachine {
    /// The result returned to the client. Kept by the exactly-once table, so
    /// it should be cheap to clone (`Bytes`, not `Vec`).
    type Output: Clone + std::fmt::Debug;

    /// The key `cmd` touches and how, or `None` if it conflicts with nothing.
    fn conflict_key<'c>(cmd: &CommandRef<'c>) -> Option<(&'c [u8], Access)>;

    /// Executes `cmd`. Must be deterministic: every replica applies the same
    /// commands in the same order and must end in the same state.
    fn apply(&mut self, cmd: &CommandRef<'_>) -> Self::Output;

    /// Bytes a result holds beyond its fixed size: the exactly-once table
    /// keeps a large result of a read only until the client acknowledges
    /// it, and not at all past `RESULT_KEPT_BYTES_MAX` (a copy executed
    /// again reads again).
    fn result_bytes(_out: &Self::Output) -> usize {
        0
    }
}
