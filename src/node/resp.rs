//! RESP connections (`--resp`): a Redis client's commands become the
//! store's commands, and their answers become replies, in the order the
//! commands came.
//!
//! Each connection is one exactly-once client session: a client id the
//! driver hands in (`Node::accept_resp`; the node draws no random numbers)
//! and request numbers counting up from 1. A command that needs the store
//! (GET, SET, INCR, ...) becomes one command record per key; the records
//! of one read of the socket are gathered into one batch and go through
//! `on_request`, exactly as a binary client's Request does: those for this
//! shard join the turn's batch, the others go to their shard over the
//! mesh. Replies are written only after execution, as for binary clients.
//!
//! Ordering: every reply has a place in the connection's reply queue when
//! its command is read; answers fill their places as they come (across
//! shards and instances they complete out of order) and the queue's front
//! is written out as soon as it is complete.
//!
//! The window: at most `CLIENT_WINDOW_REQUESTS_MAX` request numbers past
//! the oldest unanswered one. A command that would pass it is left unread
//! in the driver's buffer (`RespFed::blocked`); once answers free the
//! window the node asks for the bytes again (`Output::Resume`).
//!
//! Sessions expire (`Code::SessionExpired`: the command did not run):
//! the connection asks the driver for a fresh id above the watermark
//! (`Output::ClientId`), and sends every command that did not run again
//! under it, in their order. `Overloaded` (did not run) is answered
//! `-BUSY`, not re-sent: a later command of the same connection may have
//! run meanwhile, and re-sending would reorder them. `Unavailable` is
//! `-CLUSTERDOWN` with the reason.
//!
//! MSET is atomic: its puts go as one batch of their own, kept whole into
//! one instance (`Node::submit_group`).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;

use super::{ConnId, Node, Output};
use crate::command::{shard_of, Batch, CommandRef, Op};
use crate::constants::{
    BATCH_BYTES_MAX, BATCH_COMMANDS_MAX, CLIENT_SEND_BUFFER_BYTES_MAX, CLIENT_WINDOW_REQUESTS_MAX,
    KEY_BYTES_MAX,
};
use crate::resp::{interpret, Args, Encoder, Parser, ProtocolError, Request, SetIf};
use crate::storage::Storage;
use crate::wire::client::Code;

/// What one feed of bytes did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RespFed {
    /// Bytes read (whole commands); the rest stays with the driver.
    pub consumed: usize,
    /// A whole command is waiting for the window (or a new session id): the
    /// bytes left are not a stalled partial command. `Output::Resume`
    /// names the connection when they may be fed again.
    pub blocked: bool,
}

/// Why a RESP connection ends, from the node's side; its last reply is
/// queued (the driver writes it, then closes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespEnd {
    Quit,
    Protocol(ProtocolError),
}

/// How one answer becomes (part of) a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Get,
    Set,
    /// SET NX or XX: nil when the condition failed.
    SetIf,
    /// DEL, EXISTS: the count of keys removed or found, summed over parts.
    Count,
    Incr,
    /// MGET: one element of an array.
    Element,
    /// MSET: +OK once every part is done.
    AllDone,
}

/// One command record waiting for its answer.
pub(super) struct Waiter {
    /// The reply it is part of, and which part.
    reply: u64,
    part: u32,
    shape: Shape,
    /// Part of an MSET: sent again, if it must be, with its group.
    group: bool,
    /// The record as sent, for sending again under a new session.
    record: Bytes,
    /// Sent again once already after a session expired.
    again: bool,
}

/// A reply's place in the queue.
#[derive(Default)]
struct Reply {
    /// Parts still to come.
    left: u32,
    out: BytesMut,
    /// MGET's elements, in order, once each came.
    elements: Vec<Option<BytesMut>>,
    count: i64,
    /// The first error of any part replaces the whole reply.
    error: Option<String>,
}

/// One RESP connection's state.
pub(super) struct RespConn {
    pub enc: Encoder,
    pub name: Option<String>,
    pub client: u64,
    next_request: u64,
    /// The oldest unanswered request of `client` (or `next_request`), and
    /// whether each from there on was answered.
    first_outstanding: u64,
    answered: VecDeque<bool>,
    waiting: FxHashMap<(u64, u64), Waiter>,
    replies: VecDeque<Reply>,
    /// The number of `replies.front()`, and of the next reply.
    reply_base: u64,
    next_reply: u64,
    /// Waiting for a new client id (`Output::ClientId`).
    renewing: bool,
    /// Did not run under an expired session: to be sent again.
    again: Vec<Waiter>,
    blocked: bool,
    quit: bool,
    parser: Parser,
}

