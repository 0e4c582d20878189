//! The node's side of authentication: the cluster secret's three-message
//! handshake between two real nodes, and client passwords.

use bytes::BytesMut;

use super::auth::{Side, Transcript};
use super::tests::{client_hello, config, frame, frames_for, outputs, refused_text, request, sync};
use super::*;
use crate::constants::AUTH_FAILURES_PER_CONNECTION_MAX;
use crate::secret::Secret;
use crate::storage::MemStorage;
use crate::wire::client::{
    decode_hello, decode_response, Code, AUTH_PASSWORD, NO_AUTH_TEXT, REFUSED_AUTH,
};
use crate::wire::FrameReader;

const SECRET: &[u8] = b"a cluster secret of some length";
const OTHER: &[u8] = b"another cluster secret, not it";

/// Replica `r` of three, with the cluster secret `secret`.
fn replica(r: u8, secret: Option<&[u8]>) -> Node<MemStorage> {
    let mut cfg = config(3, 1, 0);
    cfg.replica = ReplicaId(r);
    cfg.incarnation = 100 + u64::from(r);
    cfg.cluster_secret = secret.map(Secret::new);
    Node::start(cfg, MemStorage::new(), 0)
}

fn one_frame(bytes: &mut BytesMut) -> Frame {
    FrameReader::new(config(1, 1, 0).cluster_id)
        .next(bytes)
        .unwrap()
        .expect("a whole frame")
}

/// A handshake's first two messages: `dialer` opens a link to `acceptor`
/// (nonce `nd`), which accepts it (nonce `na`). The acceptor's connection,
/// what it made of the Hello, and its answer.
fn hello_and_answer(
    dialer: &mut Node<MemStorage>,
    acceptor: &mut Node<MemStorage>,
    nd: u8,
    na: u8,
) -> (ConnId, Result<(), ConnError>, Frame) {
    let to = acceptor.config().replica;
    let mut hello = BytesMut::new();
    dialer.link_hello(to, Nonce([nd; 16]), &mut hello);
    let conn = acceptor.accept_from("192.0.2.7:4000".into(), Nonce([na; 16]));
    let taken = acceptor.on_frame(0, conn, one_frame(&mut hello));
    let mut answer = acceptor.take_conn_bytes(conn, BytesMut::new());
    (conn, taken, one_frame(&mut answer))
}

/// The whole handshake; the acceptor's connection and the dialer's proof.
fn handshake(
    dialer: &mut Node<MemStorage>,
    acceptor: &mut Node<MemStorage>,
    nd: u8,
    na: u8,
) -> (ConnId, Frame) {
    let (conn, taken, answer) = hello_and_answer(dialer, acceptor, nd, na);
    taken.expect("the hello passes");
    assert_eq!(
        acceptor.who(conn),
        Peer::Unknown,
        "not a peer before its proof"
    );
    let mut reply = BytesMut::new();
    let to = acceptor.config().replica;
    let got = dialer.on_link_answer(to, &answer, &mut reply).unwrap();
    assert!(matches!(got, LinkAnswer::Accepted(_)), "{got:?}");
    let proof = one_frame(&mut reply);
    assert_eq!(proof.kind, Kind::HelloProof);
    (conn, proof)
}

#[test]
fn peers_with_one_secret_prove_it_both_ways() {
    let (mut a, mut b) = (replica(0, Some(SECRET)), replica(1, Some(SECRET)));
    let (conn, proof) = handshake(&mut a, &mut b, 1, 2);
    b.on_frame(0, conn, proof).expect("the proof checks out");
    assert_eq!(b.who(conn), Peer::Replica(ReplicaId(0)));
}

#[test]
fn an_acceptor_with_another_secret_is_refused_by_the_dialer_which_says_so() {
    let (mut a, mut b) = (replica(0, Some(SECRET)), replica(1, Some(OTHER)));
    let (conn, taken, answer) = hello_and_answer(&mut a, &mut b, 1, 2);
    taken.unwrap();
    let mut reply = BytesMut::new();
    let got = a.on_link_answer(ReplicaId(1), &answer, &mut reply).unwrap();
    let LinkAnswer::Failed(why) = got else {
        panic!("a wrong MAC is taken: {got:?}");
    };
    assert!(
        why.starts_with(REFUSED_AUTH) && why.contains("replica 1"),
        "{why}"
    );
    // The dialer's Refused reaches the acceptor, which closes too.
    let refused = one_frame(&mut reply);
    assert_eq!(refused.kind, Kind::Refused);
    let Err(ConnError::Refused(text)) = b.on_frame(0, conn, refused) else {
        panic!("the acceptor goes on after the dialer refused it");
    };
    assert!(
        text.starts_with(REFUSED_AUTH) && text.contains("replica 0"),
        "{text}"
    );
    assert_eq!(b.who(conn), Peer::Unknown);
}

