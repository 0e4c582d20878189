//! The on-disk format of a shard's log: entries back to back, each a fixed
//! 208-byte header (little-endian, CRC-32C over everything after the
//! checksum, batch included) followed by the command batch, if it carries
//! one.
//!
//! The batch is written once per instance: the first entry of an instance
//! with commands carries them (`KIND_WITH_BATCH`), later entries for the
//! same instance carry only ballots, status and attributes
//! (`KIND_ATTRIBUTES`), and reading takes the batch from the earlier entry.
//! (A batch is kilobytes; an instance is recorded up to three times: at
//! pre-accept, accept and commit.)
//!
//! Reading tells a torn tail from corruption. Past the last entry written
//! the file is zeros (pre-allocated) or ends. An entry that fails a check
//! (short, bad checksum, impossible field) with no valid entry anywhere
//! after it is a torn last write: it is cut off, and the reader reports
//! where and how many bytes. One that fails a check with a valid entry
//! after it is corruption in the middle (a length field hit by a flipped
//! bit cannot pass for a torn tail that way): reading refuses, naming the
//! offset. Nothing is skipped silently.
//!
//! This module is pure (bytes in, bytes out); files are the driver's.

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::command::Batch;
use crate::constants::{BATCH_BYTES_MAX, REPLICAS_MAX};
use crate::protocol::{Attrs, Ballot, Deps, InstanceId, Record, ReplicaId, Status};
use crate::wire::peer::{attrs_out, ballot_out, WireAttrs, WireBallot};

/// "EPXL", little-endian.
pub const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"EPXL");
pub const ENTRY_HEADER_BYTES: usize = 208;
const KIND_WITH_BATCH: u8 = 1;
const KIND_ATTRIBUTES: u8 = 2;
const FLAG_NOOP: u8 = 1;
const FLAG_INITIAL: u8 = 2;
/// Bytes the checksum covers start here (after magic and checksum).
const CHECKED_FROM: usize = 8;

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
struct EntryHeader {
    magic: U32,
    crc: U32,
    /// Bytes of batch after the header (0 for `KIND_ATTRIBUTES`).
    batch_len: U32,
    kind: u8,
    status: u8,
    flags: u8,
    replica: u8,
    slot: U64,
    promised: WireBallot,
    voted: WireBallot,
    attrs: WireAttrs,
    /// The command leader's initial attributes (with `FLAG_INITIAL`).
    initial: WireAttrs,
}

const _: () = assert!(core::mem::size_of::<EntryHeader>() == ENTRY_HEADER_BYTES);

/// Why a log cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    /// Where the bad entry starts.
    pub offset: usize,
    pub reason: String,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "corrupt entry at offset {} ({}) with data written after it",
            self.offset, self.reason
        )
    }
}

/// What a log held.
#[derive(Debug, Default)]
pub struct Decoded {
    pub records: Vec<Record>,
    /// Bytes of valid entries from the start: where appending goes on.
    pub valid_bytes: usize,
    /// A torn last entry cut off: its offset, the bytes dropped (up to the
    /// last non-zero byte: zeros are free space), and why.
    pub torn: Option<(usize, usize, String)>,
}

/// Writes records as entries, each instance's batch once.
#[derive(Default)]
pub struct Encoder {
    /// Length of the batch written for each instance so far.
    batch_written: FxHashMap<InstanceId, u32>,
}

fn ballot_in(b: &WireBallot) -> Ballot {
    Ballot {
        epoch: b.epoch.get(),
        number: b.number.get(),
        replica: ReplicaId(b.replica),
    }
}

fn attrs_in(a: &WireAttrs) -> Attrs {
    Attrs {
        seq: a.seq.get(),
        deps: Deps(a.deps.map(|d| d.get())),
    }
}

fn status_in(code: u8) -> Option<Status> {
    Some(match code {
        0 => Status::None,
        1 => Status::PreAccepted,
        2 => Status::Accepted,
        3 => Status::Committed,
        4 => Status::Executed,
        _ => return None,
    })
}

impl Encoder {
    /// Records read back from the log: their batches are on disk already.
    pub fn knows(&mut self, records: &[Record]) {
        for r in records.iter().filter(|r| !r.batch.is_empty()) {
            self.batch_written
                .insert(r.id, r.batch.bytes().len() as u32);
        }
    }

