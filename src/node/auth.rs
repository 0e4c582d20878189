//! Authentication, pure: the cluster secret's challenge-response in the
//! peer handshake, and client passwords.
//!
//! **Peers** (`--cluster-secret-file`). Three messages, each side drawing
//! a fresh nonce per connection (the runtime's; the simulator's are
//! seeded):
//!
//! ```text
//! dialer   -> acceptor  Hello      (auth bit, nonce_d, ids, digest, ...)
//! acceptor -> dialer    HelloOk    (auth bit, nonce_a, MAC_a)
//! dialer   -> acceptor  HelloProof (MAC_d)          or Refused, if MAC_a is wrong
//! MAC_x = HMAC-SHA-256(secret, label_x || nonce_d || nonce_a || dialer id ||
//!                      acceptor id || shard || config digest ||
//!                      dialer incarnation || acceptor incarnation)
//! ```
//!
//! The acceptor takes no frame but the proof (or a `Refused`) after its
//! HelloOk, and the connection becomes a peer's only once the proof
//! checks out; the dialer sends nothing before checking MAC_a. A
//! reflected MAC fails because the two directions use distinct labels (a
//! MAC_a an attacker makes an acceptor compute never passes as a MAC_d),
//! and a replayed one fails because both nonces are in both MACs: each
//! side's nonce is fresh, so a MAC recorded on another connection covers
//! another nonce. MACs are compared in constant time (`verify_slice`).
//! This authenticates the handshake only: nothing is encrypted, and a
//! connection taken over after it is not detected (use a private network
//! or a tunnel).
//!
//! **Clients** (`--requirepass-file`): [`super::Node::try_auth`] compares a
//! password in constant time ([`crate::secret::Secret::matches`]) and
//! counts failures per connection; the binary protocol's `Auth` frame and
//! the RESP front's `AUTH` both go through it.

use hmac::{KeyInit, Mac};

use super::{ConnError, ConnId, Node};
use crate::command::Batch;
use crate::constants::{AUTH_FAILURES_PER_CONNECTION_MAX, HANDSHAKE_NONCE_BYTES};
use crate::secret::{HmacSha256, Secret};
use crate::storage::Storage;
use crate::wire::client::{Code, MAC_BYTES, NO_AUTH_TEXT, REFUSED_AUTH};

/// One side's fresh random bytes for one handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nonce(pub [u8; HANDSHAKE_NONCE_BYTES]);

/// Which side a MAC proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Acceptor,
    Dialer,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Acceptor => b"epaxos-fast peer handshake: the acceptor proves the secret, v1",
            Side::Dialer => b"epaxos-fast peer handshake: the dialer proves the secret, v1",
        }
    }
}

/// What both MACs of one peer handshake cover.
#[derive(Clone, Copy, Debug)]
pub(super) struct Transcript {
    pub nonce_dialer: Nonce,
    pub nonce_acceptor: Nonce,
    pub dialer: u8,
    pub acceptor: u8,
    pub shard: u8,
    pub config_digest: u64,
    pub dialer_incarnation: u64,
    pub acceptor_incarnation: u64,
}

impl Transcript {
    fn mac_state(&self, secret: &Secret, side: Side) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(secret.expose()).expect("HMAC takes any key");
        let label = side.label();
        mac.update(&[label.len() as u8]);
        mac.update(label);
        mac.update(&self.nonce_dialer.0);
        mac.update(&self.nonce_acceptor.0);
        mac.update(&[self.dialer, self.acceptor, self.shard]);
        mac.update(&self.config_digest.to_le_bytes());
        mac.update(&self.dialer_incarnation.to_le_bytes());
        mac.update(&self.acceptor_incarnation.to_le_bytes());
        mac
    }

    /// `side`'s MAC over this transcript.
    pub fn mac(&self, secret: &Secret, side: Side) -> [u8; MAC_BYTES] {
        self.mac_state(secret, side).finalize().into_bytes().into()
    }

    /// Whether `mac` is `side`'s MAC over this transcript (constant time).
    pub fn verify(&self, secret: &Secret, side: Side, mac: &[u8]) -> bool {
        self.mac_state(secret, side).verify_slice(mac).is_ok()
    }
}

/// What became of a password a client sent (`Node::try_auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Right: the connection is authenticated.
    Accepted,
    /// Wrong; `close`: it was the connection's last allowed try
    /// (`AUTH_FAILURES_PER_CONNECTION_MAX`), and the node closes it after
    /// the answer.
    Wrong { close: bool },
    /// This replica has no password (`--requirepass-file`).
    NotConfigured,
}

