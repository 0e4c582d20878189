//! The reader of a load connection wakes its writer (an answer made room in
//! the window, or the run ended early) through this, on one executor.
//! Notifying twice before the writer waits wakes it once: whatever one read
//! brought becomes one write.
//!
//! A glommio local channel of one slot: a full slot is a wake-up not yet
//! taken. (Blaster is a client: it keeps to glommio and the client library,
//! not the replica's runtime.)

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

pub struct Wake {
    tx: LocalSender<()>,
    rx: LocalReceiver<()>,
}

impl Wake {
    pub fn new() -> Wake {
        let (tx, rx) = local_channel::new_bounded(1);
        Wake { tx, rx }
    }

    pub fn notify(&self) {
        // Full: a wake-up is pending already, and it is enough.
        let _ = self.tx.try_send(());
    }

    /// Resolves once `notify` was called since the last wait returned.
    pub async fn wait(&self) {
        // Never `None`: the sender lives as long as the receiver.
        let _ = self.rx.recv().await;
    }
}
