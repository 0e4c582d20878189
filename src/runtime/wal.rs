//! The writer of a shard's log file: group commit through glommio's
//! io_uring, with O_DIRECT, off the shard's turn.
//!
//! The node appends each turn's records to the `FileLog` (in memory) and
//! holds the turn's messages and replies behind them; the turn loop then
//! wakes this task ([`Shard::log_ready`]). It takes everything appended
//! since the last group as one aligned write to a file opened with O_DIRECT
//! and O_DSYNC (so the write completes once it is durable: one io_uring
//! operation, no separate fdatasync), and awaits it while the shard goes on
//! running turns, which append the next group. When it completes, the node
//! learns the group's token is durable and releases what waited on it. So a group holds whatever
//! arrived during the previous group's write and sync: it grows with load,
//! and there is never more than one in flight.
//!
//! Beside the groups, space is allocated ahead of the last entry
//! (`FileLog::extension_wanted`), so that groups overwrite allocated space.
//!
//! A failed write stops the shard (`Node::storage_failed`):
//! after a failed fsync the kernel may have dropped the dirty data and
//! cleared the error, so neither a retry nor carrying on can be trusted.
//! The failure is logged once, with the file and the operation.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::io::{DmaFile, OpenOptions};
use tracing::error;

use super::notify::Notify;
use super::shard::Shard;
use crate::constants::{LOG_WRITE_ALIGN_BYTES, LOG_WRITE_STALL_MS};
use crate::storage::file::Next;

/// Runs for the life of the shard.
pub async fn writer(shard: Rc<Shard>, path: PathBuf) {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        let reason = format!("{}: {what} failed: {e}", path.display());
        error!("{reason}; this shard stops acknowledging and voting");
        shard.call(|node, _| node.storage_failed(&reason));
    };
    // O_DSYNC: each write completes once it is durable, one io_uring
    // operation per group instead of a write and then an fdatasync (which
    // would wait for the write's completion, then queue behind it). Measured
    // at 2k ops/s, five replicas: a group took 0.57-0.59 ms (median) this
    // way against 1.01-1.07 ms as write + fdatasync; see perf/RESULTS.md.
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(&path)
        .await
    {
        Ok(f) => Rc::new(f),
        Err(e) => return fail("opening for writes", &e),
    };
    if LOG_WRITE_ALIGN_BYTES % file.alignment() != 0 {
        let e = format!("its device needs {}-byte alignment", file.alignment());
        return fail("aligning writes", &e);
    }
    let extension_done = Rc::new(Notify::default());
    loop {
        shard.log_ready.wait().await;
        loop {
            if shard.failed() {
                return; // stopped for good: nothing more is written
            }
            // The group first, then the space after it: a group that
            // outruns the allocation grows the file (slower, correct) rather
            // than wait for a chunk to be allocated before it.
            let group = match shard.with_log(|log| log.next_group()) {
                Next::Idle => break,
                Next::WaitForExtension => {
                    extension_done.wait().await;
                    continue;
                }
                Next::Write(g) => g,
            };
            extend_if_wanted(&shard, &file, &extension_done, &path);
            let started = Instant::now();
            if let Err(e) = write_in_time(&file, &group.bytes, group.pos).await {
                return fail("write (O_DSYNC)", &e);
            }
            let micros = started.elapsed().as_micros() as u64;
            if shard.failed() {
                return; // an extension failed meanwhile
            }
            shard.call(|node, _| {
                let c = &mut node.counters_mut().log;
                c.synced(group.records, group.entry_bytes, micros);
                node.durable(group.token);
            });
        }
    }
}

/// Allocates `[pos, pos + len)` of the file with fallocate (extents that
/// read as zeros; the file's size grows, and the sync of that size is the
/// allocation's, not a group's), or, where the file system has no
/// fallocate, writes zeros there. fallocate was measured against writing
/// zeros (every byte of the log then written twice): closed loop 314-325k
/// against 267-275k ops/s, CPU 5.4-5.7 against 6.3-6.5 µs a command, p50 at
/// 2k ops/s 3.6-3.8 against 3.4-4.3 ms (perf/RESULTS.md).
async fn allocate(file: &DmaFile, pos: u64, len: u64) -> std::io::Result<()> {
    match file.pre_allocate(pos + len, false).await {
        Ok(()) => file
            .fdatasync()
            .await
            .map_err(|e| std::io::Error::other(e.to_string())),
        Err(e) if e.to_string().contains("not supported") => {
            write_all(file, &vec![0u8; len as usize], pos).await
        }
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// `write_all`, failing if it has not completed within
/// `LOG_WRITE_STALL_MS` (a hung disk: the write is abandoned, and the shard
/// stops, since its outcome is unknown).
async fn write_in_time(file: &DmaFile, data: &[u8], pos: u64) -> std::io::Result<()> {
    let stall = Duration::from_millis(LOG_WRITE_STALL_MS);
    let timed_out = async {
        glommio::timer::sleep(stall).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("not complete after {} s", stall.as_secs()),
        ))
    };
    futures_lite::future::or(write_all(file, data, pos), timed_out).await
}

/// Writes `data` whole at `pos`, through a DMA buffer. A short write goes
/// on from where it stopped (it ends on a block boundary), so that a disk
/// that filled up reports ENOSPC on the next write instead of a bare count.
async fn write_all(file: &DmaFile, data: &[u8], pos: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let mut buf = file.alloc_dma_buffer(data.len() - done);
        buf.as_bytes_mut().copy_from_slice(&data[done..]);
        let n = file.write_at(buf, pos + done as u64).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("wrote nothing at offset {}", pos + done as u64),
            ));
        }
        done += n;
    }
    Ok(())
}

/// Starts allocating the next chunk of space, if the log wants one, in a task
/// of its own, so that groups below it go on meanwhile.
fn extend_if_wanted(shard: &Rc<Shard>, file: &Rc<DmaFile>, done: &Rc<Notify>, path: &Path) {
    let Some((pos, len)) = shard.with_log(|log| log.extension_wanted()) else {
        return;
    };
    let (shard, file, done, path) = (
        shard.clone(),
        file.clone(),
        done.clone(),
        path.to_path_buf(),
    );
    glommio::spawn_local(async move {
        match allocate(&file, pos, len).await {
            Ok(()) => shard.with_log(|log| log.extended()),
            Err(e) => {
                let reason = format!("{}: allocating space ahead failed: {e}", path.display());
                error!("{reason}; this shard stops acknowledging and voting");
                shard.call(|node, _| node.storage_failed(&reason));
            }
        }
        done.notify();
    })
    .detach();
}
