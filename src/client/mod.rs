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
//!
//! What a client says and how it reads the answers is the [`Session`]'s,
//! which does no IO; a [`Connection`] is a blocking socket around one.

mod session;

pub use session::{Received, Session, SessionError};

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;

use crate::command::Op;
use crate::secret::Secret;
use crate::wire::client::{shard_addr, AdminInfo, HelloBody, Response};
use crate::wire::{Frame, FrameError, FrameReader, ReadBuffer};

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

impl From<SessionError> for ClientError {
    fn from(e: SessionError) -> ClientError {
        match e {
            SessionError::Refused(why) => ClientError::Refused(why),
            SessionError::Frame(e) => ClientError::Frame(e),
            e @ (SessionError::WindowFull { .. } | SessionError::Invalid(_)) => {
                ClientError::Invalid(e.to_string())
            }
        }
    }
}

/// Bits below the time in a client id: a random number drawn once per
/// process, plus a count of the ids it made.
const CLIENT_ID_LOW_BITS: u32 = 32;

/// A client id nobody else is likely to use (exactly-once is keyed by it):
/// the wall clock's seconds above 32 bits that are a per-process random
/// start plus a per-process count, so that ids of one process never
/// collide and those of two processes collide with a chance of about
/// 2^-32 a pair per second. Ids grow with time because a replica retires
/// expired sessions by a watermark (ids below it never start a session
/// again), which only ever passes ids of the past.
pub fn fresh_client_id() -> u64 {
    fresh_client_id_above(0)
}

/// A fresh client id at or above `retired_below` (the watermark a
/// `Received::Expired` carries), for a client whose clock is behind it.
/// Past a watermark within 2^32 of the largest id, ids run out: it
/// returns the largest, which every such client would share.
pub fn fresh_client_id_above(retired_below: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static MADE: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let mut bytes = [0u8; 8];
        match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        }
    });
    let low = start.wrapping_add(MADE.fetch_add(1, Ordering::Relaxed)) & 0xffff_ffff;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let timed = (secs << CLIENT_ID_LOW_BITS) | low;
    timed.max(retired_below.saturating_add(low)).max(1)
}

/// The next frame from `stream`, reading into `buf` as needed: the
/// blocking read loop of every client (and of the tests' fake replicas).
pub fn read_frame(
    stream: &mut impl Read,
    reader: FrameReader,
    buf: &mut ReadBuffer,
) -> Result<Frame, ClientError> {
    loop {
        if let Some(f) = reader.next(buf.received())? {
            return Ok(f);
        }
        let n = stream.read(buf.room());
        buf.filled(*n.as_ref().unwrap_or(&0));
        if n? == 0 {
            return Err(ClientError::Closed);
        }
    }
}

