//! The command record and batches of them.
//!
//! A batch is one `Bytes` buffer holding records back to back:
//! a 32-byte [`CommandHeader`], then the key, then the value. A batch is
//! validated once when it is built from untrusted bytes ([`Batch::parse`]);
//! after that, iterating it only slices the buffer.

use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::constants::{BATCH_BYTES_MAX, BATCH_COMMANDS_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// Fixed header of one command record. Little-endian, alignment 1, so it can
/// be read in place at any offset of a receive buffer.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
pub struct CommandHeader {
    /// Who sent the command (exactly-once key, with `request`).
    pub client: U64,
    /// The client's request number, from 1, unique per client.
    pub request: U64,
    /// The lowest request number the client still waits for: results of the
    /// client's requests below it may be forgotten.
    pub first_outstanding: U64,
    /// An [`Op`] code.
    pub op: u8,
    pub padding: u8,
    pub key_len: U16,
    pub value_len: U32,
}

pub const COMMAND_HEADER_BYTES: usize = 32;
const _: () = assert!(core::mem::size_of::<CommandHeader>() == COMMAND_HEADER_BYTES);

/// What a command does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    Get = 1,
    Put = 2,
    Delete = 3,
    /// Drops the exactly-once session of `client` if it saw no command
    /// since the proposer looked: `first_outstanding` carries how many of
    /// the client's commands had executed then, `request` is 0. Proposed
    /// by replicas only (a client's is refused); see `protocol::sessions`.
    Expire = 4,
    /// Adds the signed 64-bit delta in the value (8 bytes, little-endian)
    /// to the key's value read as decimal text (absent reads as 0), stores
    /// the sum as decimal text and answers it (Redis's INCRBY).
    Incr = 5,
    /// A PUT that takes effect only if the key has no value (SET NX).
    PutIfAbsent = 6,
    /// A PUT that takes effect only if the key has a value (SET XX).
    PutIfPresent = 7,
}

/// Bytes of an `Op::Incr`'s value: the delta, an i64, little-endian.
pub const INCR_VALUE_BYTES: usize = 8;

impl Op {
    pub fn from_code(code: u8) -> Option<Op> {
        match code {
            1 => Some(Op::Get),
            2 => Some(Op::Put),
            3 => Some(Op::Delete),
            4 => Some(Op::Expire),
            5 => Some(Op::Incr),
            6 => Some(Op::PutIfAbsent),
            7 => Some(Op::PutIfPresent),
            _ => None,
        }
    }

    /// Whether the command carries a value (whose length the op may fix).
    pub fn takes_value(self) -> bool {
        matches!(
            self,
            Op::Put | Op::PutIfAbsent | Op::PutIfPresent | Op::Incr
        )
    }
}

/// A command read in place from a batch: key and value borrow the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandRef<'a> {
    pub client: u64,
    pub request: u64,
    pub first_outstanding: u64,
    pub op: Op,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    Truncated {
        offset: usize,
    },
    UnknownOp {
        offset: usize,
        code: u8,
    },
    KeyTooLong {
        offset: usize,
        len: usize,
    },
    ValueTooLong {
        offset: usize,
        len: usize,
    },
    ValueOnNonPut {
        offset: usize,
    },
    /// An `Op::Incr` whose value is not an 8-byte delta.
    BadIncrement {
        offset: usize,
        len: usize,
    },
    BadRequestNumbers {
        offset: usize,
    },
    /// Reserved bytes must be zero, so a later version can give them meaning.
    NonZeroPadding {
        offset: usize,
    },
    TooManyCommands,
    /// More bytes than one instance may carry (`BATCH_BYTES_MAX`): such a
    /// batch could not be sent on in a frame again (a PrepareOk, say).
    TooManyBytes {
        len: usize,
    },
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Truncated { offset } => write!(f, "command truncated at byte {offset}"),
            CommandError::UnknownOp { offset, code } => {
                write!(f, "unknown op code {code} at byte {offset}")
            }
            CommandError::KeyTooLong { offset, len } => {
                write!(
                    f,
                    "key of {len} bytes at byte {offset} (max {KEY_BYTES_MAX})"
                )
            }
            CommandError::ValueTooLong { offset, len } => {
                write!(
                    f,
                    "value of {len} bytes at byte {offset} (max {VALUE_BYTES_MAX})"
                )
            }
            CommandError::ValueOnNonPut { offset } => {
                write!(f, "GET or DELETE with a value at byte {offset}")
            }
            CommandError::BadIncrement { offset, len } => write!(
                f,
                "INCR with a {len}-byte value at byte {offset} (the delta takes \
                 {INCR_VALUE_BYTES})"
            ),
            CommandError::BadRequestNumbers { offset } => write!(
                f,
                "request number 0 or below first_outstanding at byte {offset}"
            ),
            CommandError::NonZeroPadding { offset } => {
                write!(f, "non-zero padding in the command at byte {offset}")
            }
            CommandError::TooManyCommands => {
                write!(f, "more than {BATCH_COMMANDS_MAX} commands in one batch")
            }
            CommandError::TooManyBytes { len } => {
                write!(f, "batch of {len} bytes (limit {BATCH_BYTES_MAX})")
            }
        }
    }
}

