//! Simulated clients: each keeps up to `pipeline` requests in flight, sends
//! each as a real Request frame over a simulated connection to a random
//! shard of a random replica (so commands for keys another shard owns are
//! forwarded), and re-sends it elsewhere when no answer came in time. What
//! they see is the history the linearizability checker judges.

use super::cluster::{EventKind, Sim, CLUSTER_ID, MESSAGE_DELAY_NS};
use super::contract::ConnKey;
use super::linearizability::{HistoryOp, OpKind};
use super::SimConfig;
use crate::command::{BatchBuilder, CommandRef, Op};
use crate::node::ConnId;
use crate::wire::client::{decode_response, Code, HelloBody, Role};
use crate::wire::{Frame, FrameEncoder, Kind};

const CLIENT_TIMEOUT_NS: u64 = 60_000_000;
const THINK_NS_MAX: u64 = 1_000_000;
const SHARED_KEYS: u64 = 3;
/// Counters every client INCRs (keys `n0`, `n1`): no other command touches
/// them, so `sim::counters` can check them exactly.
const COUNTER_KEYS: u64 = 2;
const CLIENT_ID_BASE: u64 = 1000;

pub(super) enum ClientEvent {
    /// A request frame reaches shard `shard` of `replica`.
    Arrive {
        client: usize,
        replica: usize,
        shard: usize,
        frame: Frame,
    },
    Reply {
        client: usize,
        /// The session the answer is for: one the client left is moot.
        id: u64,
        request: u64,
        code: Code,
        value: Vec<u8>,
    },
    Timeout {
        client: usize,
        request: u64,
        attempt: u32,
    },
    Next {
        client: usize,
    },
}

struct InFlight {
    request: u64,
    op: Op,
    key: Vec<u8>,
    value: Vec<u8>,
    invoke_ns: u64,
    attempt: u32,
}

pub(super) struct Client {
    id: u64,
    /// Requests not yet completed.
    pub ops_left: usize,
    /// Requests not yet scheduled to be issued.
    unscheduled: usize,
    next_request: u64,
    /// Up to `SimConfig::pipeline` requests at once.
    in_flight: Vec<InFlight>,
    /// `[replica][shard]`: the connection, and the incarnation it is to.
    conns: Vec<Vec<Option<(u64, ConnId)>>>,
}

impl Client {
    pub fn all(cfg: &SimConfig) -> Vec<Client> {
        (0..cfg.clients)
            .map(|i| Client {
                id: CLIENT_ID_BASE + i as u64,
                ops_left: cfg.ops_per_client,
                unscheduled: cfg.ops_per_client,
                next_request: 1,
                in_flight: Vec::new(),
                conns: vec![vec![None; cfg.shards]; cfg.replicas],
            })
            .collect()
    }
}

fn frame(shard: usize, kind: Kind, body: &[u8]) -> Frame {
    let enc = FrameEncoder {
        cluster_id: CLUSTER_ID,
        sender: 0,
        shard: shard as u8,
    };
    enc.encoded(kind, body)
}

