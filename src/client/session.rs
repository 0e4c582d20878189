//! One client session of the binary protocol, without IO.
//!
//! The session owns what every client of a replica must get right the same
//! way: the Hello and its answer, request numbering and the client window
//! (`CLIENT_WINDOW_REQUESTS_MAX` numbers past the oldest unanswered one,
//! which each command carries as `first_outstanding`), request frames split
//! where a batch would pass its limits, and each Response matched to the
//! request it answers. The blocking [`super::Connection`], blaster's load
//! connections and the tests' raw clients are socket IO around it.
//!
//! It must never do IO, read a clock or draw a random number: the caller
//! passes the client id in, writes the bytes the session encodes into a
//! buffer the caller owns, hands it the frames it reads, and keeps the time
//! of each request itself if it measures latency.
//!
//! Call order: [`Session::hello`], then [`Session::on_hello_answer`] with
//! the first frame read; then any mix of [`Session::queue`] and
//! [`Session::encode`] (or [`Session::admin`]) and [`Session::on_frame`] for
//! every later frame.
//!
//! A session outlives its connection: after the socket closes,
//! [`Session::reconnect`], a new hello on a new socket, and
//! [`Session::requeue`] of every request still outstanding (the caller
//! keeps what each one said) send them again under their numbers, which
//! the replicas' exactly-once table answers once. With
//! [`Session::set_retry_overloaded`], an `Overloaded` answer (the command
//! did not run) leaves its request outstanding, to be requeued the same way.

use bytes::BytesMut;
use zerocopy::{FromBytes, IntoBytes};

use crate::command::{Batch, BatchBuilder, CommandRef, Op};
use crate::constants::{
    BATCH_COMMANDS_MAX, CLIENT_WINDOW_REQUESTS_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX,
};
use crate::secret::Secret;
use crate::wire::client::{
    decode_hello_answer, decode_response, AdminInfo, Code, HelloBody, Response, Role,
};
use crate::wire::{Frame, FrameEncoder, FrameError, FrameReader, Kind};

/// Words of the bitmap of unanswered requests, one bit per number in the window.
const WINDOW_WORDS: usize = (CLIENT_WINDOW_REQUESTS_MAX as usize).div_ceil(64);

