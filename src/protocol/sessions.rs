//! Exactly-once execution: one client's session.
//!
//! Every command carries (client, request number, first outstanding). A
//! session keeps the results of its client's requests from
//! `first_outstanding` on, so a request proposed twice (a client retry,
//! possibly at another replica) is applied once and both copies are answered
//! with the first result. Sessions are part of the replicated state: one
//! changes only in `execute`, in execution order, and a client's commands are
//! ordered at every replica (they conflict with each other, see `index.rs`),
//! so every replica keeps the same sessions. They live in the conflict
//! index's client table, next to each client's conflict row.

use smallvec::SmallVec;

use super::outbox::Refused;
use crate::command::CommandRef;
use crate::constants::{CLIENT_WINDOW_REQUESTS_MAX, RESULT_KEPT_BYTES_MAX};
use crate::state_machine::{Access, StateMachine};

/// What the table holds for one request number of the window.
#[derive(Clone, Debug)]
enum Kept<O> {
    /// Not executed yet.
    Pending,
    Result(O),
    /// A read executed, its result too large to keep: a copy that executes
    /// later reads again (`RESULT_KEPT_BYTES_MAX`).
    Reread,
}

pub(crate) struct Session<O> {
    /// Requests below this were answered and acknowledged by the client.
    floor: u64,
    /// `results[i]` is the result of request `floor + i`, once executed.
    /// Inline for a client with one request in flight: no heap buffer, so
    /// no cache miss besides the map entry itself.
    results: SmallVec<[Kept<O>; 1]>,
    /// The client's commands executed in this session (applied, answered
    /// from the table, or refused): what an `Op::Expire` compares with the
    /// count its proposer saw. Replicated state.
    pub executed: u64,
    /// The local clock at the last of them. Not replicated state: only this
    /// replica's search for idle sessions reads it.
    pub last_ns: u64,
}

impl<O: Clone> Session<O> {
    pub fn new(now: u64) -> Self {
        Session {
            floor: 1,
            results: SmallVec::new(),
            executed: 0,
            last_ns: now,
        }
    }

