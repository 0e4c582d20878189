//! The handshake: every connection opens with a Hello saying who calls.
//! A peer's shard s, which then sends protocol messages on it, or a client.
//! A mismatch (replica or shard count, shard, id, the digest of the cluster
//! configuration) is refused with a text naming both values, and the
//! connection closes.
//!
//! Two live processes claiming one replica id. Each shard remembers, per
//! replica id, the incarnation (random, drawn at the process's start) of
//! the accepted connection that holds it (`Claim::holder`), and the
//! incarnation its own link to that replica's advertised address answered
//! with (`Claim::at_address`). The rule: replica r is the process that
//! answers at r's advertised address. A Hello claiming r with another
//! incarnation than the holder's, while the holder's connection is open:
//! - accepted, replacing the holder (whose connection is closed), if the
//!   newcomer is the process at r's address: a restart whose old
//!   connection still looks open;
//! - refused as a duplicate (`REFUSED_DUPLICATE`: the newcomer exits) if a
//!   link that came up after this newcomer's first Hello found the holder
//!   at r's address;
//! - otherwise refused for now (`REFUSED_CONTESTED`: it tries again), and
//!   the link to r is opened afresh (`Output::Reprobe`) to learn who
//!   answers there now; an old holder whose connection closes meanwhile
//!   makes room at once.
//!
//! So a newcomer exits only on seeing the holder at the address after it
//! started, and only one process at a time can answer at an address: two
//! live processes cannot both be told to exit, and a restarted replica is
//! refused only until one reconnection of the link shows it at its address.
//!
//! With a cluster secret the handshake has a third message (`auth`): a
//! peer's Hello is answered with a HelloOk carrying this side's nonce and
//! MAC, and the connection becomes the peer's, claiming its replica id,
//! only once its `HelloProof` checks out; an unproven process can neither
//! send protocol messages nor contest an id.

use bytes::BytesMut;

use super::auth::{Nonce, Side, Transcript};
use super::config::Topology;
use super::{ConnError, ConnId, Node, NodeConfig, Output, Peer};
use crate::protocol::ReplicaId;
use crate::storage::Storage;
use crate::wire::client::{
    decode_hello_answer, decode_hello_with_text, HelloBody, Refusal, Role, AUTH_CLUSTER_SECRET,
    AUTH_PASSWORD, HELLO_PEERS_TEXT_BYTES_MAX, REFUSED_AUTH, REFUSED_CONFIG, REFUSED_CONTESTED,
    REFUSED_DUPLICATE, REFUSED_TEXT_BYTES_MAX,
};
use crate::wire::{Frame, FrameEncoder, FrameError, Kind};

/// How a link's Hello was answered (`Node::on_link_answer`).
#[derive(Clone, Debug)]
pub enum LinkAnswer {
    /// Taken: the peer's view. With a cluster secret, the proof to send
    /// before anything else was appended to the caller's buffer.
    Accepted(HelloBody),
    /// The peer refused the Hello; its text.
    Refused(String),
    /// This side refuses the peer (its proof of the cluster secret is
    /// wrong, or one side has no secret); why. A `Refused` frame saying so
    /// was appended to the caller's buffer: write it, then close.
    Failed(String),
}

/// What a shard knows of who holds one replica id (see the module docs).
#[derive(Clone, Debug, Default)]
pub(super) struct Claim {
    /// The accepted connection from that replica whose Hello was taken,
    /// while it is open, and its incarnation.
    holder: Option<(ConnId, u64)>,
    /// The incarnation this shard's own link to the replica's advertised
    /// address answered with, while that link is up.
    pub(super) at_address: Option<u64>,
    /// A newcomer refused while the holder's connection is open.
    challenger: Option<u64>,
    /// The link came up since the challenger's first Hello.
    probed: bool,
    /// Why this replica refused our link for its configuration, until the
    /// link comes up (`Node::link_refused`).
    pub(super) config_refusal: Option<String>,
}

impl NodeConfig {
    /// The cluster configuration every peer must share.
    pub fn topology(&self) -> Topology {
        Topology {
            cluster_id: self.cluster_id,
            peers: self.peers.clone(),
            shards: self.shards,
        }
    }

    /// This shard's Hello, as a replica: what its links open with, and what
    /// it answers every accepted Hello with.
    pub fn hello(&self) -> HelloBody {
        let auth = if self.cluster_secret.is_some() {
            AUTH_CLUSTER_SECRET
        } else {
            0
        };
        HelloBody {
            role: Role::Peer as u8,
            replica: self.replica.0,
            replicas: self.replicas as u8,
            shards: self.shards as u8,
            shard: self.shard as u8,
            auth,
            config_digest: self.topology().digest().into(),
            incarnation: self.incarnation.into(),
            ..HelloBody::default()
        }
    }

