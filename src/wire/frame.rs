//! The frame: one fixed 32-byte header in front of every message on every
//! connection, peer or client.
//!
//! A [`FrameReader`] cuts a TCP byte stream into frames. It checks every
//! header field before it waits for a body (so an oversized length is refused
//! without buffering it), then the checksum over header and body. A frame it
//! returns borrows the receive buffer (`Bytes`): decoding its body never
//! copies a key or a value. Any failure is a [`FrameError`]; the caller
//! counts it, logs it with the peer's address, and closes the connection.
//!
//! Frames are written with [`FrameEncoder`] straight into the connection's
//! send buffer: header space first, then the body, then the header is filled
//! in with the body's length and checksum.

use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::constants::{FRAME_BODY_BYTES_MAX, VALUE_BYTES_MAX};

/// Body limit of the kinds with a fixed body or a short text
/// (`Kind::body_bytes_max`); each such body is checked against it where it
/// is laid out.
pub const SMALL_BODY_BYTES_MAX: usize = 4096;

/// Longest body a connection may announce before its handshake is done: a
/// Hello's, with a peer's list text after it
/// (`FrameReader::next_before_hello`), so that a connection that has proved
/// nothing can make the replica hold no more than this.
pub const HELLO_BODY_BYTES_MAX: usize =
    core::mem::size_of::<super::client::HelloBody>() + super::client::HELLO_PEERS_TEXT_BYTES_MAX;

/// "EPXF" read as a little-endian u32.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"EPXF");
/// Bumped on any change of a layout or a meaning in `wire/` (5: the
/// `Progress` kind, and dependencies that name what is stable; 6: the
/// Hello carries the configuration digest, the process's incarnation and,
/// from a peer, its peer list; 7: the INCR and conditional-PUT ops and
/// their answer codes, which a version-6 replica would refuse in a batch).
pub const WIRE_VERSION: u8 = 7;

pub const FRAME_HEADER_BYTES: usize = 32;

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
pub struct FrameHeader {
    pub magic: U32,
    pub version: u8,
    /// A [`Kind`] code.
    pub kind: u8,
    /// The sending replica (peer frames); zero from clients.
    pub sender: u8,
    /// The shard the frame is for (and, between peers, from).
    pub shard: u8,
    pub body_len: U32,
    /// CRC-32C of the header (this field zero) followed by the body.
    pub checksum: U32,
    pub cluster_id: U64,
    /// Zero; a later version may give it a meaning.
    pub reserved: U64,
}

const _: () = assert!(core::mem::size_of::<FrameHeader>() == FRAME_HEADER_BYTES);
const CHECKSUM_OFFSET: usize = 12;

/// What a frame carries. Peer kinds below 32, client kinds from 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    // Between replicas (shard s to shard s), see `wire::peer`.
    PreAccept = 1,
    PreAcceptOk = 2,
    Accept = 3,
    AcceptOk = 4,
    Commit = 5,
    CommitOk = 6,
    Prepare = 7,
    PrepareOk = 8,
    Nack = 9,
    Validate = 10,
    ValidateOk = 11,
    Waiting = 12,
    Progress = 13,
    // Connection set-up, both roles, see `wire::client`.
    Hello = 20,
    HelloOk = 21,
    Refused = 22,
    // Client to replica and back.
    Request = 32,
    Response = 33,
    Admin = 34,
    AdminInfo = 35,
}

impl Kind {
    pub fn from_code(code: u8) -> Option<Kind> {
        use Kind::*;
        Some(match code {
            1 => PreAccept,
            2 => PreAcceptOk,
            3 => Accept,
            4 => AcceptOk,
            5 => Commit,
            6 => CommitOk,
            7 => Prepare,
            8 => PrepareOk,
            9 => Nack,
            10 => Validate,
            11 => ValidateOk,
            12 => Waiting,
            13 => Progress,
            20 => Hello,
            21 => HelloOk,
            22 => Refused,
            32 => Request,
            33 => Response,
            34 => Admin,
            35 => AdminInfo,
            _ => return None,
        })
    }

    /// A protocol message between replicas.
    pub fn is_peer_message(self) -> bool {
        (self as u8) < 20
    }

    /// Longest body a frame of this kind may announce. Kinds with a fixed
    /// body or a short text get a small limit, so a frame that claims more
    /// is refused from its header alone.
    pub fn body_bytes_max(self) -> usize {
        use Kind::*;
        match self {
            PreAccept | Accept | Commit | PrepareOk | Validate | ValidateOk | Request => {
                FRAME_BODY_BYTES_MAX
            }
            Response => SMALL_BODY_BYTES_MAX + VALUE_BYTES_MAX,
            PreAcceptOk | AcceptOk | CommitOk | Prepare | Nack | Waiting | Progress | Hello
            | HelloOk | Refused | Admin | AdminInfo => SMALL_BODY_BYTES_MAX,
        }
    }
}

