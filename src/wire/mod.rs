//! Fixed-layout wire records.
//!
//! Everything that crosses a process boundary is laid out here as `#[repr(C)]`
//! structs with explicit little-endian integers, read in place from a received
//! buffer through zerocopy:
//! - [`command`]: the command record; the core stores batches in this format,
//!   so a batch received from the network becomes an instance without copying
//!   a key or a value;
//! - [`frame`]: the header in front of every frame, and frame splitting;
//! - [`peer`]: the protocol messages between replicas;
//! - [`client`]: the handshake, client requests and responses, admin.

pub mod client;
pub mod command;
pub mod frame;
pub mod peer;

pub use command::{Batch, BatchBuilder, CommandError, CommandHeader, CommandRef, Op};
pub use frame::{Frame, FrameEncoder, FrameError, FrameReader, Kind};
