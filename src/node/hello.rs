//! The handshake: every connection opens with a Hello saying who calls.
//! A peer's shard s, which then sends protocol messages on it, or a client.
//! A mismatch (replica or shard count, shard, id) is refused with a text
//! naming both values, and the connection closes.

use bytes::BytesMut;

use super::{ConnError, ConnId, Node, NodeConfig, Output, Peer};
use crate::protocol::ReplicaId;
use crate::storage::Storage;
use crate::wire::client::{decode_hello, HelloBody, Role, REFUSED_TEXT_BYTES_MAX};
use crate::wire::{Frame, FrameEncoder, FrameError, Kind};

impl NodeConfig {
    /// This shard's Hello, as a replica: what its links open with, and what
    /// it answers every accepted Hello with.
    pub fn hello(&self) -> HelloBody {
        HelloBody {
            role: Role::Peer as u8,
            replica: self.replica.0,
            replicas: self.replicas as u8,
            shards: self.shards as u8,
            shard: self.shard as u8,
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

    /// This shard's Hello frame, appended to `buf`.
    pub fn encode_hello(&self, buf: &mut BytesMut) {
        let body = self.hello();
        self.encoder().frame(buf, Kind::Hello, |b| {
            b.extend_from_slice(zerocopy::IntoBytes::as_bytes(&body))
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
        let hello = decode_hello(Kind::Hello, &frame.body)?;
        let stopped = match &self.failed {
            // A stopped shard takes no peer: it votes on nothing, and a
            // refused link makes the peer park its commits for it.
            Some(why) if hello.role == Role::Peer as u8 => Err(why.clone()),
            _ => Ok(()),
        };
        let checked = stopped
            .and_then(|()| self.check_hello(&hello))
            .and_then(|()| self.check_room(&hello));
        if let Err(why) = checked {
            let text = &why.as_bytes()[..why.len().min(REFUSED_TEXT_BYTES_MAX)];
            self.queue_conn(conn, Kind::Refused, text);
            self.close_conn(conn);
            return Err(ConnError::Refused(why));
        }
        // The answer is this replica's own view (role peer: a replica),
        // whoever asked; clients read the replica and shard counts from it.
        let mut body = self.cfg.hello();
        if hello.role == Role::Peer as u8 {
            // How much of the caller's space this shard holds: a caller
            // that started empty refuses to take part if it is not nothing
            // (`Node::peer_knows`).
            let known = self.core.highest_slot_known(ReplicaId(hello.replica));
            body.known_slot = known.into();
        }
        self.queue_conn(conn, Kind::HelloOk, zerocopy::IntoBytes::as_bytes(&body));
        let who = if hello.role == Role::Peer as u8 {
            Peer::Replica(ReplicaId(hello.replica))
        } else {
            Peer::Client
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.who = who;
            self.clients += usize::from(who == Peer::Client);
        }
        Ok(())
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
    fn check_hello(&self, h: &HelloBody) -> Result<(), String> {
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
                "replica count mismatch: this replica runs {} replicas, {who} says {}",
                cfg.replicas, h.replicas
            ));
        }
        if (peer || h.shards != 0) && usize::from(h.shards) != cfg.shards {
            return Err(format!(
                "shard count mismatch: this replica runs {} shards (--cores), {who} says {}",
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
        Ok(())
    }
}