impl<S: Storage> Node<S> {
    /// Whether clients must send a password before any command.
    pub fn password_required(&self) -> bool {
        self.cfg.password.is_some()
    }

    /// Whether `candidate` is this replica's password, compared in
    /// constant time; false when it has none. Changes no state: the RESP
    /// front's `AUTH` may use it with its own bookkeeping, or `try_auth`.
    pub fn check_password(&self, candidate: &[u8]) -> bool {
        self.cfg
            .password
            .as_ref()
            .is_some_and(|p| p.matches(candidate))
    }

    /// Whether `conn` may send commands: it authenticated, or no password
    /// is asked. False for a connection the node does not know.
    pub fn is_authenticated(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.authenticated)
    }

    /// `conn` proved the password some other way (the RESP front's `AUTH`
    /// or `HELLO 3 AUTH`, checked with `check_password`).
    pub fn set_authenticated(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.authenticated = true;
        }
    }

    /// Checks a password `conn` sent and records the outcome: a right one
    /// authenticates the connection, a wrong one counts against
    /// `AUTH_FAILURES_PER_CONNECTION_MAX`.
    pub fn try_auth(&mut self, conn: ConnId, candidate: &[u8]) -> AuthOutcome {
        if self.cfg.password.is_none() {
            return AuthOutcome::NotConfigured;
        }
        let right = self.check_password(candidate);
        // A closing connection takes no more guesses.
        let Some(c) = self.conns.get_mut(&conn).filter(|c| !c.closing) else {
            return AuthOutcome::Wrong { close: true };
        };
        if right {
            c.authenticated = true;
            return AuthOutcome::Accepted;
        }
        c.auth_failures += 1;
        AuthOutcome::Wrong {
            close: c.auth_failures >= AUTH_FAILURES_PER_CONNECTION_MAX,
        }
    }

    /// A client's `Auth` frame: answered with a Response of client id and
    /// request 0, `Done` or `Error`; the last allowed wrong one also
    /// closes the connection (after the answer).
    pub(super) fn on_auth(&mut self, conn: ConnId, password: &[u8]) -> Result<(), ConnError> {
        match self.try_auth(conn, password) {
            AuthOutcome::Accepted => self.respond(conn, 0, 0, Code::Done, b""),
            AuthOutcome::NotConfigured => {
                let why = "this replica asks no password (no --requirepass-file)";
                self.respond(conn, 0, 0, Code::Error, why.as_bytes());
            }
            AuthOutcome::Wrong { close } => {
                let why = format!("{REFUSED_AUTH}: wrong password");
                self.respond(conn, 0, 0, Code::Error, why.as_bytes());
                if close {
                    self.close_conn(conn);
                    return Err(ConnError::Refused(format!(
                        "{REFUSED_AUTH}: a client sent {AUTH_FAILURES_PER_CONNECTION_MAX} wrong \
                        passwords; closing its connection"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Every command of a request from a connection that has not
    /// authenticated is answered `NoAuth`, and none runs.
    pub(super) fn refuse_unauthenticated(&mut self, conn: ConnId, batch: &Batch) {
        for cmd in batch.iter() {
            self.answer_no_auth(conn, cmd.client, cmd.request);
        }
    }

    pub(super) fn answer_no_auth(&mut self, conn: ConnId, client: u64, request: u64) {
        self.respond(conn, client, request, Code::NoAuth, NO_AUTH_TEXT.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript() -> Transcript {
        Transcript {
            nonce_dialer: Nonce([1; HANDSHAKE_NONCE_BYTES]),
            nonce_acceptor: Nonce([2; HANDSHAKE_NONCE_BYTES]),
            dialer: 0,
            acceptor: 1,
            shard: 0,
            config_digest: 77,
            dialer_incarnation: 5,
            acceptor_incarnation: 6,
        }
    }

    #[test]
    fn a_mac_proves_one_side_of_one_transcript_under_one_secret() {
        let key = Secret::new(b"0123456789abcdef");
        let t = transcript();
        let a = t.mac(&key, Side::Acceptor);
        assert!(t.verify(&key, Side::Acceptor, &a));
        // Reflected: the acceptor's MAC is no dialer's proof.
        assert!(!t.verify(&key, Side::Dialer, &a));
        // Another secret.
        assert!(!t.verify(&Secret::new(b"0123456789abcdeF"), Side::Acceptor, &a));
        // Replayed on a connection with another nonce.
        let other = Transcript {
            nonce_acceptor: Nonce([3; HANDSHAKE_NONCE_BYTES]),
            ..t
        };
        assert!(!other.verify(&key, Side::Acceptor, &a));
        assert!(!t.verify(&key, Side::Acceptor, &a[..31]));
    }
}