/// Why the session refused a frame or a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// The replica refused the handshake; its reason.
    Refused(String),
    /// A frame this session cannot take: malformed, of a kind it does not
    /// wait for, or an answer for another client.
    Frame(FrameError),
    /// `queue`: the request would run `CLIENT_WINDOW_REQUESTS_MAX` numbers
    /// or more past the oldest unanswered one, which the replica refuses.
    WindowFull {
        request: u64,
        first_outstanding: u64,
    },
    /// `queue`: a command the replica would refuse (its sizes, or a value
    /// on an operation that takes none).
    Invalid(String),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Refused(why) => write!(f, "refused by the replica: {why}"),
            SessionError::Frame(e) => write!(f, "bad frame from the replica: {e}"),
            SessionError::WindowFull {
                request,
                first_outstanding,
            } => write!(
                f,
                "request {request} while {first_outstanding} is unanswered: more than \
                 {CLIENT_WINDOW_REQUESTS_MAX} apart"
            ),
            SessionError::Invalid(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for SessionError {}

impl From<FrameError> for SessionError {
    fn from(e: FrameError) -> SessionError {
        SessionError::Frame(e)
    }
}

/// What one frame from the replica was.
#[derive(Clone, Debug)]
pub enum Received {
    /// The answer to an outstanding request, which no longer is.
    Answer(Response),
    /// An answer to a request answered already (the replica answered a
    /// retry too): nobody waits for it.
    Stale(Response),
    /// The answer to an `admin` query.
    Admin(AdminInfo),
    /// With `set_retry_overloaded`: the request was answered `Overloaded`
    /// (it did not run) and is still outstanding; `requeue` it.
    Retry(Response),
    /// The replica no longer holds this client's session (it was idle past
    /// the replica's bound, or evicted past its size bound): `response`'s
    /// request and every request in `lost` (all outstanding ones) have an
    /// unknown outcome, each may or may not have taken effect. No request
    /// is outstanding any more; call `restart` with a new client id from
    /// `retired_below` on (`fresh_client_id_above`) before queuing more.
    Expired {
        response: Response,
        lost: Vec<u64>,
        retired_below: u64,
    },
}

pub struct Session {
    client: u64,
    enc: FrameEncoder,
    /// The replica's view, once its HelloOk came.
    server: Option<HelloBody>,
    next_request: u64,
    /// The lowest unanswered request number; `next_request` when none is.
    first_outstanding: u64,
    /// Bit `request % CLIENT_WINDOW_REQUESTS_MAX` is set while `request` is
    /// unanswered; the window keeps two outstanding numbers off one bit.
    unanswered: [u64; WINDOW_WORDS],
    outstanding: usize,
    /// Queued commands not yet encoded: `closed` batches (one more command
    /// would not have fitted), then the `open` one.
    open: BatchBuilder,
    closed: Vec<Batch>,
    /// Admin queries sent and not yet answered.
    admins: usize,
    /// `Overloaded` leaves the request outstanding (`Received::Retry`).
    retry_overloaded: bool,
    /// The session expired (`Received::Expired`) and awaits `restart`.
    expired: bool,
    /// The ids of the sessions before the last few `restart`s: late answers
    /// to them are stale, not an error.
    old_clients: [u64; 4],
    /// Sent in an `Auth` frame right after every Hello
    /// (`--requirepass-file` on the replica).
    password: Option<Secret>,
}

impl Session {
    /// A session of client `client` with shard `shard` of a replica of
    /// cluster `cluster_id`. Exactly-once is keyed by the client id: the
    /// caller draws one nobody else uses.
    pub fn new(client: u64, cluster_id: u64, shard: u8) -> Session {
        Session {
            client,
            enc: FrameEncoder {
                cluster_id,
                sender: 0,
                shard,
            },
            server: None,
            next_request: 1,
            first_outstanding: 1,
            unanswered: [0; WINDOW_WORDS],
            outstanding: 0,
            open: BatchBuilder::new(),
            closed: Vec::new(),
            admins: 0,
            retry_overloaded: false,
            expired: false,
            old_clients: [0; 4],
            password: None,
        }
    }

    /// The password every Hello of this session is followed by (an `Auth`
    /// frame); its answer comes as `Received::Stale` when right, as
    /// `SessionError::Refused` when wrong.
    pub fn set_password(&mut self, password: Option<Secret>) {
        self.password = password;
    }

    /// Goes on as a new session of client `client` after the old one
    /// expired (`Received::Expired`): request numbers start again from 1,
    /// on the same connection.
    pub fn restart(&mut self, client: u64) {
        let mut fresh = Session::new(client, self.enc.cluster_id, self.enc.shard);
        fresh.server = self.server;
        fresh.retry_overloaded = self.retry_overloaded;
        fresh.admins = self.admins;
        fresh.old_clients = self.old_clients;
        fresh.old_clients.rotate_right(1);
        fresh.old_clients[0] = self.client;
        fresh.password = self.password.take();
        *self = fresh;
    }

    /// Whether the session expired and awaits `restart`.
    pub fn expired(&self) -> bool {
        self.expired
    }

    /// Whether an `Overloaded` answer is `Received::Retry` (the request
    /// stays outstanding, for the caller to `requeue`) instead of an answer.
    /// A caller that retries must: an answered request's number falls below
    /// `first_outstanding`, and a replica ignores a copy below it.
    pub fn set_retry_overloaded(&mut self, on: bool) {
        self.retry_overloaded = on;
    }

    /// Starts over on a new connection: forgets the replica's view and the
    /// admin queries in flight, and drops the commands queued and not yet
    /// encoded. Every request keeps its number and stays outstanding, for
    /// the caller to `requeue` after the new `hello` is answered.
    pub fn reconnect(&mut self) {
        self.server = None;
        self.admins = 0;
        if !self.open.is_empty() {
            drop(self.open.finish());
        }
        self.closed.clear();
    }

    /// The outstanding requests' numbers, oldest first.
    pub fn outstanding_requests(&self) -> impl Iterator<Item = u64> + '_ {
        (self.first_outstanding..self.next_request).filter(|&r| self.is_outstanding(r))
    }

    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// Cuts the replica's frames out of a receive buffer (its cluster id).
    pub fn reader(&self) -> FrameReader {
        FrameReader::new(self.enc.cluster_id)
    }

    /// The encoder of this session's frames, for a caller that must send a
    /// frame the session would not (a test's malformed or replayed one).
    pub fn encoder(&self) -> FrameEncoder {
        self.enc
    }

    /// Appends the Hello that opens the connection to `out`, and the
    /// `Auth` frame with the password if the session has one.
    pub fn hello(&self, out: &mut BytesMut) {
        let hello = HelloBody {
            role: Role::Client as u8,
            shard: self.enc.shard,
            ..HelloBody::default()
        };
        self.enc
            .frame(out, Kind::Hello, |b| b.extend_from_slice(hello.as_bytes()));
        if let Some(p) = &self.password {
            self.enc
                .frame(out, Kind::Auth, |b| b.extend_from_slice(p.expose()));
        }
    }

    /// Whether the session sends a password after its Hello.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Takes the first frame from the replica: its view of the cluster
    /// (`HelloOk`), or why it refused (`Refused`, after which it closes).
    pub fn on_hello_answer(&mut self, frame: &Frame) -> Result<&HelloBody, SessionError> {
        assert!(self.server.is_none(), "a second answer to one Hello");
        let server =
            decode_hello_answer(frame.kind, &frame.body)?.map_err(SessionError::Refused)?;
        Ok(self.server.insert(server))
    }

    /// The replica's view (its id, N, shard count), once it answered.
    pub fn server(&self) -> Option<&HelloBody> {
        self.server.as_ref()
    }

    /// The number the next `queue` gives its request.
    pub fn next_request(&self) -> u64 {
        self.next_request
    }

    /// Requests queued or sent, and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Requests `queue` takes before the window is full.
    pub fn window_left(&self) -> u64 {
        CLIENT_WINDOW_REQUESTS_MAX - (self.next_request - self.first_outstanding)
    }

    /// Whether `request` waits for its answer.
    pub fn is_outstanding(&self, request: u64) -> bool {
        let (word, bit) = Self::bit(request);
        (self.first_outstanding..self.next_request).contains(&request)
            && self.unanswered[word] & bit != 0
    }

    /// Queues one command; returns its request number. Nothing goes out
    /// before `encode`.
    pub fn queue(&mut self, op: Op, key: &[u8], value: &[u8]) -> Result<u64, SessionError> {
        if key.len() > KEY_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
            return Err(SessionError::Invalid(format!(
                "key of {} bytes or value of {} (limits {KEY_BYTES_MAX}, {VALUE_BYTES_MAX})",
                key.len(),
                value.len()
            )));
        }
        if op != Op::Put && !value.is_empty() {
            return Err(SessionError::Invalid(format!("{op:?} takes no value")));
        }
        if op == Op::Expire {
            return Err(SessionError::Invalid("Expire is for replicas only".into()));
        }
        if self.expired {
            return Err(SessionError::Invalid(
                "the session expired: restart it under a new client id".into(),
            ));
        }
        let request = self.next_request;
        if self.window_left() == 0 {
            return Err(SessionError::WindowFull {
                request,
                first_outstanding: self.first_outstanding,
            });
        }
        self.next_request += 1;
        let (word, bit) = Self::bit(request);
        debug_assert_eq!(self.unanswered[word] & bit, 0, "request {request}");
        self.unanswered[word] |= bit;
        self.outstanding += 1;
        self.push(request, op, key, value);
        Ok(request)
    }

    /// Queues outstanding request `request` again, under its number: the
    /// caller passes what it said the first time (a different command
    /// under the same number would be answered with the first one's
    /// result, or run in its place if the first never did).
    pub fn requeue(&mut self, request: u64, op: Op, key: &[u8], value: &[u8]) {
        assert!(
            self.is_outstanding(request),
            "request {request} requeued but not outstanding"
        );
        self.push(request, op, key, value);
    }

    /// Adds one command, checked by `queue`, to the open batch.
    fn push(&mut self, request: u64, op: Op, key: &[u8], value: &[u8]) {
        let cmd = CommandRef {
            client: self.client,
            request,
            first_outstanding: self.first_outstanding,
            op,
            key,
            value,
        };
        // One request frame carries at most what the replica takes in one
        // batch; more goes in the next frame.
        if !self.open.is_empty() && !self.open.fits(&cmd, BATCH_COMMANDS_MAX) {
            self.closed.push(self.open.finish());
        }
        self.open.push(&cmd);
    }

    /// Bytes of command records queued and not yet encoded.
    pub fn pending_bytes(&self) -> usize {
        let closed: usize = self.closed.iter().map(|b| b.bytes().len()).sum();
        closed + self.open.bytes_len()
    }

    /// Appends every queued command to `out`, in as few Request frames as
    /// the batch limits allow; how many frames.
    pub fn encode(&mut self, out: &mut BytesMut) -> usize {
        if !self.open.is_empty() {
            self.closed.push(self.open.finish());
        }
        let frames = self.closed.len();
        for batch in self.closed.drain(..) {
            self.enc
                .frame(out, Kind::Request, |b| b.extend_from_slice(batch.bytes()));
        }
        frames
    }

    /// Appends an Admin query (answered by `Received::Admin`) to `out`.
    pub fn admin(&mut self, out: &mut BytesMut) {
        self.admins += 1;
        self.enc.frame(out, Kind::Admin, |_| {});
    }

    /// Takes one frame from the replica after its hello answer.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Received, SessionError> {
        match frame.kind {
            Kind::Response => self.on_response(&frame),
            Kind::AdminInfo if self.admins > 0 => {
                let info =
                    AdminInfo::read_from_bytes(&frame.body).map_err(|_| FrameError::BadBody {
                        kind: Kind::AdminInfo,
                        reason: format!("{} bytes", frame.body.len()),
                    })?;
                self.admins -= 1;
                Ok(Received::Admin(info))
            }
            kind => Err(SessionError::Frame(FrameError::Unexpected {
                kind,
                reason: "waiting for a Response",
            })),
        }
    }

    fn on_response(&mut self, frame: &Frame) -> Result<Received, SessionError> {
        let response = decode_response(&frame.body)?;
        if response.client == 0 && response.request == 0 {
            return self.on_connection_answer(response);
        }
        if response.client != 0 && self.old_clients.contains(&response.client) {
            return Ok(Received::Stale(response));
        }
        if response.client != self.client {
            return Err(SessionError::Frame(FrameError::Unexpected {
                kind: Kind::Response,
                reason: "an answer for another client",
            }));
        }
        if !self.is_outstanding(response.request) {
            return Ok(Received::Stale(response));
        }
        if self.retry_overloaded && response.code == Code::Overloaded {
            return Ok(Received::Retry(response));
        }
        if response.code == Code::SessionExpired {
            let retired_below = <[u8; 8]>::try_from(&response.value[..])
                .map(u64::from_le_bytes)
                .map_err(|_| FrameError::BadBody {
                    kind: Kind::Response,
                    reason: "SessionExpired without its 8-byte watermark".into(),
                })?;
            let lost = self
                .outstanding_requests()
                .filter(|&r| r != response.request)
                .collect();
            self.unanswered = [0; WINDOW_WORDS];
            self.outstanding = 0;
            self.first_outstanding = self.next_request;
            self.expired = true;
            return Ok(Received::Expired {
                response,
                lost,
                retired_below,
            });
        }
        let (word, bit) = Self::bit(response.request);
        self.unanswered[word] &= !bit;
        self.outstanding -= 1;
        while self.first_outstanding < self.next_request {
            let (word, bit) = Self::bit(self.first_outstanding);
            if self.unanswered[word] & bit != 0 {
                break;
            }
            self.first_outstanding += 1;
        }
        debug_assert_eq!(
            self.outstanding == 0,
            self.first_outstanding == self.next_request
        );
        Ok(Received::Answer(response))
    }

    /// An answer about the connection, not a request (client id and
    /// request 0): to `Auth` (`Done`, or `Error` with why), or `NoAuth` to
    /// an `Admin` sent before authenticating.
    fn on_connection_answer(&mut self, response: Response) -> Result<Received, SessionError> {
        let text = String::from_utf8_lossy(&response.value).into_owned();
        match response.code {
            Code::Done => Ok(Received::Stale(response)),
            Code::NoAuth if self.admins > 0 => {
                self.admins -= 1;
                Err(SessionError::Refused(text))
            }
            Code::Error => Err(SessionError::Refused(text)),
            _ => Err(SessionError::Frame(FrameError::Unexpected {
                kind: Kind::Response,
                reason: "an answer with client id 0 that is not about authentication",
            })),
        }
    }

    /// Where `request`'s bit is in `unanswered`.
    fn bit(request: u64) -> (usize, u64) {
        let at = (request % CLIENT_WINDOW_REQUESTS_MAX) as usize;
        (at / 64, 1 << (at % 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::client::put_response;

    const CLUSTER: u64 = 9;
    const CLIENT: u64 = 0xc11e;

    /// The replica's side of one frame, read back as the client reads it.
    fn replica_frame(kind: Kind, body: impl FnOnce(&mut BytesMut)) -> Frame {
        let enc = FrameEncoder {
            cluster_id: CLUSTER,
            sender: 0,
            shard: 0,
        };
        let mut buf = BytesMut::new();
        enc.frame(&mut buf, kind, body);
        FrameReader::new(CLUSTER).next(&mut buf).unwrap().unwrap()
    }

    fn answer(client: u64, request: u64) -> Frame {
        replica_frame(Kind::Response, |b| {
            put_response(b, client, request, Code::Done, b"")
        })
    }

    /// A three-replica, two-shard replica's answer to a hello.
    fn hello_ok() -> Frame {
        let ok = HelloBody {
            role: Role::Peer as u8,
            replicas: 3,
            shards: 2,
            ..HelloBody::default()
        };
        replica_frame(Kind::HelloOk, |b| b.extend_from_slice(ok.as_bytes()))
    }

    /// A session past its handshake.
    fn session() -> Session {
        let mut s = Session::new(CLIENT, CLUSTER, 0);
        assert_eq!(s.on_hello_answer(&hello_ok()).unwrap().shards, 2);
        s
    }

    /// The commands of every Request frame in `out`.
    fn sent(out: &mut BytesMut) -> Vec<Vec<(u64, u64)>> {
        let reader = FrameReader::new(CLUSTER);
        let mut frames = Vec::new();
        while let Some(f) = reader.next(out).unwrap() {
            assert_eq!(f.kind, Kind::Request);
            let batch = Batch::parse(f.body).unwrap();
            frames.push(
                batch
                    .iter()
                    .map(|c| (c.request, c.first_outstanding))
                    .collect(),
            );
        }
        frames
    }

    #[test]
    fn the_hello_names_the_shard_and_a_refusal_says_why() {
        let s = Session::new(CLIENT, CLUSTER, 3);
        let mut out = BytesMut::new();
        s.hello(&mut out);
        let f = FrameReader::new(CLUSTER).next(&mut out).unwrap().unwrap();
        let hello = crate::wire::client::decode_hello(f.kind, &f.body).unwrap();
        assert_eq!((f.kind, f.shard, hello.shard), (Kind::Hello, 3, 3));
        assert_eq!(hello.role, Role::Client as u8);
        let mut s = Session::new(CLIENT, CLUSTER, 3);
        let no = replica_frame(Kind::Refused, |b| b.extend_from_slice(b"no shard 3"));
        assert_eq!(
            s.on_hello_answer(&no).unwrap_err(),
            SessionError::Refused("no shard 3".into())
        );
        assert!(s.server().is_none());
    }

    #[test]
    fn requests_carry_the_oldest_unanswered_number() {
        let mut s = session();
        for _ in 0..3 {
            s.queue(Op::Put, b"k", b"v").unwrap();
        }
        assert!(matches!(
            s.on_frame(answer(CLIENT, 1)),
            Ok(Received::Answer(_))
        ));
        // 2 is still unanswered: 3's answer does not move the floor past it.
        assert!(matches!(
            s.on_frame(answer(CLIENT, 3)),
            Ok(Received::Answer(_))
        ));
        s.queue(Op::Get, b"k", b"").unwrap();
        let mut out = BytesMut::new();
        assert_eq!(s.encode(&mut out), 1);
        assert_eq!(sent(&mut out), vec![vec![(1, 1), (2, 1), (3, 1), (4, 2)]]);
        assert_eq!(s.outstanding(), 2);
    }

    #[test]
    fn a_full_window_is_refused_until_the_oldest_is_answered() {
        let mut s = session();
        for _ in 0..CLIENT_WINDOW_REQUESTS_MAX {
            s.queue(Op::Get, b"k", b"").unwrap();
        }
        assert_eq!(s.window_left(), 0);
        let refused = s.queue(Op::Get, b"k", b"");
        assert_eq!(
            refused,
            Err(SessionError::WindowFull {
                request: CLIENT_WINDOW_REQUESTS_MAX + 1,
                first_outstanding: 1
            })
        );
        assert_eq!(s.next_request(), CLIENT_WINDOW_REQUESTS_MAX + 1);
        // A later answer makes no room: the oldest still holds the window.
        s.on_frame(answer(CLIENT, 2)).unwrap();
        assert!(s.queue(Op::Get, b"k", b"").is_err());
        s.on_frame(answer(CLIENT, 1)).unwrap();
        assert_eq!(s.window_left(), 2);
        assert_eq!(
            s.queue(Op::Get, b"k", b""),
            Ok(CLIENT_WINDOW_REQUESTS_MAX + 1)
        );
    }

    #[test]
    fn a_duplicate_answer_is_stale_and_changes_nothing() {
        let mut s = session();
        s.queue(Op::Put, b"k", b"v").unwrap();
        s.queue(Op::Put, b"k", b"w").unwrap();
        assert!(matches!(s.on_frame(answer(CLIENT, 1)), Ok(Received::Answer(r)) if r.request == 1));
        for request in [1, 7] {
            let again = s.on_frame(answer(CLIENT, request));
            assert!(matches!(again, Ok(Received::Stale(r)) if r.request == request));
        }
        assert_eq!(s.outstanding(), 1);
        assert!(s.is_outstanding(2) && !s.is_outstanding(1));
    }

    #[test]
    fn an_answer_for_another_client_is_an_error() {
        let mut s = session();
        s.queue(Op::Put, b"k", b"v").unwrap();
        let err = s.on_frame(answer(CLIENT + 1, 1)).unwrap_err();
        assert!(matches!(
            err,
            SessionError::Frame(FrameError::Unexpected {
                kind: Kind::Response,
                ..
            })
        ));
        assert_eq!(s.outstanding(), 1);
    }

    #[test]
    fn frames_nobody_waits_for_are_errors() {
        let mut s = session();
        let info = AdminInfo::default();
        let admin_info =
            || replica_frame(Kind::AdminInfo, |b| b.extend_from_slice(info.as_bytes()));
        assert!(s.on_frame(admin_info()).is_err(), "no Admin was sent");
        s.admin(&mut BytesMut::new());
        assert!(matches!(s.on_frame(admin_info()), Ok(Received::Admin(_))));
        let hello = replica_frame(Kind::HelloOk, |b| {
            b.extend_from_slice(HelloBody::default().as_bytes())
        });
        assert!(s.on_frame(hello).is_err());
    }

    fn overloaded(request: u64) -> Frame {
        replica_frame(Kind::Response, |b| {
            put_response(b, CLIENT, request, Code::Overloaded, b"no-op")
        })
    }

    #[test]
    fn overloaded_is_an_answer_unless_the_session_retries() {
        let mut s = session();
        s.queue(Op::Put, b"k", b"v").unwrap();
        assert!(matches!(s.on_frame(overloaded(1)), Ok(Received::Answer(_))));
        assert_eq!(s.outstanding(), 0);
        let mut s = session();
        s.set_retry_overloaded(true);
        s.queue(Op::Put, b"k", b"v").unwrap();
        s.queue(Op::Put, b"k", b"w").unwrap();
        assert!(matches!(s.on_frame(overloaded(1)), Ok(Received::Retry(r)) if r.request == 1));
        assert!(s.is_outstanding(1));
        s.on_frame(answer(CLIENT, 2)).unwrap();
        // Sent again, request 1 still holds the floor.
        s.requeue(1, Op::Put, b"k", b"v");
        let mut out = BytesMut::new();
        s.encode(&mut out);
        assert_eq!(sent(&mut out), vec![vec![(1, 1), (2, 1), (1, 1)]]);
        assert!(matches!(
            s.on_frame(answer(CLIENT, 1)),
            Ok(Received::Answer(_))
        ));
        assert_eq!(
            (s.outstanding(), s.window_left()),
            (0, CLIENT_WINDOW_REQUESTS_MAX)
        );
    }

    #[test]
    fn after_a_reconnect_outstanding_requests_go_again_under_their_numbers() {
        let mut s = session();
        for _ in 0..4 {
            s.queue(Op::Put, b"k", b"v").unwrap();
        }
        let mut out = BytesMut::new();
        s.encode(&mut out);
        s.on_frame(answer(CLIENT, 2)).unwrap();
        // Queued, never encoded: the old socket is gone, the caller requeues it.
        s.queue(Op::Get, b"k", b"").unwrap();
        s.reconnect();
        assert!(s.server().is_none());
        assert_eq!(s.pending_bytes(), 0);
        let again: Vec<u64> = s.outstanding_requests().collect();
        assert_eq!(again, vec![1, 3, 4, 5]);
        s.on_hello_answer(&hello_ok()).unwrap();
        for r in again {
            s.requeue(r, Op::Put, b"k", b"v");
        }
        let mut out = BytesMut::new();
        s.encode(&mut out);
        assert_eq!(sent(&mut out), vec![vec![(1, 1), (3, 1), (4, 1), (5, 1)]]);
        assert_eq!(s.next_request(), 6);
    }

    #[test]
    #[should_panic(expected = "not outstanding")]
    fn an_answered_request_is_not_requeued() {
        let mut s = session();
        s.queue(Op::Put, b"k", b"v").unwrap();
        s.on_frame(answer(CLIENT, 1)).unwrap();
        s.requeue(1, Op::Put, b"k", b"v");
    }

    #[test]
    fn a_large_window_is_split_over_frames_within_the_batch_limits() {
        let mut s = session();
        let value = vec![b'v'; VALUE_BYTES_MAX];
        // Four values of 1 MiB pass a batch's 4 MiB with their headers.
        for _ in 0..5 {
            s.queue(Op::Put, b"big", &value).unwrap();
        }
        while s.window_left() > 0 {
            s.queue(Op::Get, b"small", b"").unwrap();
        }
        let queued = s.outstanding();
        let mut out = BytesMut::new();
        let frames = s.encode(&mut out);
        assert_eq!(s.pending_bytes(), 0);
        let batches = sent(&mut out);
        assert_eq!(batches.len(), frames);
        assert!(frames >= 2, "{frames} frames");
        assert_eq!(batches[0].len(), 3, "a fourth 1 MiB value would not fit");
        let numbers: Vec<u64> = batches.iter().flatten().map(|c| c.0).collect();
        assert_eq!(numbers, (1..=queued as u64).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| b.len() <= BATCH_COMMANDS_MAX));
        // Nothing is left to send twice.
        assert_eq!(s.encode(&mut out), 0);
        assert!(out.is_empty());
    }
}
