//! Commands and batches of them, in the one byte format that the wire, the
//! core and the KV store all share; and `shard_of`, which says which shard
//! owns a key.
//!
//! This module sits below `protocol/` and `state_machine/`: it imports
//! nothing from them, nor from `wire/`. A batch received from the network
//! becomes an instance without a key or value being copied, because the
//! core keeps batches in exactly this format.

mod batch;
mod shard;

pub use batch::{
    Batch, BatchBuilder, CommandError, CommandHeader, CommandIter, CommandRef, Op,
    COMMAND_HEADER_BYTES, INCR_VALUE_BYTES,
};
pub use shard::{fnv1a, shard_of, FNV_OFFSET_BASIS};