/// Why a frame (or a body) was refused. Every variant closes the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    BadMagic(u32),
    BadVersion(u8),
    UnknownKind(u8),
    TooLong {
        kind: Kind,
        len: usize,
        /// The limit it passed: the kind's, or a Hello's before a handshake.
        limit: usize,
    },
    WrongCluster {
        expected: u64,
        got: u64,
    },
    ReservedNotZero,
    BadChecksum {
        expected: u32,
        got: u32,
    },
    /// The stream ended inside a frame.
    Truncated {
        have: usize,
        need: usize,
    },
    /// The header is fine but the body does not decode as its kind.
    BadBody {
        kind: Kind,
        reason: String,
    },
    /// A frame of a kind this connection may not carry (a client sending a
    /// PreAccept, a peer frame claiming another sender, ...).
    Unexpected {
        kind: Kind,
        reason: &'static str,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadMagic(m) => write!(f, "bad magic {m:#010x} (want {FRAME_MAGIC:#010x})"),
            FrameError::BadVersion(v) => {
                write!(f, "wire version {v}, this build speaks {WIRE_VERSION}")
            }
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::TooLong { kind, len, limit } => {
                write!(f, "{kind:?} body of {len} bytes (limit {limit})")
            }
            FrameError::WrongCluster { expected, got } => {
                write!(f, "cluster id {got}, this cluster is {expected}")
            }
            FrameError::ReservedNotZero => write!(f, "reserved header bytes not zero"),
            FrameError::BadChecksum { expected, got } => {
                write!(f, "checksum {got:#010x}, body sums to {expected:#010x}")
            }
            FrameError::Truncated { have, need } => {
                write!(
                    f,
                    "connection closed inside a frame ({have} of {need} bytes)"
                )
            }
            FrameError::BadBody { kind, reason } => write!(f, "malformed {kind:?}: {reason}"),
            FrameError::Unexpected { kind, reason } => write!(f, "unexpected {kind:?}: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A checked frame; `body` borrows the receive buffer.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: Kind,
    pub sender: u8,
    pub shard: u8,
    pub body: Bytes,
}

/// Room a receive buffer opens for one read, at least and at most.
const READ_ROOM_BYTES_MIN: usize = 4 << 10;
const READ_ROOM_BYTES_MAX: usize = 256 << 10;

/// A receive buffer for one connection, shared by every reader of the wire
/// (replica, client library, blaster). Safe Rust reads only into
/// initialised memory, so the room opened for each read is zeroed; its size
/// follows what the reads bring (twice the last one, 4 KiB to 256 KiB),
/// because a fixed large room costs a large memset for every small answer.
#[derive(Debug)]
pub struct ReadBuffer {
    buf: BytesMut,
    room: usize,
    /// Where the room opened by `room` starts, until `filled` says how much
    /// of it the read used.
    open_at: Option<usize>,
}

impl Default for ReadBuffer {
    fn default() -> ReadBuffer {
        ReadBuffer {
            buf: BytesMut::new(),
            room: READ_ROOM_BYTES_MIN,
            open_at: None,
        }
    }
}

impl ReadBuffer {
    /// What has been received and not yet cut into frames (for
    /// `FrameReader::next`). Room left open by a read that never finished
    /// (its future was dropped) is discarded here.
    pub fn received(&mut self) -> &mut BytesMut {
        self.close_room();
        &mut self.buf
    }

    /// Zeroed room at the end of the buffer for the next read.
    pub fn room(&mut self) -> &mut [u8] {
        self.close_room();
        let at = self.buf.len();
        self.buf.resize(at + self.room, 0);
        self.open_at = Some(at);
        &mut self.buf[at..]
    }

    /// Keeps the `n` bytes the read put at the start of the room.
    pub fn filled(&mut self, n: usize) {
        let at = self
            .open_at
            .take()
            .expect("a read fills the room it opened");
        debug_assert!(n <= self.room, "read {n} bytes into {}", self.room);
        self.buf.truncate(at + n);
        self.room = (n * 2).clamp(READ_ROOM_BYTES_MIN, READ_ROOM_BYTES_MAX);
    }

    fn close_room(&mut self) {
        if let Some(at) = self.open_at.take() {
            self.buf.truncate(at);
        }
    }
}

/// Cuts frames off the front of a receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct FrameReader {
    cluster_id: u64,
}

impl FrameReader {
    pub fn new(cluster_id: u64) -> FrameReader {
        FrameReader { cluster_id }
    }

    /// The next whole frame at the front of `buf`, taken out of it; `None`
    /// until one has fully arrived. A header is checked as soon as its 32
    /// bytes are in, before any of its body is waited for. Nothing is
    /// reserved for the body it announces: the buffer grows only with the
    /// bytes that arrive (a header alone must not make a reader hold
    /// megabytes).
    pub fn next(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.cut(buf, false)
    }

