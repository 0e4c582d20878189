//! Malformed input against a live replica: each bad frame closes its own
//! connection and is counted; the replica keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use common::{Cluster, CLUSTER_ID, TIMEOUT};
use epaxos_fast::client::{ClientError, Connection, Session};
use epaxos_fast::command::Op;
use epaxos_fast::constants::FRAME_BODY_BYTES_MAX;
use epaxos_fast::wire::client::{Code, HelloBody, Role};
use epaxos_fast::wire::Kind;
use zerocopy::IntoBytes;

/// The well-formed frames the bad ones are made from: a client's.
fn session() -> Session {
    Session::new(77, CLUSTER_ID, 0)
}

fn frame(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    session()
        .encoder()
        .frame(&mut buf, kind, |b| b.extend_from_slice(body));
    buf.to_vec()
}

fn client_hello() -> Vec<u8> {
    let mut buf = BytesMut::new();
    session().hello(&mut buf);
    buf.to_vec()
}

fn request() -> Vec<u8> {
    let mut s = session();
    s.queue(Op::Put, b"k", b"v").unwrap();
    let mut buf = BytesMut::new();
    s.encode(&mut buf);
    buf.to_vec()
}

/// Sends `bytes` on a fresh connection to replica 0, shard 0 (after a
/// client hello, if `hello`), and returns what the replica sent back before
/// it closed the connection. Panics if it does not close it.
fn send_and_expect_close(
    cluster: &Cluster,
    hello: bool,
    bytes: &[u8],
    half_close: bool,
) -> Vec<u8> {
    let mut s = TcpStream::connect(cluster.peers[0]).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    if hello {
        s.write_all(&client_hello()).unwrap();
    }
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("the replica kept a bad connection open: {e}"),
    }
}

#[test]
fn malformed_frames_are_refused_and_the_replica_keeps_serving() {
    let mut cluster = Cluster::start(3, 1);
    let mut good = cluster.connect(0, 0);
    let good_request = request();

    let mut cases: Vec<(&str, Vec<u8>, bool)> = Vec::new();
    cases.push((
        "garbage",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n and some more".to_vec(),
        false,
    ));
    let mut truncated = good_request.clone();
    truncated.truncate(good_request.len() - 3);
    cases.push(("truncated", truncated, true));
    let mut oversized = frame(Kind::Request, b"");
    oversized[8..12].copy_from_slice(&(FRAME_BODY_BYTES_MAX as u32 + 1).to_le_bytes());
    cases.push(("oversized", oversized, false));
    let mut checksum = good_request.clone();
    let last = checksum.len() - 1;
    checksum[last] ^= 0x40;
    cases.push(("bad checksum", checksum, false));
    let mut version = good_request.clone();
    version[4] = 99;
    cases.push(("bad version", version, false));
    let mut kind = good_request.clone();
    kind[5] = 250;
    cases.push(("unknown kind", kind, false));
    cases.push(("not a batch", frame(Kind::Request, &[1, 2, 3, 4, 5]), false));
    cases.push((
        "peer frame from a client",
        frame(Kind::CommitOk, &[0; 32]),
        false,
    ));

    for (name, bytes, half_close) in &cases {
        let back = send_and_expect_close(&cluster, true, bytes, *half_close);
        // Only the HelloOk came back: the frame never produced an answer.
        assert_eq!(back.len(), client_hello().len(), "{name}: {back:?}");
    }
    // A frame of another cluster, on its very first frame.
    let wrong = Connection::connect(cluster.peers[0], 0, CLUSTER_ID + 1, TIMEOUT);
    assert!(
        matches!(wrong, Err(ClientError::Closed) | Err(ClientError::Io(_))),
        "wrong cluster id accepted"
    );
    let expected_bad = cases.len() as u64 + 1;

    // A peer hello with another cluster size is refused with both values.
    let hello = HelloBody {
        role: Role::Peer as u8,
        replica: 1,
        replicas: 5,
        shards: 1,
        ..HelloBody::default()
    };
    let back = send_and_expect_close(
        &cluster,
        false,
        &frame(Kind::Hello, hello.as_bytes()),
        false,
    );
    let text = String::from_utf8_lossy(&back[32..]);
    assert_eq!(back[5], Kind::Refused as u8);
    assert!(text.contains('3') && text.contains('5'), "{text}");
    // The same refusal still comes back when the end of stream arrives
    // with the hello: the replica drains its answer before it closes.
    let back = send_and_expect_close(&cluster, false, &frame(Kind::Hello, hello.as_bytes()), true);
    assert!(
        back.len() > 32 && back[5] == Kind::Refused as u8,
        "{back:?}"
    );

    // The well-behaved client, connected before all this, is still served.
    let r = good.call(Op::Put, b"after", b"garbage").unwrap();
    assert_eq!(r.code, Code::Done);
    let r = good.call(Op::Get, b"after", b"").unwrap();
    assert_eq!((r.code, &r.value[..]), (Code::Value, &b"garbage"[..]));
    let info = good.admin().unwrap();
    assert_eq!(info.bad_frames.get(), expected_bad);
    assert_eq!(usize::from(info.peers_connected), 2);
    std::thread::sleep(Duration::from_millis(50));
    assert!(cluster.all_alive());
}
