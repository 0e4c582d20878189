//! `--verify`: every key the run wrote, read back through every replica.
//! A GET is ordered by consensus like any command, so each replica's answer
//! must be the last acknowledged write (or a later one never answered).

use std::net::SocketAddr;
use std::time::Duration;

use epaxos_fast::client::Connection;
use epaxos_fast::wire::client::Code;
use epaxos_fast::wire::Op;

use crate::load::KeyCheck;

/// GETs in flight per connection while reading back.
const PIPELINE: usize = 256;

/// What `read_back` found, summed over replicas.
pub struct Verdict {
    pub lost: u64,
    pub mismatched: u64,
    /// Replicas that could not be read (down, or lost mid-way): their keys
    /// were not checked, the others' were.
    pub unread: usize,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.mismatched == 0 && self.unread == 0
    }
}

/// Reads every checked key back through every replica and prints what it
/// found. A replica that cannot be read is reported and skipped, so a run
/// that killed one still checks the others.
pub fn read_back(targets: &[SocketAddr], cluster_id: u64, checks: &[KeyCheck]) -> Verdict {
    let mut v = Verdict {
        lost: 0,
        mismatched: 0,
        unread: 0,
    };
    for (r, &addr) in targets.iter().enumerate() {
        match read_replica(r, addr, cluster_id, checks) {
            Ok((lost, mismatched)) => {
                v.lost += lost;
                v.mismatched += mismatched;
            }
            Err(e) => {
                eprintln!("verify: replica {r} ({addr}) not read: {e}");
                v.unread += 1;
            }
        }
    }
    println!(
        "verify: {} keys read back through {} of {} replicas: {} lost, {} mismatched{}",
        checks.len(),
        targets.len() - v.unread,
        targets.len(),
        v.lost,
        v.mismatched,
        if v.unread > 0 {
            format!(", {} not read", v.unread)
        } else {
            String::new()
        }
    );
    v
}

/// (lost, mismatched) at replica `r`.
fn read_replica(
    r: usize,
    addr: SocketAddr,
    cluster_id: u64,
    checks: &[KeyCheck],
) -> Result<(u64, u64), String> {
    let (mut lost, mut mismatched) = (0u64, 0u64);
    let mut shards: Vec<u8> = checks.iter().map(|c| c.shard).collect();
    shards.sort_unstable();
    shards.dedup();
    for shard in shards {
        let mut conn = Connection::connect(addr, shard, cluster_id, Duration::from_secs(10))
            .map_err(|e| format!("shard {shard}: {e}"))?;
        let mine: Vec<&KeyCheck> = checks.iter().filter(|c| c.shard == shard).collect();
        for chunk in mine.chunks(PIPELINE) {
            let mut by_request = std::collections::HashMap::new();
            for c in chunk {
                let request = conn
                    .queue(Op::Get, &c.key, b"")
                    .map_err(|e| format!("shard {shard}: {e}"))?;
                by_request.insert(request, *c);
            }
            for _ in chunk {
                let resp = conn.recv().map_err(|e| format!("shard {shard}: {e}"))?;
                let c = by_request[&resp.request];
                match resp.code {
                    Code::Value if c.acceptable.iter().any(|v| v[..] == resp.value[..]) => {}
                    Code::NotFound if !c.acked => {}
                    Code::NotFound => {
                        lost += 1;
                        report(r, c, "lost", &resp.value);
                    }
                    _ => {
                        mismatched += 1;
                        report(r, c, "mismatched", &resp.value);
                    }
                }
            }
        }
    }
    Ok((lost, mismatched))
}

fn report(replica: usize, c: &KeyCheck, what: &str, got: &[u8]) {
    eprintln!(
        "verify: replica {replica}: key {:?} {what}: holds {:?}, expected one of {:?}",
        String::from_utf8_lossy(&c.key),
        String::from_utf8_lossy(got),
        c.acceptable
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>()
    );
}
