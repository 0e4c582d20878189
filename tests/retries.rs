//! A client's retry against a live replica: a copy of a request the client
//! has acknowledged already runs nowhere and leaves nothing behind.

mod common;

use std::io::Write;
use std::net::TcpStream;

use bytes::BytesMut;
use common::{Cluster, CLUSTER_ID, TIMEOUT};
use epaxos_fast::client::{read_frame, Received, Session};
use epaxos_fast::command::{BatchBuilder, CommandRef, Op};
use epaxos_fast::wire::client::{Code, Response};
use epaxos_fast::wire::{Frame, Kind, ReadBuffer};

const CLIENT: u64 = 0x5eed;

/// A client connection that can also send a copy of a request it has
/// numbered already, as a client re-sending a request (to this replica or
/// another) does.
struct RawClient {
    stream: TcpStream,
    session: Session,
    buf: ReadBuffer,
    out: BytesMut,
}

impl RawClient {
    fn connect(cluster: &Cluster) -> RawClient {
        let stream = TcpStream::connect(cluster.peers[0]).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut c = RawClient {
            stream,
            session: Session::new(CLIENT, CLUSTER_ID, 0),
            buf: ReadBuffer::default(),
            out: BytesMut::new(),
        };
        c.session.hello(&mut c.out);
        c.write_out();
        let answer = c.frame();
        c.session.on_hello_answer(&answer).expect("HelloOk");
        c
    }

    fn write_out(&mut self) {
        self.stream.write_all(&self.out).expect("write");
        self.out.clear();
    }

    /// The next PUT of the session; its request number.
    fn put(&mut self, value: &[u8]) -> u64 {
        let request = self.session.queue(Op::Put, b"retried", value).unwrap();
        self.session.encode(&mut self.out);
        self.write_out();
        request
    }

    /// A copy of a PUT sent earlier, numbered as it was then.
    fn resend(&mut self, request: u64, first_outstanding: u64, value: &[u8]) {
        let mut b = BatchBuilder::new();
        b.push(&CommandRef {
            client: CLIENT,
            request,
            first_outstanding,
            op: Op::Put,
            key: b"retried",
            value,
        });
        let batch = b.finish();
        self.session
            .encoder()
            .frame(&mut self.out, Kind::Request, |x| {
                x.extend_from_slice(batch.bytes())
            });
        self.write_out();
    }

    fn frame(&mut self) -> Frame {
        read_frame(&mut self.stream, self.session.reader(), &mut self.buf).expect("a good frame")
    }

    /// The next answer; a second answer to a request fails the test.
    fn answer(&mut self) -> Response {
        let frame = self.frame();
        match self.session.on_frame(frame).expect("a response") {
            Received::Answer(r) => r,
            other => panic!("not the answer to an outstanding request: {other:?}"),
        }
    }
}

#[test]
fn a_retry_the_client_acknowledged_is_not_applied_and_not_kept() {
    let cluster = Cluster::start(1, 1);
    let mut c = RawClient::connect(&cluster);
    assert_eq!(c.put(b"one"), 1);
    let r = c.answer();
    assert_eq!((r.request, r.code), (1, Code::Done));
    // Request 2 acknowledges request 1 (its first outstanding is 2).
    assert_eq!(c.put(b"two"), 2);
    let r = c.answer();
    assert_eq!((r.request, r.code), (2, Code::Done));
    // A late copy of request 1, as a retry to a slow replica would arrive.
    c.resend(1, 1, b"one");
    // The client's next request is ordered after the copy: its answer comes
    // first and alone (nobody waits for the copy).
    assert_eq!(c.put(b"three"), 3);
    let r = c.answer();
    assert_eq!((r.request, r.code), (3, Code::Done));

    let mut client = cluster.connect(0, 0);
    let r = client.call(Op::Get, b"retried", b"").unwrap();
    assert_eq!((r.code, &r.value[..]), (Code::Value, &b"three"[..]));
    let info = client.admin().unwrap();
    // Every route is gone: the copy's too, though no answer was due for it.
    assert_eq!(info.awaiting_answers.get(), 0);
}
