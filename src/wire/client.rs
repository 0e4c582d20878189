//! Connection set-up, client requests and responses, and admin frames.
//!
//! Every connection opens with a `Hello`, answered by `HelloOk` (with the
//! server's view of the cluster) or `Refused` (a line of text saying why),
//! after which the server closes the connection.
//!
//! A `Request` body is one or more command records, the batch format of
//! [`crate::command`], checked by the same parser; a shard copies
//! each command it owns into the batch it is building (one copy per
//! command), and forwards the others to their shards. Each command is answered by one `Response`.
//! `Admin` (empty body) is answered by `AdminInfo`: the shard's state digest
//! and counters.

use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::frame::{FrameError, Kind, SMALL_BODY_BYTES_MAX};

/// Who opens a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Shard s of another replica, to send it protocol messages.
    Peer = 1,
    Client = 2,
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct HelloBody {
    pub role: u8,
    /// The sender's replica id (peers only).
    pub replica: u8,
    /// N as the sender sees it; a client may send 0 for "any".
    pub replicas: u8,
    /// Shards per replica as the sender sees it; a client may send 0.
    pub shards: u8,
    /// The shard the connection is for.
    pub shard: u8,
    pub padding: [u8; 3],
    /// In a HelloOk answering a replica: the highest slot of that replica's
    /// instance space the answering shard holds (0: none), which a replica
    /// that started with an empty log checks (`Node::peer_knows`). 0 in a
    /// Hello and in answers to clients.
    pub known_slot: U64,
    /// The digest of the sender's cluster configuration
    /// (`node::config::Topology::digest`: cluster id, peer list, counts);
    /// a client sends 0 for "any". A peer's Hello is followed by the text
    /// of its peer list (`HELLO_PEERS_TEXT_BYTES_MAX`), for the refusal
    /// to name both lists.
    pub config_digest: U64,
    /// The sending process's incarnation: 64 random bits drawn at its
    /// start, so that two live processes claiming one replica id are told
    /// apart (`Node::on_hello`). 0 from a client.
    pub incarnation: U64,
}

const _: () = assert!(core::mem::size_of::<HelloBody>() == 32);

/// Longest peer list text after a peer's Hello (a longer one is cut, and
/// only the refusal's wording suffers: the digest covers the whole list).
pub const HELLO_PEERS_TEXT_BYTES_MAX: usize =
    SMALL_BODY_BYTES_MAX - core::mem::size_of::<HelloBody>();

/// How a `Refused` text from a peer starts when the refusal is about the
/// cluster's configuration (peer list, counts, id): the refused shard
/// counts it (`Node::link_refused`).
pub const REFUSED_CONFIG: &str = "configuration mismatch";
/// How it starts when another live process holds the replica id and the
/// refusing peer found that one at the id's advertised address: the
/// refused process is the duplicate, and exits.
pub const REFUSED_DUPLICATE: &str = "duplicate replica id";
/// How it starts when another live connection holds the replica id and the
/// refusing peer has not yet seen which process answers at the id's
/// advertised address: the refused process tries again.
pub const REFUSED_CONTESTED: &str = "contested replica id";

/// Longest `Refused` text.
pub const REFUSED_TEXT_BYTES_MAX: usize = 1024;

/// What a response says about its command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// A PUT took effect, or a DELETE removed a value.
    Done = 0,
    /// A GET found the value that follows.
    Value = 1,
    /// A GET found nothing, or a DELETE had nothing to remove.
    NotFound = 2,
    /// The request number ran beyond the client's window.
    BeyondWindow = 3,
    /// The command did not run and may be sent again under the same request
    /// number: the shard could not take it now, or recovery replaced its
    /// instance with a no-op. The value holds the reason as text.
    Overloaded = 4,
    /// The command was refused; the value holds the reason as text.
    Error = 5,
    /// The shard stopped: its log could not be written or synced, so it
    /// neither acknowledges nor votes any more; or it cannot serve because
    /// its configuration differs from its peers' (`--peers`, `--cores`),
    /// and more than F of them refuse it. The value holds the reason.
    /// A command sent before may still commit through the other replicas;
    /// send it to another replica (same client id and request number) to
    /// learn its outcome.
    Unavailable = 6,
    /// The client's session expired (idle too long, or the least recently
    /// used past the replica's bound): the command did not run. The value
    /// holds 8 bytes, little-endian: new sessions need an id from there on.
    /// Requests outstanding in the old session have an unknown outcome.
    SessionExpired = 7,
    /// An INCR took effect: the value holds the sum, an i64, 8 bytes
    /// little-endian (the key now holds it as decimal text).
    Integer = 8,
    /// A conditional PUT (SET NX or XX) whose condition failed: nothing
    /// changed.
    NotDone = 9,
}

