//! CPU time used per command, from `/proc`: the user + system time of
//! blaster itself and of every local replica over the measured window (the
//! figure that carries over from this shared machine to real hosts).

/// CPU seconds (user + system) a process used so far, all its threads;
/// `None` if it is gone.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses:
    // utime and stime are the 14th and 15th fields of the line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// CPU seconds of blaster and of the replicas at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    blaster: f64,
    /// `None` without local replicas, or if one of them was gone.
    replicas: Option<f64>,
}

pub use epaxos_fast::harness::rss_bytes;

/// Samples blaster and the local replicas (`pids`; empty: none to measure).
pub fn sample(pids: &[u32]) -> Sample {
    let replicas = if pids.is_empty() {
        None
    } else {
        pids.iter()
            .map(|p| cpu_secs(&p.to_string()))
            .sum::<Option<f64>>()
    };
    Sample {
        blaster: cpu_secs("self").unwrap_or(0.0),
        replicas,
    }
}

/// CPU microseconds per command between two samples, for `ops` commands:
/// (replicas, blaster).
pub fn per_op(from: &Sample, to: &Sample, ops: u64) -> (Option<f64>, f64) {
    let ops = ops.max(1) as f64;
    let replicas = match (from.replicas, to.replicas) {
        (Some(a), Some(b)) => Some((b - a) * 1e6 / ops),
        _ => None,
    };
    (replicas, (to.blaster - from.blaster) * 1e6 / ops)
}