    /// As `next`, on a connection that has not completed its handshake:
    /// only a Hello of at most `HELLO_BODY_BYTES_MAX` bytes may come, and
    /// any other kind or length is refused as soon as its header is in.
    pub fn next_before_hello(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.cut(buf, true)
    }

    fn cut(&self, buf: &mut BytesMut, before_hello: bool) -> Result<Option<Frame>, FrameError> {
        if buf.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let (header, _) = FrameHeader::ref_from_prefix(&buf[..]).expect("32 unaligned bytes");
        let kind = self.check_header(header)?;
        let len = header.body_len.get() as usize;
        if before_hello {
            if kind != Kind::Hello {
                return Err(FrameError::Unexpected {
                    kind,
                    reason: "the first frame must be a Hello",
                });
            }
            if len > HELLO_BODY_BYTES_MAX {
                return Err(FrameError::TooLong {
                    kind,
                    len,
                    limit: HELLO_BODY_BYTES_MAX,
                });
            }
        }
        let total = FRAME_HEADER_BYTES + len;
        if buf.len() < total {
            return Ok(None);
        }
        let (sender, shard, sent) = (header.sender, header.shard, header.checksum.get());
        let frame = buf.split_to(total).freeze();
        let computed = checksum(&frame);
        if computed != sent {
            return Err(FrameError::BadChecksum {
                expected: computed,
                got: sent,
            });
        }
        Ok(Some(Frame {
            kind,
            sender,
            shard,
            body: frame.slice(FRAME_HEADER_BYTES..),
        }))
    }

    /// What is left in `buf` when the stream ends: nothing, or a truncated frame.
    pub fn at_end(&self, buf: &BytesMut) -> Result<(), FrameError> {
        if buf.is_empty() {
            return Ok(());
        }
        let need = if buf.len() < FRAME_HEADER_BYTES {
            FRAME_HEADER_BYTES
        } else {
            let (header, _) = FrameHeader::ref_from_prefix(&buf[..]).expect("32 unaligned bytes");
            FRAME_HEADER_BYTES + header.body_len.get() as usize
        };
        Err(FrameError::Truncated {
            have: buf.len(),
            need,
        })
    }

    fn check_header(&self, h: &FrameHeader) -> Result<Kind, FrameError> {
        if h.magic.get() != FRAME_MAGIC {
            return Err(FrameError::BadMagic(h.magic.get()));
        }
        if h.version != WIRE_VERSION {
            return Err(FrameError::BadVersion(h.version));
        }
        let kind = Kind::from_code(h.kind).ok_or(FrameError::UnknownKind(h.kind))?;
        let len = h.body_len.get() as usize;
        let limit = kind.body_bytes_max();
        if len > limit {
            return Err(FrameError::TooLong { kind, len, limit });
        }
        if h.cluster_id.get() != self.cluster_id {
            return Err(FrameError::WrongCluster {
                expected: self.cluster_id,
                got: h.cluster_id.get(),
            });
        }
        if h.reserved.get() != 0 {
            return Err(FrameError::ReservedNotZero);
        }
        Ok(kind)
    }
}

/// CRC-32C of a whole frame, its checksum field read as zero.
fn checksum(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[..CHECKSUM_OFFSET]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &frame[CHECKSUM_OFFSET + 4..])
}

/// Writes frames of one connection (fixed cluster id, sender and shard).
#[derive(Clone, Copy, Debug)]
pub struct FrameEncoder {
    pub cluster_id: u64,
    pub sender: u8,
    pub shard: u8,
}

impl FrameEncoder {
    /// One frame, encoded and read back as a receiver sees it: what a
    /// simulated connection carries, and what tests hand a node.
    pub fn encoded(&self, kind: Kind, body: &[u8]) -> Frame {
        let mut buf = BytesMut::new();
        self.frame(&mut buf, kind, |b| b.extend_from_slice(body));
        FrameReader::new(self.cluster_id)
            .next(&mut buf)
            .expect("a frame this encoder wrote")
            .expect("a whole frame")
    }

