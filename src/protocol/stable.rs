//! The stable frontier: per instance space, the slots executed at every
//! replica, learnt from `Progress` messages that ride on other traffic.
//!
//! Why it exists: the conflict index would otherwise keep a row for every
//! key ever touched (hundreds of bytes per key per replica). An instance
//! executed at every replica can no longer matter to anything undecided:
//! every replica will execute it before any command not yet committed. So a
//! dependency on it is always satisfied, its seq can no longer order
//! anything, and recovery need not report it (see `index.rs`, which drops
//! the rows of keys whose every recorded instance is stable, and
//! ARCHITECTURE.md, "Forgetting keys", for the safety argument).
//!
//! Three vectors, each with one slot per instance space:
//! - `executed[y]`: the executed prefix replica y last reported (own row:
//!   this replica's own, computed when a report is due). A replica reports
//!   it only in a message sealed behind the records of what it executed,
//!   so the figure survives its crash.
//! - `stable = min over y of executed[y]`: every slot at or below is
//!   executed at every replica. A command leader raises its instances'
//!   dependencies to it (`Replica::propose`).
//! - `floor = min over y of reported[y]`, where `reported[y]` is the
//!   `stable` that y last reported (own: `stable`). Every replica's
//!   `stable` is at or above it, and a replica's `stable` only grows, so
//!   every PreAccept a leader sends after its report carries dependencies
//!   at or above this replica's `floor`. This replica drops index rows at
//!   or below `floor` and raises the dependencies it computes to it:
//!   dropping a row then changes no attributes it computes, and the fast
//!   path is kept (an acceptor's raise never exceeds a current leader's).
//!
//! Reports only raise what is known (facts about execution never become
//! false), so a restarted peer's lower report changes nothing.

use super::types::ReplicaId;
use crate::constants::REPLICAS_MAX;

pub(crate) type Slots = [u64; REPLICAS_MAX];

pub(crate) struct Stability {
    replicas: usize,
    me: usize,
    executed: [Slots; REPLICAS_MAX],
    reported: [Slots; REPLICAS_MAX],
    stable: Slots,
    floor: Slots,
    /// Per peer: what it was last sent, and when.
    sent: [(Slots, Slots); REPLICAS_MAX],
    sent_at: [u64; REPLICAS_MAX],
    /// When this replica's own executed prefix is next worth recomputing.
    next_report: u64,
}

impl Stability {
    pub fn new(replicas: usize, me: ReplicaId) -> Stability {
        Stability {
            replicas,
            me: me.index(),
            executed: [[0; REPLICAS_MAX]; REPLICAS_MAX],
            reported: [[0; REPLICAS_MAX]; REPLICAS_MAX],
            stable: [0; REPLICAS_MAX],
            floor: [0; REPLICAS_MAX],
            sent: [([0; REPLICAS_MAX], [0; REPLICAS_MAX]); REPLICAS_MAX],
            sent_at: [0; REPLICAS_MAX],
            next_report: 0,
        }
    }

    /// Every slot at or below `stable()[q]` of space q is executed at every
    /// replica: what a command leader raises its dependencies to.
    pub fn stable(&self) -> &Slots {
        &self.stable
    }

    /// At or below every replica's `stable`: what this replica forgets
    /// below, and raises the dependencies it computes to.
    pub fn floor(&self) -> &Slots {
        &self.floor
    }

    /// Peer `from` reports its executed prefix and its stable frontier.
    /// Returns whether the floor rose.
    pub fn on_report(&mut self, from: ReplicaId, executed: &Slots, stable: &Slots) -> bool {
        let y = from.index();
        for q in 0..self.replicas {
            self.executed[y][q] = self.executed[y][q].max(executed[q]);
            self.reported[y][q] = self.reported[y][q].max(stable[q]);
        }
        self.recompute()
    }

    /// Whether `now` is past the point where this replica's own executed
    /// prefix should be recomputed (at most once per `interval`).
    pub fn report_due(&self, now: u64) -> bool {
        now >= self.next_report
    }

    /// This replica's own executed prefix, as last computed.
    pub fn own_executed(&self) -> &Slots {
        &self.executed[self.me]
    }

    /// The link to `peer` was (re)established: whatever was sent before may
    /// be lost, so the next report to it goes out whatever it says.
    pub fn forget_sent(&mut self, peer: ReplicaId) {
        let p = peer.index();
        self.sent[p] = ([u64::MAX; REPLICAS_MAX], [u64::MAX; REPLICAS_MAX]);
        self.sent_at[p] = 0;
    }

    /// When this replica's own executed prefix is next worth recomputing.
    pub fn next_report(&self) -> u64 {
        self.next_report
    }

