//! A client's retry against a live replica: a copy of a request the client
//! has acknowledged already runs nowhere and leaves nothing behind.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::BytesMut;
use common::{Cluster, CLUSTER_ID, TIMEOUT};
use epaxos_fast::command::{BatchBuilder, CommandRef, Op};
use epaxos_fast::wire::client::{decode_response, Code, HelloBody, Response, Role};
use epaxos_fast::wire::{FrameEncoder, FrameReader, Kind, ReadBuffer};
use zerocopy::IntoBytes;

const ENC: FrameEncoder = FrameEncoder {
    cluster_id: CLUSTER_ID,
    sender: 0,
    shard: 0,
};
const CLIENT: u64 = 0x5eed;

/// A client connection that sets request numbers itself, as a client
/// re-sending a request (to this replica or another) does.
struct RawClient {
    stream: TcpStream,
    reader: FrameReader,
    buf: ReadBuffer,
}

impl RawClient {
    fn connect(cluster: &Cluster) -> RawClient {
        let stream = TcpStream::connect(cluster.peers[0]).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut c = RawClient {
            stream,
            reader: FrameReader::new(CLUSTER_ID),
            buf: ReadBuffer::default(),
        };
        let hello = HelloBody {
            role: Role::Client as u8,
            ..HelloBody::default()
        };
        c.send(Kind::Hello, hello.as_bytes());
        assert_eq!(c.frame().0, Kind::HelloOk);
        c
    }

    fn send(&mut self, kind: Kind, body: &[u8]) {
        let mut out = BytesMut::new();
        ENC.frame(&mut out, kind, |b| b.extend_from_slice(body));
        self.stream.write_all(&out).expect("write");
    }

    fn put(&mut self, request: u64, first_outstanding: u64, value: &[u8]) {
        let mut b = BatchBuilder::new();
        b.push(&CommandRef {
            client: CLIENT,
            request,
            first_outstanding,
            op: Op::Put,
            key: b"retried",
            value,
        });
        self.send(Kind::Request, b.finish().bytes());
    }

    fn frame(&mut self) -> (Kind, bytes::Bytes) {
        loop {
            if let Some(f) = self.reader.next(self.buf.received()).expect("good frame") {
                return (f.kind, f.body);
            }
            let n = self.stream.read(self.buf.room()).expect("read");
            assert!(n > 0, "the replica closed the connection");
            self.buf.filled(n);
        }
    }

    fn answer(&mut self) -> Response {
        let (kind, body) = self.frame();
        assert_eq!(kind, Kind::Response);
        decode_response(&body).expect("a response")
    }
}

#[test]
fn a_retry_the_client_acknowledged_is_not_applied_and_not_kept() {
    let cluster = Cluster::start(1, 1);
    let mut c = RawClient::connect(&cluster);
    c.put(1, 1, b"one");
    let r = c.answer();
    assert_eq!((r.request, r.code), (1, Code::Done));
    // Request 2 acknowledges request 1 (its first outstanding is 2).
    c.put(2, 2, b"two");
    let r = c.answer();
    assert_eq!((r.request, r.code), (2, Code::Done));
    // A late copy of request 1, as a retry to a slow replica would arrive.
    c.put(1, 1, b"one");
    // The client's next request is ordered after the copy: its answer comes
    // first and alone (nobody waits for the copy).
    c.put(3, 3, b"three");
    let r = c.answer();
    assert_eq!((r.request, r.code), (3, Code::Done));

    let mut client = cluster.connect(0, 0);
    let r = client.call(Op::Get, b"retried", b"").unwrap();
    assert_eq!((r.code, &r.value[..]), (Code::Value, &b"three"[..]));
    let info = client.admin().unwrap();
    // Every route is gone: the copy's too, though no answer was due for it.
    assert_eq!(info.awaiting_answers.get(), 0);
}
