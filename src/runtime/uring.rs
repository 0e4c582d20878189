//! The shard's io_uring: one ring per shard thread, with a ring of provided
//! receive buffers that every multishot receive on the shard draws from.
//!
//! Nothing here knows about connections or the node: it submits entries,
//! hands completions back, and lends and takes back receive buffers. What an
//! entry's `user_data` means is the shard loop's business (`Op`).

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, squeue, types, IoUring};

/// Buffer group id of the shard's provided receive buffers.
pub const RECV_GROUP: u16 = 0;

/// What a completion is for: the operation, and the slot it belongs to
/// (a connection, a log write), packed into `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    pub slot: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    Accept = 1,
    Recv,
    Send,
    Connect,
    /// The read of the shard's eventfd (cross-shard wake-up).
    Wake,
    /// A group's write to the log file.
    LogWrite,
    /// Space allocated ahead in the log file (fallocate, then fdatasync).
    LogAllocate,
    LogAllocateSync,
    /// Cancellations and other entries whose completion needs no action.
    Ignore,
    /// The multishot accept of the RESP listener (`--resp`).
    AcceptResp,
}

impl Op {
    pub fn new(kind: OpKind, slot: u32) -> Op {
        Op { kind, slot }
    }

    pub fn pack(self) -> u64 {
        (self.kind as u64) << 32 | u64::from(self.slot)
    }

    fn unpack(data: u64) -> Op {
        let kind = match data >> 32 {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::Send,
            4 => OpKind::Connect,
            5 => OpKind::Wake,
            6 => OpKind::LogWrite,
            7 => OpKind::LogAllocate,
            8 => OpKind::LogAllocateSync,
            10 => OpKind::AcceptResp,
            _ => OpKind::Ignore,
        };
        Op {
            kind,
            slot: data as u32,
        }
    }
}

/// One completion, copied out of the completion queue.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    pub op: Op,
    pub result: i32,
    pub flags: u32,
}

impl Done {
    /// More completions will come for this (multishot) entry.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer this receive filled, if it used one.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    pub fn error(&self) -> Option<io::Error> {
        (self.result < 0).then(|| io::Error::from_raw_os_error(-self.result))
    }
}

pub struct Ring {
    ring: IoUring,
    bufs: BufRing,
    /// Entries pushed since the last submission.
    pending: usize,
    /// Kernel entries (`io_uring_enter`), for the counters.
    pub enters: u64,
}

impl Ring {
    pub fn new(entries: u32, buffers: u16, buffer_bytes: usize) -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))?;
        let bufs = BufRing::new(&ring, buffers, buffer_bytes)?;
        Ok(Ring {
            ring,
            bufs,
            pending: 0,
            enters: 0,
        })
    }

    /// Queues one entry, submitting first if the queue is full.
    ///
    /// # Safety
    /// Whatever the entry points at (buffers, addresses) must stay valid
    /// and unmoved until its completion has been reaped.
    pub unsafe fn push(&mut self, entry: squeue::Entry, op: Op) {
        let entry = entry.user_data(op.pack());
        loop {
            // SAFETY: the caller keeps the entry's memory valid.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.pending += 1;
                return;
            }
            // Full: hand what is queued to the kernel and try again.
            self.enters += 1;
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    panic!("io_uring submit failed: {e}");
                }
                std::thread::yield_now();
            }
        }
    }

    /// Submits what is queued and waits up to `timeout` for at least one
    /// completion (not at all if `timeout` is zero or completions are
    /// ready): one kernel entry.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ready = !self.ring.completion().is_empty();
        if (ready || timeout.is_zero()) && self.pending == 0 {
            return Ok(());
        }
        self.pending = 0;
        self.enters += 1;
        let r = if ready || timeout.is_zero() {
            self.ring.submit()
        } else {
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether completions are waiting to be reaped, after a kernel entry
    /// that posts what finished (with COOP_TASKRUN, completions are posted
    /// only when this thread enters the kernel): for a spinning shard.
    pub fn poll(&mut self) -> bool {
        self.pending = 0;
        self.enters += 1;
        let _ = self.ring.submit();
        !self.ring.completion().is_empty()
    }

    /// Moves the waiting completions into `out`.
    pub fn reap(&mut self, out: &mut Vec<Done>) {
        for cqe in self.ring.completion() {
            out.push(Done {
                op: Op::unpack(cqe.user_data()),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    /// The `len` bytes a receive put in buffer `bid`.
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        self.bufs.get(bid, len)
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.bufs.recycle(bid);
    }
}

/// A ring of provided buffers (IORING_REGISTER_PBUF_RING): the kernel takes
/// one for each receive completion, the shard copies the bytes out and gives
/// it back at once, so the memory for receiving is fixed per shard, however
/// many connections it holds.
struct BufRing {
    /// The ring of entries, page-aligned (mmap), shared with the kernel.
    ring: *mut types::BufRingEntry,
    ring_bytes: usize,
    entries: u16,
    /// The buffers themselves, `buffer_bytes` each.
    memory: Vec<u8>,
    buffer_bytes: usize,
    /// Our copy of the tail; the kernel reads the shared one.
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring, entries: u16, buffer_bytes: usize) -> io::Result<BufRing> {
        assert!(entries.is_power_of_two());
        let ring_bytes = usize::from(entries) * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut bufs = BufRing {
            ring: ptr.cast(),
            ring_bytes,
            entries,
            memory: vec![0; usize::from(entries) * buffer_bytes],
            buffer_bytes,
            tail: 0,
        };
        // SAFETY: the mapping lives as long as `bufs`. `Ring` declares
        // `ring` before `bufs`, so the ring is closed before the mapping is
        // unmapped, and a shard drops its ring only once no receive is in
        // flight (`ShardLoop::shut_down`; otherwise it leaks it).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ptr as u64, entries, RECV_GROUP, 0)?;
        }
        for bid in 0..entries {
            bufs.put(bid);
        }
        bufs.publish();
        Ok(bufs)
    }

    fn get(&self, bid: u16, len: usize) -> &[u8] {
        let at = usize::from(bid) * self.buffer_bytes;
        &self.memory[at..at + len.min(self.buffer_bytes)]
    }

    fn put(&mut self, bid: u16) {
        let mask = self.entries - 1;
        // SAFETY: the index is masked into the mapping.
        let entry = unsafe { &mut *self.ring.add(usize::from(self.tail & mask)) };
        let at = usize::from(bid) * self.buffer_bytes;
        entry.set_addr(self.memory[at..].as_ptr() as u64);
        entry.set_len(self.buffer_bytes as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the entries put so far visible to the kernel.
    fn publish(&mut self) {
        // SAFETY: the shared tail is the u16 that overlays the first
        // entry's `resv` field (offset 14), per the kernel's io_uring_buf_ring.
        let tail = unsafe { &*(self.ring.cast::<u8>().add(14).cast::<AtomicU16>()) };
        tail.store(self.tail, Ordering::Release);
    }

    fn recycle(&mut self, bid: u16) {
        self.put(bid);
        self.publish();
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this size, and the
        // ring using it was closed first (field order in `Ring`) with no
        // receive in flight.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_bytes);
        }
    }
}
