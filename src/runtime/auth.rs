//! The runtime's part of authentication: fresh nonces for the nodes'
//! handshakes, and a rate limit on logging refused authentications.
//!
//! Nonces: each shard keys an HMAC-SHA-256 with 32 bytes read from
//! `/dev/urandom` at start and MACs a counter, one connection at a time
//! (a deterministic generator under a random key: unpredictable to anyone
//! without the key, never repeated, and one `read` at start instead of one
//! system call per connection). The node only takes them (`node::auth`).

use std::io::Read;

use hmac::{KeyInit, Mac};

use crate::constants::{
    AUTH_FAILURE_LOGS_PER_WINDOW, AUTH_FAILURE_LOG_WINDOW_MS, HANDSHAKE_NONCE_BYTES,
};
use crate::node::Nonce;
use crate::secret::HmacSha256;

/// Unpredictable nonces, one per connection.
pub(super) struct Nonces {
    key: HmacSha256,
    drawn: u64,
}

impl Nonces {
    /// Keyed from the kernel's generator; an error if it cannot be read
    /// (a handshake with predictable nonces could be replayed).
    pub(super) fn new() -> Result<Nonces, String> {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(|e| format!("cannot read /dev/urandom for handshake nonces: {e}"))?;
        Ok(Nonces {
            key: HmacSha256::new_from_slice(&key).expect("HMAC takes any key"),
            drawn: 0,
        })
    }

    pub(super) fn next(&mut self) -> Nonce {
        self.drawn += 1;
        let mut mac = self.key.clone();
        mac.update(&self.drawn.to_le_bytes());
        let out = mac.finalize().into_bytes();
        let mut nonce = Nonce::default();
        nonce.0.copy_from_slice(&out[..HANDSHAKE_NONCE_BYTES]);
        nonce
    }
}

/// At most `AUTH_FAILURE_LOGS_PER_WINDOW` refused authentications logged
/// per `AUTH_FAILURE_LOG_WINDOW_MS`; the rest are counted.
#[derive(Debug, Default)]
pub(super) struct AuthLog {
    window_start_ms: Option<u64>,
    logged: u32,
    suppressed: u64,
}

impl AuthLog {
    /// A refusal at `now_ms`: whether to log it, and how many were left
    /// unlogged in the window that ended (to say so once).
    pub(super) fn allow(&mut self, now_ms: u64) -> (bool, u64) {
        let mut ended = 0;
        let fresh = self
            .window_start_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= AUTH_FAILURE_LOG_WINDOW_MS);
        if fresh {
            ended = std::mem::take(&mut self.suppressed);
            self.window_start_ms = Some(now_ms);
            self.logged = 0;
        }
        if self.logged < AUTH_FAILURE_LOGS_PER_WINDOW {
            self.logged += 1;
            return (true, ended);
        }
        self.suppressed += 1;
        (false, ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_do_not_repeat() {
        let mut n = Nonces::new().unwrap();
        let (a, b) = (n.next(), n.next());
        assert_ne!(a, b);
        assert_ne!(Nonces::new().unwrap().next(), a);
    }

    #[test]
    fn a_flood_of_refusals_is_logged_a_few_times_a_window() {
        let mut log = AuthLog::default();
        let logged = (0..100).filter(|_| log.allow(1_000).0).count();
        assert_eq!(logged, AUTH_FAILURE_LOGS_PER_WINDOW as usize);
        let (again, suppressed) = log.allow(1_000 + AUTH_FAILURE_LOG_WINDOW_MS);
        assert!(again);
        assert_eq!(suppressed, 100 - u64::from(AUTH_FAILURE_LOGS_PER_WINDOW));
    }
}
