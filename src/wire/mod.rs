//! Fixed-layout wire records.
//!
//! Everything that crosses a process boundary is laid out here as `#[repr(C)]`
//! structs with explicit little-endian integers, read in place from a received
//! buffer through zerocopy. Only the command record exists so far: the core
//! stores batches in this format, so a batch received from the network becomes
//! an instance without copying a key or a value.

pub mod command;

pub use command::{Batch, BatchBuilder, CommandError, CommandHeader, CommandRef, Op};
