//! What must survive a crash: the instance records a shard appends, and the
//! point up to which they are durable.
//!
//! The node appends each turn's records in one call and gets back a
//! [`Token`] that names "everything appended so far", then asks for them to
//! be made durable ([`Storage::sync`]). A storage that can say at once
//! answers [`Synced::Now`]; one whose sync completes later (an fdatasync
//! through io_uring, a simulated disk) answers [`Synced::Later`], and the
//! driver tells the node when that token is durable (`node::Node::durable`).
//! Only then does the node release what waited on those records. At start,
//! a shard rebuilds its state from [`Storage::load`]: the durable records,
//! in the order appended.
//!
//! This module never decides what to persist (the core does) nor when to
//! send (the node does).

pub mod file;
pub mod log;

use crate::protocol::Record;

/// Names a prefix of a storage's records: all those appended up to a call
/// of [`Storage::append`]. Tokens grow with every append that adds records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u64);

/// Whether a sync completed in the call that asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synced {
    /// Durable when the call returns.
    Now,
    /// The driver reports completion later, with `Node::durable(token)`.
    Later,
}

/// A shard's log of instance records.
pub trait Storage {
    /// Appends `records` after everything appended before. Returns the token
    /// that covers them and all earlier records.
    fn append(&mut self, records: &[Record]) -> Token;

    /// Asks for everything up to `upto` to become durable.
    fn sync(&mut self, upto: Token) -> Synced;

    /// The durable records, in the order they were appended: what a shard
    /// restarted on this storage rebuilds itself from. Called once, at start
    /// (a storage may hand its copy over rather than keep it).
    fn load(&mut self) -> Vec<Record>;
}

/// Records kept in memory. Appends become durable when the owner says so
/// ([`MemStorage::make_durable`]); a simulated crash ([`MemStorage::crash`])
/// keeps exactly the records made durable before it. The simulator uses it,
/// making appends durable after a simulated fdatasync delay, so a crash in
/// between loses them. It keeps every record for the life of the run.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    records: Vec<Record>,
    /// How many of `records` (from the start) are durable.
    durable: usize,
    /// Every sync completes in the call (`Synced::Now`), as on a storage
    /// that syncs inline; else its owner says when (`Synced::Later`).
    syncs_at_once: bool,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// A storage whose every sync completes at once.
    pub fn syncing_at_once() -> MemStorage {
        MemStorage {
            syncs_at_once: true,
            ..MemStorage::default()
        }
    }

    /// Everything appended up to `token` is durable now.
    pub fn make_durable(&mut self, token: Token) {
        let upto = usize::try_from(token.0).expect("token fits memory");
        assert!(
            upto <= self.records.len(),
            "token {token:?} beyond the appends"
        );
        self.durable = self.durable.max(upto);
    }

    /// The token covering everything appended so far.
    pub fn appended(&self) -> Token {
        Token(self.records.len() as u64)
    }

    /// The token covering everything durable so far.
    pub fn durable_token(&self) -> Token {
        Token(self.durable as u64)
    }

    /// The durable records, without copying them.
    pub fn durable_records(&self) -> &[Record] {
        &self.records[..self.durable]
    }

    /// A crash: what was appended but not made durable is gone.
    pub fn crash(&mut self) {
        self.records.truncate(self.durable);
    }

    /// Records appended and not made durable yet.
    pub fn not_durable(&self) -> usize {
        self.records.len() - self.durable
    }

    /// A crash in which the first `kept` of the records not yet made durable
    /// reached the disk anyway (a write that completed before the process
    /// died, or the prefix a torn write left, which reading back cuts at
    /// the last whole entry): they survive, the rest are gone.
    pub fn crash_keeping(&mut self, kept: usize) {
        let keep = self.durable + kept.min(self.not_durable());
        self.records.truncate(keep);
        self.durable = keep;
    }
}

impl Storage for MemStorage {
    fn append(&mut self, records: &[Record]) -> Token {
        self.records.extend_from_slice(records);
        self.appended()
    }

    /// At once if it was made so; else its owner decides when
    /// (`make_durable`), then tells the node.
    fn sync(&mut self, upto: Token) -> Synced {
        if self.syncs_at_once {
            self.make_durable(upto);
            return Synced::Now;
        }
        Synced::Later
    }

    fn load(&mut self) -> Vec<Record> {
        self.durable_records().to_vec()
    }
}

/// Nothing survives the process: what the replica binary runs on with
/// `--in-memory`. Records are counted and dropped (kept
/// in memory they would only grow, since a restarted process starts empty
/// anyway); every append is durable at once, as far as this process can
/// tell, so the node's contract holds trivially.
#[derive(Clone, Debug, Default)]
pub struct Volatile {
    appended: u64,
}

impl Storage for Volatile {
    fn append(&mut self, records: &[Record]) -> Token {
        self.appended += records.len() as u64;
        Token(self.appended)
    }

    fn sync(&mut self, _upto: Token) -> Synced {
        Synced::Now
    }

    fn load(&mut self) -> Vec<Record> {
        Vec::new()
    }
}

/// The storages the replica binary runs a shard on.
pub enum Backend {
    /// `--in-memory`: nothing survives the process.
    Memory(Volatile),
    /// The default: the shard's log file in the data directory.
    File(file::FileLog),
}

impl Storage for Backend {
    fn append(&mut self, records: &[Record]) -> Token {
        match self {
            Backend::Memory(s) => s.append(records),
            Backend::File(s) => s.append(records),
        }
    }

    fn sync(&mut self, upto: Token) -> Synced {
        match self {
            Backend::Memory(s) => s.sync(upto),
            Backend::File(s) => s.sync(upto),
        }
    }

    fn load(&mut self) -> Vec<Record> {
        match self {
            Backend::Memory(s) => s.load(),
            Backend::File(s) => s.load(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Batch;
    use crate::protocol::{Attrs, Ballot, InstanceId, ReplicaId, Status};

    fn record(slot: u64) -> Record {
        let id = InstanceId::new(ReplicaId(0), slot);
        Record {
            id,
            promised: Ballot::initial(id.replica),
            voted: Ballot::initial(id.replica),
            status: Status::PreAccepted,
            attrs: Attrs::default(),
            initial: None,
            batch: Batch::empty(),
            noop: false,
        }
    }

    #[test]
    fn a_crash_keeps_exactly_what_was_made_durable() {
        let mut s = MemStorage::new();
        let t1 = s.append(&[record(1), record(2)]);
        let t2 = s.append(&[record(3)]);
        assert!(t1 < t2);
        s.make_durable(t1);
        assert_eq!(s.load().len(), 2);
        s.crash();
        assert_eq!(s.appended(), t1);
        assert_eq!(s.load(), vec![record(1), record(2)]);
        // Durability never moves back.
        s.make_durable(Token(1));
        assert_eq!(s.durable_token(), t1);
    }

    #[test]
    fn a_crash_may_keep_a_prefix_of_what_was_not_durable_yet() {
        let mut s = MemStorage::new();
        s.append(&[record(1)]);
        s.make_durable(Token(1));
        s.append(&[record(2), record(3), record(4)]);
        assert_eq!(s.not_durable(), 3);
        s.crash_keeping(2);
        assert_eq!(s.load(), vec![record(1), record(2), record(3)]);
        assert_eq!(s.not_durable(), 0, "what survived is on disk now");
        s.append(&[record(5)]);
        s.crash_keeping(7);
        assert_eq!(s.load().len(), 4, "never more than was appended");
    }
}
