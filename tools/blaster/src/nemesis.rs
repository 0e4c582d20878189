//! `--nemesis kill`: while the load runs, a thread kills a random local
//! replica with SIGKILL every `--nemesis-interval` (jittered, from a seeded
//! generator), never more than F = (N - 1) / 2 at once, and restarts each
//! from its data dir `--nemesis-downtime` later. A restarted replica counts
//! as down until every shard answers with its links to the replicas that
//! are up. When the measured time ends (or on Ctrl-C) it stops killing,
//! restarts every replica still down, and waits until the whole cluster is
//! ready, so that `--verify` reads every replica.
//!
//! The decisions are `Plan`'s, which does no IO and reads no clock (times
//! are milliseconds since the run started); the thread around it owns the
//! cluster, the clock and the log lines. Kill times are real time, so a run
//! is not replayed exactly by its seed: the seed fixes the choices, not the
//! moments the load is in when they strike.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use epaxos_fast::harness::LocalCluster;
use epaxos_fast::rng::Rng;

/// How often the thread looks at the cluster and the plan.
const POLL: Duration = Duration::from_millis(20);

pub struct Config {
    /// Mean time between kills; each wait is drawn from half to one and a
    /// half of it.
    pub interval: Duration,
    /// How long a killed replica stays down before its restart.
    pub downtime: Duration,
    pub seed: u64,
    /// Times in the log lines count from here (the load's start).
    pub origin: Instant,
    /// No kill from here on (the end of the measured time).
    pub end: Instant,
    /// Ctrl-C: stop as at the end.
    pub stop: Arc<AtomicBool>,
}

/// What the nemesis did; the cluster goes back to the caller, with every
/// replica running unless `error` says otherwise.
pub struct Outcome {
    pub cluster: LocalCluster,
    pub kills: u64,
    pub restarts: u64,
    pub error: Option<String>,
}

/// Starts the nemesis on `cluster`, which it owns until it returns it.
pub fn start(cluster: LocalCluster, cfg: Config) -> JoinHandle<Outcome> {
    std::thread::Builder::new()
        .name("nemesis".into())
        .spawn(move || run(cluster, &cfg))
        .expect("spawn the nemesis thread")
}

fn run(cluster: LocalCluster, cfg: &Config) -> Outcome {
    let replicas = cluster.peers.len();
    let mut plan = Plan::new(
        replicas,
        cfg.interval.as_millis() as u64,
        cfg.downtime.as_millis() as u64,
        cfg.seed,
    );
    let mut out = Outcome {
        cluster,
        kills: 0,
        restarts: 0,
        error: None,
    };
    while Instant::now() < cfg.end && !crate::stop_requested(&cfg.stop) {
        if let Err(e) = step(&mut out, &mut plan, cfg) {
            out.error = Some(e);
            break;
        }
        std::thread::sleep(POLL);
    }
    if let Err(e) = finish(&mut out, &mut plan, cfg) {
        out.error.get_or_insert(e);
    }
    out
}

/// Milliseconds since the run started.
fn ms_since(origin: Instant) -> u64 {
    Instant::now().saturating_duration_since(origin).as_millis() as u64
}

