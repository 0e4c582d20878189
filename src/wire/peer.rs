//! The protocol messages between replicas as fixed-layout frame bodies.
//!
//! Five layouts cover the thirteen messages:
//! - [`IdBallotBody`]: AcceptOk, CommitOk, Prepare, Nack, Waiting;
//! - [`ProgressBody`]: Progress, two vectors of slots;
//! - [`ValueBody`]: PreAccept, PreAcceptOk, Accept, Commit, Validate, the
//!   batch (if any) following it to the end of the frame;
//! - [`PrepareOkBody`], then the batch;
//! - [`ValidateOkBody`], then `count` [`WireConflict`]s.
//!
//! Decoding checks everything the core would otherwise have to trust: replica
//! ids below N, dependency entries beyond N zero, status and flag codes,
//! padding zero, exact lengths, and the batch itself ([`Batch::parse`]).
//! A batch is a slice of the receive buffer, never a copy.

use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::frame::{FrameEncoder, FrameError, Kind, SMALL_BODY_BYTES_MAX};
use crate::command::Batch;
use crate::constants::REPLICAS_MAX;
use crate::protocol::{
    AcceptOk, Attrs, Ballot, CommitOk, Deps, InstanceId, Message, Nack, PreAccept, PreAcceptOk,
    Prepare, PrepareOk, Progress, ReplicaId, Slot, Status, Validate, ValidateOk, Value, Waiting,
};

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct WireId {
    pub slot: U64,
    pub replica: u8,
    pub padding: [u8; 7],
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct WireBallot {
    pub epoch: U32,
    pub number: U32,
    pub replica: u8,
    pub padding: [u8; 3],
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct WireAttrs {
    pub seq: U64,
    pub deps: [U64; REPLICAS_MAX],
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct IdBallotBody {
    pub id: WireId,
    /// The promise for Nack; zero for CommitOk.
    pub ballot: WireBallot,
    /// Waiting's vote count; zero otherwise.
    pub votes: u8,
    pub padding: [u8; 3],
}

const FLAG_NOOP: u8 = 1;
const FLAG_UNCHANGED: u8 = 2;
/// A Commit without its batch, to a peer that voted for it (`Value::is_slim`).
const FLAG_SLIM: u8 = 4;

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct ValueBody {
    pub id: WireId,
    pub ballot: WireBallot,
    /// `FLAG_NOOP` (Accept and Commit only), `FLAG_SLIM` (Commit only).
    pub flags: u8,
    pub padding: [u8; 3],
    pub attrs: WireAttrs,
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct PrepareOkBody {
    pub id: WireId,
    pub ballot: WireBallot,
    pub voted: WireBallot,
    pub status: u8,
    /// `FLAG_NOOP | FLAG_UNCHANGED`.
    pub flags: u8,
    pub padding: [u8; 2],
    pub attrs: WireAttrs,
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct ValidateOkBody {
    pub id: WireId,
    pub ballot: WireBallot,
    pub count: U32,
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct WireConflict {
    pub id: WireId,
    pub status: u8,
    pub padding: [u8; 7],
}

/// Per instance space, the sender's executed prefix and stable frontier.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct ProgressBody {
    pub executed: [U64; REPLICAS_MAX],
    pub stable: [U64; REPLICAS_MAX],
}

const _: () = assert!(core::mem::size_of::<ProgressBody>() == 16 * REPLICAS_MAX);
const _: () = assert!(core::mem::size_of::<ProgressBody>() <= SMALL_BODY_BYTES_MAX);
const _: () = assert!(core::mem::size_of::<WireId>() == 16);
const _: () = assert!(core::mem::size_of::<WireBallot>() == 12);
const _: () = assert!(core::mem::size_of::<WireAttrs>() == 8 + 8 * REPLICAS_MAX);
const _: () = assert!(core::mem::size_of::<IdBallotBody>() == 32);
const _: () = assert!(core::mem::size_of::<ValueBody>() == 32 + 80);
const _: () = assert!(core::mem::size_of::<PrepareOkBody>() == 44 + 80);
const _: () = assert!(core::mem::size_of::<ValidateOkBody>() == 32);
const _: () = assert!(core::mem::size_of::<WireConflict>() == 24);
// The fixed bodies of the small kinds (`Kind::body_bytes_max`), and the
// largest fixed part before a batch.
const _: () = assert!(core::mem::size_of::<ValueBody>() <= SMALL_BODY_BYTES_MAX);
const _: () = assert!(core::mem::size_of::<IdBallotBody>() <= SMALL_BODY_BYTES_MAX);
const _: () = assert!(
    core::mem::size_of::<PrepareOkBody>() + crate::constants::BATCH_BYTES_MAX
        <= crate::constants::FRAME_BODY_BYTES_MAX
);

fn id_out(id: InstanceId) -> WireId {
    WireId {
        slot: id.slot.0.into(),
        replica: id.replica.0,
        padding: [0; 7],
    }
}

pub(crate) fn ballot_out(b: Ballot) -> WireBallot {
    WireBallot {
        epoch: b.epoch.into(),
        number: b.number.into(),
        replica: b.replica.0,
        padding: [0; 3],
    }
}

pub(crate) fn attrs_out(a: &Attrs) -> WireAttrs {
    WireAttrs {
        seq: a.seq.into(),
        deps: a.deps.0.map(U64::new),
    }
}

fn status_code(s: Status) -> u8 {
    s as u8
}

/// Appends `msg` to a peer's send buffer as one frame.
pub fn encode(enc: &FrameEncoder, buf: &mut BytesMut, msg: &Message) {
    let id_ballot = |id, ballot, votes| IdBallotBody {
        id: id_out(id),
        ballot: ballot_out(ballot),
        votes,
        padding: [0; 3],
    };
    let value = |id, ballot, noop: bool, attrs: &Attrs| ValueBody {
        id: id_out(id),
        ballot: ballot_out(ballot),
        flags: if noop { FLAG_NOOP } else { 0 },
        padding: [0; 3],
        attrs: attrs_out(attrs),
    };
    let put_value = |buf: &mut BytesMut, kind, body: ValueBody, batch: Option<&Batch>| {
        enc.frame(buf, kind, |b| {
            b.put_slice(body.as_bytes());
            if let Some(batch) = batch {
                b.put_slice(batch.bytes());
            }
        })
    };
    let put_fixed = |buf: &mut BytesMut, kind, body: IdBallotBody| {
        enc.frame(buf, kind, |b| b.put_slice(body.as_bytes()))
    };
    match msg {
        Message::PreAccept(m) => put_value(
            buf,
            Kind::PreAccept,
            value(m.id, m.ballot, false, &m.attrs),
            Some(&m.batch),
        ),
        Message::PreAcceptOk(m) => put_value(
            buf,
            Kind::PreAcceptOk,
            value(m.id, m.ballot, false, &m.attrs),
            None,
        ),
        Message::Accept(m) => put_value(
            buf,
            Kind::Accept,
            value(m.id, m.ballot, m.noop, &m.attrs),
            Some(&m.batch),
        ),
        Message::Commit(m) => {
            let mut body = value(m.id, m.ballot, m.noop, &m.attrs);
            if m.is_slim() {
                body.flags |= FLAG_SLIM;
            }
            put_value(buf, Kind::Commit, body, Some(&m.batch))
        }
        Message::Validate(m) => put_value(
            buf,
            Kind::Validate,
            value(m.id, m.ballot, false, &m.attrs),
            Some(&m.batch),
        ),
        Message::AcceptOk(m) => put_fixed(buf, Kind::AcceptOk, id_ballot(m.id, m.ballot, 0)),
        Message::CommitOk(m) => {
            put_fixed(buf, Kind::CommitOk, id_ballot(m.id, Ballot::default(), 0))
        }
        Message::Prepare(m) => put_fixed(buf, Kind::Prepare, id_ballot(m.id, m.ballot, 0)),
        Message::Nack(m) => put_fixed(buf, Kind::Nack, id_ballot(m.id, m.promised, 0)),
        Message::Waiting(m) => put_fixed(
            buf,
            Kind::Waiting,
            id_ballot(m.id, Ballot::default(), m.votes),
        ),
        Message::Progress(m) => {
            let body = ProgressBody {
                executed: m.executed.map(U64::new),
                stable: m.stable.map(U64::new),
            };
            enc.frame(buf, Kind::Progress, |b| b.put_slice(body.as_bytes()))
        }
        Message::PrepareOk(m) => {
            let body = PrepareOkBody {
                id: id_out(m.id),
                ballot: ballot_out(m.ballot),
                voted: ballot_out(m.voted),
                status: status_code(m.status),
                flags: if m.noop { FLAG_NOOP } else { 0 }
                    | if m.unchanged { FLAG_UNCHANGED } else { 0 },
                padding: [0; 2],
                attrs: attrs_out(&m.attrs),
            };
            enc.frame(buf, Kind::PrepareOk, |b| {
                b.put_slice(body.as_bytes());
                b.put_slice(m.batch.bytes());
            })
        }
        Message::ValidateOk(m) => {
            let body = ValidateOkBody {
                id: id_out(m.id),
                ballot: ballot_out(m.ballot),
                count: (m.conflicts.len() as u32).into(),
            };
            enc.frame(buf, Kind::ValidateOk, |b| {
                b.put_slice(body.as_bytes());
                for &(id, status) in &m.conflicts {
                    let c = WireConflict {
                        id: id_out(id),
                        status: status_code(status),
                        padding: [0; 7],
                    };
                    b.put_slice(c.as_bytes());
                }
            })
        }
    }
}

/// Checks values against the cluster size while decoding one body.
struct Check {
    kind: Kind,
    replicas: usize,
}

impl Check {
    fn bad(&self, reason: impl Into<String>) -> FrameError {
        FrameError::BadBody {
            kind: self.kind,
            reason: reason.into(),
        }
    }

    fn fixed<'a, T: FromBytes + KnownLayout + Immutable + Unaligned>(
        &self,
        body: &'a [u8],
    ) -> Result<(&'a T, &'a [u8]), FrameError> {
        T::ref_from_prefix(body).map_err(|_| {
            self.bad(format!(
                "{} bytes, fixed part is {}",
                body.len(),
                core::mem::size_of::<T>()
            ))
        })
    }

    fn replica(&self, r: u8) -> Result<ReplicaId, FrameError> {
        if usize::from(r) < self.replicas {
            Ok(ReplicaId(r))
        } else {
            Err(self.bad(format!("replica {r} in a cluster of {}", self.replicas)))
        }
    }

    fn zero(&self, padding: &[u8]) -> Result<(), FrameError> {
        if padding.iter().all(|&b| b == 0) {
            Ok(())
        } else {
            Err(self.bad("padding not zero"))
        }
    }

    fn id(&self, w: &WireId) -> Result<InstanceId, FrameError> {
        self.zero(&w.padding)?;
        if w.slot.get() == 0 {
            return Err(self.bad("slot 0"));
        }
        Ok(InstanceId {
            replica: self.replica(w.replica)?,
            slot: Slot(w.slot.get()),
        })
    }

    fn ballot(&self, w: &WireBallot) -> Result<Ballot, FrameError> {
        self.zero(&w.padding)?;
        Ok(Ballot {
            epoch: w.epoch.get(),
            number: w.number.get(),
            replica: self.replica(w.replica)?,
        })
    }

    fn attrs(&self, w: &WireAttrs) -> Result<Attrs, FrameError> {
        let deps = w.deps.map(|d| d.get());
        // (`get`: a caller's replica count past the array is no reason to panic.)
        if deps
            .get(self.replicas..)
            .is_some_and(|beyond| beyond.iter().any(|&d| d != 0))
        {
            return Err(self.bad("dependency on a replica beyond the cluster"));
        }
        Ok(Attrs {
            seq: w.seq.get(),
            deps: Deps(deps),
        })
    }

    fn status(&self, code: u8) -> Result<Status, FrameError> {
        Ok(match code {
            0 => Status::None,
            1 => Status::PreAccepted,
            2 => Status::Accepted,
            3 => Status::Committed,
            4 => Status::Executed,
            _ => return Err(self.bad(format!("status code {code}"))),
        })
    }

    fn flags(&self, flags: u8, allowed: u8) -> Result<u8, FrameError> {
        if flags & !allowed != 0 {
            return Err(self.bad(format!("flags {flags:#04x}")));
        }
        Ok(flags)
    }

    fn batch(&self, body: &Bytes, offset: usize) -> Result<Batch, FrameError> {
        Batch::parse(body.slice(offset..)).map_err(|e| self.bad(e.to_string()))
    }

    fn empty(&self, rest: &[u8]) -> Result<(), FrameError> {
        if rest.is_empty() {
            Ok(())
        } else {
            Err(self.bad(format!("{} bytes after the fixed part", rest.len())))
        }
    }
}

/// Decodes a peer message body; `kind` must be a peer kind.
pub fn decode(kind: Kind, body: &Bytes, replicas: usize) -> Result<Message, FrameError> {
    let c = Check { kind, replicas };
    match kind {
        Kind::PreAccept | Kind::PreAcceptOk | Kind::Accept | Kind::Commit | Kind::Validate => {
            decode_value(&c, body)
        }
        Kind::AcceptOk | Kind::CommitOk | Kind::Prepare | Kind::Nack | Kind::Waiting => {
            let (f, rest) = c.fixed::<IdBallotBody>(body)?;
            c.empty(rest)?;
            c.zero(&f.padding)?;
            let id = c.id(&f.id)?;
            let ballot = c.ballot(&f.ballot)?;
            if kind != Kind::Waiting && f.votes != 0 {
                return Err(c.bad("vote count outside Waiting"));
            }
            Ok(match kind {
                Kind::AcceptOk => Message::AcceptOk(AcceptOk { id, ballot }),
                Kind::CommitOk => Message::CommitOk(CommitOk { id }),
                Kind::Prepare => Message::Prepare(Prepare { id, ballot }),
                Kind::Nack => Message::Nack(Nack {
                    id,
                    promised: ballot,
                }),
                _ => Message::Waiting(Waiting { id, votes: f.votes }),
            })
        }
        Kind::Progress => {
            let (f, rest) = c.fixed::<ProgressBody>(body)?;
            c.empty(rest)?;
            let (executed, stable) = (f.executed.map(|s| s.get()), f.stable.map(|s| s.get()));
            if executed[c.replicas..]
                .iter()
                .chain(&stable[c.replicas..])
                .any(|&s| s != 0)
            {
                return Err(c.bad("a space beyond the cluster"));
            }
            // What is executed everywhere is executed at the sender.
            if stable.iter().zip(&executed).any(|(s, e)| s > e) {
                return Err(c.bad("stable above executed"));
            }
            Ok(Message::Progress(Progress { executed, stable }))
        }
        Kind::PrepareOk => {
            let (f, _) = c.fixed::<PrepareOkBody>(body)?;
            c.zero(&f.padding)?;
            let flags = c.flags(f.flags, FLAG_NOOP | FLAG_UNCHANGED)?;
            Ok(Message::PrepareOk(PrepareOk {
                id: c.id(&f.id)?,
                ballot: c.ballot(&f.ballot)?,
                status: c.status(f.status)?,
                voted: c.ballot(&f.voted)?,
                attrs: c.attrs(&f.attrs)?,
                batch: c.batch(body, core::mem::size_of::<PrepareOkBody>())?,
                noop: flags & FLAG_NOOP != 0,
                unchanged: flags & FLAG_UNCHANGED != 0,
            }))
        }
        Kind::ValidateOk => {
            let (f, rest) = c.fixed::<ValidateOkBody>(body)?;
            let count = f.count.get() as usize;
            let entries = <[WireConflict]>::ref_from_bytes(rest)
                .ok()
                .filter(|e| e.len() == count)
                .ok_or_else(|| c.bad(format!("{count} conflicts in {} bytes", rest.len())))?;
            let mut conflicts = Vec::with_capacity(count);
            for e in entries {
                c.zero(&e.padding)?;
                conflicts.push((c.id(&e.id)?, c.status(e.status)?));
            }
            Ok(Message::ValidateOk(ValidateOk {
                id: c.id(&f.id)?,
                ballot: c.ballot(&f.ballot)?,
                conflicts,
            }))
        }
        _ => Err(FrameError::Unexpected {
            kind,
            reason: "not a message between replicas",
        }),
    }
}

fn decode_value(c: &Check, body: &Bytes) -> Result<Message, FrameError> {
    let (f, rest) = c.fixed::<ValueBody>(body)?;
    c.zero(&f.padding)?;
    let allowed = match c.kind {
        Kind::Accept => FLAG_NOOP,
        Kind::Commit => FLAG_NOOP | FLAG_SLIM,
        _ => 0,
    };
    let flags = c.flags(f.flags, allowed)?;
    let noop = flags & FLAG_NOOP != 0;
    let (id, ballot, attrs) = (c.id(&f.id)?, c.ballot(&f.ballot)?, c.attrs(&f.attrs)?);
    if c.kind == Kind::PreAcceptOk {
        c.empty(rest)?;
        return Ok(Message::PreAcceptOk(PreAcceptOk { id, ballot, attrs }));
    }
    if flags & FLAG_SLIM != 0 {
        c.empty(rest)?;
        if noop {
            return Err(c.bad("a slim commit of a no-op"));
        }
        return Ok(Message::Commit(Value {
            id,
            ballot,
            attrs,
            batch: Batch::empty(),
            noop,
        }));
    }
    let batch = c.batch(body, core::mem::size_of::<ValueBody>())?;
    // A no-op is exactly an empty batch: the core never proposes nothing.
    if noop != batch.is_empty() {
        return Err(c.bad(if noop {
            "a no-op with commands"
        } else {
            "no commands and not a no-op"
        }));
    }
    Ok(match c.kind {
        Kind::PreAccept => Message::PreAccept(PreAccept {
            id,
            ballot,
            attrs,
            batch,
        }),
        Kind::Accept => Message::Accept(Value {
            id,
            ballot,
            attrs,
            batch,
            noop,
        }),
        Kind::Commit => Message::Commit(Value {
            id,
            ballot,
            attrs,
            batch,
            noop,
        }),
        _ => Message::Validate(Validate {
            id,
            ballot,
            attrs,
            batch,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{BatchBuilder, CommandRef, Op};
    use crate::wire::frame::FrameReader;

    fn batch() -> Batch {
        let mut b = BatchBuilder::new();
        b.push(&CommandRef {
            client: 9,
            request: 1,
            first_outstanding: 1,
            op: Op::Put,
            key: b"key",
            value: b"value",
        });
        b.finish()
    }

    fn samples() -> Vec<Message> {
        let id = InstanceId::new(ReplicaId(4), 77);
        let ballot = Ballot {
            epoch: 1,
            number: 5,
            replica: ReplicaId(4),
        };
        let mut attrs = Attrs {
            seq: 12,
            deps: Deps::default(),
        };
        attrs.deps.0[..5].copy_from_slice(&[1, 0, 3, 4, 99]);
        vec![
            Message::PreAccept(PreAccept {
                id,
                ballot,
                attrs,
                batch: batch(),
            }),
            Message::PreAcceptOk(PreAcceptOk { id, ballot, attrs }),
            Message::Accept(Value {
                id,
                ballot,
                attrs,
                batch: Batch::empty(),
                noop: true,
            }),
            Message::AcceptOk(AcceptOk { id, ballot }),
            Message::Commit(Value {
                id,
                ballot,
                attrs,
                batch: batch(),
                noop: false,
            }),
            // Slim: the batch left out, for a peer that voted for it.
            Message::Commit(Value {
                id,
                ballot,
                attrs,
                batch: Batch::empty(),
                noop: false,
            }),
            Message::CommitOk(CommitOk { id }),
            Message::Prepare(Prepare { id, ballot }),
            Message::PrepareOk(PrepareOk {
                id,
                ballot,
                status: Status::Accepted,
                voted: Ballot::initial(ReplicaId(2)),
                attrs,
                batch: batch(),
                noop: false,
                unchanged: true,
            }),
            Message::Nack(Nack {
                id,
                promised: ballot,
            }),
            Message::Validate(Validate {
                id,
                ballot,
                attrs,
                batch: batch(),
            }),
            Message::ValidateOk(ValidateOk {
                id,
                ballot,
                conflicts: vec![(InstanceId::new(ReplicaId(0), 3), Status::Committed)],
            }),
            Message::Waiting(Waiting { id, votes: 3 }),
            Message::Progress(Progress {
                executed: [9, 8, 7, 0, 3, 0, 0, 0, 0],
                stable: [5, 8, 1, 0, 2, 0, 0, 0, 0],
            }),
        ]
    }

    const ENC: FrameEncoder = FrameEncoder {
        cluster_id: 1,
        sender: 0,
        shard: 0,
    };

    #[test]
    fn every_message_round_trips() {
        let mut buf = BytesMut::new();
        for m in samples() {
            encode(&ENC, &mut buf, &m);
        }
        let reader = FrameReader::new(1);
        for m in samples() {
            let f = reader.next(&mut buf).unwrap().unwrap();
            assert_eq!(decode(f.kind, &f.body, 5).unwrap(), m);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for m in samples() {
            let mut buf = BytesMut::new();
            encode(&ENC, &mut buf, &m);
            let f = FrameReader::new(1).next(&mut buf).unwrap().unwrap();
            // Every sample names replica 4: a 3-replica
            // cluster refuses every sample.
            let err = decode(f.kind, &f.body, 3).unwrap_err();
            assert!(matches!(err, FrameError::BadBody { .. }), "{m:?}: {err}");
            // Every strict prefix of a body is refused too, but for a
            // PrepareOk cut right after its fixed part: an acceptor that never
            // saw the commands sends exactly that.
            let fixed_prepare_ok = core::mem::size_of::<PrepareOkBody>();
            for cut in 0..f.body.len() {
                let short = f.body.slice(..cut);
                let allowed = f.kind == Kind::PrepareOk && cut == fixed_prepare_ok;
                let decoded = decode(f.kind, &short, 5);
                assert!(decoded.is_err() || allowed, "{:?} cut at {cut}", f.kind);
            }
        }
    }

    #[test]
    fn a_progress_report_stable_above_executed_is_refused() {
        let m = Message::Progress(Progress {
            executed: [4, 0, 0, 0, 0, 0, 0, 0, 0],
            stable: [5, 0, 0, 0, 0, 0, 0, 0, 0],
        });
        let mut buf = BytesMut::new();
        encode(&ENC, &mut buf, &m);
        let f = FrameReader::new(1).next(&mut buf).unwrap().unwrap();
        let err = decode(f.kind, &f.body, 3).unwrap_err();
        assert!(matches!(err, FrameError::BadBody { .. }), "{err}");
    }

    #[test]
    fn only_a_commit_may_be_slim_and_a_slim_one_carries_nothing_after_its_fixed_part() {
        let full = samples()
            .into_iter()
            .find(|m| matches!(m, Message::Commit(v) if !v.batch.is_empty()))
            .unwrap();
        let accept = samples()
            .into_iter()
            .find(|m| matches!(m, Message::Accept(_)))
            .unwrap();
        for (m, set, clear, why) in [
            (&full, FLAG_SLIM, 0, "a slim commit followed by its batch"),
            (&accept, FLAG_SLIM, FLAG_NOOP, "a slim accept"),
        ] {
            let mut buf = BytesMut::new();
            encode(&ENC, &mut buf, m);
            let f = FrameReader::new(1).next(&mut buf).unwrap().unwrap();
            let mut body = f.body.to_vec();
            let (v, _) = ValueBody::mut_from_prefix(&mut body[..]).unwrap();
            v.flags = (v.flags | set) & !clear;
            let err = decode(f.kind, &Bytes::from(body), 5).unwrap_err();
            assert!(matches!(err, FrameError::BadBody { .. }), "{why}: {err}");
        }
        // A slim no-op is refused too.
        let mut buf = BytesMut::new();
        let slim = samples()
            .into_iter()
            .find(|m| matches!(m, Message::Commit(v) if v.is_slim()))
            .unwrap();
        encode(&ENC, &mut buf, &slim);
        let f = FrameReader::new(1).next(&mut buf).unwrap().unwrap();
        assert_eq!(f.body.len(), core::mem::size_of::<ValueBody>());
        let mut body = f.body.to_vec();
        ValueBody::mut_from_prefix(&mut body[..]).unwrap().0.flags |= FLAG_NOOP;
        assert!(decode(f.kind, &Bytes::from(body), 5).is_err());
    }

    #[test]
    fn client_kinds_are_not_peer_messages() {
        let err = decode(Kind::Request, &Bytes::new(), 3).unwrap_err();
        assert!(matches!(err, FrameError::Unexpected { .. }));
    }
}
