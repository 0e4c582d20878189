//! The timers of one executor thread: wakers ordered by deadline. The
//! executor sleeps in the kernel until the nearest one, and wakes those due.
//!
//! A few dozen timers at most are set at once (one per sleeping writer, one
//! per reader's silence timeout), so a `BTreeMap` is plenty.

use std::collections::BTreeMap;
use std::task::Waker;
use std::time::Instant;

/// One set timer: its deadline, and a number telling apart timers that share
/// a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerKey {
    at: Instant,
    seq: u64,
}

#[derive(Default)]
pub struct Timers {
    set: BTreeMap<TimerKey, Waker>,
    seq: u64,
}

impl Timers {
    pub fn add(&mut self, at: Instant, waker: &Waker) -> TimerKey {
        self.seq += 1;
        let key = TimerKey { at, seq: self.seq };
        self.set.insert(key, waker.clone());
        key
    }

    /// Removes the timer if it is still set (it is gone once it fired).
    pub fn remove(&mut self, key: TimerKey) {
        self.set.remove(&key);
    }

    /// Whether the timer is still set: it has not fired.
    pub fn is_set(&self, key: TimerKey) -> bool {
        self.set.contains_key(&key)
    }

    /// Points a set timer at `waker` (the task polling it may have changed).
    pub fn update(&mut self, key: TimerKey, waker: &Waker) {
        if let Some(w) = self.set.get_mut(&key) {
            if !w.will_wake(waker) {
                *w = waker.clone();
            }
        }
    }

    /// The nearest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.set.first_key_value().map(|(k, _)| k.at)
    }

    /// Removes the timers due by `now` and appends their wakers to `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Waker>) {
        while let Some(entry) = self.set.first_entry() {
            if entry.key().at > now {
                break;
            }
            out.push(entry.remove());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expires_in_deadline_order_and_removed_ones_never() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        let w = Waker::noop();
        let late = timers.add(t0 + Duration::from_millis(20), w);
        let early = timers.add(t0 + Duration::from_millis(10), w);
        let gone = timers.add(t0 + Duration::from_millis(5), w);
        timers.remove(gone);
        assert_eq!(timers.next(), Some(early.at));
        let mut out = Vec::new();
        timers.expire(t0 + Duration::from_millis(15), &mut out);
        assert_eq!(out.len(), 1);
        assert!(!timers.is_set(early) && timers.is_set(late));
        timers.expire(t0 + Duration::from_millis(20), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(timers.next(), None);
    }
}
