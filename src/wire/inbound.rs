//! What a connection received and has not yet cut into frames, and the
//! shard-wide budget those bytes count against: the memory bounds every
//! driver applies to input it has not yet trusted.
//!
//! - Before its handshake, a connection may announce nothing but a
//!   Hello-sized body (`FrameReader::next_before_hello`); after it, the
//!   kind's own limit.
//! - The buffer grows only with bytes that arrived: a header announcing
//!   4 MiB costs its 32 bytes, not 4 MiB.
//! - A frame must be complete within a deadline of its first bytes
//!   (`Inbound::overdue`); a connection that sits inside one is closed.
//! - Every byte held in a partial frame counts against the shard's
//!   [`InputBudget`]; past it the driver stops receiving on connections
//!   that are not peers until the budget frees (`InputBudget::exhausted`,
//!   `InputBudget::may_resume`).
//!
//! Pure: time comes in as a number (nanoseconds), bytes as slices. This
//! module never reads a socket or a clock.

use bytes::BytesMut;

use super::frame::{Frame, FrameError, FrameReader};

/// Bytes received and not yet cut into frames, across every connection of
/// one shard, against a limit.
#[derive(Debug)]
pub struct InputBudget {
    held: usize,
    max: usize,
}

impl InputBudget {
    pub fn new(max: usize) -> InputBudget {
        assert!(max > 0, "an input budget of zero bytes admits nothing");
        InputBudget { held: 0, max }
    }

    /// Bytes held now, in every connection's partial frame.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// At or past the limit: the driver must not receive more on
    /// connections it may pause. (What arrives while a receive is being
    /// cancelled is still counted, so `held` may pass `max` by that much.)
    pub fn exhausted(&self) -> bool {
        self.held >= self.max
    }

    /// Far past the limit (half as much again): then even connections
    /// holding no partial frame stop receiving. Below it they go on, so
    /// that new clients and ones sending whole frames are still served
    /// while connections that sit inside frames hold the budget.
    pub fn overflowing(&self) -> bool {
        self.held >= self.max + self.max / 2
    }

    /// Paused receives may start again: held is back under three quarters
    /// of the limit (a margin, so that receives do not stop and start
    /// again for every frame cut).
    pub fn may_resume(&self) -> bool {
        self.held <= self.max - self.max / 4
    }

    fn add(&mut self, n: usize) {
        self.held += n;
    }

    fn release(&mut self, n: usize) {
        assert!(n <= self.held, "released {n} of {} bytes held", self.held);
        self.held -= n;
    }
}

/// Room past which an emptied buffer is dropped rather than kept for the
/// next frame (its room counts against the budget): for a client, and for
/// a replica's link, whose PreAccepts carry whole batches (dropping a
/// large room there costs a fresh allocation, grown by doubling, for every
/// frame: 0.85-0.90 of the throughput at a million keys in one sitting).
const KEPT_ROOM_BYTES_MAX: usize = 256 << 10;
const PEER_KEPT_ROOM_BYTES_MAX: usize = 4 << 20;

/// One connection's received bytes, not yet cut into frames. The memory its
/// buffer holds (its capacity: a growing buffer holds more than its bytes)
/// is counted in the shard's `InputBudget`, until it leaves as part of a
/// frame or the connection ends (`release`).
#[derive(Debug, Default)]
pub struct Inbound {
    buf: BytesMut,
    /// What this connection counts in the budget now.
    counted: usize,
    /// Whether the connection completed its handshake (its Hello was
    /// accepted, or it is a link this replica opened).
    trusted: bool,
    /// When the bytes now at the front of `buf` (the partial frame)
    /// started arriving; `None` while `buf` is empty.
    frame_since: Option<u64>,
    /// When bytes last arrived (or the connection was opened).
    last_in: u64,
    /// A replica's connection: keeps more room (`PEER_KEPT_ROOM_BYTES_MAX`).
    peer: bool,
}

