//! A shard's sockets: the listener, the links to peers, client connections.
//!
//! Shard s of a replica listens on its base port + s. Every connection opens
//! with a `Hello` that says who is calling (the node checks it and answers):
//! - shard s of a peer, which then sends protocol messages on it (each
//!   replica sends on the link it opened, and reads from those it accepted);
//! - a client, which sends requests and reads responses on it.
//!
//! This file only moves bytes: whole frames go to the node, and the bytes
//! the node queues go to the sockets. A frame that fails any check is
//! counted (its header's checks here, its body's by the node), logged once
//! here with the reason and the remote address, and its connection closed:
//! it never reaches the core. (A frame cut short by the peer's end of
//! stream counts as bad too: a peer that dies mid-write shows as one.)

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::shard::{reuse, ConnIo, Shard};
use super::sockopt;
use crate::constants::{
    HANDSHAKE_TIMEOUT_MS, PEER_RECONNECT_MS_MAX, PEER_RECONNECT_MS_MIN, REPLICAS_MAX,
    UNACKED_MS_MAX,
};
use crate::node::{ConnError, ConnId, Peer};
use crate::protocol::ReplicaId;
use crate::wire::client::decode_hello_answer;
use crate::wire::{Frame, FrameError, FrameReader, ReadBuffer};

/// Why a connection ended.
#[derive(Debug)]
enum Closed {
    Io(std::io::Error),
    Frame(FrameError),
    /// Refused in the handshake; the text was sent to the other side.
    Refused(String),
    Timeout,
    /// Closed before sending anything (a port probe, a health check).
    EndBeforeHello,
}

impl From<FrameError> for Closed {
    fn from(e: FrameError) -> Closed {
        Closed::Frame(e)
    }
}

impl From<std::io::Error> for Closed {
    fn from(e: std::io::Error) -> Closed {
        Closed::Io(e)
    }
}

impl From<ConnError> for Closed {
    fn from(e: ConnError) -> Closed {
        match e {
            ConnError::Frame(e) => Closed::Frame(e),
            ConnError::Refused(why) => Closed::Refused(why),
        }
    }
}

/// Reads until one whole frame is in `buf`; `None` at a clean end of stream.
/// A frame that fails the header's checks is counted here (the node counts
/// bodies it cannot decode).
async fn next_frame(
    stream: &mut (impl AsyncRead + Unpin),
    reader: &FrameReader,
    inbound: &mut ReadBuffer,
    shard: &Shard,
) -> Result<Option<Frame>, Closed> {
    let counted = |e: FrameError| {
        shard.count_bad_frame();
        Closed::Frame(e)
    };
    loop {
        if let Some(frame) = reader.next(inbound.received()).map_err(counted)? {
            return Ok(Some(frame));
        }
        let read = stream.read(inbound.room()).await;
        let n = *read.as_ref().unwrap_or(&0);
        inbound.filled(n);
        shard.count_in(n);
        if read? == 0 {
            reader.at_end(inbound.received()).map_err(counted)?;
            return Ok(None);
        }
    }
}

/// Hands one frame of connection `conn` to the node, then lets a turn run.
fn on_frame(shard: &Shard, conn: ConnId, frame: Frame) -> Result<(), Closed> {
    shard.call(|node, now| node.on_frame(now, conn, frame))?;
    shard.wake.notify();
    Ok(())
}

async fn with_timeout<T>(
    fut: impl std::future::Future<Output = Result<T, Closed>>,
) -> Result<T, Closed> {
    let timeout = async {
        glommio::timer::sleep(Duration::from_millis(HANDSHAKE_TIMEOUT_MS)).await;
        Err(Closed::Timeout)
    };
    futures_lite::future::or(fut, timeout).await
}

/// Logs how a connection ended.
fn log_close(what: &str, remote: SocketAddr, result: Result<(), Closed>) {
    match result {
        Ok(()) => debug!(%remote, "{what} closed the connection"),
        Err(Closed::Frame(e)) => {
            warn!(%remote, "{what} sent a bad frame, closing the connection: {e}")
        }
        Err(Closed::Refused(why)) => warn!(%remote, "{what} refused: {why}"),
        Err(Closed::Timeout) => warn!(%remote, "{what}: handshake timed out"),
        Err(Closed::EndBeforeHello) => debug!(%remote, "{what} closed before its hello"),
        Err(Closed::Io(e)) => debug!(%remote, "{what}: connection lost: {e}"),
    }
}

