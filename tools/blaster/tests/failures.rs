//! A connection that fails mid-run: blaster says so, keeps the figures of
//! the others, counts the requests that were in flight on it, and exits
//! non-zero.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};

use bytes::BytesMut;
use epaxos_fast::client::read_frame;
use epaxos_fast::wire::client::{HelloBody, Role};
use epaxos_fast::wire::{FrameEncoder, FrameReader, Kind, ReadBuffer};
use zerocopy::IntoBytes;

const CLUSTER_ID: u64 = 1;

/// Answers the hello of each connection like a one-shard replica, then
/// closes the connection at its first request without answering it.
fn serve_then_drop(mut stream: TcpStream) {
    let reader = FrameReader::new(CLUSTER_ID);
    let mut buf = ReadBuffer::default();
    let Ok(hello) = read_frame(&mut stream, reader, &mut buf) else {
        return;
    };
    assert_eq!(hello.kind, Kind::Hello);
    let answer = HelloBody {
        role: Role::Peer as u8,
        replicas: 1,
        shards: 1,
        ..HelloBody::default()
    };
    let mut out = BytesMut::new();
    let enc = FrameEncoder {
        cluster_id: CLUSTER_ID,
        sender: 0,
        shard: 0,
    };
    enc.frame(&mut out, Kind::HelloOk, |b| {
        b.extend_from_slice(answer.as_bytes())
    });
    if stream.write_all(&out).is_ok() {
        // A request (or an admin query): hang up on it.
        let _ = read_frame(&mut stream, reader, &mut buf);
    }
}

#[test]
fn a_failed_connection_is_reported_with_its_requests_in_flight() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_then_drop(stream));
        }
    });
    let (ok, out) = common::blaster(&[
        "--targets",
        &addr,
        "--connections",
        "1",
        "--outstanding",
        "8",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(!ok, "a failed connection must fail the run:\n{out}");
    assert!(
        out.contains("failed connections 1 (their errors are above; 8 requests were in flight"),
        "{out}"
    );
}
