//! The data directory (`--data-dir DIR`, by default
//! `epaxos-data/replica-<id>`): the replica's state. `DIR/meta` names the cluster
//! the data belongs to (cluster id, replica id, replica and shard counts);
//! `DIR/shard-S.log` is shard S's log. A directory written for another
//! cluster, replica or shape is refused, naming both values: its records
//! would be another replica's votes.

use std::path::Path;
use std::time::Instant;

use epaxos_fast::runtime::RuntimeConfig;
use epaxos_fast::storage::file::FileLog;
use epaxos_fast::storage::Backend;

const META: &str = "meta";

/// The meta file's text for `cfg`.
fn meta(cfg: &RuntimeConfig) -> String {
    format!(
        "cluster_id={}\nreplica={}\nreplicas={}\nshards={}\n",
        cfg.cluster_id,
        cfg.replica.0,
        cfg.peers.len(),
        cfg.cores
    )
}

/// Creates or checks `dir`, then opens every shard's log. Errors say what
/// and where; the caller exits with status 2.
pub fn open(dir: &Path, cfg: &RuntimeConfig) -> Result<Vec<Backend>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create it: {e}"))?;
    lock(dir)?;
    let path = dir.join(META);
    let want = meta(cfg);
    let fresh = match std::fs::read_to_string(&path) {
        Ok(found) => {
            check(&found, &want)?;
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let logs = (0..cfg.cores)
        .map(|s| open_log(dir, s, fresh))
        .collect::<Result<Vec<_>, String>>()?;
    if fresh && logs.iter().any(|(_, records)| *records > 0) {
        // Logs with records but no meta: whose votes they are is unknown,
        // and writing a meta for today's flags would adopt them blindly.
        return Err(format!(
            "{} is missing but the shard logs hold records: restore the meta file, \
             or start on a new directory",
            path.display()
        ));
    }
    let logs: Vec<Backend> = logs.into_iter().map(|(log, _)| log).collect();
    if fresh {
        // The logs exist before the meta that says they should.
        sync_dir(dir).map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
        write_synced(dir, &path, &want)?;
    }
    Ok(logs)
}

/// Holds an exclusive lock on `DIR/lock` for the life of the process: a
/// second replica started on the same directory would read (and cut) logs
/// another one is writing.
fn lock(dir: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let f = std::fs::File::create(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "another process holds {} (a replica is running on this directory)",
            path.display()
        ));
    }
    // Kept open, so locked, until the process exits.
    std::mem::forget(f);
    Ok(())
}

/// Opens shard `s`'s log; with the records it holds. A directory that had a meta file must have every
/// shard's log: one missing would bring that shard back empty under this
/// replica's id, free to vote again on what it voted before.
fn open_log(dir: &Path, s: usize, fresh: bool) -> Result<(Backend, usize), String> {
    let path = dir.join(format!("shard-{s}.log"));
    if !fresh && !path.exists() {
        return Err(format!(
            "{} is missing, though {META} says this directory was in use: this \
             shard would come back empty under the same replica id; restore the \
             file, or start on a new directory",
            path.display()
        ));
    }
    let started = Instant::now();
    let (log, opened) = FileLog::open(&path, fresh)?;
    if let Some((at, dropped, why)) = &opened.torn {
        tracing::warn!(
            "{}: torn last entry at offset {at} ({why}): {dropped} bytes cut off",
            path.display()
        );
    }
    tracing::info!(
        shard = s,
        "{}: {} records, {} bytes, read in {:.3} s",
        path.display(),
        opened.records,
        opened.bytes,
        started.elapsed().as_secs_f64()
    );
    Ok((Backend::File(log), opened.records))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Each line of `found` must be the one `want` has.
fn check(found: &str, want: &str) -> Result<(), String> {
    for (f, w) in found.lines().zip(want.lines()) {
        if f != w {
            let key = w.split('=').next().unwrap_or(w);
            return Err(format!(
                "it holds the data of another replica or cluster: {key} is {} there, {} now \
                 (use that replica's flags, or another directory)",
                f.split('=').nth(1).unwrap_or(f),
                w.split('=').nth(1).unwrap_or(w)
            ));
        }
    }
    if found.lines().count() != want.lines().count() {
        return Err(format!(
            "its meta file is not one this version wrote: {found:?}"
        ));
    }
    Ok(())
}

/// Writes `text` to `path` durably (file and directory entry).
fn write_synced(dir: &Path, path: &Path, text: &str) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let tmp = dir.join(format!("{META}.tmp"));
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}