impl RespConn {
    pub fn new(client: u64) -> RespConn {
        RespConn {
            enc: Encoder::default(),
            name: None,
            client,
            next_request: 1,
            first_outstanding: 1,
            answered: VecDeque::new(),
            waiting: FxHashMap::default(),
            replies: VecDeque::new(),
            reply_base: 0,
            next_reply: 0,
            renewing: false,
            again: Vec::new(),
            blocked: false,
            quit: false,
            parser: Parser::new(),
        }
    }

    /// Room for `n` more request numbers in the window.
    fn room(&self, n: usize) -> bool {
        self.next_request + n as u64 - self.first_outstanding <= CLIENT_WINDOW_REQUESTS_MAX
    }

    /// Request `request` of the current session was answered.
    fn answered(&mut self, request: u64) {
        let Some(i) = request.checked_sub(self.first_outstanding) else {
            return;
        };
        if let Some(a) = self.answered.get_mut(i as usize) {
            *a = true;
        }
        while self.answered.front() == Some(&true) {
            self.answered.pop_front();
            self.first_outstanding += 1;
        }
    }

    fn new_reply(&mut self, parts: u32) -> u64 {
        let n = self.next_reply;
        self.next_reply += 1;
        self.replies.push_back(Reply {
            left: parts,
            ..Reply::default()
        });
        n
    }

    fn reply_mut(&mut self, n: u64) -> Option<&mut Reply> {
        let i = n.checked_sub(self.reply_base)?;
        self.replies.get_mut(i as usize)
    }

    /// Moves every complete reply at the front into `out`.
    fn flush(&mut self, out: &mut BytesMut) {
        while self.replies.front().is_some_and(|r| r.left == 0) {
            let r = self.replies.pop_front().expect("checked");
            self.reply_base += 1;
            out.extend_from_slice(&r.out);
        }
    }
}

/// A staged record's waiter, keyed by (client, request), and its span in
/// the read's batch.
pub(super) type StagedWaiter = ((u64, u64), Waiter, usize, usize);

/// One store command of a RESP command, before it has a request number.
struct Staged<'a> {
    op: Op,
    key: &'a [u8],
    value: &'a [u8],
}

/// What reading one command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Read,
    /// Not read: it waits for the window or a new session id.
    Blocked,
    Quit,
    /// Like QUIT, without its `+OK`: the reply already written says why
    /// (the last allowed wrong password).
    Close,
}

impl<S: Storage> Node<S> {
    /// A RESP connection was accepted, as client `client` (a fresh id from
    /// `client::fresh_client_id`). `Err` carries its id when it is one too
    /// many (`--max-clients`): the error reply is queued, and the driver
    /// writes it and closes.
    pub fn accept_resp(&mut self, remote: String, client: u64) -> Result<ConnId, ConnId> {
        // No handshake, so no nonce: a RESP client proves only the password.
        let id = self.accept_from(remote, super::auth::Nonce::default());
        let c = self.conns.get_mut(&id).expect("just accepted");
        c.who = super::Peer::Client;
        c.resp = Some(Box::new(RespConn::new(client)));
        self.clients += 1;
        if self.clients > self.cfg.max_clients {
            let why = format!(
                "ERR max number of clients reached ({} on shard {}, --max-clients)",
                self.cfg.max_clients, self.cfg.shard
            );
            self.resp_now(id, |e, b| e.error(b, &why));
            return Err(id);
        }
        Ok(id)
    }

    /// A fresh client id above `above` for a connection whose session
    /// expired (answering `Output::ClientId`): the commands that did not
    /// run go again under it, then the connection reads on.
    pub fn resp_client_id(&mut self, conn: ConnId, client: u64) {
        let Some(r) = self.resp_conn(conn) else {
            return;
        };
        r.client = client;
        r.next_request = 1;
        r.first_outstanding = 1;
        r.answered.clear();
        r.renewing = false;
        self.send_again(conn);
        self.resume_if_free(conn);
    }

