//! The io_uring of one executor thread, and the table of its operations in
//! flight.
//!
//! Each operation is submitted with an owner (`Rc<dyn Complete>`): the
//! table keeps that `Rc` until the operation's completion is reaped, so the
//! memory the kernel reads or writes (the owner's buffers, addresses) stays
//! alive however early the future that started it was dropped. The owner is
//! then told the result. What the owner does with it, and keeping its
//! memory unmoved meanwhile, is its business (`net`).

use std::io;
use std::rc::Rc;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

/// Submission queue entries; the completion queue has four times as many.
/// Blaster keeps at most a read and a write in flight per connection.
const RING_ENTRIES: u32 = 256;

/// `user_data` of entries whose completion needs nothing (cancellations).
const IGNORE: u64 = u64::MAX;

/// Told the result of an operation it owns, once the kernel is done with it.
pub trait Complete {
    /// `tag` is the one the operation was submitted with, `result` the
    /// completion's (a count, or a negative errno).
    fn complete(self: Rc<Self>, tag: u8, result: i32);
}

/// An operation in flight: its slot in the table and the slot's generation
/// (a cancellation names exactly this one, not a later user of the slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpId(u64);

impl OpId {
    fn new(index: u32, generation: u32) -> OpId {
        OpId(u64::from(generation) << 32 | u64::from(index))
    }

    fn index(self) -> usize {
        (self.0 as u32) as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

struct Slot {
    generation: u32,
    owner: Option<(Rc<dyn Complete>, u8)>,
}

/// A reaped completion, to hand to its owner outside the ring's borrow.
pub struct Completion {
    owner: Rc<dyn Complete>,
    tag: u8,
    result: i32,
}

impl Completion {
    pub fn deliver(self) {
        self.owner.complete(self.tag, self.result);
    }
}

pub struct Ring {
    ring: IoUring,
    ops: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
}

impl Ring {
    pub fn new() -> io::Result<Ring> {
        // Completions are only posted when the thread enters the kernel to
        // wait (defer_taskrun): none interrupts the tasks while they run.
        let ring = IoUring::builder()
            .setup_cqsize(RING_ENTRIES * 4)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(RING_ENTRIES * 4)
                    .build(RING_ENTRIES)
            })?;
        Ok(Ring {
            ring,
            ops: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
        })
    }

    /// Queues `entry`; its completion goes to `owner` with `tag`. It reaches
    /// the kernel with the next `wait` (or `submit`).
    ///
    /// # Safety
    /// Whatever the entry points at (buffers, addresses, and the file
    /// descriptor it names) must stay valid, and unmoved, as long as
    /// `owner` lives; the table keeps `owner` until the completion is
    /// reaped (or forever, see `Drop`).
    pub unsafe fn push(&mut self, entry: squeue::Entry, owner: Rc<dyn Complete>, tag: u8) -> OpId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.ops.push(Slot {
                    generation: 0,
                    owner: None,
                });
                u32::try_from(self.ops.len() - 1).expect("fewer than 2^32 operations")
            }
        };
        let slot = &mut self.ops[index as usize];
        assert!(slot.owner.is_none());
        slot.owner = Some((owner, tag));
        let id = OpId::new(index, slot.generation);
        self.in_flight += 1;
        // SAFETY: the caller keeps the entry's memory valid while `owner`
        // lives, and the table now holds `owner` until the completion.
        unsafe { self.push_entry(entry.user_data(id.0)) };
        id
    }

    /// Asks the kernel to end operation `op` early (if it has not ended):
    /// it completes, with `-ECANCELED` or its result, and is reaped as
    /// usual. Points at no memory.
    pub fn cancel(&mut self, op: OpId) {
        let live = self
            .ops
            .get(op.index())
            .is_some_and(|s| s.generation == op.generation() && s.owner.is_some());
        if live {
            let entry = opcode::AsyncCancel::new(op.0).build().user_data(IGNORE);
            // SAFETY: a cancellation names its target by `user_data`, a
            // number; it points at no memory.
            unsafe { self.push_entry(entry) };
        }
    }

    /// # Safety
    /// As `push`: the entry's memory stays valid until its completion.
    unsafe fn push_entry(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: passed on from the caller.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Full: hand the queued entries to the kernel, then retry.
            if let Err(e) = self.ring.submit() {
                assert!(transient(&e), "io_uring submit: {e}");
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Submits what is queued and sleeps until a completion arrives or
    /// `timeout` passes (`None`: no timeout; zero: just look): one
    /// `io_uring_enter`. (It always asks for completions: with deferred
    /// task work, only such an enter posts them.)
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves the completions waiting in the queue into `out`, freeing their
    /// slots; the owners ride along, to be told outside this borrow.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            if cqe.user_data() == IGNORE {
                continue;
            }
            let op = OpId(cqe.user_data());
            let slot = &mut self.ops[op.index()];
            assert_eq!(
                slot.generation,
                op.generation(),
                "a completion of a past op"
            );
            let (owner, tag) = slot.owner.take().expect("a completion of an op in flight");
            slot.generation = slot.generation.wrapping_add(1);
            self.free.push(op.index() as u32);
            self.in_flight -= 1;
            out.push(Completion {
                owner,
                tag,
                result: cqe.result(),
            });
        }
    }
}

/// Errors of `io_uring_enter` that only mean "look again": the wait timed
/// out, a signal came, or the completion queue is full (reaping frees it).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
    )
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The executor waits for every operation before it drops the ring;
        // one still in flight here (the kernel did not answer a cancel in
        // time) keeps its owner, and so its memory, forever: the kernel may
        // still write there after the ring is closed.
        for slot in &mut self.ops {
            if let Some(owner) = slot.owner.take() {
                std::mem::forget(owner);
            }
        }
    }
}