    /// The header fields of every frame this shard sends.
    pub fn encoder(&self) -> FrameEncoder {
        FrameEncoder {
            cluster_id: self.cluster_id,
            sender: self.replica.0,
            shard: self.shard as u8,
        }
    }

    /// This shard's Hello frame, with its peer list, appended to `buf`;
    /// `nonce` is the dialer's challenge (sent only with a cluster secret).
    pub fn encode_hello(&self, buf: &mut BytesMut, nonce: Nonce) {
        let mut body = self.hello();
        if self.cluster_secret.is_some() {
            body.nonce = nonce.0;
        }
        let text = self.topology().peers_text();
        let mut cut = text.len().min(HELLO_PEERS_TEXT_BYTES_MAX);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        self.encoder().frame(buf, Kind::Hello, |b| {
            b.extend_from_slice(zerocopy::IntoBytes::as_bytes(&body));
            b.extend_from_slice(&text.as_bytes()[..cut]);
        });
    }
}

impl<S: Storage> Node<S> {
    pub(super) fn on_hello(&mut self, conn: ConnId, frame: Frame) -> Result<(), ConnError> {
        if frame.kind != Kind::Hello {
            return Err(FrameError::Unexpected {
                kind: frame.kind,
                reason: "the first frame must be a Hello",
            }
            .into());
        }
        let (hello, text) = decode_hello_with_text(Kind::Hello, &frame.body)?;
        let peer = hello.role == Role::Peer as u8;
        let stopped = match &self.failed {
            // A stopped shard takes no peer: it votes on nothing, and a
            // refused link makes the peer park its commits for it.
            Some(why) if peer => Err(why.clone()),
            _ => Ok(()),
        };
        // With a cluster secret the id is claimed once the proof checks
        // out: an unproven Hello must not displace or contest a holder.
        let proves = peer && self.cfg.cluster_secret.is_some();
        let checked = stopped
            .and_then(|()| self.check_hello(&hello, text))
            .and_then(|()| self.check_auth(&hello))
            .and_then(|()| self.check_room(&hello))
            .and_then(|()| {
                if proves {
                    Ok(())
                } else {
                    self.claim(conn, &hello)
                }
            });
        if let Err(why) = checked {
            return self.refuse(conn, why);
        }
        // The answer is this replica's own view (role peer: a replica),
        // whoever asked; clients read the replica and shard counts from it.
        let mut body = self.cfg.hello();
        if peer {
            // How much of the caller's space this shard holds: a caller
            // that started empty refuses to take part if it is not nothing
            // (`Node::peer_knows`).
            let known = self.core.highest_slot_known(ReplicaId(hello.replica));
            body.known_slot = known.into();
        } else {
            body.auth = if self.cfg.password.is_some() {
                AUTH_PASSWORD
            } else {
                0
            };
        }
        if let (true, Some(secret), Some(c)) =
            (proves, &self.cfg.cluster_secret, self.conns.get_mut(&conn))
        {
            body.nonce = c.nonce.0;
            let t = transcript(&self.cfg, &hello, c.nonce);
            body.mac = t.mac(secret, Side::Acceptor);
            c.awaiting_proof = Some(hello);
        }
        self.queue_conn(conn, Kind::HelloOk, zerocopy::IntoBytes::as_bytes(&body));
        if proves {
            return Ok(()); // it is a peer once its proof comes
        }
        let who = if peer {
            Peer::Replica(ReplicaId(hello.replica))
        } else {
            Peer::Client
        };
        self.admit(conn, who);
        Ok(())
    }

