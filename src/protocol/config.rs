//! The core's configuration and the quorum sizes it implies.

use super::types::ReplicaId;
use crate::constants::{RECOVERY_TIMEOUT_NS_DEFAULT, REPLICAS_MAX, RETRANSMIT_TIMEOUT_NS_DEFAULT};

/// A deliberate defect, for proving that the simulator's checkers catch bugs.
/// Never set outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// The command leader takes the fast path even when acceptors reported
    /// extra dependencies, dropping them.
    FastPathDropsDependencies,
    /// One ballot per instance, as in the SOSP 2013 specification and its Go
    /// code: a Prepare reply reports the promised ballot as the vote's
    /// (Sutra, "On the correctness of Egalitarian Paxos", 2019).
    SingleBallot,
    /// Recovery commits whatever the recoverer itself pre-accepted when it
    /// finds no accepted value, instead of validating or choosing a no-op
    /// (efficient/epaxos issue #29).
    RecoveryTrustsOwnPreAccept,
    /// Recovery accepts the possibly fast-committed value without asking
    /// for contradicting instances (no Validate, no waiting).
    RecoverySkipsValidate,
    /// An acceptor answers PreAccept without persisting its vote
    /// (efficient/epaxos issue #28).
    PreAcceptNotPersisted,
    /// A replica answers clients and sends the commit without persisting it
    /// (efficient/epaxos issue #27).
    CommitNotPersisted,
    /// The executor waits on a missing dependency without ever recovering
    /// it (efficient/epaxos issue #26).
    ExecutorNeverRecovers,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// N, the number of replicas: 1, 3, 5, 7 or 9.
    pub replicas: usize,
    /// This replica.
    pub me: ReplicaId,
    /// Send PreAccept to a fast quorum only, instead of to every peer.
    pub thrifty: bool,
    /// Re-send to peers that have not answered after this long.
    pub retransmit_timeout_ns: u64,
    /// Recover an instance this replica waits on after it stayed uncommitted
    /// this long (the first time; later attempts back off).
    pub recovery_timeout_ns: u64,
    /// Seed of the core's one random source, the recovery back-off. The
    /// driver picks it (the simulator from its seed), so runs replay.
    pub rng_seed: u64,
    /// Produce `TraceEvent`s for the simulator's checkers.
    pub trace: bool,
    pub injected_bug: Option<InjectedBug>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Replicas(usize),
    Me { me: u8, replicas: usize },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Replicas(n) => write!(
                f,
                "{n} replicas: must be odd and between 1 and {REPLICAS_MAX}"
            ),
            ConfigError::Me { me, replicas } => {
                write!(f, "replica id {me} out of range for {replicas} replicas")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn new(replicas: usize, me: ReplicaId) -> Result<Config, ConfigError> {
        if replicas == 0 || replicas > REPLICAS_MAX || replicas % 2 == 0 {
            return Err(ConfigError::Replicas(replicas));
        }
        if me.index() >= replicas {
            return Err(ConfigError::Me { me: me.0, replicas });
        }
        Ok(Config {
            replicas,
            me,
            thrifty: false,
            retransmit_timeout_ns: RETRANSMIT_TIMEOUT_NS_DEFAULT,
            recovery_timeout_ns: RECOVERY_TIMEOUT_NS_DEFAULT,
            rng_seed: u64::from(me.0),
            trace: false,
            injected_bug: None,
        })
    }

    /// F: the failures tolerated.
    pub fn f(&self) -> usize {
        (self.replicas - 1) / 2
    }

    /// Replicas, leader included, in a fast quorum: F + floor((F+1)/2)
    /// (the optimized fast quorum of the SOSP 2013 paper; floor((F+1)/2) is
    /// ceil(F/2)), and at least 1.
    pub fn fast_quorum(&self) -> usize {
        let f = self.f();
        (f + f.div_ceil(2)).max(1)
    }

    /// E, the failures the fast path tolerates: N minus the fast quorum.
    /// EPaxos* (OPODIS 2025) needs N >= max(2E + F - 1, 2F + 1); the
    /// optimized fast quorum meets it for every N (checked in a test).
    pub fn fast_failures(&self) -> usize {
        self.replicas - self.fast_quorum()
    }

    /// Replicas, leader included, in a slow-path quorum: F + 1.
    pub fn slow_quorum(&self) -> usize {
        self.f() + 1
    }

    /// Bitmask of every replica but this one.
    pub(crate) fn peers_mask(&self) -> u16 {
        (((1u32 << self.replicas) - 1) as u16) & !self.me.bit()
    }

    /// The peers after this one, in ring order.
    pub(crate) fn peers(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        (1..self.replicas).map(move |i| ReplicaId(((self.me.index() + i) % self.replicas) as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_sizes() {
        let sizes: Vec<_> = [1, 3, 5, 7, 9]
            .iter()
            .map(|&n| {
                let c = Config::new(n, ReplicaId(0)).unwrap();
                (c.fast_quorum(), c.slow_quorum())
            })
            .collect();
        assert_eq!(sizes, [(1, 1), (2, 2), (3, 3), (5, 4), (6, 5)]);
    }

    #[test]
    fn optimized_fast_quorum_fits_epaxos_star() {
        for n in [3, 5, 7, 9] {
            let c = Config::new(n, ReplicaId(0)).unwrap();
            let (f, e) = (c.f(), c.fast_failures());
            assert!(n >= (2 * e + f - 1).max(2 * f + 1), "n {n} f {f} e {e}");
        }
    }

    #[test]
    fn refuses_bad_sizes() {
        assert!(Config::new(0, ReplicaId(0)).is_err());
        assert!(Config::new(4, ReplicaId(0)).is_err());
        assert!(Config::new(11, ReplicaId(0)).is_err());
        assert!(Config::new(3, ReplicaId(3)).is_err());
    }
}