/// Sets the options every connection gets: no Nagle delay, and keepalive
/// with a bound on unacknowledged data, so that a peer or client host that
/// vanishes does not hold the connection (and its tasks) for ever.
fn tune(stream: &TcpStream, remote: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    if let Err(e) =
        sockopt::keepalive(fd).and_then(|()| sockopt::unacked_timeout(fd, UNACKED_MS_MAX))
    {
        warn!(%remote, "cannot set TCP keepalive and user timeout: {e}");
    }
}

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let shard = shard.clone();
                glommio::spawn_local(async move { serve(shard, stream).await }).detach();
            }
            Err(e) => {
                warn!("accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let remote = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    tune(&stream, remote);
    let reader = FrameReader::new(shard.cfg.node.cluster_id);
    let mut buf = ReadBuffer::default();
    let conn = shard.call(|node, _| node.accept());
    let shaken = handshake(&shard, &mut stream, &reader, &mut buf, conn).await;
    let who = shard.call(|node, _| node.who(conn));
    let (what, result) = match (shaken, who) {
        (Err(e), Peer::Replica(r)) => (format!("replica {}", r.0), Err(e)),
        (Err(e), Peer::Client) => ("client".to_string(), Err(e)),
        (Err(e), Peer::Unknown) => ("new connection".to_string(), Err(e)),
        (Ok(()), Peer::Replica(from)) => {
            info!(%remote, "replica {} connected", from.0);
            let read = read_peer(&shard, &mut stream, &reader, &mut buf, conn).await;
            (format!("replica {}", from.0), read)
        }
        (Ok(()), _) => {
            debug!(%remote, "client connected");
            let session = client_session(&shard, stream, reader, buf, conn).await;
            ("client".to_string(), session)
        }
    };
    shard.unregister_conn(conn);
    log_close(&what, remote, result);
}

/// The first frame must be a Hello. The node answers it (HelloOk, or a
/// refusal that ends the connection); the answer is written here, before
/// any writer task exists.
async fn handshake(
    shard: &Shard,
    stream: &mut TcpStream,
    reader: &FrameReader,
    buf: &mut ReadBuffer,
    conn: ConnId,
) -> Result<(), Closed> {
    let frame = with_timeout(async {
        let frame = next_frame(stream, reader, buf, shard).await?;
        frame.ok_or(Closed::EndBeforeHello)
    })
    .await?;
    let accepted = shard.call(|node, now| node.on_frame(now, conn, frame));
    let answer = shard.take_conn_bytes(conn, BytesMut::new());
    if !answer.is_empty() {
        stream.write_all(&answer).await?;
    }
    Ok(accepted?)
}

async fn read_peer(
    shard: &Shard,
    stream: &mut TcpStream,
    reader: &FrameReader,
    buf: &mut ReadBuffer,
    conn: ConnId,
) -> Result<(), Closed> {
    while let Some(frame) = next_frame(stream, reader, buf, shard).await? {
        on_frame(shard, conn, frame)?;
    }
    Ok(())
}

async fn client_session(
    shard: &Rc<Shard>,
    stream: TcpStream,
    reader: FrameReader,
    mut buf: ReadBuffer,
    conn: ConnId,
) -> Result<(), Closed> {
    let io = shard.register_conn(conn);
    let (mut rx, tx) = futures_lite::io::split(stream);
    let writer = {
        let (shard, io) = (shard.clone(), io.clone());
        glommio::spawn_local(async move {
            let written = write_loop(&shard, conn, &io, tx).await;
            io.writer_gone.notify();
            written
        })
        .detach()
    };
    let result = read_client(shard, &mut rx, &reader, &mut buf, conn, &io).await;
    shard.unregister_conn(conn);
    let _ = writer.await;
    result
}

async fn read_client(
    shard: &Shard,
    rx: &mut (impl AsyncRead + Unpin),
    reader: &FrameReader,
    buf: &mut ReadBuffer,
    conn: ConnId,
    io: &ConnIo,
) -> Result<(), Closed> {
    loop {
        let writer_gone = async {
            io.writer_gone.wait().await;
            Ok(None)
        };
        let Some(frame) =
            futures_lite::future::or(next_frame(rx, reader, buf, shard), writer_gone).await?
        else {
            return Ok(()); // the client left, or was closed for not reading
        };
        on_frame(shard, conn, frame)?;
    }
}

/// Writes whatever piled up for `conn` since the last write, in one write.
async fn write_loop(
    shard: &Shard,
    conn: ConnId,
    io: &ConnIo,
    mut tx: impl futures_lite::AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let mut spare = BytesMut::new();
    loop {
        io.ready.wait().await;
        if io.closing.get() {
            return Ok(());
        }
        let data = shard.take_conn_bytes(conn, spare);
        if data.is_empty() {
            spare = data;
            continue;
        }
        // A client that does not read would block this write for ever:
        // closing its connection must end it.
        let closed = async {
            io.closed.wait().await;
            Ok(())
        };
        futures_lite::future::or(tx.write_all(&data), closed).await?;
        spare = reuse(data);
    }
}

/// Keeps the link to shard s of `peer` up: connect, handshake, write what
/// the node queues; on failure, back off and start again.
pub async fn peer_link(shard: Rc<Shard>, peer: ReplicaId) {
    assert!(peer.index() < REPLICAS_MAX && peer != shard.cfg.node.replica);
    let addr = shard.cfg.peer_addr(peer);
    let mut backoff = PEER_RECONNECT_MS_MIN;
    let mut logged_down = false;
    loop {
        match connect_peer(&shard, addr).await {
            Ok((mut stream, known)) => {
                info!(%addr, "link to replica {} up", peer.0);
                backoff = PEER_RECONNECT_MS_MIN;
                logged_down = false;
                let (was, refused, now) = shard.call(|node, _| {
                    let was = node.on_probation();
                    node.link_up(peer);
                    node.peer_knows(peer, known);
                    (was, node.refused(), node.on_probation())
                });
                if refused {
                    shard.refuse();
                    return;
                }
                if was && !now {
                    info!("started with an empty log: enough peers hold nothing of this replica's space; taking part");
                }
                // Commits parked for this peer are due at once.
                shard.wake.notify();
                let e = write_link(&shard, peer, &mut stream).await;
                // What was queued and not written is dropped: the core
                // re-sends whatever is still unacknowledged.
                shard.call(|node, _| node.link_down(peer));
                warn!(%addr, "link to replica {} lost: {e}", peer.0);
            }
            Err(e) => {
                shard.call(|node, _| node.link_down(peer));
                if !logged_down {
                    match &e {
                        Closed::Refused(why) => {
                            warn!(%addr, "replica {} refused us: {why}", peer.0)
                        }
                        other => info!(%addr, "replica {} not reachable yet: {other:?}", peer.0),
                    }
                    logged_down = true;
                }
            }
        }
        glommio::timer::sleep(Duration::from_millis(backoff)).await;
        backoff = (backoff * 2).min(PEER_RECONNECT_MS_MAX);
    }
}

/// Writes what the node queues for `peer`, one write per wake-up, until a
/// write fails.
async fn write_link(shard: &Shard, peer: ReplicaId, stream: &mut TcpStream) -> std::io::Error {
    let ready = &shard.link_ready[peer.index()];
    let mut spare = BytesMut::new();
    loop {
        ready.wait().await;
        let data = shard.take_link_bytes(peer, spare);
        if data.is_empty() {
            spare = data;
            continue;
        }
        let written = stream.write_all(&data).await;
        spare = reuse(data);
        if let Err(e) = written {
            return e;
        }
    }
}

/// Connects and handshakes; with how much of this replica's space the peer
/// holds (its HelloOk's `known_slot`).
async fn connect_peer(shard: &Shard, addr: SocketAddr) -> Result<(TcpStream, u64), Closed> {
    let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let mut stream = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(|e| Closed::Io(std::io::Error::other(e.to_string())))?;
    // A peer host that vanishes fails the link (which then reconnects with
    // back-off) instead of leaving it up with writes that never complete.
    tune(&stream, addr);
    let mut hello = BytesMut::new();
    shard.call(|node, _| node.encode_hello(&mut hello));
    stream.write_all(&hello).await?;
    let reader = FrameReader::new(shard.cfg.node.cluster_id);
    let mut buf = ReadBuffer::default();
    let frame = with_timeout(next_frame(&mut stream, &reader, &mut buf, shard)).await?;
    let f = frame.ok_or(Closed::Io(std::io::ErrorKind::UnexpectedEof.into()))?;
    let answer = decode_hello_answer(f.kind, &f.body).inspect_err(|_| shard.count_bad_frame());
    let hello = answer?.map_err(Closed::Refused)?;
    Ok((stream, hello.known_slot.get()))
}
