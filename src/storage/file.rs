//! A shard's log in a file, written with plain blocking calls: append
//! encodes into a buffer, sync writes it and calls fdatasync, in the turn.
//!
//! This is the first, simple version of issue 13's log: it makes a replica
//! started with `--data-dir` survive `kill -9` and restart, but it blocks
//! the shard's thread for the write and the fdatasync of every turn that
//! recorded something (one of each per turn: group commit, on the critical
//! path). Not yet done: pre-allocated segments, io_uring with the sync off
//! the turn (`Synced::Later`), disk-full and fsync-error handling beyond
//! stopping the process, the refusal of an empty data dir whose peers hold
//! its votes. A write or fdatasync error stops the process: after a failed
//! fsync the page cache cannot be trusted, and nothing may be acknowledged
//! as durable that is not.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::log::{decode, Encoder};
use super::{Storage, Synced, Token};
use crate::protocol::Record;

/// What opening a log found, for the start-up log line.
#[derive(Debug, Default, Clone)]
pub struct Opened {
    pub records: usize,
    pub bytes: usize,
    /// A torn last entry cut off: offset, bytes dropped, why.
    pub torn: Option<(usize, usize, String)>,
}

pub struct FileLog {
    file: File,
    path: PathBuf,
    encoder: Encoder,
    /// Encoded, not yet written.
    pending: BytesMut,
    appended: u64,
    loaded: Vec<Record>,
}

impl FileLog {
    /// Opens the log at `path` (creating it only if `create`: a log missing
    /// from a directory that had one would bring a replica back empty under
    /// its id) and reads it back. A torn last entry is cut off (the file is
    /// truncated there); corruption before the tail is an error naming the
    /// file and the offset.
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
        if decoded.torn.is_some() || decoded.valid_bytes < bytes.len() {
            file.set_len(decoded.valid_bytes as u64).map_err(named)?;
            file.sync_data().map_err(named)?;
        }
        file.seek(SeekFrom::Start(decoded.valid_bytes as u64))
            .map_err(named)?;
        let mut encoder = Encoder::default();
        encoder.knows(&decoded.records);
        let opened = Opened {
            records: decoded.records.len(),
            bytes: decoded.valid_bytes,
            torn: decoded.torn,
        };
        let log = FileLog {
            file,
            path: path.to_path_buf(),
            encoder,
            pending: BytesMut::new(),
            appended: decoded.records.len() as u64,
            loaded: decoded.records,
        };
        Ok((log, opened))
    }

    fn fail(&self, what: &str, e: std::io::Error) -> ! {
        // Not a Result: no caller could carry on safely.
        tracing::error!("{}: {what} failed: {e}; stopping", self.path.display());
        panic!("{}: {what} failed: {e}", self.path.display());
    }
}

impl Storage for FileLog {
    fn append(&mut self, records: &[Record]) -> Token {
        for r in records {
            self.encoder.encode(r, &mut self.pending);
        }
        self.appended += records.len() as u64;
        Token(self.appended)
    }

    fn sync(&mut self, _upto: Token) -> Synced {
        if let Err(e) = self.file.write_all(&self.pending) {
            self.fail("write", e);
        }
        self.pending.clear();
        if let Err(e) = self.file.sync_data() {
            self.fail("fdatasync", e);
        }
        Synced::Now
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
        assert_eq!(log.sync(Token(2)), Synced::Now);
        log.append(&[record(3)]);
        drop(log); // never synced: a crash loses it
        let (mut log, opened) = FileLog::open(&path, true).unwrap();
        assert_eq!(log.load(), vec![record(1), record(2)]);
        assert_eq!(opened.records, 2);
        assert_eq!(log.append(&[record(3)]), Token(3));
        log.sync(Token(3));
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
        log.sync(Token(1));
        drop(log);
        let (mut log, _) = FileLog::open(&path, true).unwrap();
        assert_eq!(log.load(), vec![first.clone()]);
        let before = std::fs::metadata(&path).unwrap().len();
        log.append(&[record(4)]); // committed now, same batch
        log.sync(Token(2));
        let after = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            after - before,
            super::super::log::ENTRY_HEADER_BYTES as u64,
            "no batch again"
        );
        let (mut log, _) = FileLog::open(&path, true).unwrap();
        assert_eq!(log.load(), vec![first, record(4)]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_file_truncated() {
        let path = dir("torn").join("shard-0.log");
        let (mut log, _) = FileLog::open(&path, true).unwrap();
        log.append(&[record(1), record(2)]);
        log.sync(Token(2));
        drop(log);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        let (mut log, opened) = FileLog::open(&path, true).unwrap();
        assert_eq!(log.load(), vec![record(1)]);
        assert!(opened.torn.is_some());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), opened.bytes as u64);
    }

    #[test]
    fn corruption_before_the_tail_refuses_naming_file_and_offset() {
        let path = dir("corrupt").join("shard-0.log");
        let (mut log, _) = FileLog::open(&path, true).unwrap();
        log.append(&[record(1), record(2)]);
        log.sync(Token(2));
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let e = FileLog::open(&path, true).err().unwrap();
        assert!(e.contains("shard-0.log") && e.contains("offset 0"), "{e}");
    }
}
