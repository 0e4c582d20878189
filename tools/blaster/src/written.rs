//! What one load connection wrote, for `--verify`: per own key (a key only
//! that connection uses), which PUTs were acknowledged and which were never
//! answered, and from that the values every replica may hold for the key
//! at the end.
//!
//! The rule is linearizability's, for a register with one writer whose
//! writes may overlap (K in flight): at the end the key holds the value of
//! a write that no acknowledged write *followed* (sent after its answer
//! came). That is the last acknowledged write, any acknowledged write whose
//! answer came after the last one was sent, and any write never answered
//! (it may have been applied, at any point after it was sent). An older
//! rule took only writes numbered above the last acknowledged one as
//! candidates: that holds while each request is sent once, on one socket,
//! so its replica proposes a connection's requests in number order, but not
//! when blaster sends requests again (after a reconnect, or an `Overloaded`
//! answer): an earlier request's copy may then run after a later request.
//!
//! It does no IO and reads no clock: "followed" is read off request
//! numbers, since a connection numbers its requests in the order it sends
//! them.

use std::collections::HashMap;

use epaxos_fast::constants::CLIENT_WINDOW_REQUESTS_MAX;

/// What `--verify` must find for one key at every replica.
pub struct KeyCheck {
    pub shard: u8,
    pub key: Vec<u8>,
    /// Values the key may hold (see the module docs).
    pub acceptable: Vec<Vec<u8>>,
    /// Whether some write of the key was acknowledged (else it may be absent).
    pub acked: bool,
}

pub struct Written {
    client: u64,
    /// The own key of each outstanding PUT, by number mod window.
    sent: Vec<Option<u32>>,
    keys: HashMap<u32, KeyLog>,
}

/// The PUTs of one key.
#[derive(Default)]
struct KeyLog {
    /// The highest request number acknowledged (0: none).
    last: u64,
    /// Acknowledged writes the last one may not have followed, each with
    /// its horizon: the number the connection's next request would get when
    /// the answer came (every request from it on was sent after). One whose
    /// horizon is at most `last` is dropped: `last` followed it.
    overlapping: Vec<(u64, u64)>,
    /// Writes never answered (which may or may not have been applied).
    unanswered: Vec<u64>,
}

impl Written {
    pub fn new(client: u64) -> Written {
        Written {
            client,
            sent: vec![None; CLIENT_WINDOW_REQUESTS_MAX as usize],
            keys: HashMap::new(),
        }
    }

    /// Request `request` puts own key `key`.
    pub fn put(&mut self, request: u64, key: u32) {
        let slot = (request % CLIENT_WINDOW_REQUESTS_MAX) as usize;
        debug_assert!(self.sent[slot].is_none(), "request {request}");
        self.sent[slot] = Some(key);
        self.keys.entry(key).or_default().unanswered.push(request);
    }

    /// Request `request` was answered, `ok` (it took effect) or not, when
    /// the connection's next request number was `horizon`. Not an own-key
    /// PUT: nothing to record.
    pub fn answered(&mut self, request: u64, ok: bool, horizon: u64) {
        assert!(horizon > request, "request {request}, horizon {horizon}");
        let slot = (request % CLIENT_WINDOW_REQUESTS_MAX) as usize;
        let Some(k) = self.sent[slot].take() else {
            return;
        };
        let log = self.keys.get_mut(&k).expect("logged when sent");
        log.unanswered.retain(|&r| r != request);
        if ok {
            log.last = log.last.max(request);
            log.overlapping.push((request, horizon));
            let last = log.last;
            log.overlapping.retain(|&(_, h)| h > last);
        }
    }

    /// What every replica must hold for the keys written, `keys` being the
    /// connection's own keys (by index) on shard `shard`.
    pub fn checks(&self, shard: u8, keys: &[Vec<u8>], value_bytes: usize) -> Vec<KeyCheck> {
        self.keys
            .iter()
            .map(|(&k, log)| {
                let candidates = log.overlapping.iter().map(|&(r, _)| r);
                let acceptable = candidates
                    .chain(log.unanswered.iter().copied())
                    .map(|r| value_of(self.client, r, value_bytes))
                    .collect();
                KeyCheck {
                    shard,
                    key: keys[k as usize].clone(),
                    acceptable,
                    acked: log.last > 0,
                }
            })
            .collect()
    }
}

/// Writes into `v` the value request `request` of client `client` puts:
/// unique per write and per run (client ids are drawn afresh for every
/// connection), so neither an earlier run's data nor another connection's
/// can pass for it; padded to `size` with '.' (longer if `size` is too
/// small).
pub fn write_value(v: &mut Vec<u8>, client: u64, request: u64, size: usize) {
    use std::io::Write;
    v.clear();
    write!(v, "{client:x}:{request}").expect("writing to a Vec");
    if v.len() < size {
        v.resize(size, b'.');
    }
}

fn value_of(client: u64, request: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    write_value(&mut v, client, request, size);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: u64 = 0xab;

    /// The acceptable values of key 0, as request numbers, sorted.
    fn acceptable(w: &Written) -> (Vec<u64>, bool) {
        let keys = vec![b"k".to_vec()];
        let checks = w.checks(0, &keys, 0);
        assert_eq!(checks.len(), 1);
        let mut numbers: Vec<u64> = checks[0]
            .acceptable
            .iter()
            .map(|v| {
                let text = String::from_utf8_lossy(v);
                let (client, request) = text.split_once(':').unwrap();
                assert_eq!(client, format!("{CLIENT:x}"));
                request.parse().unwrap()
            })
            .collect();
        numbers.sort_unstable();
        (numbers, checks[0].acked)
    }

    #[test]
    fn a_write_sent_after_an_answer_came_overwrote_it() {
        let mut w = Written::new(CLIENT);
        w.put(1, 0);
        w.answered(1, true, 2);
        w.put(2, 0);
        w.answered(2, true, 3);
        assert_eq!(acceptable(&w), (vec![2], true));
    }

    #[test]
    fn overlapping_writes_may_land_in_either_order() {
        // 1 and 2 in flight together; 2 answered first, then 1. A copy of
        // 1 sent again may have run after 2.
        let mut w = Written::new(CLIENT);
        w.put(1, 0);
        w.put(2, 0);
        w.answered(2, true, 3);
        w.answered(1, true, 3);
        assert_eq!(acceptable(&w), (vec![1, 2], true));
        // 3, sent after both answers, overwrote both.
        w.put(3, 0);
        w.answered(3, true, 4);
        assert_eq!(acceptable(&w), (vec![3], true));
    }

    #[test]
    fn a_write_never_answered_may_hold_whatever_came_before() {
        let mut w = Written::new(CLIENT);
        w.put(1, 0);
        assert_eq!(acceptable(&w), (vec![1], false));
        w.put(2, 0);
        w.answered(2, true, 3);
        w.put(3, 0);
        w.answered(3, false, 4);
        // 1 is unanswered: it may have run after 2. 3 was refused.
        assert_eq!(acceptable(&w), (vec![1, 2], true));
    }

    #[test]
    fn requests_that_are_not_own_puts_record_nothing() {
        let mut w = Written::new(CLIENT);
        w.answered(5, true, 6);
        assert!(w.checks(0, &[], 0).is_empty());
    }
}
