//! The outbox contract: a turn's messages and replies leave only once the
//! records the same turn appended are durable, and turns leave in order.
//!
//! At the end of a turn the core's outbox is sealed: its records go to
//! storage (one append, one token, one sync), and the outbox, with its
//! messages and replies, waits behind that token, unless nothing is waiting
//! and the turn's records are durable already (it appended nothing, or the
//! storage synced them at once), in which case it leaves at once. Holding later
//! turns behind earlier ones even when they appended nothing keeps every
//! message behind the records of the state it reflects (a re-send in turn
//! t+1 of what turn t recorded must not overtake turn t's record).

use super::{Node, NodeBug, Output};
use crate::constants::{PEER_SEND_BUFFER_BYTES_MAX, SLOT_RESERVATION_AHEAD};
use crate::protocol::{Ballot, InstanceId, Message, Outbox, Record};
use crate::state_machine::KvResult;
use crate::storage::{Storage, Synced, Token};
use crate::wire::client::Code;
use crate::wire::peer;

impl<S: Storage> Node<S> {
    /// Seals the current turn's outbox (see the module docs).
    pub(super) fn seal(&mut self) {
        let mut synced_now = false;
        if !self.out.persist.is_empty() {
            self.appended = self.storage.append(&self.out.persist);
            self.out.persist.clear();
            if let Some(slot) = self.reservation_in_turn.take() {
                self.reservations.push_back((self.appended, slot));
            }
            // A sync that completed at once covers every earlier append
            // too, also those whose sync the driver was not yet asked for.
            synced_now = self.storage.sync(self.appended) == Synced::Now;
            if synced_now {
                self.sync_asked = self.appended;
            }
        }
        let at_once = self.held.is_empty() && (synced_now || self.durable >= self.appended);
        if at_once || self.cfg.node_bug == Some(NodeBug::ReleaseBeforeDurable) {
            if synced_now {
                self.durable = self.appended;
                self.note_reserved();
            }
            let mut out = std::mem::replace(&mut self.out, Outbox::new(0));
            self.release(&mut out);
            self.out = out;
            return;
        }
        self.release_early();
        if !self.out.is_empty() {
            let fresh = self
                .spare
                .pop()
                .unwrap_or_else(|| Outbox::new(self.cfg.replicas));
            let sealed = std::mem::replace(&mut self.out, fresh);
            self.held.push_back((self.appended, sealed));
        }
        if synced_now {
            // Releases the turns held behind earlier syncs, then this one.
            self.durable(self.appended);
        }
    }

    /// The driver could not make the records durable (a write or an
    /// fdatasync failed; after a failed fsync the page cache cannot be
    /// trusted, so nothing is retried). The shard stops for good: what waits
    /// for records is dropped unsent (it reports records that may not be on
    /// disk), every command waiting for an answer, and every one that comes
    /// later, is answered `Unavailable` with `reason`, peers' messages are
    /// ignored (no more votes), and turns do nothing. The admin frame still
    /// answers, with `log_failed` set.
    pub fn storage_failed(&mut self, reason: &str) {
        if self.failed.is_some() {
            return;
        }
        let why = format!("shard {} stopped: {reason}", self.cfg.shard);
        self.held.clear();
        self.out.clear();
        self.open = crate::command::BatchBuilder::new();
        self.closed.clear();
        let waiting: Vec<(u64, u64)> = self.pending.keys().copied().collect();
        for (client, request) in waiting {
            self.answer(client, request, Code::Unavailable, why.as_bytes());
        }
        self.failed = Some(why);
    }

    /// Why the shard stopped, if its storage failed.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The driver made every record up to `token` durable: the turns that
    /// waited for them leave, in order.
    pub fn durable(&mut self, token: Token) {
        if self.failed.is_some() {
            return; // what waited was dropped
        }
        assert!(
            token <= self.appended,
            "durable {token:?} beyond {:?}",
            self.appended
        );
        self.durable = self.durable.max(token);
        self.note_reserved();
        while self.held.front().is_some_and(|(t, _)| *t <= self.durable) {
            let (_, mut out) = self.held.pop_front().expect("checked");
            self.release(&mut out);
            self.spare.push(out);
        }
    }