    /// The connection's handshake is complete: it is `who`'s.
    fn admit(&mut self, conn: ConnId, who: Peer) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.who = who;
            self.clients += usize::from(who == Peer::Client);
        }
    }

    /// Refuses `conn`'s handshake: a `Refused` frame saying why, then the
    /// connection closes.
    fn refuse(&mut self, conn: ConnId, why: String) -> Result<(), ConnError> {
        let text = &why.as_bytes()[..why.len().min(REFUSED_TEXT_BYTES_MAX)];
        self.queue_conn(conn, Kind::Refused, text);
        self.close_conn(conn);
        Err(ConnError::Refused(why))
    }

    /// The frame after the HelloOk on a connection whose peer must prove
    /// the cluster secret: its `HelloProof` (then it claims its replica id
    /// as any peer does), or its `Refused` (it found our MAC wrong).
    /// Anything else, a protocol message included, closes the connection.
    pub(super) fn on_hello_proof(&mut self, conn: ConnId, frame: Frame) -> Result<(), ConnError> {
        let (Some(c), Some(secret)) = (self.conns.get(&conn), &self.cfg.cluster_secret) else {
            return Ok(());
        };
        let Some(hello) = c.awaiting_proof else {
            return Ok(());
        };
        let r = hello.replica;
        match frame.kind {
            Kind::HelloProof => {
                let t = transcript(&self.cfg, &hello, c.nonce);
                if !t.verify(secret, Side::Dialer, &frame.body) {
                    return self.refuse(
                        conn,
                        format!(
                            "{REFUSED_AUTH}: replica {r}'s proof of the cluster secret is wrong: \
                            the two replicas were given different --cluster-secret-file contents"
                        ),
                    );
                }
                if let Err(why) = self.claim(conn, &hello) {
                    return self.refuse(conn, why);
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.awaiting_proof = None;
                }
                self.admit(conn, Peer::Replica(ReplicaId(r)));
                Ok(())
            }
            Kind::Refused => {
                self.close_conn(conn);
                Err(ConnError::Refused(format!(
                    "{REFUSED_AUTH}: replica {r} refused this replica's proof of the cluster \
                    secret: {}",
                    String::from_utf8_lossy(&frame.body)
                )))
            }
            kind => Err(FrameError::Unexpected {
                kind,
                reason: "a peer's frame before its proof of the cluster secret",
            }
            .into()),
        }
    }

    /// This shard's Hello on a new link to `peer`, appended to `buf`, with
    /// `nonce` (fresh and random: the driver's) as its challenge.
    pub fn link_hello(&mut self, peer: ReplicaId, nonce: Nonce, buf: &mut BytesMut) {
        self.links[peer.index()].nonce = nonce;
        self.cfg.encode_hello(buf, nonce);
    }

    /// The answer to our link's Hello to `peer` (its first frame). With a
    /// cluster secret, checks the peer's MAC and appends to `reply` what to
    /// send back: our proof, or a `Refused` saying why the peer's failed.
    /// An `Err` is a frame that is neither a HelloOk nor a Refused.
    pub fn on_link_answer(
        &mut self,
        peer: ReplicaId,
        frame: &Frame,
        reply: &mut BytesMut,
    ) -> Result<LinkAnswer, FrameError> {
        let ok = match decode_hello_answer(frame.kind, &frame.body)? {
            Ok(ok) => ok,
            Err(why) => return Ok(LinkAnswer::Refused(why)),
        };
        let p = peer.0;
        let theirs = ok.auth & AUTH_CLUSTER_SECRET != 0;
        let why = match (&self.cfg.cluster_secret, theirs) {
            (None, false) => return Ok(LinkAnswer::Accepted(ok)),
            (None, true) => format!(
                "{REFUSED_AUTH}: replica {p} proves a cluster secret and this replica has none \
                (--cluster-secret-file): give every replica the same secret file"
            ),
            (Some(_), false) => format!(
                "{REFUSED_AUTH}: replica {p} does not prove the cluster secret: it runs without \
                --cluster-secret-file; give every replica the same secret file"
            ),
            (Some(secret), true) => {
                let t = Transcript {
                    nonce_dialer: self.links[peer.index()].nonce,
                    nonce_acceptor: Nonce(ok.nonce),
                    dialer: self.cfg.replica.0,
                    acceptor: p,
                    shard: self.cfg.shard as u8,
                    config_digest: self.cfg.topology().digest(),
                    dialer_incarnation: self.cfg.incarnation,
                    acceptor_incarnation: ok.incarnation.get(),
                };
                if t.verify(secret, Side::Acceptor, &ok.mac) {
                    let mac = t.mac(secret, Side::Dialer);
                    self.enc
                        .frame(reply, Kind::HelloProof, |b| b.extend_from_slice(&mac));
                    return Ok(LinkAnswer::Accepted(ok));
                }
                format!(
                    "{REFUSED_AUTH}: replica {p} did not prove this replica's cluster secret: \
                    the two replicas were given different --cluster-secret-file contents"
                )
            }
        };
        let text = &why.as_bytes()[..why.len().min(REFUSED_TEXT_BYTES_MAX)];
        self.enc
            .frame(reply, Kind::Refused, |b| b.extend_from_slice(text));
        Ok(LinkAnswer::Failed(why))
    }

    /// A peer's Hello and this replica agree on whether a cluster secret
    /// is proven (a client proves none; its password comes in `Auth`).
    fn check_auth(&self, h: &HelloBody) -> Result<(), String> {
        if h.role != Role::Peer as u8 {
            return Ok(());
        }
        let r = h.replica;
        match (
            self.cfg.cluster_secret.is_some(),
            h.auth & AUTH_CLUSTER_SECRET != 0,
        ) {
            (true, false) => Err(format!(
                "{REFUSED_AUTH}: replica {r} sent no proof of the cluster secret and this \
                replica requires one (--cluster-secret-file): give every replica the same \
                secret file"
            )),
            (false, true) => Err(format!(
                "{REFUSED_AUTH}: replica {r} proves a cluster secret and this replica has none \
                (--cluster-secret-file): give every replica the same secret file"
            )),
            _ => Ok(()),
        }
    }

    /// No more bytes are queued for `conn`, and the driver closes it
    /// (`Output::Close`): at once for a client that stopped reading (what is
    /// queued is dropped); after writing the answer for a refused handshake.
    pub(super) fn close_conn(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.closing {
                c.closing = true;
                self.outputs.push_back(Output::Close(conn));
            }
        }
    }

    /// A Hello from replica `h.replica` that passed the checks: it takes
    /// the replica id, or is refused as a second process claiming it (see
    /// the module docs).
    fn claim(&mut self, conn: ConnId, h: &HelloBody) -> Result<(), String> {
        if h.role != Role::Peer as u8 {
            return Ok(());
        }
        let r = usize::from(h.replica);
        let x = h.incarnation.get();
        let claim = &mut self.claims[r];
        let Some((old, y)) = claim.holder.filter(|&(old, _)| old != conn) else {
            claim.holder = Some((conn, x));
            claim.challenger = None;
            return Ok(());
        };
        if y == x || claim.at_address == Some(x) {
            // The same process on a new connection (its old one is dead on
            // its side), or the one at the replica's address: the old
            // connection is stale, or a duplicate's, and closes.
            claim.holder = Some((conn, x));
            claim.challenger = None;
            if y != x {
                tracing::error!(
                    "replica {r}: the process at its advertised address (incarnation {x:016x}, \
                     connected from {}) replaces incarnation {y:016x} (connected from {}), \
                     whose connection closes",
                    self.remote(conn),
                    self.remote(old)
                );
            }
            self.close_conn(old);
            return Ok(());
        }
        let fresh = claim.challenger == Some(x) && claim.probed;
        if claim.challenger != Some(x) {
            claim.challenger = Some(x);
            claim.probed = false;
            // Even a link not up yet is opened afresh: an answer to one
            // opened before this Hello could come from a process gone since.
            self.outputs
                .push_back(Output::Reprobe(ReplicaId(h.replica)));
        }
        let (here, there) = (self.remote(conn), self.remote(old));
        if fresh && self.claims[r].at_address == Some(y) {
            return Err(format!(
                "{REFUSED_DUPLICATE} {r}: replica {r} is served by the process at its advertised \
                 address (incarnation {y:016x}, connected from {there}); this process \
                 (incarnation {x:016x}, connected from {here}) is a second one started with \
                 --id {r}"
            ));
        }
        Err(format!(
            "{REFUSED_CONTESTED} {r}: a connection from {there} (incarnation {y:016x}) holds \
             replica id {r} and is open; this one from {here} (incarnation {x:016x}) waits \
             until it closes or until replica {r}'s advertised address is found to answer \
             as this process"
        ))
    }

    fn remote(&self, conn: ConnId) -> String {
        match self.conns.get(&conn) {
            Some(c) if !c.remote.is_empty() => c.remote.clone(),
            _ => "an unknown address".to_string(),
        }
    }

    /// The accepted connection `conn` ended: it no longer holds a replica id.
    pub(super) fn release_claim(&mut self, conn: ConnId) {
        for claim in &mut self.claims {
            if claim.holder.is_some_and(|(c, _)| c == conn) {
                claim.holder = None;
                claim.challenger = None;
            }
        }
    }

    /// Our link to `peer`'s advertised address is up, and answered as
    /// incarnation `incarnation` (its HelloOk).
    pub fn peer_incarnation(&mut self, peer: ReplicaId, incarnation: u64) {
        let claim = &mut self.claims[peer.index()];
        claim.at_address = Some(incarnation);
        claim.probed = true;
        claim.config_refusal = None;
    }

    /// Our link to `peer` was refused with `why`. A refusal for the
    /// configuration is counted: a shard refused so by more than F peers
    /// can commit nothing, and answers its clients `Unavailable` (naming
    /// what differs) until enough links come up. The reason, when this
    /// refusal made the shard unable to serve.
    pub fn link_refused(&mut self, peer: ReplicaId, why: &str) -> Option<String> {
        if Refusal::of(why) != Refusal::Config {
            return None;
        }
        let before = self.misconfigured();
        self.claims[peer.index()].config_refusal = Some(why.to_string());
        match (before, self.misconfigured()) {
            (None, Some(now)) => Some(now),
            _ => None,
        }
    }

    /// Why the shard cannot serve for its configuration, if it cannot.
    pub fn misconfigured(&self) -> Option<String> {
        // On every client request: no allocation unless it cannot serve.
        let f = (self.cfg.replicas - 1) / 2;
        let refused = || self.claims.iter().filter(|c| c.config_refusal.is_some());
        if refused().count() <= f {
            return None;
        }
        let (r, first) = self
            .claims
            .iter()
            .enumerate()
            .find_map(|(r, c)| Some((r, c.config_refusal.as_ref()?)))?;
        Some(format!(
            "this replica cannot serve: {} of its {} peers refuse its configuration; \
             replica {r} says: {first}",
            refused().count(),
            self.cfg.replicas - 1
        ))
    }

    /// A client beyond `max_clients` is refused, with the limit named.
    fn check_room(&self, h: &HelloBody) -> Result<(), String> {
        if h.role == Role::Client as u8 && self.clients >= self.cfg.max_clients {
            return Err(format!(
                "too many clients: shard {} serves at most {} client connections \
                 (--max-clients); try again later or another replica",
                self.cfg.shard, self.cfg.max_clients
            ));
        }
        Ok(())
    }

    /// A mismatch, described with both values.
    fn check_hello(&self, h: &HelloBody, text: &str) -> Result<(), String> {
        let cfg = &self.cfg;
        let peer = h.role == Role::Peer as u8;
        if !peer && h.role != Role::Client as u8 {
            return Err(format!("unknown role {} in the hello", h.role));
        }
        let who = if peer {
            format!("replica {}", h.replica)
        } else {
            "the client".to_string()
        };
        if (peer || h.replicas != 0) && usize::from(h.replicas) != cfg.replicas {
            return Err(format!(
                "{REFUSED_CONFIG}: replica count: this replica runs {} replicas, {who} says {}",
                cfg.replicas, h.replicas
            ));
        }
        if (peer || h.shards != 0) && usize::from(h.shards) != cfg.shards {
            return Err(format!(
                "{REFUSED_CONFIG}: shard count: this replica runs {} shards (--cores), {who} \
                 says {}",
                cfg.shards, h.shards
            ));
        }
        if usize::from(h.shard) != cfg.shard {
            return Err(format!(
                "shard mismatch: this port serves shard {}, {who} asked for shard {}",
                cfg.shard, h.shard
            ));
        }
        if peer && (usize::from(h.replica) >= cfg.replicas || h.replica == cfg.replica.0) {
            return Err(format!(
                "replica id {} is not a peer of replica {} (ids 0..{})",
                h.replica, cfg.replica.0, cfg.replicas
            ));
        }
        let mine = cfg.topology();
        if (peer || h.config_digest.get() != 0) && h.config_digest.get() != mine.digest() {
            let theirs = Topology::from_hello(cfg.cluster_id, text, usize::from(h.shards));
            return Err(format!(
                "{REFUSED_CONFIG}: {}",
                mine.describe_difference(&who, &theirs)
            ));
        }
        Ok(())
    }
}

/// The acceptor's view of a peer handshake: `hello` from the dialer, this
/// side's nonce `mine`.
fn transcript(cfg: &NodeConfig, hello: &HelloBody, mine: Nonce) -> Transcript {
    Transcript {
        nonce_dialer: Nonce(hello.nonce),
        nonce_acceptor: mine,
        dialer: hello.replica,
        acceptor: cfg.replica.0,
        shard: cfg.shard as u8,
        config_digest: cfg.topology().digest(),
        dialer_incarnation: hello.incarnation.get(),
        acceptor_incarnation: cfg.incarnation,
    }
}