impl Sim<'_> {
    pub(super) fn start_clients(&mut self) {
        for c in 0..self.clients.len() {
            for _ in 0..self.cfg.pipeline.min(self.cfg.ops_per_client) {
                self.clients[c].unscheduled -= 1;
                let at = self.rng.below(THINK_NS_MAX);
                self.schedule(at, EventKind::Client(ClientEvent::Next { client: c }));
            }
        }
    }

    pub(super) fn on_client_event(&mut self, e: ClientEvent) {
        match e {
            ClientEvent::Arrive {
                client,
                replica,
                shard,
                frame,
            } => self.arrive(client, replica, shard, frame),
            ClientEvent::Reply {
                client,
                id,
                request,
                code,
                value,
            } => {
                if self.clients[client].id == id {
                    self.on_reply(client, request, code, value)
                }
            }
            ClientEvent::Timeout {
                client,
                request,
                attempt,
            } => self.on_client_timeout(client, request, attempt),
            ClientEvent::Next { client } => self.client_next(client),
        }
    }

    fn client_next(&mut self, c: usize) {
        let cfg = self.cfg;
        let client = &mut self.clients[c];
        assert!(client.in_flight.len() < cfg.pipeline);
        let request = client.next_request;
        client.next_request += 1;
        let id = client.id;
        let key = if self.rng.chance(cfg.conflicts_pct) {
            format!("shared{}", self.rng.below(SHARED_KEYS))
        } else {
            format!("c{c}k{}", self.rng.below(cfg.keys_per_client))
        };
        let mut key = key;
        let (op, value) = if self.rng.chance(cfg.reads_pct) {
            (Op::Get, Vec::new())
        } else if self.rng.chance(10) {
            (Op::Delete, Vec::new())
        } else if self.rng.chance(cfg.rmw_pct) {
            let value = format!("c{id}r{request}").into_bytes();
            match self.rng.below(3) {
                0 => {
                    // Counter keys see INCRs only (`sim::counters`).
                    key = format!("n{}", self.rng.below(COUNTER_KEYS));
                    (Op::Incr, 1i64.to_le_bytes().to_vec())
                }
                1 => (Op::PutIfAbsent, value),
                _ => (Op::PutIfPresent, value),
            }
        } else {
            (Op::Put, format!("c{id}r{request}").into_bytes())
        };
        self.clients[c].in_flight.push(InFlight {
            request,
            op,
            key: key.into_bytes(),
            value,
            invoke_ns: self.now,
            attempt: 0,
        });
        self.client_send(c, request);
    }

    /// Sends (or re-sends) one of the client's requests to a random shard of
    /// a random replica, telling it the oldest request the client still
    /// waits for.
    fn client_send(&mut self, c: usize, request: u64) {
        let replica = self.rng.below(self.cfg.replicas as u64) as usize;
        let shard = self.rng.below(self.cfg.shards as u64) as usize;
        let at = self.now + self.delay();
        let client = &self.clients[c];
        let first_outstanding = client.in_flight.iter().map(|f| f.request).min();
        let current = client
            .in_flight
            .iter()
            .find(|f| f.request == request)
            .expect("a request in flight");
        let mut batch = BatchBuilder::new();
        batch.push(&CommandRef {
            client: client.id,
            request,
            first_outstanding: first_outstanding.expect("one in flight"),
            op: current.op,
            key: &current.key,
            value: &current.value,
        });
        let frame = frame(shard, Kind::Request, batch.finish().bytes());
        let timeout = ClientEvent::Timeout {
            client: c,
            request,
            attempt: current.attempt,
        };
        let arrive = ClientEvent::Arrive {
            client: c,
            replica,
            shard,
            frame,
        };
        self.schedule(at, EventKind::Client(arrive));
        self.schedule(self.now + CLIENT_TIMEOUT_NS, EventKind::Client(timeout));
    }

    /// A request frame reaches a shard: over the client's connection to it,
    /// opened (with a Hello) if this incarnation has none yet.
    fn arrive(&mut self, c: usize, r: usize, s: usize, frame: Frame) {
        if self.down[r] {
            return;
        }
        let incarnation = self.incarnation[r];
        let conn = match self.clients[c].conns[r][s] {
            Some((i, conn)) if i == incarnation => conn,
            _ => {
                let conn = self.call(r, s, |node, _| node.accept());
                let hello = HelloBody {
                    role: Role::Client as u8,
                    shard: s as u8,
                    ..HelloBody::default()
                };
                let hello = frame_of(s, &hello);
                self.call(r, s, |node, now| node.on_frame(now, conn, hello))
                    .expect("a client's hello is accepted");
                self.clients[c].conns[r][s] = Some((incarnation, conn));
                conn
            }
        };
        let batch = crate::command::Batch::parse(frame.body.clone()).expect("own request");
        for cmd in batch.iter() {
            self.answers.sent(ConnKey {
                replica: r,
                shard: s,
                incarnation,
                conn: conn.0,
                client: cmd.client,
                request: cmd.request,
            });
        }
        if let Err(e) = self.call(r, s, |node, now| node.on_frame(now, conn, frame)) {
            self.violations.push(format!(
                "wire: replica {r} shard {s} refused a client frame: {e:?}"
            ));
        }
        self.turn_soon(r, s);
    }

    /// A frame leaves shard `s` of `r` for a client connection: checks the
    /// contract, then carries an answer to its client.
    pub(super) fn answer_leaves(&mut self, r: usize, s: usize, conn: ConnId, frame: Frame) {
        if frame.kind != Kind::Response {
            return; // the HelloOk
        }
        let response = decode_response(&frame.body).expect("a node encodes valid responses");
        let key = ConnKey {
            replica: r,
            shard: s,
            incarnation: self.incarnation[r],
            conn: conn.0,
            client: response.client,
            request: response.request,
        };
        if let Err(e) = self.answers.answered(key) {
            self.violations.push(format!("answers: {e}"));
        }
        let executed = matches!(
            response.code,
            Code::Done | Code::Value | Code::NotFound | Code::Integer | Code::NotDone
        );
        if executed && !self.durable_commands[r].contains(&(response.client, response.request)) {
            self.violations.push(format!(
                "durability: replica {r} shard {s} answered request {} of client {} \
                 before a commit holding it was durable there (at {} ns)",
                response.request, response.client, self.now
            ));
        }
        let client = ((response.client - CLIENT_ID_BASE) % self.clients.len() as u64) as usize;
        let reply = ClientEvent::Reply {
            client,
            id: response.client,
            request: response.request,
            code: response.code,
            value: response.value.to_vec(),
        };
        self.schedule(self.now + MESSAGE_DELAY_NS, EventKind::Client(reply));
    }

    fn on_client_timeout(&mut self, c: usize, request: u64, attempt: u32) {
        let in_flight = &mut self.clients[c].in_flight;
        let Some(current) = in_flight.iter_mut().find(|f| f.request == request) else {
            return;
        };
        if current.attempt != attempt {
            return;
        }
        current.attempt += 1;
        self.client_send(c, request);
    }

    fn on_reply(&mut self, c: usize, request: u64, code: Code, value: Vec<u8>) {
        let client = &mut self.clients[c];
        let Some(i) = client.in_flight.iter().position(|f| f.request == request) else {
            return; // a late duplicate answer
        };
        let sent = &client.in_flight[i];
        let put_if = |applied| OpKind::PutIf {
            present: sent.op == Op::PutIfPresent,
            value: sent.value.clone(),
            applied: Some(applied),
        };
        let (kind, read) = match (sent.op, code) {
            (Op::Get, Code::Value) => (OpKind::Get, Some(value)),
            (Op::Get, Code::NotFound) => (OpKind::Get, None),
            (Op::Put, Code::Done) => (OpKind::Put(sent.value.clone()), None),
            (Op::Delete, Code::Done) => (OpKind::DeleteFound(true), None),
            (Op::Delete, Code::NotFound) => (OpKind::DeleteFound(false), None),
            (Op::PutIfAbsent | Op::PutIfPresent, Code::Done) => (put_if(true), None),
            (Op::PutIfAbsent | Op::PutIfPresent, Code::NotDone) => (put_if(false), None),
            (Op::Incr, Code::Integer) if value.len() == 8 => {
                let sum = i64::from_le_bytes(value[..].try_into().expect("8 bytes"));
                (OpKind::Incr { sum: Some(sum) }, None)
            }
            // Recovery replaced the command's instance with a no-op: it did
            // not run; the client sends it again when its timer fires.
            (_, Code::Overloaded) => return,
            (_, Code::SessionExpired) => return self.session_expired(c, &value),
            (op, code) => {
                let why = format!("client {c}: answer {code:?} does not fit {op:?} {request}");
                self.violations.push(why);
                return;
            }
        };
        let done = client.in_flight.swap_remove(i);
        self.history.push(HistoryOp {
            client: client.id,
            key: done.key,
            kind,
            invoke_ns: done.invoke_ns,
            return_ns: Some(self.now),
            read,
        });
        client.ops_left -= 1;
        self.last_completion_ns = self.now;
        if self.faults_on {
            self.ops_during_faults += 1;
        }
        if client.ops_left == 0 {
            self.clients_done += 1;
        } else if client.unscheduled > 0 {
            client.unscheduled -= 1;
            let at = self.now + self.rng.below(THINK_NS_MAX);
            self.schedule(at, EventKind::Client(ClientEvent::Next { client: c }));
        }
    }
}

