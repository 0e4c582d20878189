//! Echo round trips over loopback TCP: a blocking client thread sends a
//! 64-byte message and waits for it back, N times, against one of three
//! servers: blocking std sockets, glommio (as the replica used it until the
//! ring driver), a raw io_uring loop (one `submit_and_wait` per message,
//! sends by syscall), or `ring`: the replica's own ring (`runtime::uring`)
//! as its shard loop uses it, a multishot receive into provided buffers,
//! the bytes copied out, the send through the ring, one kernel entry a pass.
//!
//! Run under `taskset -c 0` and both ends share one CPU, so the round trip
//! is the CPU cost of two hops (sends, receives, sleeps and wake-ups);
//! unpinned it is the latency of waking the other CPU.
//!
//! Usage: echo-cost blocking|glommio|uring|ring [ROUND_TRIPS]   (default 100000)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::time::Instant;

const MESSAGE_BYTES: usize = 64;

fn client(port: u16, round_trips: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = [7u8; MESSAGE_BYTES];
    let start = Instant::now();
    for _ in 0..round_trips {
        s.write_all(&buf).expect("write");
        s.read_exact(&mut buf).expect("read");
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / round_trips as f64;
    println!("{round_trips} round trips: {us:.2} us each");
}

fn blocking(l: TcpListener) {
    let (mut s, _) = l.accept().expect("accept");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            return;
        }
        s.write_all(&buf[..n]).expect("write");
    }
}

fn glommio_server(l: TcpListener) {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let fd = l.into_raw_fd();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            // SAFETY: `fd` is the listener given up by into_raw_fd above.
            let l = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
            let mut s = l.accept().await.expect("accept");
            s.set_nodelay(true).expect("nodelay");
            let mut buf = vec![0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.expect("read");
                if n == 0 {
                    return;
                }
                s.write_all(&buf[..n]).await.expect("write");
            }
        })
        .expect("executor")
        .join()
        .expect("join");
}

fn uring_server(l: TcpListener) {
    use io_uring::{opcode, types, IoUring};
    let (s, _) = l.accept().expect("accept");
    s.set_nodelay(true).expect("nodelay");
    let fd = s.as_raw_fd();
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(64)
        .expect("ring");
    let mut buf = vec![0u8; 4096];
    loop {
        let recv = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32).build();
        // SAFETY: `buf` outlives the operation: we wait for its completion
        // before touching `buf` again.
        unsafe { ring.submission().push(&recv).expect("room in the ring") };
        ring.submit_and_wait(1).expect("submit");
        let n = ring.completion().next().expect("a completion").result();
        if n <= 0 {
            return;
        }
        // SAFETY: sends `n` initialised bytes of `buf`.
        let sent = unsafe { libc::send(fd, buf.as_ptr().cast(), n as usize, libc::MSG_DONTWAIT) };
        assert_eq!(sent, n as isize, "a 64-byte send fits the socket buffer");
    }
}

fn ring_server(l: TcpListener) {
    use epaxos_fast::runtime::uring::{Op, OpKind, Ring, RECV_GROUP};
    use io_uring::{opcode, types};
    let (s, _) = l.accept().expect("accept");
    s.set_nodelay(true).expect("nodelay");
    let fd = types::Fd(s.as_raw_fd());
    let mut ring = Ring::new(64, 16, 4096).expect("ring");
    let recv = || opcode::RecvMulti::new(fd, RECV_GROUP).build();
    // SAFETY: the receive writes only into the ring's provided buffers.
    unsafe { ring.push(recv(), Op::new(OpKind::Recv, 0)) };
    let mut done = Vec::new();
    // The bytes of the send in flight (one at a time: an echo).
    let mut out: Vec<u8> = Vec::new();
    loop {
        ring.submit_and_wait(std::time::Duration::from_secs(1))
            .expect("submit");
        ring.reap(&mut done);
        for d in done.drain(..) {
            if d.op.kind != OpKind::Recv {
                continue; // a send completed
            }
            if d.result <= 0 {
                return;
            }
            let bid = d.buffer().expect("a provided buffer");
            out.clear();
            out.extend_from_slice(ring.buffer(bid, d.result as usize));
            ring.recycle(bid);
            let send = opcode::Send::new(fd, out.as_ptr(), out.len() as u32).build();
            // SAFETY: `out` is not touched again before this send completes:
            // the client waits for the echo before sending the next message.
            unsafe { ring.push(send, Op::new(OpKind::Send, 0)) };
            if !d.more() {
                // SAFETY: as above.
                unsafe { ring.push(recv(), Op::new(OpKind::Recv, 0)) };
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: echo-cost blocking|glommio|uring|ring [ROUND_TRIPS]";
    let server: fn(TcpListener) = match args.get(1).map(String::as_str) {
        Some("blocking") => blocking,
        Some("glommio") => glommio_server,
        Some("uring") => uring_server,
        Some("ring") => ring_server,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let round_trips = match args.get(2).map(|n| n.parse::<usize>()) {
        None => 100_000,
        Some(Ok(n)) if n > 0 => n,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("address").port();
    let srv = std::thread::spawn(move || server(l));
    client(port, round_trips);
    srv.join().expect("server");
}