impl std::error::Error for CommandError {}

/// A client's request numbers start at 1 and it waits for none above the
/// request; an `Op::Expire` has request 0 (nobody waits for it) and a count
/// in `first_outstanding`.
fn request_numbers_valid(op: Op, request: u64, first_outstanding: u64) -> bool {
    if op == Op::Expire {
        request == 0
    } else {
        request >= 1 && first_outstanding <= request
    }
}

/// Reads one record at the start of `buf`; returns it and its length.
fn read_record(buf: &[u8], offset: usize) -> Result<(CommandRef<'_>, usize), CommandError> {
    let (header, rest) =
        CommandHeader::ref_from_prefix(buf).map_err(|_| CommandError::Truncated { offset })?;
    let op = Op::from_code(header.op).ok_or(CommandError::UnknownOp {
        offset,
        code: header.op,
    })?;
    if header.padding != 0 {
        return Err(CommandError::NonZeroPadding { offset });
    }
    let key_len = usize::from(header.key_len.get());
    let value_len = header.value_len.get() as usize;
    if key_len > KEY_BYTES_MAX {
        return Err(CommandError::KeyTooLong {
            offset,
            len: key_len,
        });
    }
    if value_len > VALUE_BYTES_MAX {
        return Err(CommandError::ValueTooLong {
            offset,
            len: value_len,
        });
    }
    if !op.takes_value() && value_len != 0 {
        return Err(CommandError::ValueOnNonPut { offset });
    }
    if op == Op::Incr && value_len != INCR_VALUE_BYTES {
        return Err(CommandError::BadIncrement {
            offset,
            len: value_len,
        });
    }
    let (request, first) = (header.request.get(), header.first_outstanding.get());
    if !request_numbers_valid(op, request, first) {
        return Err(CommandError::BadRequestNumbers { offset });
    }
    if rest.len() < key_len + value_len {
        return Err(CommandError::Truncated { offset });
    }
    let cmd = CommandRef {
        client: header.client.get(),
        request,
        first_outstanding: first,
        op,
        key: &rest[..key_len],
        value: &rest[key_len..key_len + value_len],
    };
    Ok((cmd, COMMAND_HEADER_BYTES + key_len + value_len))
}

/// A validated batch of command records. Cloning it is a reference count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    buf: Bytes,
    count: u32,
}

impl Batch {
    /// The empty batch: what a recovered no-op instance carries.
    pub fn empty() -> Batch {
        Batch::default()
    }

    /// Validates untrusted bytes as a batch. Never panics.
    pub fn parse(buf: Bytes) -> Result<Batch, CommandError> {
        if buf.len() > BATCH_BYTES_MAX {
            return Err(CommandError::TooManyBytes { len: buf.len() });
        }
        let mut offset = 0;
        let mut count = 0usize;
        while offset < buf.len() {
            let (_, len) = read_record(&buf[offset..], offset)?;
            offset += len;
            count += 1;
            if count > BATCH_COMMANDS_MAX {
                return Err(CommandError::TooManyCommands);
            }
        }
        Ok(Batch {
            buf,
            count: count as u32,
        })
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded records, as they travel on the wire.
    pub fn bytes(&self) -> &Bytes {
        &self.buf
    }

    pub fn iter(&self) -> CommandIter<'_> {
        CommandIter { rest: &self.buf }
    }
}

