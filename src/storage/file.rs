//! A shard's log in a file: the entries of `storage::log`, written in groups
//! (one group per sync: everything appended since the last), each group one
//! aligned write that is durable when it completes (the runtime opens the
//! file with O_DIRECT and O_DSYNC).
//!
//! This type is the bookkeeping, not the IO: append encodes records into a
//! buffer and [`Storage::sync`] answers [`Synced::Later`]; the driver takes
//! each group ([`FileLog::next_group`]), writes and syncs it (the runtime
//! through io_uring with O_DIRECT, `runtime::wal`), and reports the group's
//! token durable to the node. Appends go on while a group is being written,
//! so the next group fills meanwhile.
//!
//! Writes start and end on [`LOG_WRITE_ALIGN_BYTES`]: a group begins with
//! the part of the last block the previous group left unfilled (kept here,
//! [`FileLog::tail`]) and ends in zeros up to the next boundary, which the
//! next group overwrites. Rewriting the earlier bytes of that block with the
//! same content is harmless even if the write is torn.
//!
//! Space is allocated ahead of the last entry: one
//! [`LOG_PREALLOC_CHUNK_BYTES`] chunk of zeros written at open, then one
//! chunk at a time, asked for by [`FileLog::extension_wanted`] and
//! allocated by the driver beside the groups (fallocate, then a sync of its
//! own), so a group never grows the file and its sync commits no size. A group never overlaps an
//! extension in flight ([`Next::WaitForExtension`]); one that outruns the
//! zeros while none is in flight grows the file.
//!
//! What this relies on from the disk: a rewritten sector is written whole or
//! not at all (the last block's earlier bytes are rewritten with the same
//! content), as drives promise for their sector size. A multi-block group
//! torn on power loss with a later block written and an earlier one not
//! reads back as zeros followed by entries, which opening refuses as
//! corruption (exit 2) rather than cuts: an operator must look. kill -9
//! cannot cause it (the kernel completes or drops the whole write).
//!
//! Opening reads the whole file back (`storage::log::decode`): a torn last
//! entry is cut off, corruption before it refuses to open.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::log::{decode, Encoder};
use super::{Storage, Synced, Token};
use crate::constants::{LOG_PREALLOC_CHUNK_BYTES, LOG_WRITE_ALIGN_BYTES};
use crate::protocol::Record;

/// What opening a log found, for the start-up log line.
#[derive(Debug, Default, Clone)]
pub struct Opened {
    pub records: usize,
    pub bytes: usize,
    /// A torn last entry cut off: offset, bytes dropped, why.
    pub torn: Option<(usize, usize, String)>,
    /// Bytes of zeros written ahead of the last entry at open.
    pub zero_filled: u64,
}