    /// Appends `rec` to `out` as one entry.
    pub fn encode(&mut self, rec: &Record, out: &mut BytesMut) {
        let len = rec.batch.bytes().len() as u32;
        let with_batch = len > 0 && self.batch_written.get(&rec.id) != Some(&len);
        if rec.status >= Status::Committed {
            // Committed: its last record, as far as this log goes.
            self.batch_written.remove(&rec.id);
        } else if with_batch {
            self.batch_written.insert(rec.id, len);
        }
        let mut flags = 0;
        if rec.noop {
            flags |= FLAG_NOOP;
        }
        if rec.initial.is_some() {
            flags |= FLAG_INITIAL;
        }
        let header = EntryHeader {
            magic: ENTRY_MAGIC.into(),
            crc: 0.into(),
            batch_len: (if with_batch { len } else { 0 }).into(),
            kind: if with_batch {
                KIND_WITH_BATCH
            } else {
                KIND_ATTRIBUTES
            },
            status: rec.status as u8,
            flags,
            replica: rec.id.replica.0,
            slot: rec.id.slot.0.into(),
            promised: ballot_out(rec.promised),
            voted: ballot_out(rec.voted),
            attrs: attrs_out(&rec.attrs),
            initial: rec.initial.as_ref().map(attrs_out).unwrap_or_default(),
        };
        let start = out.len();
        out.extend_from_slice(header.as_bytes());
        if with_batch {
            out.extend_from_slice(rec.batch.bytes());
        }
        let crc = crc32c::crc32c(&out[start + CHECKED_FROM..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Reads every entry of `log` (one file's bytes, possibly followed by the
/// zeros of pre-allocated space). The batches borrow from `log`.
pub fn decode(log: &Bytes) -> Result<Decoded, Corrupt> {
    let written = log.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut batches: FxHashMap<InstanceId, Batch> = FxHashMap::default();
    let mut out = Decoded::default();
    let mut at = 0;
    while at < written {
        match entry(log, at, &batches) {
            Ok((rec, len, batch)) => {
                if let Some(b) = batch {
                    batches.insert(rec.id, b);
                }
                out.records.push(rec);
                at += len;
            }
            Err(reason) if !valid_entry_after(log, at) => {
                out.torn = Some((at, written - at, reason));
                break;
            }
            Err(reason) => return Err(Corrupt { offset: at, reason }),
        }
    }
    out.valid_bytes = at;
    Ok(out)
}

/// Whether a whole, valid entry starts anywhere after `at`.
fn valid_entry_after(log: &Bytes, at: usize) -> bool {
    // Up to the end of the file, not of the non-zero bytes: an entry may end
    // in zeros (attributes of a small cluster, no initial attributes).
    let magic = ENTRY_MAGIC.to_le_bytes();
    let none = FxHashMap::default();
    (at + 1..log.len().saturating_sub(ENTRY_HEADER_BYTES) + 1)
        .filter(|&p| log[p..p + 4] == magic)
        .any(|p| entry(log, p, &none).is_ok())
}

/// The entry at `at`: its record, its length, and the batch it carried; or
/// why it is bad.
type Entry = (Record, usize, Option<Batch>);

fn entry(log: &Bytes, at: usize, batches: &FxHashMap<InstanceId, Batch>) -> Result<Entry, String> {
    let rest = &log[at..];
    let Ok((h, _)) = EntryHeader::read_from_prefix(rest) else {
        return Err(format!("{} bytes, short of a header", rest.len()));
    };
    let batch_len = h.batch_len.get() as usize;
    if h.magic.get() != ENTRY_MAGIC {
        return Err("bad magic".into());
    }
    if batch_len > BATCH_BYTES_MAX {
        return Err(format!("batch of {batch_len} bytes"));
    }
    let extent = ENTRY_HEADER_BYTES + batch_len;
    if rest.len() < extent {
        return Err(format!("entry of {extent} bytes, {} left", rest.len()));
    }
    if crc32c::crc32c(&rest[CHECKED_FROM..extent]) != h.crc.get() {
        return Err("checksum mismatch".into());
    }
    let bad = |why: &str| Err(why.to_string());
    let Some(status) = status_in(h.status) else {
        return bad("unknown status");
    };
    if usize::from(h.replica) >= REPLICAS_MAX {
        return bad("replica id out of range");
    }
    let id = InstanceId::new(ReplicaId(h.replica), h.slot.get());
    let (batch, carried) = match h.kind {
        KIND_WITH_BATCH => {
            let b = log.slice(at + ENTRY_HEADER_BYTES..at + extent);
            let Ok(batch) = Batch::parse(b) else {
                return bad("batch does not parse");
            };
            (batch.clone(), Some(batch))
        }
        KIND_ATTRIBUTES if batch_len == 0 => {
            (batches.get(&id).cloned().unwrap_or_else(Batch::empty), None)
        }
        _ => return bad("unknown kind"),
    };
    let rec = Record {
        id,
        promised: ballot_in(&h.promised),
        voted: ballot_in(&h.voted),
        status,
        attrs: attrs_in(&h.attrs),
        initial: (h.flags & FLAG_INITIAL != 0).then(|| attrs_in(&h.initial)),
        batch,
        noop: h.flags & FLAG_NOOP != 0,
    };
    Ok((rec, extent, carried))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{BatchBuilder, CommandRef, Op};

    fn batch(key: &[u8]) -> Batch {
        let mut b = BatchBuilder::new();
        b.push(&CommandRef {
            client: 3,
            request: 1,
            first_outstanding: 1,
            op: Op::Put,
            key,
            value: b"value",
        });
        b.finish()
    }

    fn record(slot: u64, status: Status, batch: Batch) -> Record {
        let id = InstanceId::new(ReplicaId(2), slot);
        let mut attrs = Attrs {
            seq: slot + 7,
            ..Attrs::default()
        };
        attrs.deps.0[1] = slot;
        Record {
            id,
            promised: Ballot::initial(id.replica),
            voted: Ballot::initial(id.replica),
            status,
            attrs,
            initial: (slot % 2 == 0).then_some(attrs),
            batch,
            noop: slot == 3,
        }
    }

    /// A log of five entries: three of one instance (the batch once), two
    /// of others.
    fn sample() -> (Vec<Record>, Bytes) {
        let b = batch(b"k");
        let records = vec![
            record(1, Status::PreAccepted, b.clone()),
            record(1, Status::Accepted, b.clone()),
            record(2, Status::PreAccepted, batch(b"other")),
            record(1, Status::Committed, b),
            record(3, Status::None, Batch::empty()),
        ];
        let mut enc = Encoder::default();
        let mut out = BytesMut::new();
        for r in &records {
            enc.encode(r, &mut out);
        }
        (records, out.freeze())
    }

    #[test]
    fn entries_read_back_as_written_with_each_batch_stored_once() {
        let (records, log) = sample();
        let with_batch =
            2 * ENTRY_HEADER_BYTES + batch(b"k").bytes().len() + batch(b"other").bytes().len();
        assert_eq!(log.len(), with_batch + 3 * ENTRY_HEADER_BYTES);
        let d = decode(&log).unwrap();
        assert_eq!(d.records, records);
        assert_eq!((d.valid_bytes, d.torn), (log.len(), None));
    }

    #[test]
    fn zeros_after_the_last_entry_are_free_space() {
        let (records, log) = sample();
        let mut padded = BytesMut::from(&log[..]);
        padded.resize(log.len() + 8192, 0);
        let d = decode(&padded.freeze()).unwrap();
        assert_eq!(
            (d.records, d.valid_bytes, d.torn),
            (records, log.len(), None)
        );
    }

    #[test]
    fn a_torn_last_entry_is_cut_off_at_every_length() {
        let (records, log) = sample();
        let last = log.len() - ENTRY_HEADER_BYTES;
        for cut in last + 1..log.len() {
            let d = decode(&log.slice(..cut)).unwrap();
            assert_eq!(d.records, records[..4], "cut at {cut}");
            assert_eq!(d.valid_bytes, last);
            let (at, dropped, _) = d.torn.expect("torn");
            // Zeros at the end of a torn write are not told from free space.
            assert_eq!(at, last);
            assert!(
                (1..=cut - last).contains(&dropped),
                "cut at {cut}: {dropped}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_before_the_tail_is_refused_with_its_offset() {
        let (_, log) = sample();
        let second = ENTRY_HEADER_BYTES + batch(b"k").bytes().len();
        for at in [0, 9, 100, second + 30] {
            let mut bad = BytesMut::from(&log[..]);
            bad[at] ^= 0x10;
            let e = decode(&bad.freeze()).unwrap_err();
            let entry = if at < second { 0 } else { second };
            assert_eq!(e.offset, entry, "flip at {at}: {e}");
        }
    }

    #[test]
    fn a_flipped_byte_in_the_entry_before_a_zero_ended_last_one_is_refused() {
        let (_, log) = sample();
        // The last entry has no batch and no initial attributes: it ends in
        // zeros, past the last non-zero byte.
        assert_eq!(log[log.len() - 1], 0);
        let before_last = log.len() - 2 * ENTRY_HEADER_BYTES;
        let mut bad = BytesMut::from(&log[..]);
        bad[before_last + 30] ^= 0x04;
        let e = decode(&bad.freeze()).unwrap_err();
        assert_eq!(e.offset, before_last, "{e}");
    }

    #[test]
    fn a_flipped_byte_in_the_last_entry_is_a_torn_tail() {
        let (records, log) = sample();
        let mut bad = BytesMut::from(&log[..]);
        let last = log.len() - ENTRY_HEADER_BYTES;
        bad[last + 40] ^= 1;
        let d = decode(&bad.freeze()).unwrap();
        assert_eq!(d.records, records[..4]);
        assert!(d.torn.unwrap().2.contains("checksum"));
    }
}