pub struct Connection {
    stream: TcpStream,
    session: Session,
    rbuf: ReadBuffer,
    wbuf: BytesMut,
    /// The replica's view: its id, N, shard count, this connection's shard.
    pub server: HelloBody,
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
        Connection::connect_with_password(base, shard, cluster_id, timeout, None)
    }

    /// `connect`, then, with `password`, authenticates (the replica runs
    /// with `--requirepass-file`): a wrong one is `ClientError::Refused`.
    /// Without one, a replica that asks for it answers every command
    /// `Code::NoAuth`.
    pub fn connect_with_password(
        base: SocketAddr,
        shard: u8,
        cluster_id: u64,
        timeout: Duration,
        password: Option<&Secret>,
    ) -> Result<Connection, ClientError> {
        let addr = shard_addr(base, usize::from(shard))
            .ok_or_else(|| ClientError::Invalid(format!("{base}: no port for shard {shard}")))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut c = Connection {
            stream,
            session: Session::new(fresh_client_id(), cluster_id, shard),
            rbuf: ReadBuffer::default(),
            wbuf: BytesMut::new(),
            server: HelloBody::default(),
            ready: VecDeque::new(),
            broken: false,
        };
        c.session.set_password(password.cloned());
        c.session.hello(&mut c.wbuf);
        c.write_out()?;
        let frame = c.next_frame()?;
        c.server = *c.session.on_hello_answer(&frame)?;
        if password.is_some() {
            // The answer to the Auth that followed the Hello.
            let frame = c.next_frame()?;
            c.session.on_frame(frame)?;
        }
        Ok(c)
    }

    pub fn client_id(&self) -> u64 {
        self.session.client_id()
    }

    /// Requests whose answer `recv` has not returned yet (including answers
    /// `call` or `admin` read past and keep for it): drain with
    /// `while c.outstanding() > 0 { c.recv()?; }`.
    pub fn outstanding(&self) -> usize {
        self.session.outstanding() + self.ready.len()
    }

    /// Queues one command; returns its request number. Nothing is sent
    /// before `flush` (or until enough is queued).
    pub fn queue(&mut self, op: Op, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        let request = self.session.queue(op, key, value)?;
        if self.session.pending_bytes() >= QUEUED_BYTES_MAX {
            self.flush()?;
        }
        Ok(request)
    }

    /// Sends every queued command, in one write.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.session.encode(&mut self.wbuf) == 0 {
            return Ok(());
        }
        self.write_out()
    }

    /// The next response (flushing first).
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        self.flush()?;
        if let Some(r) = self.ready.pop_front() {
            return Ok(r);
        }
        if self.session.outstanding() == 0 {
            return Err(ClientError::Invalid(
                "no request is waiting for an answer".into(),
            ));
        }
        self.read_response()
    }

    /// One command, answered. Answers to other requests that arrive first
    /// are kept for `recv`.
    pub fn call(&mut self, op: Op, key: &[u8], value: &[u8]) -> Result<Response, ClientError> {
        let client = self.session.client_id();
        let request = self.queue(op, key, value)?;
        self.flush()?;
        // (Request numbers start again in a session after an expired one.)
        let mine = |r: &Response| r.client == client && r.request == request;
        loop {
            // An expired session answers all its requests at once.
            if let Some(i) = self.ready.iter().position(mine) {
                return Ok(self.ready.remove(i).expect("found"));
            }
            let r = self.read_response()?;
            if mine(&r) {
                return Ok(r);
            }
            self.ready.push_back(r);
        }
    }

    /// The shard's digest and counters. Answers that arrive first are kept
    /// for `recv`.
    pub fn admin(&mut self) -> Result<AdminInfo, ClientError> {
        self.session.encode(&mut self.wbuf);
        self.session.admin(&mut self.wbuf);
        self.write_out()?;
        loop {
            let frame = self.next_frame()?;
            match self.session.on_frame(frame)? {
                Received::Admin(info) => return Ok(info),
                Received::Answer(r) => self.ready.push_back(r),
                Received::Stale(_) => {}
                Received::Retry(_) => unreachable!("a Connection does not retry"),
                Received::Expired {
                    response,
                    lost,
                    retired_below,
                } => {
                    let first = self.expired(response, lost, retired_below);
                    self.ready.push_back(first);
                }
            }
        }
    }

    /// The next answer to an outstanding request, read from the socket.
    fn read_response(&mut self) -> Result<Response, ClientError> {
        loop {
            let frame = self.next_frame()?;
            match self.session.on_frame(frame)? {
                Received::Answer(r) => return Ok(r),
                // A retry's answer, or that of an `admin` that timed out.
                Received::Stale(_) | Received::Admin(_) => {}
                Received::Retry(_) => unreachable!("a Connection does not retry"),
                Received::Expired {
                    response,
                    lost,
                    retired_below,
                } => return Ok(self.expired(response, lost, retired_below)),
            }
        }
    }

    /// The session expired: every request it had outstanding is answered
    /// `SessionExpired` (outcome unknown), and the connection goes on as a
    /// new session. Returns the answer that said so.
    fn expired(&mut self, response: Response, lost: Vec<u64>, retired_below: u64) -> Response {
        for request in lost {
            self.ready.push_back(Response {
                request,
                ..response.clone()
            });
        }
        self.session.restart(fresh_client_id_above(retired_below));
        response
    }

    /// Writes what `wbuf` holds and empties it.
    fn write_out(&mut self) -> Result<(), ClientError> {
        if self.broken {
            self.wbuf.clear();
            return Err(ClientError::Invalid(
                "an earlier write to the replica failed: reconnect".into(),
            ));
        }
        let written = self.stream.write_all(&self.wbuf);
        self.wbuf.clear();
        self.broken = written.is_err();
        Ok(written?)
    }

    fn next_frame(&mut self) -> Result<Frame, ClientError> {
        read_frame(&mut self.stream, self.session.reader(), &mut self.rbuf)
    }
}
