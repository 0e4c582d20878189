//! A TCP stream whose reads and writes are io_uring operations on buffers
//! the stream owns.
//!
//! Reading: one `Recv` at a time into the stream's receive buffer; a read
//! copies out what it brought. Writing: a write appends to a queue and
//! returns at once; one `Send` at a time carries what was queued, so the
//! bytes of a conversation's burst go in one send. A write fails only with
//! the error an earlier send met (the socket is broken either way).
//!
//! The buffers live in `Socket`, which every operation in flight holds an
//! `Rc` of (see `ring`): a stream dropped, or a read future dropped by a
//! timeout, leaves the kernel writing into memory that is still there. The
//! stream's drop cancels its operations; the socket (and its descriptor)
//! goes when the last of them is reaped.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::ptr::NonNull;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use io_uring::{opcode, types};

use super::ring::{Complete, OpId};
use super::timer::TimerKey;
use super::with_core;

/// Bytes one receive may bring: a closed loop's answers to a full window
/// of requests (about 30 bytes each) fit with room to spare.
const RECV_BYTES: usize = 64 * 1024;
/// Bytes a write may queue behind a send in flight before it waits.
const SEND_QUEUE_BYTES_MAX: usize = 1024 * 1024;

// Lengths go to the kernel as u32.
const _: () =
    assert!(RECV_BYTES <= SEND_QUEUE_BYTES_MAX && SEND_QUEUE_BYTES_MAX <= u32::MAX as usize);

const TAG_RECV: u8 = 1;
const TAG_SEND: u8 = 2;
const TAG_CONNECT: u8 = 3;

/// Heap bytes the kernel writes into while a receive is in flight. Held by
/// raw pointer, not `Box` or `Vec`, so no Rust reference to them exists but
/// the short-lived slices `filled` hands out once the receive is reaped.
struct RecvBuf {
    ptr: NonNull<u8>,
}

impl RecvBuf {
    fn new() -> RecvBuf {
        let bytes: Box<[u8]> = vec![0; RECV_BYTES].into_boxed_slice();
        let ptr = NonNull::new(Box::into_raw(bytes).cast::<u8>()).expect("Box is not null");
        RecvBuf { ptr }
    }

    /// # Safety
    /// No receive into this buffer may be in flight.
    unsafe fn filled(&self, from: usize, len: usize) -> &[u8] {
        assert!(from + len <= RECV_BYTES);
        // SAFETY: in bounds of the allocation (checked); the kernel does not
        // write it meanwhile (the caller's promise).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(from), len) }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), RECV_BYTES);
        // SAFETY: made by `Box::into_raw` of a slice this long in `new`, and
        // freed only here. The buffer is dropped with its `Socket`, which
        // every receive in flight holds: none is in flight now.
        drop(unsafe { Box::from_raw(slice) });
    }
}

struct ReadSide {
    buf: RecvBuf,
    /// Unread bytes of the last receive: `buf[head..tail]`. A receive is
    /// submitted only into an emptied buffer, so while `op` is set both are
    /// zero and nothing reads `buf`.
    head: usize,
    tail: usize,
    op: Option<OpId>,
    /// How the stream ended, for every read from then on: 0 the peer closed
    /// it, else the errno of the receive that failed.
    end: Option<i32>,
    waker: Option<Waker>,
    /// A read waiting this long fails with `TimedOut` (the caller may read
    /// again: the receive in flight stays).
    timeout: Option<Duration>,
    waiting_since: Option<Instant>,
    timer: Option<TimerKey>,
}

struct WriteSide {
    /// What the send in flight carries, from `sent` on; untouched (the
    /// kernel reads it) until it completes.
    flight: Vec<u8>,
    sent: usize,
    /// Written since, for the next send.
    queued: Vec<u8>,
    op: Option<OpId>,
    /// The errno of the send that failed: every write from then on fails.
    error: Option<i32>,
    /// A flush, or a write waiting for the queue to drain.
    waker: Option<Waker>,
}

struct Socket {
    fd: OwnedFd,
    read: RefCell<ReadSide>,
    write: RefCell<WriteSide>,
    /// The stream was dropped: completions start nothing new.
    closed: Cell<bool>,
}

pub struct TcpStream {
    socket: Rc<Socket>,
}