impl Code {
    pub fn from_u8(code: u8) -> Option<Code> {
        Some(match code {
            0 => Code::Done,
            1 => Code::Value,
            2 => Code::NotFound,
            3 => Code::BeyondWindow,
            4 => Code::Overloaded,
            5 => Code::Error,
            6 => Code::Unavailable,
            7 => Code::SessionExpired,
            8 => Code::Integer,
            9 => Code::NotDone,
            _ => return None,
        })
    }
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct ResponseBody {
    pub client: U64,
    pub request: U64,
    pub code: u8,
    pub padding: [u8; 3],
    pub value_len: U32,
}

const _: () = assert!(core::mem::size_of::<ResponseBody>() == 24);

/// One decoded response; `value` borrows the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub client: u64,
    pub request: u64,
    pub code: Code,
    pub value: Bytes,
}

pub fn put_response(buf: &mut BytesMut, client: u64, request: u64, code: Code, value: &[u8]) {
    let body = ResponseBody {
        client: client.into(),
        request: request.into(),
        code: code as u8,
        padding: [0; 3],
        value_len: (value.len() as u32).into(),
    };
    buf.put_slice(body.as_bytes());
    buf.put_slice(value);
}

pub fn decode_response(body: &Bytes) -> Result<Response, FrameError> {
    let bad = |reason: String| FrameError::BadBody {
        kind: Kind::Response,
        reason,
    };
    let (f, rest) =
        ResponseBody::ref_from_prefix(body).map_err(|_| bad(format!("{} bytes", body.len())))?;
    let code = Code::from_u8(f.code).ok_or_else(|| bad(format!("code {}", f.code)))?;
    if f.padding != [0; 3] {
        return Err(bad("padding not zero".into()));
    }
    if rest.len() != f.value_len.get() as usize {
        return Err(bad(format!(
            "value of {} bytes announced, {} present",
            f.value_len.get(),
            rest.len()
        )));
    }
    Ok(Response {
        client: f.client.get(),
        request: f.request.get(),
        code,
        value: body.slice(core::mem::size_of::<ResponseBody>()..),
    })
}

/// A Hello or HelloOk without the text a peer's Hello may carry.
pub fn decode_hello(kind: Kind, body: &[u8]) -> Result<HelloBody, FrameError> {
    decode_hello_with_text(kind, body).map(|(hello, _)| hello)
}

/// A Hello or HelloOk, and the peer list text after a peer's Hello (empty
/// otherwise).
pub fn decode_hello_with_text(kind: Kind, body: &[u8]) -> Result<(HelloBody, &str), FrameError> {
    let size = core::mem::size_of::<HelloBody>();
    let (hello, text) = HelloBody::read_from_prefix(body).map_err(|_| FrameError::BadBody {
        kind,
        reason: format!("{} bytes, a hello is at least {size}", body.len()),
    })?;
    let role_ok = hello.role == Role::Peer as u8 || hello.role == Role::Client as u8;
    let slot_ok = kind == Kind::HelloOk || hello.known_slot.get() == 0;
    let text_ok = text.is_empty() || (kind == Kind::Hello && hello.role == Role::Peer as u8);
    if !role_ok || hello.padding != [0; 3] || !slot_ok || !text_ok {
        return Err(FrameError::BadBody {
            kind,
            reason: format!("role {} or reserved bytes", hello.role),
        });
    }
    let text = std::str::from_utf8(text).map_err(|_| FrameError::BadBody {
        kind,
        reason: "peer list text is not UTF-8".into(),
    })?;
    Ok((hello, text))
}

/// What kind of refusal a `Refused` text from a peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The configurations differ (`REFUSED_CONFIG`).
    Config,
    /// This process is a duplicate of the replica id (`REFUSED_DUPLICATE`).
    Duplicate,
    /// Another connection holds the replica id for now (`REFUSED_CONTESTED`).
    Contested,
    Other,
}

impl Refusal {
    pub fn of(text: &str) -> Refusal {
        if text.starts_with(REFUSED_CONFIG) {
            Refusal::Config
        } else if text.starts_with(REFUSED_DUPLICATE) {
            Refusal::Duplicate
        } else if text.starts_with(REFUSED_CONTESTED) {
            Refusal::Contested
        } else {
            Refusal::Other
        }
    }
}

