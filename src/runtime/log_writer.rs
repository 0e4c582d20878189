//! The writer of a shard's log file: group commit on the shard's own ring,
//! with O_DIRECT and O_DSYNC, beside the shard's turns.
//!
//! The node appends each turn's records to the `FileLog` (in memory) and
//! holds the turn's messages and replies behind them. After each turn the
//! shard loop calls [`LogWriter::kick`]: if no group is in flight, it takes
//! everything appended since the last group as one aligned write to a file
//! opened with O_DIRECT and O_DSYNC (so the write completes once it is
//! durable: one io_uring operation, no separate fdatasync), and the loop
//! goes on running turns, which append the next group. When the write
//! completes, the node learns the group's token is durable and releases what
//! waited on it. So a group holds whatever arrived during the previous
//! group's write: it grows with load, and there is never more than one in
//! flight.
//!
//! Beside the groups, space is allocated ahead of the last entry
//! (`FileLog::extension_wanted`: fallocate, then fdatasync, linked on the
//! ring), so that groups overwrite allocated space.
//!
//! A failed write stops the shard (`Node::storage_failed`): after a failed
//! fsync the kernel may have dropped the dirty data and cleared the error,
//! so neither a retry nor carrying on can be trusted. The failure is logged
//! once, with the file and the operation. A write not complete after
//! `LOG_WRITE_STALL_MS` fails the shard the same way (its outcome is
//! unknown); its buffer is kept until the kernel lets go of it.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use io_uring::{opcode, squeue, types};
use tracing::error;

use super::uring::{Done, Op, OpKind, Ring};
use crate::constants::LOG_WRITE_ALIGN_BYTES;
use crate::node::Node;
use crate::storage::file::Next;
use crate::storage::{Backend, Token};