impl TcpStream {
    /// Opens a connection to `addr` (an io_uring `Connect`).
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let domain = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // A blocking socket: io_uring tries each operation without blocking
        // and waits for readiness itself; a non-blocking one would have it
        // hand back EAGAIN instead.
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor socket(2) just returned, owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let dial = Rc::new(Dial {
            raw: fd,
            fd: Cell::new(Some(owned)),
            addr: SockAddr::new(addr),
            result: Cell::new(None),
            waker: Cell::new(None),
        });
        let (ptr, len) = dial.addr.as_ptr();
        let entry = opcode::Connect::new(types::Fd(dial.raw), ptr, len).build();
        // SAFETY: the entry points at `dial.addr` and names `dial`'s
        // descriptor, both kept by `dial`, which the ring holds until the
        // completion: the address does not move (it is inside the `Rc`),
        // and the descriptor leaves `dial` only after the completion.
        let op =
            with_core(|c| unsafe { c.ring.borrow_mut().push(entry, dial.clone(), TAG_CONNECT) });
        Connecting { dial, op: Some(op) }.await
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        let value: libc::c_int = on.into();
        // SAFETY: the option value points at a live c_int of the given size.
        let r = unsafe {
            libc::setsockopt(
                self.socket.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A read waiting longer than `timeout` for bytes fails with
    /// `TimedOut`; `None`: reads wait as long as it takes.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a read timeout of zero",
            ));
        }
        self.socket.read.borrow_mut().timeout = timeout;
        Ok(())
    }

    fn from_fd(fd: OwnedFd) -> TcpStream {
        TcpStream {
            socket: Rc::new(Socket {
                fd,
                read: RefCell::new(ReadSide {
                    buf: RecvBuf::new(),
                    head: 0,
                    tail: 0,
                    op: None,
                    end: None,
                    waker: None,
                    timeout: None,
                    waiting_since: None,
                    timer: None,
                }),
                write: RefCell::new(WriteSide {
                    flight: Vec::new(),
                    sent: 0,
                    queued: Vec::new(),
                    op: None,
                    error: None,
                    waker: None,
                }),
                closed: Cell::new(false),
            }),
        }
    }
}

impl Socket {
    fn raw(&self) -> types::Fd {
        types::Fd(self.fd.as_raw_fd())
    }

    /// Starts a receive into the (empty) buffer.
    fn start_recv(self: &Rc<Self>, r: &mut ReadSide) {
        assert!(r.op.is_none() && r.head == r.tail);
        (r.head, r.tail) = (0, 0);
        let entry = opcode::Recv::new(self.raw(), r.buf.ptr.as_ptr(), RECV_BYTES as u32).build();
        // SAFETY: the buffer belongs to this socket, which the ring holds
        // until the completion; its heap bytes never move, and nothing
        // reads them while `op` is set (`filled` needs head < tail, and
        // both stay zero until the completion sets `tail`).
        r.op = Some(with_core(|c| unsafe {
            c.ring.borrow_mut().push(entry, self.clone(), TAG_RECV)
        }));
    }

