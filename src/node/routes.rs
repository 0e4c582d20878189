//! Client commands in, answers out: which shard owns a command, where its
//! answer goes, and the messages shards of one replica send each other.
//!
//! A command for a key this shard owns joins the turn's batch, and its
//! route (the connection, on this shard or another, that waits) is kept
//! until it is answered. A command another shard owns is forwarded to it
//! with this shard's connection as the route; the answer comes back as a
//! [`Cross::Answer`].

use bytes::Bytes;

use super::{ConnId, Node, NodeBug, Output};
use crate::command::{shard_of, Batch, BatchBuilder, CommandRef, Op};
use crate::constants::{BATCH_BYTES_MAX, CLIENT_SEND_BUFFER_BYTES_MAX};
use crate::protocol::{Refused, Reply};
use crate::state_machine::KvResult;
use crate::storage::Storage;
use crate::wire::client::{put_response, Code};
use crate::wire::Kind;

/// The text of an INCR's `Code::Error` on a value that is not an integer
/// (Redis's words, which its clients know).
pub const NOT_AN_INTEGER: &[u8] = b"value is not an integer or out of range";

/// Who waits for a command's answer: connection `conn` of shard `origin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Route {
    pub origin: u8,
    pub conn: ConnId,
}

/// A command's route, and how many copies of it (a client's retries) this
/// shard still expects an outcome for: a copy that did not run (its
/// instance became a no-op, the window was full, or it was a stale retry)
/// leaves the route to the copies still on their way.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    route: Route,
    copies: u32,
}

/// An answer to one command, as it crosses to another shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub client: u64,
    pub request: u64,
    pub code: Code,
    pub value: Bytes,
}

/// What shards of one replica send each other.
#[derive(Clone, Debug)]
pub enum Cross {
    /// Commands of a client connected to shard `origin`, for the receiving
    /// shard, which owns their keys.
    Commands {
        origin: u8,
        conn: ConnId,
        batch: Batch,
    },
    /// The answer to a command forwarded by the receiving shard.
    Answer { conn: ConnId, answer: Answer },
}

impl<S: Storage> Node<S> {
    /// Why client commands are answered `Unavailable`: the shard stopped,
    /// or more than F peers refuse its configuration.
    fn unavailable(&self) -> Option<String> {
        self.failed.clone().or_else(|| self.misconfigured())
    }

    /// A client's Request: the commands this shard owns join the open batch,
    /// the others go to their shards, one batch per shard.
    pub(super) fn on_request(&mut self, conn: ConnId, batch: &Batch) {
        self.on_request_grouped(conn, batch, false);
    }

    /// `on_request`; with `group`, the batch's commands (all for one shard)
    /// stay together in one instance (`submit_group`): a RESP MSET.
    pub(super) fn on_request_grouped(&mut self, conn: ConnId, batch: &Batch, group: bool) {
        if let Some(why) = self.unavailable().or_else(|| self.stopping.clone()) {
            if self.stopping.is_some() {
                self.counters.refused_stopping += batch.len() as u64;
            }
            for cmd in batch.iter() {
                self.respond(
                    conn,
                    cmd.client,
                    cmd.request,
                    Code::Unavailable,
                    why.as_bytes(),
                );
            }
            return;
        }
        let me = self.cfg.shard;
        let route = Route {
            origin: me as u8,
            conn,
        };
        if group && batch.iter().all(|c| shard_of(c.key, self.cfg.shards) == me) {
            return self.submit_group(route, batch);
        }
        // Kept across requests: no allocation per forwarded request.
        let mut others = std::mem::take(&mut self.forward);
        for cmd in batch.iter() {
            if cmd.op == Op::Expire {
                let why = b"Expire is proposed by replicas only";
                self.respond(conn, cmd.client, cmd.request, Code::Error, why);
                continue;
            }
            let owner = shard_of(cmd.key, self.cfg.shards);
            if owner == me {
                self.submit(route, &cmd);
            } else {
                others.resize_with(self.cfg.shards, BatchBuilder::new);
                others[owner].push(&cmd);
            }
        }
        for (owner, builder) in others.iter_mut().enumerate() {
            if !builder.is_empty() {
                let batch = builder.finish();
                self.counters.forwarded_out += batch.len() as u64;
                self.push_cross(
                    owner,
                    Cross::Commands {
                        origin: me as u8,
                        conn,
                        batch,
                    },
                );
            }
        }
        self.forward = others;
    }

    /// What another shard of this replica sent.
    pub fn on_cross(&mut self, msg: Cross) {
        match msg {
            Cross::Commands {
                origin,
                conn,
                batch,
            } => {
                if let Some(why) = self.unavailable() {
                    for cmd in batch.iter() {
                        let answer = Answer {
                            client: cmd.client,
                            request: cmd.request,
                            code: Code::Unavailable,
                            value: Bytes::copy_from_slice(why.as_bytes()),
                        };
                        self.push_cross(usize::from(origin), Cross::Answer { conn, answer });
                    }
                    return;
                }
                self.counters.forwarded_in += batch.len() as u64;
                self.submit_group(Route { origin, conn }, &batch);
            }
            Cross::Answer { conn, answer } => {
                self.counters.forwarded_answers += 1;
                self.respond(
                    conn,
                    answer.client,
                    answer.request,
                    answer.code,
                    &answer.value,
                )
            }
        }
    }

