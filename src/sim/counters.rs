//! Linearizability of a counter key: one that only INCRs by 1 touch, each
//! answered with the sum it produced.
//!
//! The register search of `linearizability` cannot model arithmetic, and
//! needs none here: with increments of 1 from an absent key (read as 0),
//! the k-th increment in any linearization answers k. So a history is
//! linearizable exactly when the completed answers can be those positions:
//!
//! 1. the answers are distinct and at least 1;
//! 2. real time is kept: if `a` returned before `b` was invoked, `a`'s sum
//!    is below `b`'s;
//! 3. every position below the largest answer that no completed increment
//!    holds (a gap) is taken by a pending increment (one that never
//!    returned, so it may have taken effect at any time after its
//!    invocation) that may stand there: a pending `p` may hold position
//!    `v` only if every completed increment that returned before `p` was
//!    invoked holds a position below `v`.
//!
//! Each condition is necessary, and together they are sufficient: order
//! the completed increments by sum, put the pending ones chosen in 3 in
//! their gaps, and the rest after the largest; every real-time edge then
//! points forward. This is what makes an increment applied twice visible
//! (a gap no pending increment can fill, or a repeated sum), which a
//! register model cannot see for a PUT applied twice.

use super::linearizability::{HistoryOp, OpKind};

/// One increment: invoked, returned (`u64::MAX` if pending), answer.
struct Incr {
    invoke: u64,
    ret: u64,
    sum: Option<i64>,
}

/// Checks the counter key whose operations are `history[i]` for `i` in
/// `indices`. Panics if one of them is not an INCR: the recorder keeps
/// counter keys apart.
pub(super) fn check(history: &[HistoryOp], indices: &[usize]) -> Result<(), ()> {
    let incrs: Vec<Incr> = indices
        .iter()
        .map(|&i| {
            let op = &history[i];
            let OpKind::Incr { sum } = op.kind else {
                panic!("counter key with a {:?} (history op #{i})", op.kind);
            };
            assert_eq!(
                sum.is_some(),
                op.return_ns.is_some(),
                "an INCR has a sum exactly when it returned (history op #{i})"
            );
            Incr {
                invoke: op.invoke_ns,
                ret: op.return_ns.unwrap_or(u64::MAX),
                sum,
            }
        })
        .collect();
    linearizable(&incrs).then_some(()).ok_or(())
}

fn linearizable(incrs: &[Incr]) -> bool {
    let mut done: Vec<(i64, u64, u64)> = incrs
        .iter()
        .filter_map(|o| o.sum.map(|s| (s, o.invoke, o.ret)))
        .collect();
    done.sort_unstable();
    if done.first().is_some_and(|&(s, _, _)| s < 1) || done.windows(2).any(|w| w[0].0 == w[1].0) {
        return false;
    }
    // Condition 2, in sum order: no increment returned before one with a
    // smaller sum was invoked.
    let mut latest_invoke = 0;
    for &(_, invoke, ret) in &done {
        if ret < latest_invoke {
            return false;
        }
        latest_invoke = latest_invoke.max(invoke);
    }
    gaps_fillable(&done, incrs)
}

/// Condition 3. `done` is sorted by sum, with distinct sums from 1.
fn gaps_fillable(done: &[(i64, u64, u64)], incrs: &[Incr]) -> bool {
    let largest = done.last().map_or(0, |&(s, _, _)| s);
    let pending: Vec<&Incr> = incrs.iter().filter(|o| o.sum.is_none()).collect();
    // Widened: a sum near i64::MAX must not wrap the count.
    let gap_count = i128::from(largest) - done.len() as i128;
    if gap_count > pending.len() as i128 {
        return false;
    }
    // The lowest position each pending increment may take lies above every
    // sum answered before it was invoked. Returns are sorted by sum only
    // where real time allows, so take the largest sum among all returned.
    let mut by_return: Vec<(u64, i64)> = done.iter().map(|&(s, _, r)| (r, s)).collect();
    by_return.sort_unstable();
    let mut prefix_max = Vec::with_capacity(by_return.len());
    let mut m = 0;
    for &(_, s) in &by_return {
        m = m.max(s);
        prefix_max.push(m);
    }
    let mut floors: Vec<i64> = pending
        .iter()
        .map(|p| {
            let returned_before = by_return.partition_point(|&(r, _)| r < p.invoke);
            returned_before.checked_sub(1).map_or(0, |k| prefix_max[k])
        })
        .collect();
    floors.sort_unstable();
    // Gaps in ascending order, each given the pending increment with the
    // lowest floor left: who may stand at a gap may stand at every later
    // one, so this greedy choice never blocks a later gap.
    let mut next = 0;
    let mut expect = 1;
    for &(s, _, _) in done {
        for gap in expect..s {
            if floors.get(next).is_none_or(|&f| f >= gap) {
                return false;
            }
            next += 1;
        }
        expect = s + 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(invoke_ns: u64, answered: Option<(u64, i64)>) -> HistoryOp {
        HistoryOp {
            client: 0,
            key: b"n0".to_vec(),
            kind: OpKind::Incr {
                sum: answered.map(|(_, s)| s),
            },
            invoke_ns,
            return_ns: answered.map(|(r, _)| r),
            read: None,
        }
    }

    fn ok(history: &[HistoryOp]) -> bool {
        let all: Vec<usize> = (0..history.len()).collect();
        check(history, &all).is_ok()
    }

    #[test]
    fn sequential_and_concurrent_increments_pass() {
        assert!(ok(&[]));
        assert!(ok(&[incr(0, Some((1, 1))), incr(2, Some((3, 2)))]));
        // Concurrent: either order.
        assert!(ok(&[incr(0, Some((10, 2))), incr(1, Some((9, 1)))]));
        // A pending one fills the gap it could have taken.
        assert!(ok(&[incr(0, None), incr(5, Some((6, 2)))]));
        // One that never returned need not have taken effect.
        assert!(ok(&[incr(0, Some((1, 1))), incr(2, None)]));
    }

    #[test]
    fn an_increment_applied_twice_is_caught() {
        // The counter moved by two for one answered increment: a gap.
        assert!(!ok(&[incr(0, Some((1, 2)))]));
        assert!(!ok(&[incr(0, Some((1, 1))), incr(2, Some((3, 3)))]));
        // Or two answers share a sum.
        assert!(!ok(&[incr(0, Some((1, 1))), incr(0, Some((1, 1)))]));
    }

    #[test]
    fn real_time_order_is_kept() {
        // The first returned before the second began, yet counted later.
        assert!(!ok(&[incr(0, Some((1, 2))), incr(2, Some((3, 1)))]));
        // A pending increment invoked after sum 2 returned cannot fill 1.
        assert!(!ok(&[
            incr(0, Some((1, 2))),
            incr(2, None),
            incr(3, Some((4, 3)))
        ]));
        // Sums from zero or below are never answered.
        assert!(!ok(&[incr(0, Some((1, 0)))]));
    }

    #[test]
    fn each_gap_gets_its_own_pending_increment() {
        // Two gaps, one pending increment.
        assert!(!ok(&[incr(0, None), incr(0, Some((9, 3)))]));
        assert!(ok(&[incr(0, None), incr(0, None), incr(0, Some((9, 3)))]));
        // A sum so large that the gap count must not wrap.
        assert!(!ok(&[incr(0, Some((1, i64::MAX)))]));
    }
}
