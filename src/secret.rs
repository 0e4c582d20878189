//! Secrets: the cluster secret peers prove in their handshake
//! (`--cluster-secret-file`) and the password clients send
//! (`--requirepass-file`, blaster's `--password-file`).
//!
//! A [`Secret`] never shows itself: its `Debug` prints `<redacted>`, it has
//! no `Display`, and nothing in the crate formats its bytes, so it can sit
//! in configurations that are logged or printed in a panic. It is read once,
//! at start, from a file ([`Secret::read_file`]); a file that is empty,
//! unreadable, too long, or readable by every user of the host is refused
//! with the reason (the binaries exit 2).
//!
//! Comparing a candidate with a password ([`Secret::matches`]) takes the
//! same time whatever the candidate is: both go through HMAC-SHA-256 and
//! the MACs are compared in constant time (`hmac`'s `verify_slice`), so
//! neither the content nor the length leaks through timing.

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::constants::{CLUSTER_SECRET_BYTES_MIN, SECRET_BYTES_MAX};

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The key under which passwords are MACed for comparison (not a secret:
/// it only makes the comparison's time independent of the candidate).
const COMPARE_KEY: &[u8] = b"epaxos-fast password comparison v1";

/// Bytes that must not be shown; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a secret file holds, for the checks and the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// `--cluster-secret-file`: at least `CLUSTER_SECRET_BYTES_MIN` bytes.
    Cluster,
    /// A client password: any non-empty text.
    Password,
}

impl Secret {
    /// A secret from bytes in memory (tests, the simulator).
    pub fn new(bytes: &[u8]) -> Secret {
        Secret(bytes.into())
    }

    /// The bytes, for the MACs and the frames that carry them; never to
    /// be logged.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Reads the secret in `path`: its bytes with one trailing newline
    /// (`\n` or `\r\n`) cut. Refused, with a message naming the file and
    /// the flag: unreadable, empty, longer than `SECRET_BYTES_MAX`, shorter
    /// than `CLUSTER_SECRET_BYTES_MIN` for a cluster secret, or readable by
    /// every user of the host (mode `o+r`: `chmod 600` it).
    pub fn read_file(path: &std::path::Path, kind: SecretKind) -> Result<Secret, String> {
        use std::os::unix::fs::PermissionsExt;
        let name = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("{name}: {e}"))?;
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(format!(
                "{name} is readable by every user of this host (mode {:o}); \
                 make it private first: chmod 600 {name}",
                meta.permissions().mode() & 0o777
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
        let bytes = Self::trim(&bytes);
        if bytes.is_empty() {
            return Err(format!("{name} is empty"));
        }
        if bytes.len() > SECRET_BYTES_MAX {
            return Err(format!(
                "{name} holds {} bytes; a secret is at most {SECRET_BYTES_MAX}",
                bytes.len()
            ));
        }
        if kind == SecretKind::Cluster && bytes.len() < CLUSTER_SECRET_BYTES_MIN {
            return Err(format!(
                "{name} holds {} bytes; a cluster secret needs at least \
                 {CLUSTER_SECRET_BYTES_MIN} (its MACs cross the network, so a short one \
                 could be guessed offline): e.g. head -c 32 /dev/urandom | base64 > {name}",
                bytes.len()
            ));
        }
        Ok(Secret::new(bytes))
    }

    /// One trailing newline cut (what `echo` and editors add).
    fn trim(bytes: &[u8]) -> &[u8] {
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        bytes.strip_suffix(b"\r").unwrap_or(bytes)
    }

    /// Whether `candidate` is this secret, in time independent of it.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let mine = Self::compare_mac(&self.0).finalize().into_bytes();
        Self::compare_mac(candidate).verify_slice(&mine).is_ok()
    }

    fn compare_mac(bytes: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(COMPARE_KEY).expect("HMAC takes any key");
        mac.update(bytes);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(name: &str, bytes: &[u8], mode: u32) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("epaxos-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_secret_never_shows_in_debug() {
        let s = Secret::new(b"hunter2-hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(s)), "Some(<redacted>)");
    }

    #[test]
    fn the_trailing_newline_is_cut_once() {
        let p = file("nl", b"0123456789abcdef\r\n", 0o600);
        let s = Secret::read_file(&p, SecretKind::Cluster).unwrap();
        assert_eq!(s.expose(), b"0123456789abcdef");
        let p = file("nl2", b"pw\n\n", 0o600);
        let s = Secret::read_file(&p, SecretKind::Password).unwrap();
        assert_eq!(s.expose(), b"pw\n");
    }

    #[test]
    fn bad_secret_files_are_refused_with_the_reason() {
        let empty = file("empty", b"\n", 0o600);
        let e = Secret::read_file(&empty, SecretKind::Password).unwrap_err();
        assert!(e.contains("is empty"), "{e}");
        let open = file("open", b"0123456789abcdef", 0o644);
        let e = Secret::read_file(&open, SecretKind::Password).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        let short = file("short", b"short", 0o600);
        let e = Secret::read_file(&short, SecretKind::Cluster).unwrap_err();
        assert!(e.contains("at least 16"), "{e}");
        let missing = std::path::Path::new("/nonexistent/epaxos-secret");
        assert!(Secret::read_file(missing, SecretKind::Password).is_err());
    }

    #[test]
    fn passwords_match_only_themselves() {
        let s = Secret::new(b"open sesame");
        assert!(s.matches(b"open sesame"));
        assert!(!s.matches(b"open sesame "));
        assert!(!s.matches(b"open sesam"));
        assert!(!s.matches(b""));
    }
}