/// One aligned write covering every record appended since the last group.
#[derive(Debug)]
pub struct Group {
    /// File offset, aligned.
    pub pos: u64,
    /// Whole blocks: the last group's unfilled block, the new entries,
    /// zeros to the boundary.
    pub bytes: BytesMut,
    /// Durable once this write completed (O_DSYNC).
    pub token: Token,
    /// Records and bytes of entries this group adds (for the counters).
    pub records: u64,
    pub entry_bytes: u64,
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Next {
    /// Nothing appended since the last group.
    Idle,
    Write(Group),
    /// The group would overlap the extension being written: wait for it
    /// ([`FileLog::extended`]), then ask again. The group stays pending.
    WaitForExtension,
}

pub struct FileLog {
    path: PathBuf,
    encoder: Encoder,
    /// Encoded entries not yet in a group.
    pending: BytesMut,
    pending_records: u64,
    /// Records appended: the token of the latest append.
    appended: u64,
    /// File offset just past the last entry handed out in a group.
    end: u64,
    /// The bytes of the block `end` falls in, from its start to `end`.
    tail: Vec<u8>,
    /// The file holds entries or zeros up to here.
    zeroed_to: u64,
    /// An extension of the zeros up to here is being written.
    extending: Option<u64>,
    loaded: Vec<Record>,
}

fn align_down(v: u64) -> u64 {
    v - v % LOG_WRITE_ALIGN_BYTES
}

fn align_up(v: u64) -> u64 {
    align_down(v + LOG_WRITE_ALIGN_BYTES - 1)
}

impl FileLog {
    /// Opens the log at `path` (creating it only if `create`: a log missing
    /// from a directory that had one would bring a replica back empty under
    /// its id) and reads it back. A torn last entry is cut off (the file is
    /// truncated there); corruption before the tail is an error naming the
    /// file and the offset. Then the file is zero-filled one chunk ahead of
    /// its last entry, with blocking calls: this runs before the shard does.
    pub fn open(path: &Path, create: bool) -> Result<(FileLog, Opened), String> {
        let named = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(named)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(named)?;
        let bytes = Bytes::from(bytes);
        let decoded = decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let valid = decoded.valid_bytes as u64;
        let mut zeroed_to = bytes.len() as u64;
        if decoded.torn.is_some() {
            // The torn bytes go; the zeros written next stand in for them.
            file.set_len(valid).map_err(named)?;
            zeroed_to = valid;
        }
        let target = align_up(valid) + LOG_PREALLOC_CHUNK_BYTES;
        let zero_filled = target.saturating_sub(zeroed_to);
        if zero_filled > 0 {
            write_zeros(&file, zeroed_to, zero_filled).map_err(named)?;
        }
        if zero_filled > 0 || decoded.torn.is_some() {
            file.sync_data().map_err(named)?;
        }
        zeroed_to = zeroed_to.max(target);
        let mut encoder = Encoder::default();
        encoder.knows(&decoded.records);
        let opened = Opened {
            records: decoded.records.len(),
            bytes: decoded.valid_bytes,
            torn: decoded.torn,
            zero_filled,
        };
        let log = FileLog {
            path: path.to_path_buf(),
            encoder,
            pending: BytesMut::new(),
            pending_records: 0,
            appended: decoded.records.len() as u64,
            end: valid,
            tail: bytes[align_down(valid) as usize..valid as usize].to_vec(),
            zeroed_to,
            extending: None,
            loaded: decoded.records,
        };
        Ok((log, opened))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes of the last, partly filled block (for tests).
    pub fn tail(&self) -> &[u8] {
        &self.tail
    }

    /// The next group to write, if anything was appended since the last.
    pub fn next_group(&mut self) -> Next {
        if self.pending.is_empty() {
            return Next::Idle;
        }
        let pos = align_down(self.end);
        let new_end = self.end + self.pending.len() as u64;
        let write_end = align_up(new_end);
        if self.extending.is_some() && write_end > self.zeroed_to {
            return Next::WaitForExtension;
        }
        let mut bytes = BytesMut::with_capacity((write_end - pos) as usize);
        bytes.extend_from_slice(&self.tail);
        bytes.extend_from_slice(&self.pending);
        let filled = bytes.len();
        bytes.resize((write_end - pos) as usize, 0);
        let tail_from = (align_down(new_end) - pos) as usize;
        self.tail.clear();
        self.tail.extend_from_slice(&bytes[tail_from..filled]);
        let group = Group {
            pos,
            bytes,
            token: Token(self.appended),
            records: self.pending_records,
            entry_bytes: self.pending.len() as u64,
        };
        self.pending.clear();
        self.pending_records = 0;
        self.end = new_end;
        // Past the zeros (an extension fell behind): the write grows the file.
        self.zeroed_to = self.zeroed_to.max(write_end);
        Next::Write(group)
    }

    /// Where to write the next chunk of zeros, when the zeros ahead of the
    /// last entry are down to less than a chunk and no extension is in
    /// flight: `(offset, length)`. The driver allocates them (reading as
    /// zeros), syncs that, and calls `extended`.
    pub fn extension_wanted(&mut self) -> Option<(u64, u64)> {
        let ahead = self
            .zeroed_to
            .saturating_sub(self.end + self.pending.len() as u64);
        if self.extending.is_some() || ahead >= LOG_PREALLOC_CHUNK_BYTES {
            return None;
        }
        let to = self.zeroed_to + LOG_PREALLOC_CHUNK_BYTES;
        self.extending = Some(to);
        Some((self.zeroed_to, LOG_PREALLOC_CHUNK_BYTES))
    }

    /// The extension asked for last is written.
    pub fn extended(&mut self) {
        let to = self.extending.take().expect("an extension was in flight");
        self.zeroed_to = self.zeroed_to.max(to);
    }

    /// Writes and syncs every pending group with blocking calls, on `file`
    /// (the same path, opened by the caller): what tests use in place of
    /// the runtime's writer. Returns the token made durable.
    #[cfg(test)]
    pub fn write_blocking(&mut self, file: &File) -> std::io::Result<Token> {
        use std::os::unix::fs::FileExt;
        if let Some((pos, len)) = self.extension_wanted() {
            file.write_all_at(&vec![0; len as usize], pos)?;
            self.extended();
        }
        if let Next::Write(g) = self.next_group() {
            file.write_all_at(&g.bytes, g.pos)?;
            file.sync_data()?;
        }
        Ok(Token(self.appended))
    }
}

/// Writes `len` zeros at `at`, a megabyte at a time.
fn write_zeros(mut file: &File, at: u64, len: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let zeros = vec![0u8; 1 << 20];
    file.seek(SeekFrom::Start(at))?;
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(())
}

impl Storage for FileLog {
    fn append(&mut self, records: &[Record]) -> Token {
        for r in records {
            self.encoder.encode(r, &mut self.pending);
        }
        self.pending_records += records.len() as u64;
        self.appended += records.len() as u64;
        Token(self.appended)
    }