    /// Queues commands this shard owns for the next instances, all in one
    /// instance if they fit in one (`--batch-max`, `BATCH_BYTES_MAX`): the
    /// open batch is closed first if they would not fit beside what it
    /// holds. A forwarded batch is kept together, and a RESP MSET (at most
    /// `--batch-max` puts, checked there) is atomic.
    fn submit_group(&mut self, route: Route, batch: &Batch) {
        let fits_alone =
            batch.len() <= self.cfg.batch_max && batch.bytes().len() <= BATCH_BYTES_MAX;
        let fits_beside = self.open.len() + batch.len() <= self.cfg.batch_max
            && self.open.bytes_len() + batch.bytes().len() <= BATCH_BYTES_MAX;
        if fits_alone && !fits_beside && !self.open.is_empty() {
            let open = self.open.finish();
            self.closed.push_back(open);
        }
        for cmd in batch.iter() {
            self.submit(route, &cmd);
        }
    }

    /// Queues a command this shard owns for the next instance.
    fn submit(&mut self, route: Route, cmd: &CommandRef<'_>) {
        // The latest copy's connection is the one the client still reads.
        let p = self
            .pending
            .entry((cmd.client, cmd.request))
            .or_insert(Pending { route, copies: 0 });
        p.route = route;
        p.copies += 1;
        if self.cfg.test_lose_write != 0 && cmd.op == Op::Put {
            self.counters.puts_seen += 1;
            if self.counters.puts_seen == self.cfg.test_lose_write {
                tracing::warn!("--test-lose-write: acknowledging a PUT and dropping it");
                self.answer(cmd.client, cmd.request, Code::Done, b"");
                return;
            }
        }
        if !self.open.is_empty() && !self.open.fits(cmd, self.cfg.batch_max) {
            let batch = self.open.finish();
            self.closed.push_back(batch);
        }
        self.open.push(cmd);
    }

    fn push_cross(&mut self, to: usize, msg: Cross) {
        self.cross[to].push(msg);
        if !self.cross_listed[to] {
            self.cross_listed[to] = true;
            self.outputs.push_back(Output::Cross(to));
        }
    }

    /// A reply of the core, released after its records are durable.
    pub(super) fn reply(&mut self, reply: Reply<KvResult>) {
        let retired;
        let sum;
        let (code, value): (Code, &[u8]) = match &reply.result {
            Ok(KvResult::Done) => (Code::Done, b""),
            Ok(KvResult::Value(v)) => (Code::Value, v.as_slice()),
            Ok(KvResult::NotFound) => (Code::NotFound, b""),
            Ok(KvResult::Integer(n)) => {
                sum = n.to_le_bytes();
                (Code::Integer, &sum[..])
            }
            Ok(KvResult::NotDone) => (Code::NotDone, b""),
            Ok(KvResult::NotAnInteger) => (Code::Error, NOT_AN_INTEGER),
            Err(Refused::BeyondClientWindow) => (Code::BeyondWindow, b""),
            Err(Refused::SessionExpired { retired_below }) => {
                retired = retired_below.to_le_bytes();
                (Code::SessionExpired, &retired[..])
            }
            // Retryable, with the reason as text, like a full window.
            Err(e @ Refused::Superseded) => {
                let reason = e.to_string();
                self.copy_did_not_run(reply.client, reply.request, Some(&reason));
                return;
            }
            // The client is past this request: forget the copy's route (it
            // would otherwise stay for the life of the shard), answer nobody.
            Err(Refused::Acknowledged) => {
                self.copy_did_not_run(reply.client, reply.request, None);
                return;
            }
        };
        self.answer(reply.client, reply.request, code, value);
    }

    /// One copy of a command did not run. If no other copy is still on its
    /// way, its route goes, answered `Overloaded` with `reason` if given
    /// (the client may send it again); else the other copies answer.
    pub(super) fn copy_did_not_run(&mut self, client: u64, request: u64, reason: Option<&str>) {
        let key = (client, request);
        let Some(p) = self.pending.get_mut(&key) else {
            return;
        };
        p.copies -= 1;
        if p.copies > 0 {
            return;
        }
        match reason {
            Some(why) => self.answer(client, request, Code::Overloaded, why.as_bytes()),
            None => {
                self.pending.remove(&key);
            }
        }
    }

    /// Routes the answer to a command this shard owns to whoever waits.
    pub(super) fn answer(&mut self, client: u64, request: u64, code: Code, value: &[u8]) {
        let Some(Pending { route, .. }) = self.pending.remove(&(client, request)) else {
            return; // a duplicate, or answered already
        };
        if usize::from(route.origin) == self.cfg.shard {
            self.respond(route.conn, client, request, code, value);
            return;
        }
        let answer = Answer {
            client,
            request,
            code,
            value: Bytes::copy_from_slice(value),
        };
        let origin = usize::from(route.origin);
        if self.cfg.node_bug == Some(NodeBug::AnswerForwardedTwice) {
            let copy = Cross::Answer {
                conn: route.conn,
                answer: answer.clone(),
            };
            self.push_cross(origin, copy);
        }
        let conn = route.conn;
        self.push_cross(origin, Cross::Answer { conn, answer });
    }

    /// Writes a response to a client connection of this shard, if it is
    /// still there.
    pub(super) fn respond(
        &mut self,
        conn: ConnId,
        client: u64,
        request: u64,
        code: Code,
        value: &[u8],
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        if c.resp.is_some() {
            return self.resp_answer(conn, client, request, code, value);
        }
        if c.out.len() > CLIENT_SEND_BUFFER_BYTES_MAX {
            // The client does not read its answers: close it rather than
            // hold them without bound.
            tracing::warn!(
                "client connection {}: over {CLIENT_SEND_BUFFER_BYTES_MAX} bytes of \
                 unread responses; closing it",
                conn.0
            );
            self.close_conn(conn);
            return;
        }
        self.enc.frame(&mut c.out, Kind::Response, |b| {
            put_response(b, client, request, code, value)
        });
        self.counters.responses += 1;
        if !c.listed {
            c.listed = true;
            self.outputs.push_back(Output::Conn(conn));
        }
    }
}