impl Inbound {
    /// A connection accepted at `now`, which must send a Hello first.
    pub fn new(now: u64) -> Inbound {
        Inbound {
            last_in: now,
            ..Inbound::default()
        }
    }

    /// A connection whose handshake is not checked here (a link this
    /// replica opened to a configured peer).
    pub fn trusted(now: u64) -> Inbound {
        Inbound {
            trusted: true,
            ..Inbound::new(now)
        }
    }

    /// Its handshake completed: frames of every kind, at their own limits.
    pub fn trust(&mut self) {
        self.trusted = true;
    }

    /// It is a replica's: it keeps the room its (large) frames need.
    pub fn trust_peer(&mut self) {
        self.trusted = true;
        self.peer = true;
    }

    /// Bytes held in a partial frame.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Brings the budget in line with the buffer's capacity now.
    fn recount(&mut self, budget: &mut InputBudget) {
        let now = self.buf.capacity();
        if now >= self.counted {
            budget.add(now - self.counted);
        } else {
            budget.release(self.counted - now);
        }
        self.counted = now;
    }

    /// `bytes` arrived at `now`.
    pub fn received(&mut self, bytes: &[u8], now: u64, budget: &mut InputBudget) {
        if bytes.is_empty() {
            return;
        }
        if self.buf.is_empty() {
            self.frame_since = Some(now);
        }
        self.last_in = now;
        self.buf.extend_from_slice(bytes);
        self.recount(budget);
    }

    /// The next whole frame, taken out (its bytes leave the budget); `None`
    /// until one has arrived. Before the handshake only a Hello may come.
    pub fn next(
        &mut self,
        reader: &FrameReader,
        budget: &mut InputBudget,
    ) -> Result<Option<Frame>, FrameError> {
        let frame = if self.trusted {
            reader.next(&mut self.buf)
        } else {
            reader.next_before_hello(&mut self.buf)
        }?;
        if frame.is_some() {
            let keep = if self.peer {
                PEER_KEPT_ROOM_BYTES_MAX
            } else {
                KEPT_ROOM_BYTES_MAX
            };
            if self.buf.is_empty() && self.buf.capacity() > keep {
                self.buf = BytesMut::new();
            }
            self.recount(budget);
            // What follows the frame arrived with the last bytes.
            self.frame_since = (!self.buf.is_empty()).then_some(self.last_in);
        }
        Ok(frame)
    }

    /// Hands what is held to `parse` (for a protocol not cut into frames:
    /// RESP), which says how many bytes it took and whether the rest waits
    /// on the reader rather than on the sender (then the deadline does not
    /// run for it). The taken bytes leave the buffer and the budget.
    pub fn feed_with<E>(
        &mut self,
        budget: &mut InputBudget,
        parse: impl FnOnce(&[u8]) -> Result<(usize, bool), E>,
    ) -> Result<(), E> {
        let (taken, waiting) = parse(&self.buf)?;
        let _ = self.buf.split_to(taken.min(self.buf.len()));
        if self.buf.is_empty() && self.buf.capacity() > KEPT_ROOM_BYTES_MAX {
            self.buf = BytesMut::new();
        }
        self.recount(budget);
        self.frame_since = if self.buf.is_empty() || waiting {
            None
        } else if taken > 0 {
            Some(self.last_in)
        } else {
            self.frame_since.or(Some(self.last_in))
        };
        Ok(())
    }

    /// Whether a frame has been arriving for longer than `deadline_ns`.
    pub fn overdue(&self, now: u64, deadline_ns: u64) -> bool {
        self.frame_since
            .is_some_and(|since| now.saturating_sub(since) >= deadline_ns)
    }

    /// Whether nothing arrived for `timeout_ns` (0: never idle).
    pub fn idle(&self, now: u64, timeout_ns: u64) -> bool {
        timeout_ns > 0 && now.saturating_sub(self.last_in) >= timeout_ns
    }

    /// What is left when the stream ends: nothing, or a truncated frame.
    pub fn at_end(&self, reader: &FrameReader) -> Result<(), FrameError> {
        reader.at_end(&self.buf)
    }