    /// The driver writes the group and reports it durable.
    fn sync(&mut self, _upto: Token) -> Synced {
        Synced::Later
    }

    /// Hands the records read at open over (once: the batches borrow the
    /// whole file's buffer, which should not stay resident).
    fn load(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.loaded)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{BatchBuilder, CommandRef, Op};
    use crate::protocol::{Attrs, Ballot, InstanceId, ReplicaId, Status};

    fn record(slot: u64) -> Record {
        let mut b = BatchBuilder::new();
        b.push(&CommandRef {
            client: 1,
            request: slot,
            first_outstanding: slot,
            op: Op::Put,
            key: b"k",
            value: b"v",
        });
        let id = InstanceId::new(ReplicaId(0), slot);
        Record {
            id,
            promised: Ballot::initial(id.replica),
            voted: Ballot::initial(id.replica),
            status: Status::Committed,
            attrs: Attrs::default(),
            initial: None,
            batch: b.finish(),
            noop: false,
        }
    }

    /// Writes and syncs what was appended, as the runtime's writer would.
    fn flush(log: &mut FileLog) {
        let f = OpenOptions::new().write(true).open(log.path()).unwrap();
        log.write_blocking(&f).unwrap();
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("epx-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn what_was_synced_is_read_back_after_reopening_and_appends_go_on() {
        let path = dir("reopen").join("shard-0.log");
        let (mut log, opened) = FileLog::open(&path, true).unwrap();
        assert_eq!(opened.records, 0);
        log.append(&[record(1), record(2)]);
        assert_eq!(log.sync(Token(2)), Synced::Later);
        flush(&mut log);
        log.append(&[record(3)]);
        drop(log); // never synced: a crash loses it
        let (mut log, opened) = FileLog::open(&path, true).unwrap();
        assert_eq!(log.load(), vec![record(1), record(2)]);
        assert_eq!(opened.records, 2);
        assert_eq!(log.append(&[record(3)]), Token(3));
        flush(&mut log);
        let (mut log, _) = FileLog::open(&path, true).unwrap();
        assert_eq!(log.load(), vec![record(1), record(2), record(3)]);
    }

    #[test]
    fn an_instance_recorded_again_after_a_reopen_keeps_its_batch() {
        let path = dir("again").join("shard-0.log");
        let (mut log, _) = FileLog::open(&path, true).unwrap();
        let mut first = record(4);
        first.status = Status::PreAccepted;
        log.append(std::slice::from_ref(&first));
        flush(&mut log);
        drop(log);
        let (mut log, before) = FileLog::open(&path, true).unwrap();
        assert_eq!(log.load(), vec![first.clone()]);
        log.append(&[record(4)]); // committed now, same batch
        flush(&mut log);
        let (mut log, after) = FileLog::open(&path, true).unwrap();
        assert_eq!(
            after.bytes - before.bytes,
            super::super::log::ENTRY_HEADER_BYTES,
            "no batch again"
        );
        assert_eq!(log.load(), vec![first, record(4)]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_file_truncated() {
        let path = dir("torn").join("shard-0.log");
        let (mut log, _) = FileLog::open(&path, true).unwrap();
        log.append(&[record(1), record(2)]);
        flush(&mut log);
        drop(log);
        let (_, whole) = FileLog::open(&path, true).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(whole.bytes as u64 - 5).unwrap();
        let (mut log, opened) = FileLog::open(&path, true).unwrap();
        assert_eq!(log.load(), vec![record(1)]);
        assert!(opened.torn.is_some());
        // The torn bytes are gone and zeros stand ahead again.
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[opened.bytes..].iter().all(|&b| b == 0));
        assert!(bytes.len() as u64 >= opened.bytes as u64 + LOG_PREALLOC_CHUNK_BYTES);
        // Appending goes on where the valid entries end.
        log.append(&[record(7)]);
        flush(&mut log);
        let (mut log, _) = FileLog::open(&path, true).unwrap();
        assert_eq!(log.load(), vec![record(1), record(7)]);
    }

    #[test]
    fn corruption_before_the_tail_refuses_naming_file_and_offset() {
        let path = dir("corrupt").join("shard-0.log");
        let (mut log, _) = FileLog::open(&path, true).unwrap();
        log.append(&[record(1), record(2)]);
        flush(&mut log);
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let e = FileLog::open(&path, true).err().unwrap();
        assert!(e.contains("shard-0.log") && e.contains("offset 0"), "{e}");
    }

    #[test]
    fn groups_rewrite_the_unfilled_block_and_every_entry_reads_back() {
        let path = dir("groups").join("shard-0.log");
        let (mut log, opened) = FileLog::open(&path, true).unwrap();
        assert_eq!(opened.zero_filled, LOG_PREALLOC_CHUNK_BYTES);
        let mut want = Vec::new();
        for slot in 1..=60 {
            let r = record(slot);
            log.append(std::slice::from_ref(&r));
            want.push(r);
            if slot % 7 == 0 {
                continue; // two appends in one group
            }
            let unfilled = log.tail().to_vec();
            let Next::Write(g) = log.next_group() else {
                panic!("a group was pending");
            };
            assert_eq!(g.pos % LOG_WRITE_ALIGN_BYTES, 0);
            assert_eq!(g.bytes.len() as u64 % LOG_WRITE_ALIGN_BYTES, 0);
            assert!(g.bytes.starts_with(&unfilled), "the last block again");
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&g.bytes, g.pos).unwrap();
            assert_eq!(g.token, Token(slot));
        }
        assert!(matches!(log.next_group(), Next::Idle));
        let (mut log, opened) = FileLog::open(&path, true).unwrap();
        assert_eq!(opened.records, 60);
        assert!(
            opened.zero_filled < LOG_PREALLOC_CHUNK_BYTES,
            "topped up to a chunk ahead, not filled again"
        );
        assert_eq!(log.load(), want);
    }

    #[test]
    fn a_group_waits_for_the_extension_it_would_overlap() {
        let path = dir("extend").join("shard-0.log");
        let (mut log, _) = FileLog::open(&path, true).unwrap();
        assert_eq!(log.extension_wanted(), None, "a whole chunk ahead");
        // Fill all but a little of the zeros ahead.
        let big = LOG_PREALLOC_CHUNK_BYTES as usize - 3000;
        log.pending.resize(big, 0xee);
        log.pending_records = 1;
        log.appended = 1;
        let (at, len) = log.extension_wanted().expect("less than a chunk ahead");
        assert_eq!(
            (at, len),
            (LOG_PREALLOC_CHUNK_BYTES, LOG_PREALLOC_CHUNK_BYTES)
        );
        assert_eq!(log.extension_wanted(), None, "one in flight at a time");
        // Fits below the zeros: goes, even while the extension is written.
        assert!(matches!(log.next_group(), Next::Write(_)));
        log.pending.resize(5000, 0xee);
        log.appended = 2;
        assert!(matches!(log.next_group(), Next::WaitForExtension));
        log.extended();
        let Next::Write(g) = log.next_group() else {
            panic!("the extension is done");
        };
        assert_eq!(g.token, Token(2));
        assert!(g.pos + g.bytes.len() as u64 <= 2 * LOG_PREALLOC_CHUNK_BYTES);
    }
}
