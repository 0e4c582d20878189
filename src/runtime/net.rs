//! A shard's connections: the listener, the links to peers, client sessions.
//!
//! Shard s of a replica listens on its base port + s. Every connection opens
//! with a `Hello` that says who is calling:
//! - shard s of a peer, which then sends protocol messages on it (each
//!   replica sends on the link it opened, and reads from those it accepted);
//! - a client, which sends requests and reads responses on it.
//!
//! A frame that fails any check is counted, logged once with the reason and
//! the remote address, and its connection closed: it never reaches the core.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::shard::{bump, Route, SendQueue, Shard};
use super::sockopt;
use crate::command::shard_of;
use crate::command::{Batch, BatchBuilder};
use crate::constants::{
    HANDSHAKE_TIMEOUT_MS, PEER_RECONNECT_MS_MAX, PEER_RECONNECT_MS_MIN, REPLICAS_MAX,
    UNACKED_MS_MAX,
};
use crate::protocol::ReplicaId;
use crate::wire::client::{
    decode_hello, decode_hello_answer, HelloBody, Role, REFUSED_TEXT_BYTES_MAX,
};
use crate::wire::{peer, Frame, FrameError, FrameReader, Kind, ReadBuffer};
use zerocopy::IntoBytes;

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

/// Reads until one whole frame is in `buf`; `None` at a clean end of stream.
async fn next_frame(
    stream: &mut (impl AsyncRead + Unpin),
    reader: &FrameReader,
    inbound: &mut ReadBuffer,
    shard: &Shard,
) -> Result<Option<Frame>, Closed> {
    loop {
        if let Some(frame) = reader.next(inbound.received())? {
            bump(&shard.counters.frames_in, 1);
            return Ok(Some(frame));
        }
        let read = stream.read(inbound.room()).await;
        let n = *read.as_ref().unwrap_or(&0);
        inbound.filled(n);
        bump(&shard.counters.bytes_in, n as u64);
        if read? == 0 {
            reader.at_end(inbound.received())?;
            return Ok(None);
        }
    }
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

/// Logs how a connection ended, counting a malformed frame.
fn log_close(shard: &Shard, what: &str, remote: SocketAddr, result: Result<(), Closed>) {
    match result {
        Ok(()) => debug!(%remote, "{what} closed the connection"),
        Err(Closed::Frame(e)) => {
            bump(&shard.counters.bad_frames, 1);
            warn!(%remote, "{what} sent a bad frame, closing the connection: {e}");
        }
        Err(Closed::Refused(why)) => warn!(%remote, "{what} refused: {why}"),
        Err(Closed::Timeout) => warn!(%remote, "{what}: handshake timed out"),
        Err(Closed::EndBeforeHello) => debug!(%remote, "{what} closed before its hello"),
        Err(Closed::Io(e)) => debug!(%remote, "{what}: connection lost: {e}"),
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
    let _ = stream.set_nodelay(true);
    // A peer or client host that vanishes must not hold this connection
    // (and its tasks) for ever, idle or with answers on their way.
    let fd = stream.as_raw_fd();
    if let Err(e) =
        sockopt::keepalive(fd).and_then(|()| sockopt::unacked_timeout(fd, UNACKED_MS_MAX))
    {
        warn!(%remote, "cannot set TCP keepalive and user timeout: {e}");
    }
    let reader = FrameReader::new(shard.cfg.node.cluster_id);
    let mut buf = ReadBuffer::default();
    let hello = with_timeout(async {
        let frame = next_frame(&mut stream, &reader, &mut buf, &shard).await?;
        let frame = frame.ok_or(Closed::EndBeforeHello)?;
        if frame.kind != Kind::Hello {
            return Err(Closed::Frame(FrameError::Unexpected {
                kind: frame.kind,
                reason: "the first frame must be a Hello",
            }));
        }
        Ok(decode_hello(Kind::Hello, &frame.body)?)
    })
    .await;
    let hello = match hello {
        Ok(h) => h,
        Err(e) => return log_close(&shard, "new connection", remote, Err(e)),
    };
    if let Err(why) = check_hello(&shard, &hello) {
        let _ = refuse(&shard, &mut stream, &why).await;
        let who = if hello.role == Role::Peer as u8 {
            "peer"
        } else {
            "client"
        };
        return log_close(&shard, who, remote, Err(Closed::Refused(why)));
    }
    // The answer is this replica's own view (role peer: a replica), whoever
    // asked; clients read the replica and shard counts from it.
    let mut ok = BytesMut::new();
    shard.cfg.encoder().frame(&mut ok, Kind::HelloOk, |b| {
        b.extend_from_slice(own_hello(&shard, Role::Peer).as_bytes())
    });
    if let Err(e) = stream.write_all(&ok).await {
        return log_close(&shard, "new connection", remote, Err(e.into()));
    }
    if hello.role == Role::Peer as u8 {
        let from = ReplicaId(hello.replica);
        info!(%remote, "replica {} connected", from.0);
        let result = read_peer(&shard, &mut stream, &reader, &mut buf, from).await;
        log_close(&shard, &format!("replica {}", from.0), remote, result);
    } else {
        debug!(%remote, "client connected");
        let result = client_session(&shard, stream, reader, buf).await;
        log_close(&shard, "client", remote, result);
    }
}

pub fn own_hello(shard: &Shard, role: Role) -> HelloBody {
    HelloBody {
        role: role as u8,
        replica: shard.cfg.node.replica.0,
        replicas: shard.cfg.replicas() as u8,
        shards: shard.cfg.shards() as u8,
        shard: shard.cfg.shard as u8,
        ..HelloBody::default()
    }
}

/// A mismatch, described with both values.
fn check_hello(shard: &Shard, h: &HelloBody) -> Result<(), String> {
    let cfg = &shard.cfg;
    let peer = h.role == Role::Peer as u8;
    let who = if peer {
        format!("replica {}", h.replica)
    } else {
        "the client".to_string()
    };
    if (peer || h.replicas != 0) && usize::from(h.replicas) != cfg.replicas() {
        return Err(format!(
            "replica count mismatch: this replica runs {} replicas, {who} says {}",
            cfg.replicas(),
            h.replicas
        ));
    }
    if (peer || h.shards != 0) && usize::from(h.shards) != cfg.shards() {
        return Err(format!(
            "shard count mismatch: this replica runs {} shards (--cores), {who} says {}",
            cfg.shards(),
            h.shards
        ));
    }
    if usize::from(h.shard) != cfg.shard {
        return Err(format!(
            "shard mismatch: this port serves shard {}, {who} asked for shard {}",
            cfg.shard, h.shard
        ));
    }
    if peer && (usize::from(h.replica) >= cfg.replicas() || h.replica == cfg.node.replica.0) {
        return Err(format!(
            "replica id {} is not a peer of replica {} (ids 0..{})",
            h.replica,
            cfg.node.replica.0,
            cfg.replicas()
        ));
    }
    Ok(())
}

async fn refuse(shard: &Shard, stream: &mut TcpStream, why: &str) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    let text = &why.as_bytes()[..why.len().min(REFUSED_TEXT_BYTES_MAX)];
    shard
        .cfg
        .encoder()
        .frame(&mut buf, Kind::Refused, |b| b.extend_from_slice(text));
    stream.write_all(&buf).await
}

async fn read_peer(
    shard: &Shard,
    stream: &mut TcpStream,
    reader: &FrameReader,
    buf: &mut ReadBuffer,
    from: ReplicaId,
) -> Result<(), Closed> {
    while let Some(frame) = next_frame(stream, reader, buf, shard).await? {
        if !frame.kind.is_peer_message() {
            return Err(FrameError::Unexpected {
                kind: frame.kind,
                reason: "not a protocol message on a peer link",
            }
            .into());
        }
        if frame.sender != from.0 || usize::from(frame.shard) != shard.cfg.shard {
            return Err(FrameError::Unexpected {
                kind: frame.kind,
                reason: "sender or shard differs from the handshake's",
            }
            .into());
        }
        let msg = peer::decode(frame.kind, &frame.body, shard.cfg.replicas())?;
        shard.peer_message(from, msg);
    }
    Ok(())
}

async fn client_session(
    shard: &Rc<Shard>,
    stream: TcpStream,
    reader: FrameReader,
    mut buf: ReadBuffer,
) -> Result<(), Closed> {
    let (conn, queue) = shard.register_client();
    let (mut rx, tx) = futures_lite::io::split(stream);
    let writer = {
        let (shard, queue) = (shard.clone(), queue.clone());
        glommio::spawn_local(async move {
            let written = write_loop(shard, queue.clone(), tx).await;
            queue.writer_gone.notify();
            written
        })
        .detach()
    };
    let result = read_client(shard, &mut rx, &reader, &mut buf, conn, &queue).await;
    shard.unregister_client(conn);
    let _ = writer.await;
    result
}

async fn read_client(
    shard: &Shard,
    rx: &mut (impl AsyncRead + Unpin),
    reader: &FrameReader,
    buf: &mut ReadBuffer,
    conn: u64,
    queue: &SendQueue,
) -> Result<(), Closed> {
    let me = shard.cfg.shard;
    let mut others: Vec<BatchBuilder> = Vec::new();
    loop {
        let writer_gone = async {
            queue.writer_gone.wait().await;
            Ok(None)
        };
        let Some(frame) =
            futures_lite::future::or(next_frame(rx, reader, buf, shard), writer_gone).await?
        else {
            return Ok(()); // the client left, or was closed for not reading
        };
        match frame.kind {
            Kind::Request => {
                let batch = Batch::parse(frame.body).map_err(|e| FrameError::BadBody {
                    kind: Kind::Request,
                    reason: e.to_string(),
                })?;
                let route = Route {
                    origin: me as u8,
                    conn,
                };
                for cmd in batch.iter() {
                    let owner = shard_of(cmd.key, shard.cfg.shards());
                    if owner == me {
                        shard.submit(route, &cmd);
                    } else {
                        others.resize_with(shard.cfg.shards(), BatchBuilder::new);
                        others[owner].push(&cmd);
                    }
                }
                for (owner, builder) in others.iter_mut().enumerate() {
                    if !builder.is_empty() {
                        shard.forward(owner, conn, builder.finish());
                    }
                }
            }
            Kind::Admin => {
                let info = shard.admin_info();
                queue.push_frame(&shard.cfg.encoder(), Kind::AdminInfo, |b| {
                    b.extend_from_slice(info.as_bytes())
                });
            }
            kind => {
                return Err(FrameError::Unexpected {
                    kind,
                    reason: "not a client request",
                }
                .into())
            }
        }
    }
}

/// Writes whatever piled up in `queue` since the last write, in one write.
async fn write_loop(
    shard: Rc<Shard>,
    queue: Rc<SendQueue>,
    mut tx: impl futures_lite::AsyncWrite + Unpin,
) -> std::io::Result<()> {
    loop {
        queue.notify.wait().await;
        if !queue.open.get() {
            return Ok(());
        }
        let data = queue.take();
        if data.is_empty() {
            queue.give_back(data);
            continue;
        }
        bump(&shard.counters.bytes_out, data.len() as u64);
        // A client that does not read would block this write for ever:
        // closing its connection must end it.
        let closed = async {
            queue.closed.wait().await;
            Ok(())
        };
        futures_lite::future::or(tx.write_all(&data), closed).await?;
        queue.give_back(data);
    }
}

/// Keeps the link to shard s of `peer` up: connect, handshake, write what
/// the shard queues; on failure, back off and start again.
pub async fn peer_link(shard: Rc<Shard>, peer: ReplicaId) {
    assert!(peer.index() < REPLICAS_MAX && peer != shard.cfg.node.replica);
    let addr = shard.cfg.peer_addr(peer);
    let link = &shard.links[peer.index()];
    let mut backoff = PEER_RECONNECT_MS_MIN;
    let mut logged_down = false;
    loop {
        match connect_peer(&shard, addr).await {
            Ok(mut stream) => {
                info!(%addr, "link to replica {} up", peer.0);
                backoff = PEER_RECONNECT_MS_MIN;
                logged_down = false;
                // Empty: cleared when the link went down, and nothing is
                // queued while it is down.
                link.open.set(true);
                shard.peer_reachable(peer, true);
                let e = loop {
                    link.notify.wait().await;
                    let data = link.take();
                    if data.is_empty() {
                        link.give_back(data);
                        continue;
                    }
                    bump(&shard.counters.bytes_out, data.len() as u64);
                    let written = stream.write_all(&data).await;
                    link.give_back(data);
                    if let Err(e) = written {
                        break e;
                    }
                };
                link.open.set(false);
                shard.peer_reachable(peer, false);
                // What was queued and not written is dropped: the core
                // re-sends whatever is still unacknowledged.
                link.buf.borrow_mut().clear();
                warn!(%addr, "link to replica {} lost: {e}", peer.0);
            }
            Err(e) => {
                shard.peer_reachable(peer, false);
                if !logged_down {
                    match &e {
                        Closed::Refused(why) => {
                            warn!(%addr, "replica {} refused us: {why}", peer.0)
                        }
                        other => info!(%addr, "replica {} not reachable yet: {other:?}", peer.0),
                    }
                    logged_down = true;
                }
                if let Closed::Frame(_) = e {
                    bump(&shard.counters.bad_frames, 1);
                }
            }
        }
        glommio::timer::sleep(Duration::from_millis(backoff)).await;
        backoff = (backoff * 2).min(PEER_RECONNECT_MS_MAX);
    }
}

async fn connect_peer(shard: &Shard, addr: SocketAddr) -> Result<TcpStream, Closed> {
    let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let mut stream = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(|e| Closed::Io(std::io::Error::other(e.to_string())))?;
    let _ = stream.set_nodelay(true);
    // A peer host that vanishes fails the link (which then reconnects with
    // back-off) instead of leaving it up with writes that never complete.
    let fd = stream.as_raw_fd();
    if let Err(e) =
        sockopt::keepalive(fd).and_then(|()| sockopt::unacked_timeout(fd, UNACKED_MS_MAX))
    {
        warn!(%addr, "cannot set TCP keepalive and user timeout: {e}");
    }
    let mut hello = BytesMut::new();
    let body = own_hello(shard, Role::Peer);
    shard.cfg.encoder().frame(&mut hello, Kind::Hello, |b| {
        b.extend_from_slice(body.as_bytes())
    });
    stream.write_all(&hello).await?;
    let reader = FrameReader::new(shard.cfg.node.cluster_id);
    let mut buf = ReadBuffer::default();
    let frame = with_timeout(next_frame(&mut stream, &reader, &mut buf, shard)).await?;
    let f = frame.ok_or(Closed::Io(std::io::ErrorKind::UnexpectedEof.into()))?;
    decode_hello_answer(f.kind, &f.body)?.map_err(Closed::Refused)?;
    Ok(stream)
}