    pub(super) fn resp_conn(&mut self, conn: ConnId) -> Option<&mut RespConn> {
        self.conns.get_mut(&conn)?.resp.as_deref_mut()
    }

    /// Bytes from RESP connection `conn`: reads every whole command at
    /// their start (see `RespFed`). `Err`: the connection ends once the
    /// reply queued last is written.
    pub fn on_resp_bytes(
        &mut self,
        now: u64,
        conn: ConnId,
        bytes: &[u8],
    ) -> Result<RespFed, RespEnd> {
        self.resp_clock_ns = now;
        let Some(r) = self.resp_conn(conn) else {
            return Ok(RespFed {
                consumed: bytes.len(),
                blocked: false,
            });
        };
        if r.quit {
            // Nothing after QUIT is read; it ends once its +OK is out.
            r.blocked = !r.replies.is_empty();
            if r.blocked {
                return Ok(RespFed {
                    consumed: 0,
                    blocked: true,
                });
            }
            return Err(RespEnd::Quit);
        }
        r.blocked = false;
        let mut parser = std::mem::take(&mut r.parser);
        let (mut at, mut blocked, mut end) = (0, false, None);
        while end.is_none() {
            match parser.next(&bytes[at..]) {
                Ok(None) => break,
                Err(e) => {
                    self.resp_now(conn, |enc, b| enc.error(b, &format!("ERR {e}")));
                    end = Some(RespEnd::Protocol(e));
                }
                Ok(Some(n)) => {
                    let args = parser.args(&bytes[at..at + n]);
                    let step = if args.is_empty() {
                        Step::Read
                    } else {
                        self.resp_command(conn, args)
                    };
                    match step {
                        Step::Read => at += n,
                        Step::Blocked => {
                            blocked = true;
                            break;
                        }
                        Step::Quit | Step::Close => {
                            at += n;
                            blocked = !self.resp_quit_now(conn, step == Step::Quit);
                            if !blocked {
                                end = Some(RespEnd::Quit);
                            }
                            break;
                        }
                    }
                }
            }
        }
        self.flush_staged(conn, false);
        if let Some(r) = self.resp_conn(conn) {
            r.parser = parser;
            r.blocked = blocked;
        }
        match end {
            Some(e) => Err(e),
            None => Ok(RespFed {
                consumed: at,
                blocked,
            }),
        }
    }

    /// QUIT: `+OK` once every earlier reply is out; whether it is now.
    fn resp_quit_now(&mut self, conn: ConnId, ok: bool) -> bool {
        if ok {
            self.resp_now(conn, |e, b| e.ok(b));
        }
        let r = self.resp_conn(conn).expect("a RESP connection");
        r.quit = true;
        r.replies.is_empty()
    }

