//! The Redis protocol (RESP2 and RESP3), pure: cutting a byte stream into
//! commands ([`parse`]), reading what each asks for ([`command`]), and
//! writing replies ([`encode`]).
//!
//! The node (`node/resp.rs`) turns the commands into the store's commands
//! and the answers into replies; the runtime only hands it bytes. Nothing
//! here does IO, reads a clock or allocates per command on the hot path
//! (`GET`, `SET`): arguments are spans of the receive buffer.
//!
//! A hand-written parser rather than a crate: `examples/resp_parse.rs`
//! measures it against `redis-protocol` (see ARCHITECTURE.md, "The RESP
//! front").

pub mod command;
pub mod encode;
pub mod parse;

pub use command::{interpret, Request, SetIf};
pub use encode::Encoder;
pub use parse::{Args, Parser, ProtocolError};
