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
use crate::constants::CLIENT_WINDOW_REQUESTS_MAX;
use crate::state_machine::StateMachine;

pub(crate) struct Session<O> {
    /// Requests below this were answered and acknowledged by the client.
    floor: u64,
    /// `results[i]` is the result of request `floor + i`, once executed.
    /// Inline for a client with one request in flight: no heap buffer, so
    /// no cache miss besides the map entry itself.
    results: SmallVec<[Option<O>; 1]>,
}

impl<O: Clone> Session<O> {
    pub fn new() -> Self {
        Session {
            floor: 1,
            results: SmallVec::new(),
        }
    }

    /// Applies `cmd` unless it already ran; returns the result to answer
    /// with, or why it was not applied. A copy the client acknowledged
    /// already (a retry that lost the race to an earlier copy) is
    /// `Refused::Acknowledged`: nobody waits for its answer, but whoever
    /// holds its route must hear that it is done with.
    pub fn execute<S>(&mut self, sm: &mut S, cmd: &CommandRef<'_>) -> Result<O, Refused>
    where
        S: StateMachine<Output = O>,
    {
        let offset = if self.results.len() == 1
            && cmd.first_outstanding == self.floor + 1
            && cmd.request == cmd.first_outstanding
        {
            // The common case, a closed-loop client: it acknowledged its one
            // outstanding request and sent the next. Same outcome as the
            // general path, without its shifting and resizing.
            self.floor += 1;
            self.results[0] = None;
            0
        } else {
            self.make_room(cmd)?
        };
        if let Some(first) = &self.results[offset] {
            return Ok(first.clone());
        }
        let result = sm.apply(cmd);
        self.results[offset] = Some(result.clone());
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
            self.results.resize(offset + 1, None);
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
        let (mut kv, mut s) = (KvStore::new(), Session::new());
        assert_eq!(s.execute(&mut kv, &put(1, 1, b"a")), Ok(KvResult::Done));
        assert_eq!(s.execute(&mut kv, &put(2, 1, b"b")), Ok(KvResult::Done));
        // Request 1 again, after 2 ran: must not overwrite "b".
        assert_eq!(s.execute(&mut kv, &put(1, 1, b"a")), Ok(KvResult::Done));
        assert_eq!(kv.get(b"k"), Some(&b"b"[..]));
        // Out-of-order execution of pipelined requests: 4 before 3.
        assert_eq!(s.execute(&mut kv, &put(4, 3, b"d")), Ok(KvResult::Done));
        assert_eq!(s.execute(&mut kv, &put(3, 3, b"c")), Ok(KvResult::Done));
        assert_eq!(kv.get(b"k"), Some(&b"c"[..]));
        // The client acknowledged everything below 5: a stale copy of 3 is dropped.
        assert_eq!(s.execute(&mut kv, &put(5, 5, b"e")), Ok(KvResult::Done));
        assert_eq!(
            s.execute(&mut kv, &put(3, 3, b"c")),
            Err(Refused::Acknowledged)
        );
        assert_eq!(kv.get(b"k"), Some(&b"e"[..]));
    }

    #[test]
    fn request_beyond_window_is_refused() {
        let (mut kv, mut s) = (KvStore::new(), Session::new());
        let far = 1 + CLIENT_WINDOW_REQUESTS_MAX;
        assert_eq!(
            s.execute(&mut kv, &put(far, 1, b"x")),
            Err(Refused::BeyondClientWindow)
        );
        assert!(kv.is_empty());
    }
}