    /// One command's reply that needs nothing of the store: written at once
    /// if no reply is pending before it, else queued complete.
    pub(super) fn resp_now(&mut self, conn: ConnId, f: impl FnOnce(&Encoder, &mut BytesMut)) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(r) = c.resp.as_deref_mut() else {
            return;
        };
        if r.replies.is_empty() {
            f(&r.enc, &mut c.out);
        } else {
            let n = r.new_reply(0);
            let enc = r.enc;
            f(&enc, &mut r.reply_mut(n).expect("just queued").out);
        }
        self.conn_written(conn);
    }

    /// Names the connection as having bytes to send; closes one that does
    /// not read its replies.
    fn conn_written(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.out.len() > CLIENT_SEND_BUFFER_BYTES_MAX {
            tracing::warn!(
                "RESP connection {}: over {CLIENT_SEND_BUFFER_BYTES_MAX} bytes of unread \
                 replies; closing it",
                conn.0
            );
            self.close_conn(conn);
            return;
        }
        if !c.out.is_empty() && !c.listed {
            c.listed = true;
            self.outputs.push_back(Output::Conn(conn));
        }
    }

    fn resp_command(&mut self, conn: ConnId, args: Args<'_>) -> Step {
        let req = match interpret(args) {
            Ok(req) => req,
            Err(text) => {
                self.resp_now(conn, |e, b| e.error(b, &text));
                return Step::Read;
            }
        };
        if !self.is_authenticated(conn)
            && !matches!(req, Request::Auth(_) | Request::Hello(_) | Request::Quit)
        {
            self.resp_now(conn, |e, b| e.error(b, "NOAUTH Authentication required."));
            return Step::Read;
        }
        let stored = match req {
            Request::Auth(args) => return self.resp_auth(conn, &args),
            Request::Hello(args) => return self.resp_hello(conn, args),
            Request::Get(key) => self.store_one(conn, Op::Get, key, b"", Shape::Get),
            Request::Set { key, value, cond } => {
                let (op, shape) = match cond {
                    SetIf::Always => (Op::Put, Shape::Set),
                    SetIf::Absent => (Op::PutIfAbsent, Shape::SetIf),
                    SetIf::Present => (Op::PutIfPresent, Shape::SetIf),
                };
                self.store_one(conn, op, key, value, shape)
            }
            Request::IncrBy(key, delta) => {
                let value = delta.to_le_bytes();
                self.store_one(conn, Op::Incr, key, &value, Shape::Incr)
            }
            Request::Del(keys) => self.store_keys(conn, keys, Op::Delete, Shape::Count),
            Request::Exists(keys) => self.store_keys(conn, keys, Op::Get, Shape::Count),
            Request::MGet(keys) => self.store_keys(conn, keys, Op::Get, Shape::Element),
            Request::MSet(pairs) => self.store_pairs(conn, pairs),
            Request::Quit => return Step::Quit,
            local => {
                self.resp_local(conn, local);
                return Step::Read;
            }
        };
        match stored {
            Ok(step) => step,
            Err(text) => {
                self.resp_now(conn, |e, b| e.error(b, &text));
                Step::Read
            }
        }
    }

    fn store_one(
        &mut self,
        conn: ConnId,
        op: Op,
        key: &[u8],
        value: &[u8],
        shape: Shape,
    ) -> Result<Step, String> {
        Ok(self.store_staged(conn, &[staged(op, key, value)], shape, false))
    }

    /// DEL, EXISTS, MGET of one key, or of several on one shard.
    fn store_keys(
        &mut self,
        conn: ConnId,
        keys: Args<'_>,
        op: Op,
        shape: Shape,
    ) -> Result<Step, String> {
        self.one_shard(keys.iter())?;
        let cmds: Vec<Staged<'_>> = keys.iter().map(|k| staged(op, k, b"")).collect();
        Ok(self.store_staged(conn, &cmds, shape, false))
    }

    /// MSET: every key on one shard, at most `--batch-max` of them (and the
    /// window), so that its puts fit in one instance.
    fn store_pairs(&mut self, conn: ConnId, pairs: Args<'_>) -> Result<Step, String> {
        let n = pairs.len() / 2;
        let most = self.cfg.batch_max.min(CLIENT_WINDOW_REQUESTS_MAX as usize);
        if n > most {
            return Err(format!(
                "ERR MSET of {n} keys: at most {most} in one command (--batch-max and the \
                 client window), so that it applies atomically"
            ));
        }
        self.one_shard((0..n).map(|i| pairs.get(2 * i)))?;
        let cmds: Vec<Staged<'_>> = (0..n)
            .map(|i| staged(Op::Put, pairs.get(2 * i), pairs.get(2 * i + 1)))
            .collect();
        let bytes: usize = cmds.iter().map(|c| 32 + c.key.len() + c.value.len()).sum();
        if bytes > BATCH_BYTES_MAX {
            return Err(format!(
                "ERR MSET of {bytes} bytes of records: at most {BATCH_BYTES_MAX} in one command"
            ));
        }
        Ok(self.store_staged(conn, &cmds, Shape::AllDone, true))
    }

    /// Several keys must be on one shard (`-CROSSSLOT` otherwise).
    fn one_shard<'k>(&self, mut keys: impl Iterator<Item = &'k [u8]>) -> Result<(), String> {
        let Some(first) = keys.next() else {
            return Ok(());
        };
        let s = shard_of(first, self.cfg.shards);
        if keys.all(|k| shard_of(k, self.cfg.shards) == s) {
            Ok(())
        } else {
            Err("CROSSSLOT Keys in request don't hash to the same shard".into())
        }
    }

    /// Gives the commands of one RESP command request numbers and stages
    /// them in the read's batch, with one reply place for them all.
    fn store_staged(
        &mut self,
        conn: ConnId,
        cmds: &[Staged<'_>],
        shape: Shape,
        group: bool,
    ) -> Step {
        let refused = if let Some(long) = cmds.iter().find(|c| c.key.len() > KEY_BYTES_MAX) {
            Some(format!(
                "ERR key of {} bytes (at most {KEY_BYTES_MAX})",
                long.key.len()
            ))
        } else if cmds.len() as u64 > CLIENT_WINDOW_REQUESTS_MAX {
            // It could never fit in the window: it would wait for ever.
            Some(format!(
                "ERR {} keys in one command: at most {CLIENT_WINDOW_REQUESTS_MAX}",
                cmds.len()
            ))
        } else {
            None
        };
        if let Some(text) = refused {
            self.resp_now(conn, |e, b| e.error(b, &text));
            return Step::Read;
        }
        let r = self.resp_conn(conn).expect("a RESP connection");
        if r.renewing || !r.room(cmds.len()) {
            return Step::Blocked;
        }
        let reply = r.new_reply(cmds.len() as u32);
        if shape == Shape::Element {
            r.reply_mut(reply).expect("just queued").elements = vec![None; cmds.len()];
        }
        if group {
            self.flush_staged(conn, false);
        }
        for (part, c) in cmds.iter().enumerate() {
            let w = Waiter {
                reply,
                part: part as u32,
                shape,
                group,
                record: Bytes::new(),
                again: false,
            };
            self.stage(conn, c.op, c.key, c.value, w);
        }
        if group {
            self.flush_staged(conn, true);
        }
        Step::Read
    }

    /// Puts one command record in the read's batch under the connection's
    /// next request number.
    fn stage(&mut self, conn: ConnId, op: Op, key: &[u8], value: &[u8], w: Waiter) {
        let r = self.resp_conn(conn).expect("a RESP connection");
        let cmd = CommandRef {
            client: r.client,
            request: r.next_request,
            first_outstanding: r.first_outstanding,
            op,
            key,
            value,
        };
        r.next_request += 1;
        r.answered.push_back(false);
        if !self.resp_batch.fits(&cmd, BATCH_COMMANDS_MAX) {
            self.flush_staged(conn, false);
        }
        let start = self.resp_batch.bytes_len();
        self.resp_batch.push(&cmd);
        let end = self.resp_batch.bytes_len();
        self.resp_staged
            .push(((cmd.client, cmd.request), w, start, end));
    }

    /// Sends what is staged: waiters first (an answer may come at once),
    /// then the batch, through the same path as a binary Request.
    fn flush_staged(&mut self, conn: ConnId, group: bool) {
        if self.resp_batch.is_empty() {
            return;
        }
        let batch = self.resp_batch.finish();
        let mut staged = std::mem::take(&mut self.resp_staged);
        if let Some(r) = self.resp_conn(conn) {
            for (key, mut w, start, end) in staged.drain(..) {
                w.record = batch.bytes().slice(start..end);
                r.waiting.insert(key, w);
            }
        }
        self.resp_staged = staged;
        self.on_request_grouped(conn, &batch, group);
    }

    /// Sends again, under the connection's new session and in their
    /// order, the commands that did not run under the old one.
    fn send_again(&mut self, conn: ConnId) {
        let Some(r) = self.resp_conn(conn) else {
            return;
        };
        let mut again = std::mem::take(&mut r.again);
        again.sort_by_key(|w| (w.reply, w.part));
        let i = 0;
        while i < again.len() {
            let group = again[i].group;
            let mut j = i + 1;
            while group && j < again.len() && again[j].reply == again[i].reply {
                j += 1;
            }
            if group {
                self.flush_staged(conn, false);
            }
            for w in again.drain(i..j).collect::<Vec<_>>() {
                let record = w.record.clone();
                let Ok(batch) = Batch::parse(record) else {
                    continue; // built by this node: always valid
                };
                let Some(cmd) = batch.iter().next() else {
                    continue;
                };
                let w = Waiter { again: true, ..w };
                self.stage(conn, cmd.op, cmd.key, cmd.value, w);
            }
            if group {
                self.flush_staged(conn, true);
            }
            // `drain` moved the rest down: go on from `i`.
        }
        self.flush_staged(conn, false);
    }

    /// An answer for a RESP connection (`respond` found one).
    pub(super) fn resp_answer(
        &mut self,
        conn: ConnId,
        client: u64,
        request: u64,
        code: Code,
        value: &[u8],
    ) {
        let Some(r) = self.resp_conn(conn) else {
            return;
        };
        let Some(w) = r.waiting.remove(&(client, request)) else {
            return; // a duplicate
        };
        if client == r.client {
            r.answered(request);
        }
        if code == Code::SessionExpired && !w.again {
            r.again.push(w);
            let above = value
                .get(..8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            if client == r.client && !r.renewing {
                r.renewing = true;
                self.outputs.push_back(Output::ClientId { conn, above });
            } else if !r.renewing {
                self.send_again(conn); // a late one of an older session
            }
            return;
        }
        self.counters.responses += 1;
        let c = self.conns.get_mut(&conn).expect("checked");
        let r = c.resp.as_deref_mut().expect("checked");
        let (enc, front) = (r.enc, w.reply == r.reply_base);
        if let Some(reply) = r.reply_mut(w.reply) {
            if front {
                // The common case: written straight out, not buffered.
                render(&enc, reply, &w, code, value, &mut c.out);
            } else {
                let mut out = std::mem::take(&mut reply.out);
                render(&enc, reply, &w, code, value, &mut out);
                reply.out = out;
            }
        }
        r.flush(&mut c.out);
        self.conn_written(conn);
        self.resume_if_free(conn);
    }

    /// A blocked connection whose window freed (or whose QUIT may now be
    /// answered) is fed again.
    fn resume_if_free(&mut self, conn: ConnId) {
        let Some(r) = self.resp_conn(conn) else {
            return;
        };
        let free = !r.renewing && r.room(1);
        let quit_done = r.quit && r.replies.is_empty();
        if r.blocked && (free || quit_done) {
            r.blocked = false;
            self.outputs.push_back(Output::Resume(conn));
        }
    }
}

fn staged<'a>(op: Op, key: &'a [u8], value: &'a [u8]) -> Staged<'a> {
    Staged { op, key, value }
}

/// An answer's text as an error reply, if it is one.
fn error_text(code: Code, value: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(value);
    Some(match code {
        Code::Overloaded => format!("BUSY {text}; the command did not run, send it again"),
        Code::Unavailable => format!("CLUSTERDOWN {text}"),
        Code::Error => format!("ERR {text}"),
        Code::BeyondWindow => "ERR request number beyond the client window".into(),
        Code::SessionExpired => "ERR session expired, outcome unknown".into(),
        _ => return None,
    })
}

/// Fills one part of a reply from its answer; the last part writes the
/// whole reply to `out`.
fn render(
    enc: &Encoder,
    reply: &mut Reply,
    w: &Waiter,
    code: Code,
    value: &[u8],
    out: &mut BytesMut,
) {
    reply.left -= 1;
    if let Some(text) = error_text(code, value) {
        reply.error.get_or_insert(text);
    } else {
        match w.shape {
            Shape::Get => {}
            Shape::Element => {
                let mut b = BytesMut::new();
                match code {
                    Code::Value => enc.bulk(&mut b, value),
                    _ => enc.null(&mut b),
                }
                reply.elements[w.part as usize] = Some(b);
            }
            Shape::Set | Shape::AllDone => {}
            Shape::SetIf => reply.count += i64::from(code == Code::Done),
            Shape::Count => reply.count += i64::from(matches!(code, Code::Done | Code::Value)),
            Shape::Incr => {
                let n = value
                    .get(..8)
                    .map_or(0, |b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
                reply.count = n;
            }
        }
    }
    if reply.left > 0 {
        return;
    }
    if let Some(text) = &reply.error {
        return enc.error(out, text);
    }
    match w.shape {
        Shape::Get if code == Code::Value => enc.bulk(out, value),
        Shape::Get => enc.null(out),
        Shape::Set | Shape::AllDone => enc.ok(out),
        Shape::SetIf if reply.count > 0 => enc.ok(out),
        Shape::SetIf => enc.null(out),
        Shape::Count | Shape::Incr => enc.integer(out, reply.count),
        Shape::Element => {
            enc.array(out, reply.elements.len());
            for e in reply.elements.drain(..) {
                out.extend_from_slice(&e.unwrap_or_default());
            }
        }
    }
}
