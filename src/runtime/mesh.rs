//! The cross-core mesh: one lock-free queue per ordered pair of shards, and
//! one eventfd per shard that wakes it when a queue towards it fills.
//!
//! A sender pushes, then writes the receiver's eventfd only if nobody did
//! since the receiver last woke (`armed`), so a burst costs one write. The
//! receiver clears `armed` before it drains its queues, so a message pushed
//! after a drain always finds it cleared and wakes the receiver again.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::SegQueue;

use crate::node::Cross;

pub struct Mesh {
    shards: usize,
    /// `queues[from * shards + to]`.
    queues: Vec<SegQueue<Cross>>,
    wakes: Vec<Wake>,
}

struct Wake {
    fd: OwnedFd,
    /// An eventfd write is pending (the receiver has not woken for it yet).
    armed: AtomicBool,
}

impl Mesh {
    pub fn new(shards: usize) -> std::io::Result<Mesh> {
        let mut wakes = Vec::with_capacity(shards);
        for _ in 0..shards {
            // SAFETY: eventfd returns a new descriptor or -1.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            wakes.push(Wake {
                // SAFETY: `fd` is a fresh descriptor nothing else owns.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                armed: AtomicBool::new(false),
            });
        }
        Ok(Mesh {
            shards,
            queues: (0..shards * shards).map(|_| SegQueue::new()).collect(),
            wakes,
        })
    }

    /// Shard `to`'s eventfd, which it reads on its ring.
    pub fn wake_fd(&self, to: usize) -> i32 {
        self.wakes[to].fd.as_raw_fd()
    }

    /// Queues `msgs` from shard `from` to shard `to` and wakes it.
    pub fn send(&self, from: usize, to: usize, msgs: impl Iterator<Item = Cross>) {
        let q = &self.queues[from * self.shards + to];
        let mut any = false;
        for m in msgs {
            q.push(m);
            any = true;
        }
        let wake = &self.wakes[to];
        // SeqCst here and in `woken`: the push, then this read of `armed`,
        // must not pass the receiver's clear, then its drain.
        if any && !wake.armed.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd.
            let _ = unsafe {
                libc::write(
                    wake.fd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
    }

    /// Shard `to` woke for its eventfd: later messages wake it again.
    pub fn woken(&self, to: usize) {
        self.wakes[to].armed.swap(false, Ordering::SeqCst);
    }

    /// Hands every message queued for shard `to` to `f`.
    pub fn drain(&self, to: usize, mut f: impl FnMut(Cross)) {
        for from in 0..self.shards {
            if from == to {
                continue;
            }
            let q = &self.queues[from * self.shards + to];
            while let Some(m) = q.pop() {
                f(m);
            }
        }
    }

    /// Whether anything is queued for shard `to`.
    pub fn pending(&self, to: usize) -> bool {
        (0..self.shards).any(|from| !self.queues[from * self.shards + to].is_empty())
    }
}
