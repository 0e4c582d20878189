//! Checks of the node's output contract, made on every frame as it leaves a
//! simulated replica (before the network can lose it):
//!
//! - **durability**: a vote (PreAcceptOk, AcceptOk) leaves only once the
//!   record of that vote is durable at its replica; a Commit only once the
//!   commit record is; a client's answer only once a commit record holding
//!   that command is durable at the replica (on any of its shards: a
//!   forwarded command commits at its owner and is answered at the shard
//!   the client is connected to);
//! - **answers**: no connection gets more answers to a request than it
//!   carried copies of it (a retry on the same connection may be answered
//!   twice, once per copy; an answer sent twice is a defect).
//!
//! What is durable is learned from the simulated storage as it becomes
//! durable, so a crash does not reset it: durable records survive.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::protocol::{Ballot, InstanceId, Message, Record, Status};

/// What one shard of one replica has made durable, as far as the checks need.
#[derive(Default)]
pub struct DurableView {
    /// Highest ballot each instance's durable records voted at.
    votes: FxHashMap<InstanceId, Ballot>,
    committed: FxHashSet<InstanceId>,
    /// How many of the storage's records have been read.
    seen: usize,
}

impl DurableView {
    /// Reads the records that became durable since the last call; returns
    /// the (client, request) of every command in a newly durable commit.
    pub fn learn(&mut self, durable: &[Record], commands: &mut FxHashSet<(u64, u64)>) {
        for rec in &durable[self.seen.min(durable.len())..] {
            let vote = self.votes.entry(rec.id).or_insert(rec.voted);
            *vote = (*vote).max(rec.voted);
            if rec.status >= Status::Committed {
                self.committed.insert(rec.id);
                commands.extend(rec.batch.iter().map(|c| (c.client, c.request)));
            }
        }
        self.seen = durable.len();
    }

    /// Why `msg` must not have left yet, if it must not.
    pub fn premature(&self, msg: &Message) -> Option<String> {
        let vote = |id: InstanceId, ballot: Ballot| {
            let durable = self.votes.get(&id).is_some_and(|&b| b >= ballot);
            (!durable).then(|| format!("a vote for {id} at {ballot:?} before the vote was durable"))
        };
        match msg {
            Message::PreAcceptOk(m) => vote(m.id, m.ballot),
            Message::AcceptOk(m) => vote(m.id, m.ballot),
            Message::Commit(m) => (!self.committed.contains(&m.id))
                .then(|| format!("a Commit of {} before its commit record was durable", m.id)),
            _ => None,
        }
    }
}

/// Per connection and request: copies that arrived, answers that left.
#[derive(Default)]
pub struct AnswerCount {
    counts: FxHashMap<ConnKey, (u32, u32)>,
}

/// A connection of one incarnation of a shard, and a request on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub replica: usize,
    pub shard: usize,
    pub incarnation: u64,
    pub conn: u64,
    pub client: u64,
    pub request: u64,
}

impl AnswerCount {
    pub fn sent(&mut self, key: ConnKey) {
        self.counts.entry(key).or_default().0 += 1;
    }

    /// Counts an answer; an error if it is one more than the copies sent.
    pub fn answered(&mut self, key: ConnKey) -> Result<(), String> {
        let (sent, answered) = self.counts.entry(key).or_default();
        *answered += 1;
        if *answered > *sent {
            return Err(format!(
                "replica {} shard {} answered request {} of client {} {} times on one \
                 connection that carried it {} times",
                key.replica, key.shard, key.request, key.client, answered, sent
            ));
        }
        Ok(())
    }
}