/// A zeroed heap buffer aligned for O_DIRECT.
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Self::layout(len);
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory for a {len}-byte log buffer");
        Aligned { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(1), LOG_WRITE_ALIGN_BYTES as usize).expect("layout")
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` holds `len` initialised (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, Self::layout(self.len)) }
    }
}

/// The group being written.
struct Writing {
    buf: Aligned,
    pos: u64,
    /// Bytes of `buf` written so far.
    done: usize,
    token: Token,
    records: u64,
    entry_bytes: u64,
    started: Instant,
}

pub struct LogWriter {
    path: PathBuf,
    file: OwnedFd,
    writing: Option<Writing>,
    /// An allocation ahead is in flight; with its zeros if the file system
    /// has no fallocate and they are written instead.
    extending: Option<Option<Aligned>>,
    /// Offset and length of that allocation.
    extend_at: (u64, u64),
    /// A group waits for the allocation to finish.
    waiting: bool,
    failed: bool,
}

/// The storage a shard's node runs on.
pub type ShardNode = Node<Backend>;

fn with_log<R>(node: &mut ShardNode, f: impl FnOnce(&mut crate::storage::file::FileLog) -> R) -> R {
    match node.storage_mut() {
        Backend::File(log) => f(log),
        Backend::Memory(_) => unreachable!("no log writer runs in memory"),
    }
}

impl LogWriter {
    /// Opens the log for the shard's writes. O_DSYNC: each write completes
    /// once it is durable, one io_uring operation per group instead of a
    /// write and then an fdatasync (which would wait for the write's
    /// completion, then queue behind it). Measured at 2k ops/s, five
    /// replicas: a group took 0.57-0.59 ms (median) this way against
    /// 1.01-1.07 ms as write + fdatasync; see perf/RESULTS.md.
    pub fn open(path: &Path) -> Result<LogWriter, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
            .map_err(|e| format!("{}: opening for writes failed: {e}", path.display()))?;
        Ok(LogWriter {
            path: path.to_path_buf(),
            file: file.into(),
            writing: None,
            extending: None,
            extend_at: (0, 0),
            waiting: false,
            failed: false,
        })
    }

    /// When the group write in flight started, if one is.
    pub fn writing_since(&self) -> Option<Instant> {
        self.writing.as_ref().map(|w| w.started)
    }

    fn fail(&mut self, node: &mut ShardNode, what: &str, e: &dyn std::fmt::Display) {
        if self.failed {
            return;
        }
        self.failed = true;
        let reason = format!("{}: {what} failed: {e}", self.path.display());
        error!("{reason}; this shard stops acknowledging and voting");
        node.storage_failed(&reason);
    }

    /// A write has not completed for too long: the shard stops.
    pub fn stalled(&mut self, node: &mut ShardNode, secs: u64) {
        let e = format!("not complete after {secs} s");
        self.fail(node, "write (O_DSYNC)", &e);
    }

    /// Starts the next group if none is in flight and records wait.
    pub fn kick(&mut self, node: &mut ShardNode, ring: &mut Ring) {
        if self.failed || self.writing.is_some() || node.failed().is_some() {
            return;
        }
        // The group first, then the space after it: a group that outruns
        // the allocation grows the file (slower, correct) rather than wait
        // for a chunk to be allocated before it.
        let group = match with_log(node, |log| log.next_group()) {
            Next::Idle => return,
            Next::WaitForExtension => {
                self.waiting = true;
                return;
            }
            Next::Write(g) => g,
        };
        let mut buf = Aligned::new(group.bytes.len());
        buf.bytes_mut().copy_from_slice(&group.bytes);
        self.writing = Some(Writing {
            buf,
            pos: group.pos,
            done: 0,
            token: group.token,
            records: group.records,
            entry_bytes: group.entry_bytes,
            started: Instant::now(),
        });
        self.submit_write(ring);
        self.extend_if_wanted(node, ring);
    }

    fn submit_write(&mut self, ring: &mut Ring) {
        let w = self.writing.as_mut().expect("a group in flight");
        let rest = &mut w.buf.bytes_mut()[w.done..];
        let entry = opcode::Write::new(
            types::Fd(self.file.as_raw_fd()),
            rest.as_mut_ptr(),
            rest.len() as u32,
        )
        .offset(w.pos + w.done as u64)
        .build();
        // SAFETY: the buffer lives in `self.writing` until this write's
        // completion is reaped (`on_done` takes it out only then).
        unsafe { ring.push(entry, Op::new(OpKind::LogWrite, 0)) };
    }

    fn extend_if_wanted(&mut self, node: &mut ShardNode, ring: &mut Ring) {
        if self.extending.is_some() {
            return;
        }
        let Some((pos, len)) = with_log(node, |log| log.extension_wanted()) else {
            return;
        };
        let fd = types::Fd(self.file.as_raw_fd());
        let allocate = opcode::Fallocate::new(fd, len)
            .offset(pos)
            .mode(0)
            .build()
            .flags(squeue::Flags::IO_LINK);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.extending = Some(None);
        // SAFETY: neither entry points at memory.
        unsafe {
            ring.push(allocate, Op::new(OpKind::LogAllocate, 0));
            ring.push(sync, Op::new(OpKind::LogAllocateSync, 0));
        }
        self.extend_at = (pos, len);
    }

    /// A completion of one of the writer's entries.
    pub fn on_done(&mut self, d: &Done, node: &mut ShardNode, ring: &mut Ring) {
        match d.op.kind {
            OpKind::LogWrite => self.on_write(d, node, ring),
            OpKind::LogAllocate => match d.error() {
                None => {}
                Some(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    // No fallocate here: write the zeros instead (O_DSYNC
                    // makes them durable with the write).
                    let (pos, len) = self.extend_at;
                    let mut zeros = Aligned::new(len as usize);
                    let bytes = zeros.bytes_mut();
                    let entry = opcode::Write::new(
                        types::Fd(self.file.as_raw_fd()),
                        bytes.as_mut_ptr(),
                        bytes.len() as u32,
                    )
                    .offset(pos)
                    .build();
                    // SAFETY: the zeros live in `self.extending` until
                    // this write's completion is reaped.
                    unsafe { ring.push(entry, Op::new(OpKind::LogAllocateSync, 1)) };
                    self.extending = Some(Some(zeros));
                }
                Some(e) => {
                    // Its linked sync completes cancelled, touching no
                    // memory: the extension is over.
                    self.extending = None;
                    self.fail(node, "allocating space ahead", &e)
                }
            },
            OpKind::LogAllocateSync => {
                let zeros = d.op.slot == 1;
                // The fallocate before it failed: handled there (and a
                // write of zeros may be in flight instead).
                if !zeros
                    && d.error()
                        .is_some_and(|e| e.raw_os_error() == Some(libc::ECANCELED))
                {
                    return;
                }
                // Otherwise the kernel is done with the extension.
                self.extending = None;
                match d.error() {
                    Some(e) => return self.fail(node, "allocating space ahead", &e),
                    None if zeros && d.result as u64 != self.extend_at.1 => {
                        let e = format!("wrote {} of {} bytes", d.result, self.extend_at.1);
                        return self.fail(node, "allocating space ahead", &e);
                    }
                    None => {}
                }
                if self.failed {
                    return;
                }
                with_log(node, |log| log.extended());
                if std::mem::take(&mut self.waiting) {
                    self.kick(node, ring);
                }
            }
            _ => unreachable!("not a log entry: {:?}", d.op),
        }
    }

    fn on_write(&mut self, d: &Done, node: &mut ShardNode, ring: &mut Ring) {
        if self.failed {
            self.writing = None; // the kernel is done with the buffer
            return;
        }
        let w = self.writing.as_mut().expect("a group in flight");
        let failed = match d.error() {
            Some(e) => Some(e.to_string()),
            None if d.result == 0 => {
                Some(format!("wrote nothing at offset {}", w.pos + w.done as u64))
            }
            None => None,
        };
        if let Some(e) = failed {
            // The kernel is done with the buffer: it goes.
            self.writing = None;
            return self.fail(node, "write (O_DSYNC)", &e);
        }
        w.done += d.result as usize;
        if w.done < w.buf.len {
            // A short write goes on from where it stopped (it ends on a
            // block boundary), so that a disk that filled up reports
            // ENOSPC on the next write instead of a bare count.
            return self.submit_write(ring);
        }
        let w = self.writing.take().expect("a group in flight");
        let micros = w.started.elapsed().as_micros() as u64;
        node.counters_mut()
            .log
            .synced(w.records, w.entry_bytes, micros);
        node.durable(w.token);
        self.kick(node, ring);
    }

    /// Entries of the writer still in the kernel.
    pub fn in_flight(&self) -> bool {
        self.writing.is_some() || self.extending.is_some()
    }
}