    /// This replica's own executed prefix, computed at `now`. Returns
    /// whether the floor rose.
    pub fn set_own(&mut self, now: u64, interval: u64, executed: &Slots) -> bool {
        self.next_report = now + interval;
        let n = self.replicas;
        for (own, &e) in self.executed[self.me][..n].iter_mut().zip(executed) {
            debug_assert!(e >= *own, "executed prefix fell");
            *own = (*own).max(e);
        }
        self.recompute()
    }

    fn recompute(&mut self) -> bool {
        let n = self.replicas;
        let mut stable = [0; REPLICAS_MAX];
        for (q, s) in stable.iter_mut().enumerate().take(n) {
            *s = (0..n).map(|y| self.executed[y][q]).min().unwrap_or(0);
        }
        self.stable = stable;
        self.reported[self.me] = stable;
        let mut rose = false;
        for q in 0..n {
            let f = (0..n).map(|y| self.reported[y][q]).min().unwrap_or(0);
            debug_assert!(f >= self.floor[q], "floor fell");
            rose |= f > self.floor[q];
            self.floor[q] = f;
        }
        rose
    }

    /// The report for `peer`, if it would tell it something new and it is
    /// worth a frame now: riding on other traffic (`riding`) once
    /// `interval` passed since the last one, or alone after `alone`.
    pub fn report_for(
        &mut self,
        peer: ReplicaId,
        now: u64,
        riding: bool,
        interval: u64,
        alone: u64,
    ) -> Option<(Slots, Slots)> {
        let p = peer.index();
        let report = (self.executed[self.me], self.stable);
        if report == self.sent[p] {
            return None;
        }
        let since = now.saturating_sub(self.sent_at[p]);
        if !(riding && since >= interval || since >= alone) {
            return None;
        }
        self.sent[p] = report;
        self.sent_at[p] = now;
        Some(report)
    }

    /// When a report not yet sent to some peer falls due alone (none if
    /// every peer has been told everything).
    pub fn next_alone(&self, peers: impl Iterator<Item = ReplicaId>, alone: u64) -> Option<u64> {
        let report = (self.executed[self.me], self.stable);
        peers
            .filter(|p| self.sent[p.index()] != report)
            .map(|p| self.sent_at[p.index()] + alone)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(v: &[u64]) -> Slots {
        let mut s = [0; REPLICAS_MAX];
        s[..v.len()].copy_from_slice(v);
        s
    }

    #[test]
    fn stable_is_the_least_executed_and_floor_the_least_reported_stable() {
        let mut s = Stability::new(3, ReplicaId(0));
        assert!(!s.set_own(0, 10, &slots(&[5, 5, 5])));
        assert_eq!(s.stable(), &slots(&[0, 0, 0]));
        s.on_report(ReplicaId(1), &slots(&[4, 6, 2]), &slots(&[0, 0, 0]));
        assert_eq!(s.stable(), &slots(&[0, 0, 0]), "replica 2 never reported");
        s.on_report(ReplicaId(2), &slots(&[7, 1, 3]), &slots(&[0, 0, 0]));
        assert_eq!(s.stable(), &slots(&[4, 1, 2]));
        assert_eq!(
            s.floor(),
            &slots(&[0, 0, 0]),
            "no peer reported a stable yet"
        );
        s.on_report(ReplicaId(1), &slots(&[4, 6, 2]), &slots(&[3, 1, 2]));
        assert!(s.on_report(ReplicaId(2), &slots(&[7, 1, 3]), &slots(&[4, 0, 9])));
        assert_eq!(s.floor(), &slots(&[3, 0, 2]));
        // A restarted peer's lower report forgets nothing.
        assert!(!s.on_report(ReplicaId(1), &slots(&[0, 0, 0]), &slots(&[0, 0, 0])));
        assert_eq!(s.stable(), &slots(&[4, 1, 2]));
        assert_eq!(s.floor(), &slots(&[3, 0, 2]));
    }

    #[test]
    fn reports_ride_after_the_interval_or_go_alone_later_and_only_when_new() {
        let mut s = Stability::new(2, ReplicaId(0));
        let p = ReplicaId(1);
        s.set_own(0, 10, &slots(&[3, 0]));
        assert_eq!(s.report_for(p, 5, false, 10, 100), None);
        assert_eq!(
            s.report_for(p, 10, true, 10, 100),
            Some((slots(&[3, 0]), slots(&[0, 0])))
        );
        assert_eq!(s.report_for(p, 200, true, 10, 100), None, "nothing new");
        s.set_own(200, 10, &slots(&[4, 0]));
        assert_eq!(s.next_alone([p].into_iter(), 100), Some(110));
        assert_eq!(
            s.report_for(p, 205, false, 10, 100),
            Some((slots(&[4, 0]), slots(&[0, 0])))
        );
        assert_eq!(s.next_alone([p].into_iter(), 100), None);
    }
}
