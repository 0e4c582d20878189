//! A blocking client of the binary protocol, for tests, tools and anyone who
//! wants a few calls without an event loop. Requests are pipelined: queue
//! any number, flush them in one write, read the responses as they come.
//!
//! A connection is to one shard of one replica; the replica forwards a
//! command for a key another shard owns, so any shard will do, but a
//! shard-aware caller saves the hop (`command::shard_of`).
//!
//! Every connection gets its own random client id, and numbers its requests
//! from 1: the replica's exactly-once table is keyed by both.

use std::collections::{BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use zerocopy::{FromBytes, IntoBytes};

use crate::command::{BatchBuilder, CommandRef, Op};
use crate::constants::{CLIENT_WINDOW_REQUESTS_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::wire::client::{
    decode_hello_answer, decode_response, shard_addr, AdminInfo, HelloBody, Response, Role,
};
use crate::wire::{FrameEncoder, FrameError, FrameReader, Kind, ReadBuffer};

/// Request bytes queued before `queue` flushes on its own.
const QUEUED_BYTES_MAX: usize = 256 << 10;

#[derive(Debug)]
pub enum ClientError {
    Io(std::io::Error),
    /// The replica refused the handshake; its reason.
    Refused(String),
    /// The replica sent something this client cannot read.
    Frame(FrameError),
    /// The replica closed the connection.
    Closed,
    /// A request the client itself refuses to send.
    Invalid(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                write!(f, "timed out waiting for the replica")
            }
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Refused(why) => write!(f, "refused by the replica: {why}"),
            ClientError::Frame(e) => write!(f, "bad frame from the replica: {e}"),
            ClientError::Closed => write!(f, "the replica closed the connection"),
            ClientError::Invalid(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> ClientError {
        ClientError::Io(e)
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> ClientError {
        ClientError::Frame(e)
    }
}

/// A client id nobody else is likely to use (exactly-once is keyed by it).
pub fn fresh_client_id() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok()
    {
        return u64::from_le_bytes(bytes) | 1;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 40)) | 1
}

pub struct Connection {
    stream: TcpStream,
    reader: FrameReader,
    enc: FrameEncoder,
    rbuf: ReadBuffer,
    wbuf: BytesMut,
    queued: BatchBuilder,
    /// The replica's view: its id, N, shard count, this connection's shard.
    pub server: HelloBody,
    client: u64,
    next_request: u64,
    outstanding: BTreeSet<u64>,
    /// Answers read while waiting for another one (by `call` or `admin`),
    /// handed out by `recv` first.
    ready: VecDeque<Response>,
    /// A write failed: part of a frame may have left, so nothing more can be
    /// sent on this connection.
    broken: bool,
}

impl Connection {
    /// Connects to `shard` of the replica whose base address is `base`
    /// (shard s listens on port + s) and shakes hands. `timeout` bounds
    /// the connect and every later wait for the replica.
    pub fn connect(
        base: SocketAddr,
        shard: u8,
        cluster_id: u64,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let addr = shard_addr(base, usize::from(shard))
            .ok_or_else(|| ClientError::Invalid(format!("{base}: no port for shard {shard}")))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut c = Connection {
            stream,
            reader: FrameReader::new(cluster_id),
            enc: FrameEncoder {
                cluster_id,
                sender: 0,
                shard,
            },
            rbuf: ReadBuffer::default(),
            wbuf: BytesMut::new(),
            queued: BatchBuilder::new(),
            server: HelloBody::default(),
            client: fresh_client_id(),
            next_request: 1,
            outstanding: BTreeSet::new(),
            ready: VecDeque::new(),
            broken: false,
        };
        let hello = HelloBody {
            role: Role::Client as u8,
            shard,
            ..HelloBody::default()
        };
        c.send_frame(Kind::Hello, hello.as_bytes())?;
        let frame = c.next_frame()?;
        c.server = decode_hello_answer(frame.kind, &frame.body)?.map_err(ClientError::Refused)?;
        Ok(c)
    }

    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// Requests whose answer `recv` has not returned yet (including answers
    /// `call` or `admin` read past and keep for it): drain with
    /// `while c.outstanding() > 0 { c.recv()?; }`.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len() + self.ready.len()
    }

    /// Queues one command; returns its request number. Nothing is sent
    /// before `flush` (or until enough is queued).
    pub fn queue(&mut self, op: Op, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        if key.len() > KEY_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
            return Err(ClientError::Invalid(format!(
                "key of {} bytes or value of {} (limits {KEY_BYTES_MAX}, {VALUE_BYTES_MAX})",
                key.len(),
                value.len()
            )));
        }
        if op != Op::Put && !value.is_empty() {
            return Err(ClientError::Invalid(format!("{op:?} takes no value")));
        }
        let request = self.next_request;
        let first = self.outstanding.first().copied().unwrap_or(request);
        if request - first >= CLIENT_WINDOW_REQUESTS_MAX {
            return Err(ClientError::Invalid(format!(
                "request {request} while {first} is unanswered: more than \
                 {CLIENT_WINDOW_REQUESTS_MAX} apart"
            )));
        }
        self.next_request += 1;
        self.outstanding.insert(request);
        self.queued.push(&CommandRef {
            client: self.client,
            request,
            first_outstanding: first,
            op,
            key,
            value,
        });
        if self.queued.bytes_len() >= QUEUED_BYTES_MAX {
            self.flush()?;
        }
        Ok(request)
    }

    /// Sends every queued command in one frame.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let batch = self.queued.finish();
        self.send_frame(Kind::Request, batch.bytes())
    }

    /// The next response (flushing first).
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        self.flush()?;
        if let Some(r) = self.ready.pop_front() {
            return Ok(r);
        }
        if self.outstanding.is_empty() {
            return Err(ClientError::Invalid(
                "no request is waiting for an answer".into(),
            ));
        }
        self.read_response()
    }

    /// One command, answered. Answers to other requests that arrive first
    /// are kept for `recv`.
    pub fn call(&mut self, op: Op, key: &[u8], value: &[u8]) -> Result<Response, ClientError> {
        let request = self.queue(op, key, value)?;
        self.flush()?;
        loop {
            let r = self.read_response()?;
            if r.request == request {
                return Ok(r);
            }
            self.ready.push_back(r);
        }
    }

    /// The shard's digest and counters. Answers that arrive first are kept
    /// for `recv`.
    pub fn admin(&mut self) -> Result<AdminInfo, ClientError> {
        self.flush()?;
        self.send_frame(Kind::Admin, &[])?;
        loop {
            let frame = self.next_frame()?;
            if frame.kind == Kind::AdminInfo {
                return AdminInfo::read_from_bytes(&frame.body).map_err(|_| {
                    ClientError::Frame(FrameError::BadBody {
                        kind: Kind::AdminInfo,
                        reason: format!("{} bytes", frame.body.len()),
                    })
                });
            }
            if let Some(r) = self.response(frame)? {
                self.ready.push_back(r);
            }
        }
    }

    /// The next answer to an outstanding request, read from the socket.
    fn read_response(&mut self) -> Result<Response, ClientError> {
        loop {
            let frame = self.next_frame()?;
            if let Some(r) = self.response(frame)? {
                return Ok(r);
            }
        }
    }

    /// A Response frame for this client, checked; `None` for an answer to a
    /// request answered already (a retry).
    fn response(&mut self, frame: crate::wire::Frame) -> Result<Option<Response>, ClientError> {
        if frame.kind != Kind::Response {
            return Err(ClientError::Frame(FrameError::Unexpected {
                kind: frame.kind,
                reason: "waiting for a Response",
            }));
        }
        let response = decode_response(&frame.body)?;
        if response.client != self.client {
            return Err(ClientError::Frame(FrameError::Unexpected {
                kind: Kind::Response,
                reason: "an answer for another client",
            }));
        }
        Ok(self
            .outstanding
            .remove(&response.request)
            .then_some(response))
    }

    fn send_frame(&mut self, kind: Kind, body: &[u8]) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Invalid(
                "an earlier write to the replica failed: reconnect".into(),
            ));
        }
        self.wbuf.clear();
        self.enc
            .frame(&mut self.wbuf, kind, |b| b.extend_from_slice(body));
        let written = self.stream.write_all(&self.wbuf);
        self.broken = written.is_err();
        Ok(written?)
    }

    fn next_frame(&mut self) -> Result<crate::wire::Frame, ClientError> {
        loop {
            if let Some(f) = self.reader.next(self.rbuf.received())? {
                return Ok(f);
            }
            let n = self.stream.read(self.rbuf.room());
            self.rbuf.filled(*n.as_ref().unwrap_or(&0));
            if n? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}