    /// Appends one frame to `buf`: `body` writes the body after the header.
    pub fn frame(&self, buf: &mut BytesMut, kind: Kind, body: impl FnOnce(&mut BytesMut)) {
        let start = buf.len();
        buf.put_bytes(0, FRAME_HEADER_BYTES);
        body(buf);
        let len = buf.len() - start - FRAME_HEADER_BYTES;
        assert!(len <= kind.body_bytes_max(), "{kind:?} body of {len} bytes");
        let header = FrameHeader {
            magic: FRAME_MAGIC.into(),
            version: WIRE_VERSION,
            kind: kind as u8,
            sender: self.sender,
            shard: self.shard,
            body_len: (len as u32).into(),
            checksum: 0.into(),
            cluster_id: self.cluster_id.into(),
            reserved: 0.into(),
        };
        buf[start..start + FRAME_HEADER_BYTES].copy_from_slice(header.as_bytes());
        let sum = checksum(&buf[start..]);
        buf[start + CHECKSUM_OFFSET..start + CHECKSUM_OFFSET + 4]
            .copy_from_slice(&sum.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn read_buffer_room_follows_the_reads_and_drops_unfinished_ones() {
        let mut rb = ReadBuffer::default();
        assert_eq!(rb.room().len(), READ_ROOM_BYTES_MIN);
        rb.filled(0);
        let room = rb.room();
        room[..3].copy_from_slice(b"abc");
        rb.filled(3);
        assert_eq!(&rb.received()[..], b"abc");
        let n = rb.room().len();
        rb.filled(n);
        assert_eq!(rb.room().len(), 2 * n, "a full read doubles the room");
        // A read whose future was dropped leaves nothing behind.
        assert_eq!(rb.received().len(), 3 + n);
    }

    use super::*;

    const ENC: FrameEncoder = FrameEncoder {
        cluster_id: 7,
        sender: 2,
        shard: 1,
    };

    fn one_frame(kind: Kind, body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        ENC.frame(&mut buf, kind, |b| b.extend_from_slice(body));
        buf
    }

    #[test]
    fn round_trip_borrows_the_buffer() {
        let mut buf = one_frame(Kind::Request, b"hello");
        buf.extend_from_slice(&one_frame(Kind::Admin, b"")[..]);
        let reader = FrameReader::new(7);
        let f = reader.next(&mut buf).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.sender, f.shard, &f.body[..]),
            (Kind::Request, 2, 1, &b"hello"[..])
        );
        let g = reader.next(&mut buf).unwrap().unwrap();
        assert_eq!((g.kind, g.body.len()), (Kind::Admin, 0));
        assert!(reader.next(&mut buf).unwrap().is_none());
        reader.at_end(&buf).unwrap();
    }

    #[test]
    fn partial_frames_wait_for_the_rest() {
        let whole = one_frame(Kind::Request, &[9; 100]);
        let reader = FrameReader::new(7);
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert!(reader.next(&mut buf).unwrap().is_none(), "byte {i}");
            buf.extend_from_slice(&[*byte]);
        }
        assert_eq!(reader.next(&mut buf).unwrap().unwrap().body.len(), 100);
    }

    fn refused(mut buf: BytesMut) -> FrameError {
        FrameReader::new(7).next(&mut buf).unwrap_err()
    }

    #[test]
    fn each_bad_header_field_is_refused() {
        let mut b = one_frame(Kind::Request, b"x");
        b[0] ^= 1;
        assert!(matches!(refused(b), FrameError::BadMagic(_)));
        let mut b = one_frame(Kind::Request, b"x");
        b[4] = 9;
        assert_eq!(refused(b), FrameError::BadVersion(9));
        let mut b = one_frame(Kind::Request, b"x");
        b[5] = 200;
        assert_eq!(refused(b), FrameError::UnknownKind(200));
        let mut b = one_frame(Kind::Request, b"x");
        b[8..12].copy_from_slice(&(FRAME_BODY_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(refused(b), FrameError::TooLong { .. }));
        // A kind with a small fixed body may not announce a large one.
        let mut b = one_frame(Kind::Hello, &[0; 16]);
        b[8..12].copy_from_slice(&(SMALL_BODY_BYTES_MAX as u32 + 1).to_le_bytes());
        assert_eq!(
            refused(b),
            FrameError::TooLong {
                kind: Kind::Hello,
                len: SMALL_BODY_BYTES_MAX + 1,
                limit: SMALL_BODY_BYTES_MAX,
            }
        );
        let b = one_frame(Kind::Request, b"x");
        let err = FrameReader::new(8).next(&mut b.clone()).unwrap_err();
        assert_eq!(
            err,
            FrameError::WrongCluster {
                expected: 8,
                got: 7
            }
        );
        let mut b = one_frame(Kind::Request, b"x");
        b[31] = 1;
        assert_eq!(refused(b), FrameError::ReservedNotZero);
    }

    #[test]
    fn a_flipped_body_bit_fails_the_checksum() {
        let mut b = one_frame(Kind::Request, b"payload");
        b[FRAME_HEADER_BYTES + 3] ^= 0x10;
        assert!(matches!(refused(b), FrameError::BadChecksum { .. }));
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let reader = FrameReader::new(7);
        let whole = one_frame(Kind::Request, b"abcdef");
        for cut in 1..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert!(reader.next(&mut buf).unwrap().is_none());
            assert!(matches!(
                reader.at_end(&buf),
                Err(FrameError::Truncated { .. })
            ));
        }
    }
}