    /// Appends a reservation of the next own slots to this turn's records
    /// when fewer than half of the last one remain (never with one replica:
    /// it sends no PreAccepts).
    pub(super) fn reserve_slots(&mut self) {
        let next = self.core.next_slot();
        if self.cfg.replicas == 1 || self.reserving >= next + SLOT_RESERVATION_AHEAD / 2 {
            return;
        }
        let upto = next + SLOT_RESERVATION_AHEAD;
        let id = InstanceId::new(self.cfg.replica, upto);
        self.out.persist.push(Record::reservation(id));
        self.reserving = upto;
        self.reservation_in_turn = Some(upto);
    }

    /// Reservations now durable widen what `release_early` may send.
    fn note_reserved(&mut self) {
        while let Some(&(t, slot)) = self.reservations.front() {
            if t > self.durable {
                break;
            }
            self.reserved = self.reserved.max(slot);
            self.reservations.pop_front();
        }
    }

    /// Sends this turn's PreAccepts of own instances at the initial ballot
    /// on durably reserved slots now, ahead of the turn's records: they ask
    /// for votes and report none, and the slot is known taken after any
    /// crash. Everything else in the turn waits for its records.
    fn release_early(&mut self) {
        let (me, reserved) = (self.cfg.replica, self.reserved);
        let early = |m: &Message| {
            matches!(m, Message::PreAccept(p)
                if p.id.replica == me && p.ballot == Ballot::initial(me) && p.id.slot.0 <= reserved)
        };
        for to in 0..self.out.messages.len() {
            if !self.out.messages[to].iter().any(early) {
                continue;
            }
            let mut messages = std::mem::take(&mut self.out.messages[to]);
            messages.retain(|m| {
                if !early(m) {
                    return true;
                }
                self.send(to, m);
                false
            });
            self.out.messages[to] = messages;
        }
    }

    /// Encodes one message into the link to peer `to`, or drops it, counted,
    /// if the link is down or the frame would take its queue past
    /// `PEER_SEND_BUFFER_BYTES_MAX` (the core re-sends what matters). A
    /// frame is shed whole: the peer never sees part of one.
    fn send(&mut self, to: usize, m: &Message) {
        let link = &mut self.links[to];
        let before = link.out.len();
        if !link.up || before >= PEER_SEND_BUFFER_BYTES_MAX {
            self.counters.dropped_messages += 1;
            return;
        }
        peer::encode(&self.enc, &mut link.out, m);
        if before > 0 && link.out.len() > PEER_SEND_BUFFER_BYTES_MAX {
            link.out.truncate(before);
            self.counters.dropped_messages += 1;
            return;
        }
        self.counters.frames_out += 1;
        if !link.listed {
            link.listed = true;
            self.outputs
                .push_back(Output::Link(crate::protocol::ReplicaId(to as u8)));
        }
    }

    /// Turns sealed and waiting for their records.
    pub fn turns_held(&self) -> usize {
        self.held.len()
    }

    /// Encodes the messages into their links' buffers and routes the
    /// replies; clears `out` for reuse.
    fn release(&mut self, out: &mut Outbox<KvResult>) {
        for (to, messages) in out.messages.iter_mut().enumerate() {
            for m in messages.drain(..) {
                self.send(to, &m);
            }
        }
        // What the checkers see committed or executed here is what became
        // durable and visible, as the rest of the world sees it: a commit
        // lost in a crash before its record was durable was never decided.
        if self.cfg.trace {
            self.trace.append(&mut out.trace);
        }
        let mut replies = std::mem::take(&mut out.replies);
        for reply in replies.drain(..) {
            self.reply(reply);
        }
        out.replies = replies;
        out.clear();
    }
}