impl Sim<'_> {
    /// The client's session expired: what it had in flight has an unknown
    /// outcome (open-ended in the history: it may have taken effect), and
    /// it goes on under a new id at or above the watermark it was told, as
    /// the client library does.
    fn session_expired(&mut self, c: usize, value: &[u8]) {
        let Ok(retired_below) = <[u8; 8]>::try_from(value).map(u64::from_le_bytes) else {
            self.violations
                .push(format!("client {c}: SessionExpired without a watermark"));
            return;
        };
        self.sessions_expired += 1;
        let n = self.clients.len() as u64;
        let client = &mut self.clients[c];
        // Ids of client c are BASE + c + k * n: unique, and answers map back.
        let mut id = client.id + n;
        if id < retired_below {
            id += (retired_below - id).div_ceil(n) * n;
        }
        let lost = client.in_flight.len();
        for done in client.in_flight.drain(..) {
            let kind = match done.op {
                Op::Get => OpKind::Get,
                Op::Put => OpKind::Put(done.value),
                Op::Delete => OpKind::Delete,
                Op::Incr => OpKind::Incr { sum: None },
                Op::PutIfAbsent | Op::PutIfPresent => OpKind::PutIf {
                    present: done.op == Op::PutIfPresent,
                    value: done.value,
                    applied: None,
                },
                Op::Expire => unreachable!("the simulator's clients send no Expire"),
            };
            self.history.push(HistoryOp {
                client: client.id,
                key: done.key,
                kind,
                invoke_ns: done.invoke_ns,
                return_ns: None,
                read: None,
            });
        }
        client.id = id;
        client.next_request = 1;
        client.ops_left -= lost;
        let next = lost.min(client.unscheduled);
        client.unscheduled -= next;
        if client.ops_left == 0 {
            self.clients_done += 1;
        }
        for _ in 0..next {
            let at = self.now + self.rng.below(THINK_NS_MAX);
            self.schedule(at, EventKind::Client(ClientEvent::Next { client: c }));
        }
    }
}

fn frame_of(shard: usize, hello: &HelloBody) -> Frame {
    frame(shard, Kind::Hello, zerocopy::IntoBytes::as_bytes(hello))
}