    /// Applies `cmd` unless it already ran; returns the result to answer
    /// with, or why it was not applied. A copy the client acknowledged
    /// already (a retry that lost the race to an earlier copy) is
    /// `Refused::Acknowledged`: nobody waits for its answer, but whoever
    /// holds its route must hear that it is done with.
    pub fn execute<S>(&mut self, sm: &mut S, cmd: &CommandRef<'_>, now: u64) -> Result<O, Refused>
    where
        S: StateMachine<Output = O>,
    {
        self.executed += 1;
        self.last_ns = now;
        let offset = if self.results.len() == 1
            && cmd.first_outstanding == self.floor + 1
            && cmd.request == cmd.first_outstanding
        {
            // The common case, a closed-loop client: it acknowledged its one
            // outstanding request and sent the next. Same outcome as the
            // general path, without its shifting and resizing.
            self.floor += 1;
            self.results[0] = Kept::Pending;
            0
        } else {
            self.make_room(cmd)?
        };
        match &self.results[offset] {
            Kept::Result(first) => return Ok(first.clone()),
            // A read has no effect: reading again, here in the order, is
            // an answer within the request's lifetime, like the first.
            Kept::Reread => return Ok(sm.apply(cmd)),
            Kept::Pending => {}
        }
        let result = sm.apply(cmd);
        let read = S::conflict_key(cmd).is_some_and(|(_, a)| a == Access::Read);
        self.results[offset] = if read && S::result_bytes(&result) > RESULT_KEPT_BYTES_MAX {
            Kept::Reread
        } else {
            Kept::Result(result.clone())
        };
        Ok(result)
    }

    /// Forgets what the client acknowledged and finds the slot of `cmd`'s
    /// result, or why `cmd` is not to be applied.
    fn make_room(&mut self, cmd: &CommandRef<'_>) -> Result<usize, Refused> {
        if cmd.first_outstanding > self.floor {
            let forget = cmd.first_outstanding - self.floor;
            if forget >= self.results.len() as u64 {
                self.results.clear();
            } else {
                self.results.drain(..forget as usize);
            }
            self.floor = cmd.first_outstanding;
        }
        if cmd.request < self.floor {
            return Err(Refused::Acknowledged);
        }
        let offset = cmd.request - self.floor;
        if offset >= CLIENT_WINDOW_REQUESTS_MAX {
            return Err(Refused::BeyondClientWindow);
        }
        let offset = offset as usize;
        if offset >= self.results.len() {
            self.results.resize(offset + 1, Kept::Pending);
        }
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Op;
    use crate::state_machine::{KvResult, KvStore};

    fn put(request: u64, first: u64, value: &[u8]) -> CommandRef<'_> {
        CommandRef {
            client: 9,
            request,
            first_outstanding: first,
            op: Op::Put,
            key: b"k",
            value,
        }
    }

    #[test]
    fn duplicate_is_answered_with_first_result_and_not_reapplied() {
        let (mut kv, mut s) = (KvStore::new(), Session::new(0));
        assert_eq!(s.execute(&mut kv, &put(1, 1, b"a"), 0), Ok(KvResult::Done));
        assert_eq!(s.execute(&mut kv, &put(2, 1, b"b"), 0), Ok(KvResult::Done));
        // Request 1 again, after 2 ran: must not overwrite "b".
        assert_eq!(s.execute(&mut kv, &put(1, 1, b"a"), 0), Ok(KvResult::Done));
        assert_eq!(kv.get(b"k"), Some(&b"b"[..]));
        // Out-of-order execution of pipelined requests: 4 before 3.
        assert_eq!(s.execute(&mut kv, &put(4, 3, b"d"), 0), Ok(KvResult::Done));
        assert_eq!(s.execute(&mut kv, &put(3, 3, b"c"), 0), Ok(KvResult::Done));
        assert_eq!(kv.get(b"k"), Some(&b"c"[..]));
        // The client acknowledged everything below 5: a stale copy of 3 is dropped.
        assert_eq!(s.execute(&mut kv, &put(5, 5, b"e"), 0), Ok(KvResult::Done));
        assert_eq!(
            s.execute(&mut kv, &put(3, 3, b"c"), 0),
            Err(Refused::Acknowledged)
        );
        assert_eq!(kv.get(b"k"), Some(&b"e"[..]));
    }

    #[test]
    fn request_beyond_window_is_refused() {
        let (mut kv, mut s) = (KvStore::new(), Session::new(0));
        let far = 1 + CLIENT_WINDOW_REQUESTS_MAX;
        assert_eq!(
            s.execute(&mut kv, &put(far, 1, b"x"), 0),
            Err(Refused::BeyondClientWindow)
        );
        assert!(kv.is_empty());
    }

    #[test]
    fn a_large_read_result_is_not_kept_and_a_retry_reads_again() {
        let (mut kv, mut s) = (KvStore::new(), Session::new(0));
        let big = vec![7u8; RESULT_KEPT_BYTES_MAX + 1];
        let get = |request| CommandRef {
            op: Op::Get,
            ..put(request, 1, b"")
        };
        s.execute(&mut kv, &put(1, 1, &big), 0).unwrap();
        let first = s.execute(&mut kv, &get(2), 0).unwrap();
        assert!(matches!(&first, KvResult::Value(v) if v.len() == big.len()));
        assert!(matches!(s.results[1], Kept::Reread), "not kept");
        // The key changes; a retried copy of the read sees the new value.
        s.execute(&mut kv, &put(3, 1, b"small"), 0).unwrap();
        let again = s.execute(&mut kv, &get(2), 0).unwrap();
        assert!(matches!(&again, KvResult::Value(v) if &v[..] == b"small"));
        // A small read result is kept: its retry answers the first result.
        let kept = s.execute(&mut kv, &get(4), 0).unwrap();
        s.execute(&mut kv, &put(5, 1, b"other"), 0).unwrap();
        assert_eq!(s.execute(&mut kv, &get(4), 0).unwrap(), kept);
        assert_eq!(s.executed, 7);
    }
}