/// One line on stderr, in one write: the replicas write to the same
/// stderr, and `eprintln!` writes each piece of its format on its own.
fn log(cfg: &Config, what: &str) {
    use std::io::Write;
    let t = Instant::now().saturating_duration_since(cfg.origin);
    let line = format!("nemesis {:6.1} s: {what}\n", t.as_secs_f64());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// One look: restarts what is due, notes what became ready, kills what
/// is due. The clock is read again before each decision: a ready check
/// waits on a replica, which may be slow to answer.
fn step(out: &mut Outcome, plan: &mut Plan, cfg: &Config) -> Result<(), String> {
    while let Some(r) = plan.restart_due(ms_since(cfg.origin)) {
        restart(out, r, cfg)?;
    }
    let ready_timeout = out.cluster.config().ready_timeout;
    for (r, since) in plan.starting() {
        let ready = out.cluster.replica_ready(r, plan.up_besides(r))?;
        let now = ms_since(cfg.origin);
        if ready {
            plan.ready(r);
            let took = now.saturating_sub(since) as f64 / 1000.0;
            log(
                cfg,
                &format!("replica {r} ready ({took:.1} s after its restart)"),
            );
        } else if Duration::from_millis(now.saturating_sub(since)) > ready_timeout {
            return Err(format!(
                "replica {r} not ready {ready_timeout:?} after its restart"
            ));
        }
    }
    // The ready checks above may have taken past the end.
    if Instant::now() >= cfg.end {
        return Ok(());
    }
    if let Some(r) = plan.kill_due(ms_since(cfg.origin)) {
        let pid = out.cluster.pid(r);
        out.cluster.kill(r)?;
        out.kills += 1;
        log(
            cfg,
            &format!(
                "kill -9 replica {r} (pid {pid}); {} of {} down",
                plan.down(),
                plan.replicas.len()
            ),
        );
    }
    Ok(())
}

fn restart(out: &mut Outcome, r: usize, cfg: &Config) -> Result<(), String> {
    out.cluster.restart(r)?;
    out.restarts += 1;
    log(cfg, &format!("restart replica {r} from its data dir"));
    Ok(())
}

/// The end: every replica still down restarted at once, then the whole
/// cluster ready (every link up).
fn finish(out: &mut Outcome, plan: &mut Plan, cfg: &Config) -> Result<(), String> {
    for r in plan.killed() {
        restart(out, r, cfg)?;
    }
    out.cluster.wait_ready()?;
    log(cfg, "every replica up and linked");
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Up,
    /// Killed; to be restarted at this time.
    Down {
        restart_ms: u64,
    },
    /// Restarted at this time, not ready yet.
    Starting {
        since_ms: u64,
    },
}

/// Which replica to kill or restart when: no IO, no clock.
struct Plan {
    rng: Rng,
    interval_ms: u64,
    downtime_ms: u64,
    /// F: replicas that may be down (or starting) at once.
    down_max: usize,
    next_kill_ms: u64,
    replicas: Vec<Phase>,
}

impl Plan {
    fn new(replicas: usize, interval_ms: u64, downtime_ms: u64, seed: u64) -> Plan {
        assert!(interval_ms > 0 && replicas >= 3, "{replicas} replicas");
        let mut plan = Plan {
            rng: Rng::new(seed ^ 0x6e65_6d65_7369_7321),
            interval_ms,
            downtime_ms,
            down_max: (replicas - 1) / 2,
            next_kill_ms: 0,
            replicas: vec![Phase::Up; replicas],
        };
        plan.next_kill_ms = plan.wait_ms();
        plan
    }

    /// A wait between kills: uniform in half to one and a half intervals.
    fn wait_ms(&mut self) -> u64 {
        let half = self.interval_ms / 2;
        self.rng.between(half, self.interval_ms + half).max(1)
    }

    /// Replicas not up (down or starting).
    fn down(&self) -> usize {
        self.replicas.iter().filter(|p| **p != Phase::Up).count()
    }

    /// Replicas up, other than `r`.
    fn up_besides(&self, r: usize) -> usize {
        let up = self.replicas.iter().filter(|p| **p == Phase::Up).count();
        up - usize::from(self.replicas[r] == Phase::Up)
    }

    /// The replica to kill at `now_ms`, if a kill is due and one more
    /// replica may go down; it is then down. A kill that would pass F
    /// waits until a replica is ready again.
    fn kill_due(&mut self, now_ms: u64) -> Option<usize> {
        if now_ms < self.next_kill_ms || self.down() >= self.down_max {
            return None;
        }
        let up: Vec<usize> = (0..self.replicas.len())
            .filter(|&r| self.replicas[r] == Phase::Up)
            .collect();
        let r = up[self.rng.below(up.len() as u64) as usize];
        self.replicas[r] = Phase::Down {
            restart_ms: now_ms + self.downtime_ms,
        };
        self.next_kill_ms = now_ms + self.wait_ms();
        debug_assert!(self.down() <= self.down_max);
        Some(r)
    }

    /// A killed replica whose restart is due at `now_ms`; it is then
    /// starting.
    fn restart_due(&mut self, now_ms: u64) -> Option<usize> {
        let r = self
            .replicas
            .iter()
            .position(|p| matches!(p, Phase::Down { restart_ms } if *restart_ms <= now_ms))?;
        self.replicas[r] = Phase::Starting { since_ms: now_ms };
        Some(r)
    }

    /// Every replica killed and not restarted yet, each now starting.
    fn killed(&mut self) -> Vec<usize> {
        let down: Vec<usize> = (0..self.replicas.len())
            .filter(|&r| matches!(self.replicas[r], Phase::Down { .. }))
            .collect();
        for &r in &down {
            self.replicas[r] = Phase::Starting { since_ms: 0 };
        }
        down
    }

    /// The replicas restarted and not ready yet, with their restart times.
    fn starting(&self) -> Vec<(usize, u64)> {
        (0..self.replicas.len())
            .filter_map(|r| match self.replicas[r] {
                Phase::Starting { since_ms } => Some((r, since_ms)),
                _ => None,
            })
            .collect()
    }

    fn ready(&mut self, r: usize) {
        assert!(matches!(self.replicas[r], Phase::Starting { .. }));
        self.replicas[r] = Phase::Up;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a plan for `ms` in 10 ms steps, each restarted replica ready
    /// `ready_ms` after its restart; the kills.
    fn drive(plan: &mut Plan, ms: u64, ready_ms: u64) -> Vec<(u64, usize)> {
        let mut kills = Vec::new();
        for now in (0..ms).step_by(10) {
            while plan.restart_due(now).is_some() {}
            for (r, since) in plan.starting() {
                if now >= since + ready_ms {
                    plan.ready(r);
                }
            }
            if let Some(r) = plan.kill_due(now) {
                kills.push((now, r));
            }
            assert!(
                plan.down() <= plan.down_max,
                "at {now} ms: {:?}",
                plan.replicas
            );
        }
        kills
    }

    #[test]
    fn never_more_than_f_down_and_the_seed_fixes_the_choices() {
        for (replicas, seed) in [(3, 1), (5, 2), (7, 3)] {
            let mut plan = Plan::new(replicas, 300, 1000, seed);
            let kills = drive(&mut plan, 60_000, 200);
            let again = drive(&mut Plan::new(replicas, 300, 1000, seed), 60_000, 200);
            assert_eq!(kills, again, "seed {seed}");
            // With kills due three times as often as one outage lasts, F
            // holds them back: at most F outages of 1.2 s at a time.
            let most = 60_000 / 1200 * plan.down_max as u64 + plan.down_max as u64;
            assert!(kills.len() as u64 <= most, "{} kills", kills.len());
            assert!(kills.len() >= 20, "{} kills", kills.len());
        }
    }

    #[test]
    fn a_killed_replica_restarts_after_the_downtime_and_is_down_until_ready() {
        let mut plan = Plan::new(5, 1000, 700, 9);
        let at = plan.next_kill_ms;
        assert!((500..=1500).contains(&at), "{at}");
        assert_eq!(plan.kill_due(at - 1), None);
        let r = plan.kill_due(at).unwrap();
        assert_eq!(plan.restart_due(at + 699), None);
        assert_eq!(plan.restart_due(at + 700), Some(r));
        assert_eq!(plan.down(), 1);
        assert_eq!(plan.up_besides(r), 4);
        plan.ready(r);
        assert_eq!(plan.down(), 0);
    }

    #[test]
    fn at_the_end_every_killed_replica_is_restarted() {
        let mut plan = Plan::new(5, 10, 60_000, 4);
        let kills = drive(&mut plan, 1000, 0);
        assert_eq!(kills.len(), 2, "F = 2, none back within the run");
        let mut killed = plan.killed();
        killed.sort_unstable();
        let mut expect: Vec<usize> = kills.iter().map(|k| k.1).collect();
        expect.sort_unstable();
        assert_eq!(killed, expect);
        assert_eq!(plan.starting().len(), 2);
    }
}