    /// Starts a send of the queued bytes (`flight` is empty), or of what a
    /// short send left of `flight`.
    fn start_send(self: &Rc<Self>, w: &mut WriteSide) {
        assert!(w.op.is_none());
        if w.sent == w.flight.len() {
            w.flight.clear();
            w.sent = 0;
            std::mem::swap(&mut w.flight, &mut w.queued);
        }
        if w.flight.is_empty() {
            return;
        }
        let rest = &w.flight[w.sent..];
        debug_assert!(rest.len() <= SEND_QUEUE_BYTES_MAX);
        let entry = opcode::Send::new(self.raw(), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: `flight` belongs to this socket, which the ring holds
        // until the completion; it is neither changed nor swapped (so its
        // heap bytes neither move nor are freed) while `op` is set.
        w.op = Some(with_core(|c| unsafe {
            c.ring.borrow_mut().push(entry, self.clone(), TAG_SEND)
        }));
    }

    fn on_recv(self: &Rc<Self>, result: i32) {
        let mut r = self.read.borrow_mut();
        r.op = None;
        match result {
            n if n > 0 => (r.head, r.tail) = (0, n as usize),
            0 => r.end = Some(0),
            e => r.end = Some(-e),
        }
        if let Some(w) = &r.waker {
            w.wake_by_ref();
        }
    }

    fn on_send(self: &Rc<Self>, result: i32) {
        let mut w = self.write.borrow_mut();
        w.op = None;
        if result < 0 {
            w.error = Some(-result);
        } else {
            w.sent += result as usize;
            assert!(w.sent <= w.flight.len());
            if !self.closed.get() {
                self.start_send(&mut w);
            }
        }
        if let Some(waker) = w.waker.take() {
            waker.wake();
        }
    }
}

impl Complete for Socket {
    fn complete(self: Rc<Self>, tag: u8, result: i32) {
        match tag {
            TAG_RECV => self.on_recv(result),
            TAG_SEND => self.on_send(result),
            _ => unreachable!("a socket submits receives and sends"),
        }
    }
}

impl ReadSide {
    /// For a read about to wait: whether it waited its timeout out; if not,
    /// a timer is set to wake it by then.
    fn timed_out(&mut self, waker: &Waker) -> bool {
        let Some(timeout) = self.timeout else {
            return false;
        };
        let now = Instant::now();
        let deadline = *self.waiting_since.get_or_insert(now) + timeout;
        if now >= deadline {
            self.waiting_since = None;
            return true;
        }
        with_core(|c| {
            let mut timers = c.timers.borrow_mut();
            match self.timer {
                // Set for an earlier wait (never a later deadline than
                // this): it wakes the reader early, who sets another.
                Some(key) if timers.is_set(key) => timers.update(key, waker),
                _ => self.timer = Some(timers.add(deadline, waker)),
            }
        });
        false
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let socket = &self.socket;
        let mut r = socket.read.borrow_mut();
        if r.head < r.tail {
            let n = out.len().min(r.tail - r.head);
            // SAFETY: bytes are unread, so no receive is in flight.
            out[..n].copy_from_slice(unsafe { r.buf.filled(r.head, n) });
            r.head += n;
            r.waiting_since = None;
            return Poll::Ready(Ok(n));
        }
        match r.end {
            Some(0) => return Poll::Ready(Ok(0)),
            Some(errno) => return Poll::Ready(Err(io::Error::from_raw_os_error(errno))),
            None => {}
        }
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if r.op.is_none() {
            socket.start_recv(&mut r);
        }
        if r.timed_out(cx.waker()) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        if !r.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            r.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = &self.socket;
        let mut w = socket.write.borrow_mut();
        if let Some(errno) = w.error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        let room = SEND_QUEUE_BYTES_MAX.saturating_sub(w.queued.len());
        if room == 0 {
            w.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        // At most the room: so no send carries more than the limit.
        let n = buf.len().min(room);
        w.queued.extend_from_slice(&buf[..n]);
        if w.op.is_none() {
            socket.start_send(&mut w);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut w = self.socket.write.borrow_mut();
        if let Some(errno) = w.error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        if w.op.is_none() && w.queued.is_empty() {
            return Poll::Ready(Ok(()));
        }
        w.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.as_mut().poll_flush(cx))?;
        // SAFETY: shutdown(2) takes no pointers.
        if unsafe { libc::shutdown(self.socket.fd.as_raw_fd(), libc::SHUT_WR) } < 0 {
            return Poll::Ready(Err(io::Error::last_os_error()));
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let s = &self.socket;
        s.closed.set(true);
        let (read, write) = (s.read.borrow().op, s.write.borrow().op);
        let timer = s.read.borrow_mut().timer.take();
        // No executor (its thread is ending): it waited for every
        // operation already, or keeps their memory forever.
        super::try_with_core(|c| {
            let mut ring = c.ring.borrow_mut();
            read.into_iter().chain(write).for_each(|op| ring.cancel(op));
            if let Some(key) = timer {
                c.timers.borrow_mut().remove(key);
            }
        });
    }
}

/// A `sockaddr_in` or `sockaddr_in6`, built from a `SocketAddr`.
enum SockAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl SockAddr {
    fn new(addr: SocketAddr) -> SockAddr {
        match addr {
            SocketAddr::V4(a) => SockAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => SockAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    fn as_ptr(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        match self {
            SockAddr::V4(a) => (
                (a as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            SockAddr::V6(a) => (
                (a as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }
}

/// A connect in flight: the socket and the address the kernel reads, held
/// by the ring until the completion.
struct Dial {
    /// The socket, handed to the stream once connected.
    fd: Cell<Option<OwnedFd>>,
    raw: RawFd,
    addr: SockAddr,
    result: Cell<Option<i32>>,
    waker: Cell<Option<Waker>>,
}

impl Complete for Dial {
    fn complete(self: Rc<Self>, tag: u8, result: i32) {
        debug_assert_eq!(tag, TAG_CONNECT);
        self.result.set(Some(result));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

struct Connecting {
    dial: Rc<Dial>,
    /// Until the completion: a dropped future cancels it.
    op: Option<OpId>,
}

impl Future for Connecting {
    type Output = io::Result<TcpStream>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(result) = self.dial.result.take() else {
            self.dial.waker.set(Some(cx.waker().clone()));
            return Poll::Pending;
        };
        self.op = None;
        if result < 0 {
            return Poll::Ready(Err(io::Error::from_raw_os_error(-result)));
        }
        let fd = self.dial.fd.take().expect("a connected socket, once");
        Poll::Ready(Ok(TcpStream::from_fd(fd)))
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        if let Some(op) = self.op {
            super::try_with_core(|c| c.ring.borrow_mut().cancel(op));
        }
    }
}