#[test]
fn a_dialer_with_another_secret_is_refused_by_the_acceptor() {
    let (mut a, mut b) = (replica(0, Some(OTHER)), replica(1, Some(SECRET)));
    let (conn, taken, answer) = hello_and_answer(&mut a, &mut b, 1, 2);
    taken.unwrap();
    let ok = decode_hello(Kind::HelloOk, &answer.body).unwrap();
    // A dialer that skips the MAC check and proves with its own secret.
    let forged = Transcript {
        nonce_dialer: Nonce([1; 16]),
        nonce_acceptor: Nonce(ok.nonce),
        dialer: 0,
        acceptor: 1,
        shard: 0,
        config_digest: a.config().topology().digest(),
        dialer_incarnation: a.config().incarnation,
        acceptor_incarnation: ok.incarnation.get(),
    }
    .mac(&Secret::new(OTHER), Side::Dialer);
    let proof = frame(0, Kind::HelloProof, &forged);
    let Err(ConnError::Refused(why)) = b.on_frame(0, conn, proof) else {
        panic!("a proof under another secret is taken");
    };
    assert!(
        why.starts_with(REFUSED_AUTH) && why.contains("replica 0"),
        "{why}"
    );
    assert_eq!(refused_text(&mut b, conn), why);
    assert_eq!(b.who(conn), Peer::Unknown);
}

#[test]
fn a_replayed_or_reflected_proof_is_refused() {
    let (mut a, mut b) = (replica(0, Some(SECRET)), replica(1, Some(SECRET)));
    let (first, proof) = handshake(&mut a, &mut b, 1, 2);
    b.on_frame(0, first, proof.clone()).unwrap();
    // Replayed: the same Hello and proof on a connection with a new nonce.
    let (again, taken, _) = hello_and_answer(&mut a, &mut b, 1, 3);
    taken.unwrap();
    let Err(ConnError::Refused(why)) = b.on_frame(0, again, proof) else {
        panic!("a replayed proof is taken");
    };
    assert!(why.starts_with(REFUSED_AUTH), "{why}");
    // Reflected: the acceptor's own MAC sent back as the dialer's proof.
    let (third, taken, answer) = hello_and_answer(&mut a, &mut b, 4, 5);
    taken.unwrap();
    let ok = decode_hello(Kind::HelloOk, &answer.body).unwrap();
    let reflected = frame(0, Kind::HelloProof, &ok.mac);
    assert!(matches!(
        b.on_frame(0, third, reflected),
        Err(ConnError::Refused(_))
    ));
    assert_eq!(b.who(third), Peer::Unknown);
}

#[test]
fn no_peer_message_is_taken_before_the_proof() {
    let (mut a, mut b) = (replica(0, Some(SECRET)), replica(1, Some(SECRET)));
    let (conn, taken, _) = hello_and_answer(&mut a, &mut b, 1, 2);
    taken.unwrap();
    let waiting = frame(0, Kind::Waiting, &[0; 64]);
    let Err(ConnError::Frame(FrameError::Unexpected { kind, .. })) = b.on_frame(0, conn, waiting)
    else {
        panic!("a peer message before the proof is taken");
    };
    assert_eq!(kind, Kind::Waiting);
    assert_eq!(b.who(conn), Peer::Unknown);
    assert_eq!(b.core().stats().proposed, 0);
}

#[test]
fn a_replica_without_a_secret_and_one_with_refuse_each_other_saying_why() {
    // The dialer has none: the acceptor refuses its Hello.
    let (mut a, mut b) = (replica(0, None), replica(1, Some(SECRET)));
    let (conn, taken, answer) = hello_and_answer(&mut a, &mut b, 1, 2);
    let Err(ConnError::Refused(why)) = taken else {
        panic!("a hello without a proof is taken by a replica with a secret");
    };
    assert!(why.contains("sent no proof of the cluster secret"), "{why}");
    assert_eq!(b.who(conn), Peer::Unknown);
    let got = a
        .on_link_answer(ReplicaId(1), &answer, &mut BytesMut::new())
        .unwrap();
    assert!(
        matches!(got, LinkAnswer::Refused(ref t) if *t == why),
        "{got:?}"
    );
    // The dialer has one: the acceptor, without, refuses it too.
    let (mut a, mut b) = (replica(0, Some(SECRET)), replica(1, None));
    let (_, taken, _) = hello_and_answer(&mut a, &mut b, 1, 2);
    let Err(ConnError::Refused(why)) = taken else {
        panic!("a hello with a proof is taken by a replica without a secret");
    };
    assert!(
        why.starts_with(REFUSED_AUTH) && why.contains("this replica has none"),
        "{why}"
    );
}

