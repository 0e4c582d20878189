//! A one-waiter wake-up flag for tasks of one executor.
//!
//! Producers (readers, the shard's turn) set it; the one consumer (the turn
//! loop, a connection's writer) waits for it. Notifying twice before the
//! consumer runs wakes it once: that is what folds everything that arrived
//! in one loop turn into one batch, or one write.

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Resolves once `notify` was called since the last wait returned.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}
