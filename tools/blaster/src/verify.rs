//! `--verify`: every key the run wrote, read back through every replica.
//! A GET is ordered by consensus like any command, so each replica's answer
//! must be one of the values `written` says the key may hold: the last
//! acknowledged write's, or that of a write it did not follow.

use std::net::SocketAddr;
use std::time::Duration;

use epaxos_fast::client::Connection;
use epaxos_fast::command::Op;
use epaxos_fast::wire::client::Code;

use crate::written::KeyCheck;

/// GETs in flight per connection while reading back.
const PIPELINE: usize = 256;

/// What `read_back` found, summed over replicas.
#[derive(Default)]
pub struct Verdict {
    pub lost: u64,
    pub mismatched: u64,
    /// GETs the replica refused (overloaded, or an error): those keys were
    /// not checked there.
    pub refused: u64,
    /// Replicas that could not be read to the end (down, or lost mid-way):
    /// their remaining keys were not checked, the others' were.
    pub unread: usize,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.mismatched == 0 && self.refused == 0 && self.unread == 0
    }
}

/// Reads every checked key back through every replica and prints what it
/// found. A replica that cannot be read is reported and skipped, so a run
/// that killed one still checks the others.
pub fn read_back(targets: &[SocketAddr], cluster_id: u64, checks: &[KeyCheck]) -> Verdict {
    let mut v = Verdict::default();
    for (r, &addr) in targets.iter().enumerate() {
        if let Err(e) = read_replica(r, addr, cluster_id, checks, &mut v) {
            eprintln!("verify: replica {r} ({addr}) not read to the end: {e}");
            v.unread += 1;
        }
    }
    let mut also = String::new();
    if v.refused > 0 {
        also += &format!(", {} reads refused", v.refused);
    }
    if v.unread > 0 {
        also += &format!(", {} replicas not read to the end", v.unread);
    }
    println!(
        "verify: {} keys read back through {} replicas: {} lost, {} mismatched{also}",
        checks.len(),
        targets.len(),
        v.lost,
        v.mismatched,
    );
    v
}

/// Checks replica `r`, adding what it finds to `v` as it goes (so a replica
/// lost mid-way keeps what was found before).
fn read_replica(
    r: usize,
    addr: SocketAddr,
    cluster_id: u64,
    checks: &[KeyCheck],
    v: &mut Verdict,
) -> Result<(), String> {
    let mut shards: Vec<u8> = checks.iter().map(|c| c.shard).collect();
    shards.sort_unstable();
    shards.dedup();
    for shard in shards {
        let mut conn = Connection::connect(addr, shard, cluster_id, Duration::from_secs(10))
            .map_err(|e| format!("shard {shard}: {e}"))?;
        let mine: Vec<&KeyCheck> = checks.iter().filter(|c| c.shard == shard).collect();
        for chunk in mine.chunks(PIPELINE) {
            let mut first = None;
            for c in chunk {
                let request = conn
                    .queue(Op::Get, &c.key, b"")
                    .map_err(|e| format!("shard {shard}: {e}"))?;
                first.get_or_insert(request);
            }
            let first = first.expect("chunks are not empty");
            for _ in chunk {
                let resp = conn.recv().map_err(|e| format!("shard {shard}: {e}"))?;
                // A connection's request numbers are consecutive.
                let c = chunk[(resp.request - first) as usize];
                match resp.code {
                    Code::Value if c.acceptable.iter().any(|a| a[..] == resp.value[..]) => {}
                    Code::NotFound if !c.acked => {}
                    Code::NotFound => {
                        v.lost += 1;
                        report(r, c, "lost", &resp.value);
                    }
                    Code::Value => {
                        v.mismatched += 1;
                        report(r, c, "mismatched", &resp.value);
                    }
                    Code::Done
                    | Code::BeyondWindow
                    | Code::Overloaded
                    | Code::Error
                    | Code::Unavailable
                    | Code::SessionExpired
                    | Code::Integer
                    | Code::NotDone => {
                        v.refused += 1;
                        eprintln!(
                            "verify: replica {r}: key {:?} not read: {:?} {}",
                            String::from_utf8_lossy(&c.key),
                            resp.code,
                            String::from_utf8_lossy(&resp.value)
                        );
                    }
                }
            }
        }
    }
    Ok(())
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