#[test]
fn an_unproven_hello_cannot_contest_a_held_replica_id() {
    let (mut a, mut b) = (replica(0, Some(SECRET)), replica(1, Some(SECRET)));
    let (held, proof) = handshake(&mut a, &mut b, 1, 2);
    b.on_frame(0, held, proof).unwrap();
    outputs(&mut b);
    // Another process claiming replica 0, which proves nothing.
    let mut impostor = replica(0, Some(OTHER));
    let (_, taken, _) = hello_and_answer(&mut impostor, &mut b, 8, 9);
    taken.unwrap();
    assert!(
        !outputs(&mut b).contains(&Output::Reprobe(ReplicaId(0))),
        "an unproven hello made the link to replica 0 re-open"
    );
    assert_eq!(b.who(held), Peer::Replica(ReplicaId(0)));
}

/// A node asking for `password`, its links up, and a client connected.
fn with_password(password: &[u8]) -> (Node<MemStorage>, ConnId) {
    let mut cfg = config(1, 1, 0);
    cfg.password = Some(Secret::new(password));
    let mut node = Node::start(cfg, MemStorage::new(), 0);
    let conn = node.accept();
    node.on_frame(0, conn, client_hello(0, 1)).unwrap();
    let answer = frames_for(&mut node, conn);
    let ok = decode_hello(Kind::HelloOk, &answer[0].body).unwrap();
    assert_eq!(
        ok.auth, AUTH_PASSWORD,
        "the HelloOk says a password is asked"
    );
    outputs(&mut node);
    (node, conn)
}

fn responses(node: &mut Node<MemStorage>, conn: ConnId) -> Vec<(u64, u64, Code, Vec<u8>)> {
    frames_for(node, conn)
        .into_iter()
        .map(|f| {
            assert_eq!(f.kind, Kind::Response);
            let r = decode_response(&f.body).unwrap();
            (r.client, r.request, r.code, r.value.to_vec())
        })
        .collect()
}

#[test]
fn a_client_without_the_password_gets_no_auth_for_commands_and_admin() {
    let (mut node, conn) = with_password(b"open sesame");
    node.on_frame(1, conn, request(0, 7, 1, b"k")).unwrap();
    node.on_frame(1, conn, frame(0, Kind::Admin, b"")).unwrap();
    node.turn(2);
    let got = responses(&mut node, conn);
    let no = NO_AUTH_TEXT.as_bytes().to_vec();
    assert_eq!(
        got,
        vec![(7, 1, Code::NoAuth, no.clone()), (0, 0, Code::NoAuth, no)]
    );
    assert_eq!(node.core().stats().proposed, 0, "nothing ran");
}

#[test]
fn the_right_password_lets_commands_through() {
    let (mut node, conn) = with_password(b"open sesame");
    assert!(!node.is_authenticated(conn));
    assert!(node.check_password(b"open sesame") && !node.check_password(b"open"));
    node.on_frame(1, conn, frame(0, Kind::Auth, b"open sesame"))
        .unwrap();
    assert!(node.is_authenticated(conn));
    node.on_frame(1, conn, request(0, 7, 1, b"k")).unwrap();
    node.turn(2);
    sync(&mut node);
    let got = responses(&mut node, conn);
    assert_eq!(
        got,
        vec![(0, 0, Code::Done, vec![]), (7, 1, Code::Done, vec![])]
    );
}

#[test]
fn wrong_passwords_are_answered_and_the_last_allowed_one_closes() {
    let (mut node, conn) = with_password(b"open sesame");
    for _ in 1..AUTH_FAILURES_PER_CONNECTION_MAX {
        node.on_frame(1, conn, frame(0, Kind::Auth, b"guess"))
            .unwrap();
    }
    let last = node.on_frame(1, conn, frame(0, Kind::Auth, b"guess"));
    let Err(ConnError::Refused(why)) = last else {
        panic!("the last allowed wrong password leaves the connection open");
    };
    assert!(why.starts_with(REFUSED_AUTH), "{why}");
    assert!(outputs(&mut node).contains(&Output::Close(conn)));
    let got = responses(&mut node, conn);
    assert_eq!(got.len(), AUTH_FAILURES_PER_CONNECTION_MAX as usize);
    assert!(got.iter().all(|r| r.2 == Code::Error), "{got:?}");
    assert!(!node.is_authenticated(conn));
}

#[test]
fn a_replica_without_a_password_serves_every_client() {
    let mut node = Node::start(config(1, 1, 0), MemStorage::new(), 0);
    let conn = node.accept();
    node.on_frame(0, conn, client_hello(0, 1)).unwrap();
    assert!(node.is_authenticated(conn) && !node.password_required());
}
