//! The reader of a load connection wakes its writer (an answer made room in
//! the window, or the run ended early) through this, on one executor.
//! Notifying twice before the writer waits wakes it once: whatever one read
//! brought becomes one write.
//!
//! A flag and the waiting task's waker: a set flag is a wake-up not yet
//! taken. It needs nothing from the executor but the waker.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};

pub struct Wake {
    pending: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl Wake {
    pub fn new() -> Wake {
        Wake {
            pending: Cell::new(false),
            waiter: RefCell::new(None),
        }
    }

    pub fn notify(&self) {
        // Set already: a wake-up is pending, and it is enough.
        if !self.pending.replace(true) {
            if let Some(w) = self.waiter.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Resolves once `notify` was called since the last wait returned.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.pending.replace(false) {
                return Poll::Ready(());
            }
            let mut waiter = self.waiter.borrow_mut();
            if !waiter.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waiter = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}