    /// Drops what is held (the connection ended, or its input is moot)
    /// and gives it back to the budget.
    pub fn release(&mut self, budget: &mut InputBudget) {
        budget.release(self.counted);
        self.counted = 0;
        self.buf = BytesMut::new();
        self.frame_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::FRAME_BODY_BYTES_MAX;
    use crate::wire::client::{HelloBody, Role};
    use crate::wire::frame::{FrameEncoder, HELLO_BODY_BYTES_MAX};
    use crate::wire::Kind;

    const ENC: FrameEncoder = FrameEncoder {
        cluster_id: 7,
        sender: 0,
        shard: 0,
    };
    const S: u64 = 1_000_000_000;

    fn frame(kind: Kind, body: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        ENC.frame(&mut b, kind, |x| x.extend_from_slice(body));
        b.to_vec()
    }

    fn hello() -> Vec<u8> {
        let h = HelloBody {
            role: Role::Client as u8,
            ..HelloBody::default()
        };
        frame(Kind::Hello, zerocopy::IntoBytes::as_bytes(&h))
    }

    /// A header announcing `len` body bytes of `kind`, and nothing after.
    fn header_only(kind: Kind, len: usize) -> Vec<u8> {
        let mut f = frame(kind, b"");
        f[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        f
    }

    #[test]
    fn before_the_hello_only_a_hello_sized_body_is_accepted() {
        let reader = FrameReader::new(7);
        let mut budget = InputBudget::new(1 << 20);
        // A Request header announcing 4 MiB: refused from its header.
        let mut a = Inbound::new(0);
        a.received(&header_only(Kind::Request, 4 << 20), 0, &mut budget);
        assert!(matches!(
            a.next(&reader, &mut budget),
            Err(FrameError::Unexpected {
                kind: Kind::Request,
                ..
            })
        ));
        a.release(&mut budget);
        // A Hello announcing more than a Hello's body.
        let mut b = Inbound::new(0);
        let long = HELLO_BODY_BYTES_MAX + 1;
        b.received(&header_only(Kind::Hello, long), 0, &mut budget);
        assert_eq!(
            b.next(&reader, &mut budget).unwrap_err(),
            FrameError::TooLong {
                kind: Kind::Hello,
                len: long,
                limit: HELLO_BODY_BYTES_MAX
            }
        );
        b.release(&mut budget);
        assert_eq!(budget.held(), 0);
        // A real Hello, then (trusted) a Request of any allowed length.
        let mut c = Inbound::new(0);
        c.received(&hello(), 0, &mut budget);
        assert_eq!(
            c.next(&reader, &mut budget).unwrap().unwrap().kind,
            Kind::Hello
        );
        c.trust();
        c.received(
            &header_only(Kind::Request, FRAME_BODY_BYTES_MAX),
            0,
            &mut budget,
        );
        assert!(c.next(&reader, &mut budget).unwrap().is_none());
    }

    #[test]
    fn a_header_costs_its_bytes_not_the_body_it_announces() {
        let reader = FrameReader::new(7);
        let mut budget = InputBudget::new(64 << 20);
        let mut conns: Vec<Inbound> = (0..150).map(Inbound::trusted).collect();
        for c in &mut conns {
            c.received(&header_only(Kind::Request, 4 << 20), 0, &mut budget);
            assert!(c.next(&reader, &mut budget).unwrap().is_none());
            assert!(c.buf.capacity() < 4096, "{}", c.buf.capacity());
        }
        assert!(budget.held() >= 150 * 32 && budget.held() < 150 * 4096);
    }

    #[test]
    fn the_budget_counts_partial_frames_and_frees_what_is_cut() {
        let reader = FrameReader::new(7);
        let mut budget = InputBudget::new(1000);
        let whole = frame(Kind::Request, &[5; 600]);
        let mut a = Inbound::trusted(0);
        let mut b = Inbound::trusted(0);
        a.received(&whole[..500], 1, &mut budget);
        b.received(&whole[..400], 1, &mut budget);
        // What is counted is the memory held, at least the bytes.
        assert_eq!(budget.held(), a.buf.capacity() + b.buf.capacity());
        assert!(budget.held() >= 900 && !budget.exhausted());
        assert!(a.next(&reader, &mut budget).unwrap().is_none());
        // Bytes still arriving after the limit are counted, not lost.
        b.received(&whole[400..], 2, &mut budget);
        assert!(budget.held() >= 500 + whole.len());
        assert!(budget.exhausted() && !budget.may_resume() && !budget.overflowing());
        let f = b.next(&reader, &mut budget).unwrap().unwrap();
        assert_eq!(f.body.len(), 600);
        assert_eq!(budget.held(), a.buf.capacity() + b.buf.capacity());
        assert!(!budget.exhausted() && budget.may_resume());
        a.release(&mut budget);
        b.release(&mut budget);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_frame_that_does_not_complete_in_time_is_overdue() {
        let reader = FrameReader::new(7);
        let mut budget = InputBudget::new(1 << 20);
        let one = frame(Kind::Admin, b"");
        let two = frame(Kind::Request, &[1; 100]);
        let mut c = Inbound::trusted(0);
        assert!(!c.overdue(100 * S, 10 * S), "nothing held, nothing overdue");
        c.received(&two[..50], 5 * S, &mut budget);
        assert!(!c.overdue(14 * S, 10 * S));
        // More bytes of the same frame do not restart its clock.
        c.received(&two[50..60], 14 * S, &mut budget);
        assert!(c.overdue(15 * S, 10 * S));
        // A completed frame clears it; one that starts after it restarts it.
        let mut d = Inbound::trusted(0);
        let mut bytes = one.clone();
        bytes.extend_from_slice(&two[..10]);
        d.received(&bytes, 20 * S, &mut budget);
        d.received(&[], 21 * S, &mut budget);
        assert!(d.next(&reader, &mut budget).unwrap().is_some());
        assert!(!d.overdue(29 * S, 10 * S) && d.overdue(30 * S, 10 * S));
        d.received(&two[10..], 29 * S, &mut budget);
        assert!(d.next(&reader, &mut budget).unwrap().is_some());
        assert!(!d.overdue(100 * S, 10 * S));
    }

    #[test]
    fn bytes_fed_whole_leave_the_budget_and_waiting_ones_are_not_overdue() {
        let mut budget = InputBudget::new(1 << 20);
        let mut c = Inbound::trusted(0);
        c.received(b"PING\r\nGET k\r\nSE", S, &mut budget);
        // The parser takes the first command only: the rest is pending.
        c.feed_with(&mut budget, |b| Ok::<_, ()>((b.len() - 11, false)))
            .unwrap();
        assert_eq!(c.held(), 11);
        assert!(
            c.overdue(12 * S, 10 * S),
            "a partial command runs the deadline"
        );
        // Whole commands waiting on the reader: no deadline.
        c.feed_with(&mut budget, |_| Ok::<_, ()>((0, true)))
            .unwrap();
        assert!(!c.overdue(100 * S, 10 * S));
        c.feed_with(&mut budget, |b| Ok::<_, ()>((b.len(), false)))
            .unwrap();
        assert_eq!((c.held(), c.frame_since), (0, None));
        assert_eq!(
            c.feed_with(&mut budget, |_| Err::<(usize, bool), _>(7)),
            Err(7)
        );
        c.release(&mut budget);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn idle_counts_from_the_last_bytes_and_zero_is_off() {
        let mut budget = InputBudget::new(1 << 20);
        let mut c = Inbound::new(S);
        assert!(!c.idle(1000 * S, 0));
        assert!(c.idle(61 * S, 60 * S));
        c.received(b"x", 50 * S, &mut budget);
        assert!(!c.idle(61 * S, 60 * S) && c.idle(110 * S, 60 * S));
    }
}