/// The answer to a Hello: the replica's view (`HelloOk`), or `Err` with the
/// text of its `Refused`. Any other frame is a protocol error.
pub fn decode_hello_answer(
    kind: Kind,
    body: &[u8],
) -> Result<Result<HelloBody, String>, FrameError> {
    match kind {
        Kind::HelloOk => decode_hello(kind, body).map(Ok),
        Kind::Refused => Ok(Err(String::from_utf8_lossy(body).into_owned())),
        kind => Err(FrameError::Unexpected {
            kind,
            reason: "answer to a Hello",
        }),
    }
}

/// A shard's digest and counters, answering `Admin`.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct AdminInfo {
    pub replica: u8,
    pub shard: u8,
    pub replicas: u8,
    pub shards: u8,
    pub peers_connected: u8,
    /// 1 once the shard stopped because its log failed (`Code::Unavailable`).
    pub log_failed: u8,
    pub padding: [u8; 2],
    /// Order-independent digest of the shard's KV state.
    pub digest: U64,
    pub keys: U64,
    /// Instances this shard led (one per batch).
    pub batches: U64,
    /// Client commands in those batches.
    pub batched_commands: U64,
    pub fast_commits: U64,
    pub slow_commits: U64,
    pub executed_instances: U64,
    pub executed_commands: U64,
    pub retransmits: U64,
    pub recoveries: U64,
    pub recovered_noops: U64,
    pub bytes_in: U64,
    pub bytes_out: U64,
    pub frames_in: U64,
    pub frames_out: U64,
    /// Frames refused as malformed (each closed its connection).
    pub bad_frames: U64,
    /// Commands sent to, and received from, other shards of this replica.
    pub forwarded_out: U64,
    pub forwarded_in: U64,
    pub instances_in_memory: U64,
    /// Messages to peers dropped because their link was down or backed up
    /// (the core re-sends what matters).
    pub dropped_messages: U64,
    /// Commands this shard owns whose answer is still due to a client: in
    /// flight, or waiting to execute. Zero on an idle shard.
    pub awaiting_answers: U64,
    /// The log's group commits (one O_DSYNC write each: a write and its
    /// sync), the records and entry bytes they made durable, and the time
    /// each took, in microseconds: median, 99th percentile, most.
    /// All zero without a log (`--in-memory`).
    pub fsyncs: U64,
    pub synced_records: U64,
    pub synced_bytes: U64,
    pub fsync_p50_us: U64,
    pub fsync_p99_us: U64,
    pub fsync_max_us: U64,
    /// Keys the conflict index holds (touched by an instance not known
    /// executed at every replica), and keys it forgot so far.
    pub indexed_keys: U64,
    pub keys_forgotten: U64,
    /// The KV store's own account of its memory: live records in the arena
    /// and its index's buckets (`KvStats::memory_bytes`; large values and
    /// unused chunk space left out).
    pub kv_bytes: U64,
    /// Client sessions in the exactly-once table, sessions expired so far
    /// (idle, or evicted past `--sessions-max`), and the watermark below
    /// which session ids never start one again.
    pub sessions: U64,
    pub sessions_expired: U64,
    pub sessions_retired_below: U64,
}

const _: () = assert!(core::mem::size_of::<AdminInfo>() == 8 + 8 * 33);
const _: () = assert!(core::mem::size_of::<AdminInfo>() <= SMALL_BODY_BYTES_MAX);
const _: () = assert!(REFUSED_TEXT_BYTES_MAX <= SMALL_BODY_BYTES_MAX);
const _: () = assert!(core::mem::size_of::<ResponseBody>() <= SMALL_BODY_BYTES_MAX);

/// Where shard `shard` of a replica whose base address is `base` listens:
/// port + shard. `None` where that port does not exist.
pub fn shard_addr(base: std::net::SocketAddr, shard: usize) -> Option<std::net::SocketAddr> {
    let port = u16::try_from(usize::from(base.port()) + shard).ok()?;
    let mut addr = base;
    addr.set_port(port);
    Some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_round_trip() {
        let mut buf = BytesMut::new();
        put_response(&mut buf, 5, 9, Code::Value, b"abc");
        let r = decode_response(&buf.freeze()).unwrap();
        assert_eq!(
            (r.client, r.request, r.code, &r.value[..]),
            (5, 9, Code::Value, &b"abc"[..])
        );
    }

    #[test]
    fn a_response_with_a_wrong_length_is_refused() {
        let mut buf = BytesMut::new();
        put_response(&mut buf, 5, 9, Code::Value, b"abc");
        buf.truncate(buf.len() - 1);
        assert!(decode_response(&buf.freeze()).is_err());
    }
}