/// Iterates the commands of a validated batch.
pub struct CommandIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for CommandIter<'a> {
    type Item = CommandRef<'a>;

    fn next(&mut self) -> Option<CommandRef<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        // The batch was validated when it was built, so only the lengths are
        // read again; slicing still bounds-checks, so a bug panics, never
        // reads out of bounds.
        let (header, rest) =
            CommandHeader::ref_from_prefix(self.rest).expect("batch validated on build");
        let key_len = usize::from(header.key_len.get());
        let value_len = header.value_len.get() as usize;
        let cmd = CommandRef {
            client: header.client.get(),
            request: header.request.get(),
            first_outstanding: header.first_outstanding.get(),
            op: Op::from_code(header.op).expect("batch validated on build"),
            key: &rest[..key_len],
            value: &rest[key_len..key_len + value_len],
        };
        self.rest = &rest[key_len + value_len..];
        Some(cmd)
    }
}

/// Encodes commands into a batch. The builder's buffer is reused: `finish`
/// splits off what was written and keeps the spare capacity.
#[derive(Default)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: usize,
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of command records written so far.
    pub fn bytes_len(&self) -> usize {
        self.buf.len()
    }

    /// Whether `cmd` still fits: fewer than `commands_max` commands so far,
    /// and the records stay within `BATCH_BYTES_MAX`. A caller closes the
    /// batch and starts the next when it does not (an empty batch takes any
    /// command `push` accepts).
    pub fn fits(&self, cmd: &CommandRef<'_>, commands_max: usize) -> bool {
        let size = COMMAND_HEADER_BYTES + cmd.key.len() + cmd.value.len();
        self.count < commands_max && self.buf.len() + size <= BATCH_BYTES_MAX
    }

    /// Appends one command. Panics on a command `Batch::parse` would refuse:
    /// callers build commands themselves and must respect the limits.
    pub fn push(&mut self, cmd: &CommandRef<'_>) {
        assert!(self.count < BATCH_COMMANDS_MAX, "batch full");
        assert!(cmd.key.len() <= KEY_BYTES_MAX, "key too long");
        assert!(cmd.value.len() <= VALUE_BYTES_MAX, "value too long");
        assert!(
            cmd.op.takes_value() || cmd.value.is_empty(),
            "value on a {:?}",
            cmd.op
        );
        assert!(
            cmd.op != Op::Incr || cmd.value.len() == INCR_VALUE_BYTES,
            "an INCR's value is its 8-byte delta"
        );
        assert!(request_numbers_valid(
            cmd.op,
            cmd.request,
            cmd.first_outstanding
        ));
        let header = CommandHeader {
            client: U64::new(cmd.client),
            request: U64::new(cmd.request),
            first_outstanding: U64::new(cmd.first_outstanding),
            op: cmd.op as u8,
            padding: 0,
            key_len: U16::new(cmd.key.len() as u16),
            value_len: U32::new(cmd.value.len() as u32),
        };
        self.buf.put_slice(header.as_bytes());
        self.buf.put_slice(cmd.key);
        self.buf.put_slice(cmd.value);
        self.count += 1;
    }

    pub fn finish(&mut self) -> Batch {
        let count = std::mem::take(&mut self.count) as u32;
        Batch {
            buf: self.buf.split().freeze(),
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch too large to be re-sent inside a frame is refused up front.
    #[test]
    fn a_batch_over_the_byte_limit_is_refused() {
        let big = Bytes::from(vec![0u8; BATCH_BYTES_MAX + 1]);
        assert_eq!(
            Batch::parse(big),
            Err(CommandError::TooManyBytes {
                len: BATCH_BYTES_MAX + 1
            })
        );
    }

    fn cmd<'a>(op: Op, key: &'a [u8], value: &'a [u8]) -> CommandRef<'a> {
        CommandRef {
            client: 7,
            request: 3,
            first_outstanding: 2,
            op,
            key,
            value,
        }
    }

    #[test]
    fn round_trip() {
        let mut b = BatchBuilder::new();
        b.push(&cmd(Op::Put, b"k1", b"v1"));
        b.push(&cmd(Op::Get, b"k2", b""));
        b.push(&cmd(Op::Delete, b"", b""));
        b.push(&cmd(Op::Incr, b"n", &(-3i64).to_le_bytes()));
        b.push(&cmd(Op::PutIfAbsent, b"a", b"1"));
        b.push(&cmd(Op::PutIfPresent, b"p", b"2"));
        let batch = b.finish();
        let parsed = Batch::parse(batch.bytes().clone()).unwrap();
        assert_eq!(parsed.len(), 6);
        let all: Vec<_> = parsed.iter().collect();
        assert_eq!(all[0], cmd(Op::Put, b"k1", b"v1"));
        assert_eq!(all[1], cmd(Op::Get, b"k2", b""));
        assert_eq!(all[2], cmd(Op::Delete, b"", b""));
        assert_eq!(all[3], cmd(Op::Incr, b"n", &(-3i64).to_le_bytes()));
        assert_eq!(all[4], cmd(Op::PutIfAbsent, b"a", b"1"));
        assert_eq!(all[5], cmd(Op::PutIfPresent, b"p", b"2"));
        assert!(b.is_empty());
    }

    #[test]
    fn refuses_malformed() {
        let mut b = BatchBuilder::new();
        b.push(&cmd(Op::Put, b"key", b"value"));
        let good = b.finish().bytes().clone();
        for cut in 1..good.len() {
            assert!(Batch::parse(good.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut bad = good.to_vec();
        bad[24] = 9;
        assert_eq!(
            Batch::parse(bad.into()),
            Err(CommandError::UnknownOp { offset: 0, code: 9 })
        );
        let mut bad = good.to_vec();
        bad[24] = Op::Get as u8;
        assert_eq!(
            Batch::parse(bad.into()),
            Err(CommandError::ValueOnNonPut { offset: 0 })
        );
        // "value" is 5 bytes, not an 8-byte delta.
        let mut bad = good.to_vec();
        bad[24] = Op::Incr as u8;
        assert_eq!(
            Batch::parse(bad.into()),
            Err(CommandError::BadIncrement { offset: 0, len: 5 })
        );
        let mut bad = good.to_vec();
        bad[8..16].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(
            Batch::parse(bad.into()),
            Err(CommandError::BadRequestNumbers { offset: 0 })
        );
    }

    /// Arbitrary bytes never panic the parser, and what it accepts iterates
    /// to exactly the bytes it was given. Seeded: a failure prints its seed.
    #[test]
    fn random_bytes_never_panic() {
        use crate::rng::Rng;
        for seed in 0..2000u64 {
            let mut rng = Rng::new(seed);
            let mut b = BatchBuilder::new();
            for _ in 0..rng.below(4) {
                let key = vec![b'k'; rng.below(8) as usize];
                let value = vec![b'v'; rng.below(8) as usize];
                b.push(&cmd(Op::Put, &key, &value));
            }
            let mut bytes = b.finish().bytes().to_vec();
            // Flip, cut or append some bytes, or start from pure noise.
            match rng.below(4) {
                0 => bytes = (0..rng.below(100)).map(|_| rng.below(256) as u8).collect(),
                1 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len() as u64) as usize;
                    bytes[i] = rng.below(256) as u8;
                }
                2 => bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize),
                _ => bytes.extend((0..rng.below(40)).map(|_| rng.below(256) as u8)),
            }
            if let Ok(batch) = Batch::parse(Bytes::from(bytes.clone())) {
                let mut again = BatchBuilder::new();
                batch.iter().for_each(|c| again.push(&c));
                assert_eq!(again.finish().bytes()[..], bytes[..], "seed {seed}");
            }
        }
    }
}
