//! The node alone: frames in, bytes out, nothing real underneath.

use bytes::BytesMut;

use super::*;
use crate::command::{shard_of, CommandRef, Op};
use crate::storage::MemStorage;
use crate::wire::client::{decode_response, Code, HelloBody, Role};
use crate::wire::FrameReader;

pub(crate) const CLUSTER: u64 = 9;

/// A shard's configuration for tests: replica 0 of `replicas`, no limits.
pub(crate) fn config(replicas: usize, shards: usize, shard: usize) -> NodeConfig {
    NodeConfig {
        replica: ReplicaId(0),
        replicas,
        shard,
        shards,
        cluster_id: CLUSTER,
        peers: (0..replicas)
            .map(|p| format!("127.0.0.1:{}", 7000 + 10 * p))
            .collect(),
        incarnation: 11,
        thrifty: false,
        batch_max: 64,
        pipeline: 64,
        rng_seed: 1,
        trace: false,
        injected_bug: None,
        node_bug: None,
        test_lose_write: 0,
        session_idle_ns: crate::constants::SESSION_IDLE_NS_DEFAULT,
        sessions_max: crate::constants::SESSIONS_MAX_DEFAULT,
        max_clients: usize::MAX,
        cluster_secret: None,
        password: None,
    }
}

pub(super) fn frame(shard: usize, kind: Kind, body: &[u8]) -> Frame {
    let enc = FrameEncoder {
        cluster_id: CLUSTER,
        sender: 0,
        shard: shard as u8,
    };
    enc.encoded(kind, body)
}

/// A node that started on an empty log hears from enough peers that they
/// hold nothing of its space, and takes part.
pub(super) fn peers_hold_nothing(node: &mut Node<MemStorage>) {
    let me = node.config().replica.0;
    let peers = (0..node.config().replicas as u8).filter(|&p| p != me);
    for p in peers.take((node.config().replicas - 1) / 2 + 1) {
        node.peer_knows(ReplicaId(p), 0);
    }
    assert!(!node.on_probation());
}

/// A fresh node taking part, its links to every peer up, and a client.
fn linked_with_a_client(cfg: NodeConfig) -> (Node<MemStorage>, ConnId) {
    let mut node = Node::start(cfg, MemStorage::new(), 0);
    peers_hold_nothing(&mut node);
    let (n, me) = (node.config().replicas as u8, node.config().replica.0);
    for p in (0..n).filter(|&p| p != me) {
        node.link_up(ReplicaId(p));
    }
    let conn = connected_client(&mut node, 0);
    (node, conn)
}

/// The driver's part: makes what the node asked for durable and says so.
pub(super) fn sync(node: &mut Node<MemStorage>) {
    let token = node.sync_wanted().expect("records to sync");
    node.storage_mut().make_durable(token);
    node.durable(token);
}

pub(super) fn client_hello(shard: usize, shards: u8) -> Frame {
    let hello = HelloBody {
        role: Role::Client as u8,
        shard: shard as u8,
        shards,
        ..HelloBody::default()
    };
    frame(shard, Kind::Hello, zerocopy::IntoBytes::as_bytes(&hello))
}

pub(super) fn request(shard: usize, client: u64, request: u64, key: &[u8]) -> Frame {
    let mut b = BatchBuilder::new();
    b.push(&CommandRef {
        client,
        request,
        first_outstanding: request,
        op: Op::Put,
        key,
        value: b"v",
    });
    frame(shard, Kind::Request, b.finish().bytes())
}

/// Every frame queued for `conn`, by kind.
pub(super) fn frames_for(node: &mut Node<MemStorage>, conn: ConnId) -> Vec<Frame> {
    let mut bytes = node.take_conn_bytes(conn, BytesMut::new());
    let reader = FrameReader::new(CLUSTER);
    let mut frames = Vec::new();
    while let Some(f) = reader.next(&mut bytes).unwrap() {
        frames.push(f);
    }
    frames
}

pub(super) fn outputs(node: &mut Node<MemStorage>) -> Vec<Output> {
    std::iter::from_fn(|| node.poll_output()).collect()
}

pub(super) fn connected_client(node: &mut Node<MemStorage>, shard: usize) -> ConnId {
    let conn = node.accept();
    node.on_frame(0, conn, client_hello(shard, node.config().shards as u8))
        .unwrap();
    let answer = frames_for(node, conn);
    assert_eq!(answer[0].kind, Kind::HelloOk);
    outputs(node);
    conn
}

#[test]
fn an_answer_waits_until_its_commit_record_is_durable() {
    let mut node = Node::start(config(1, 1, 0), MemStorage::new(), 0);
    let conn = connected_client(&mut node, 0);
    node.on_frame(1, conn, request(0, 7, 1, b"k")).unwrap();
    node.turn(2);
    // Committed and executed (one replica), but nothing left yet.
    assert!(frames_for(&mut node, conn).is_empty());
    assert_eq!(node.turns_held(), 1);
    let token = node.sync_wanted().expect("the commit record to sync");
    assert_eq!(node.sync_wanted(), None, "asked once");
    node.storage_mut().make_durable(token);
    node.durable(token);
    assert_eq!(outputs(&mut node), vec![Output::Conn(conn)]);
    let answers = frames_for(&mut node, conn);
    assert_eq!(answers.len(), 1);
    let r = decode_response(&answers[0].body).unwrap();
    assert_eq!((r.client, r.request, r.code), (7, 1, Code::Done));
    assert_eq!(node.awaiting_answers(), 0);
}

#[test]
fn later_turns_wait_behind_an_earlier_one_in_order() {
    let mut node = Node::start(config(1, 1, 0), MemStorage::new(), 0);
    let conn = connected_client(&mut node, 0);
    node.on_frame(1, conn, request(0, 7, 1, b"a")).unwrap();
    node.turn(2);
    let first = node.sync_wanted().unwrap();
    node.on_frame(3, conn, request(0, 7, 2, b"b")).unwrap();
    node.turn(4);
    let second = node.sync_wanted().unwrap();
    assert!(first < second);
    // The second sync completing first releases both, in order.
    node.storage_mut().make_durable(second);
    node.durable(second);
    let requests: Vec<u64> = frames_for(&mut node, conn)
        .iter()
        .map(|f| decode_response(&f.body).unwrap().request)
        .collect();
    assert_eq!(requests, vec![1, 2]);
    assert_eq!(node.turns_held(), 0);
}

#[test]
fn a_restart_rebuilds_from_what_was_durable_only() {
    let mut node = Node::start(config(1, 1, 0), MemStorage::new(), 0);
    let conn = connected_client(&mut node, 0);
    node.on_frame(1, conn, request(0, 7, 1, b"kept")).unwrap();
    node.turn(2);
    sync(&mut node);
    node.on_frame(3, conn, request(0, 7, 2, b"lost")).unwrap();
    node.turn(4);
    let mut storage = node.into_storage();
    storage.crash();
    let node = Node::start(config(1, 1, 0), storage, 10);
    assert_eq!(node.core().state_machine().len(), 1, "only the durable PUT");
}

#[test]
fn a_hello_with_another_shard_count_is_refused_with_both_values() {
    let mut node = Node::start(config(1, 2, 0), MemStorage::new(), 0);
    let conn = node.accept();
    let e = node.on_frame(0, conn, client_hello(0, 3)).unwrap_err();
    assert!(matches!(&e, ConnError::Refused(why) if why.contains('2') && why.contains('3')));
    assert!(outputs(&mut node).contains(&Output::Close(conn)));
    assert_eq!(frames_for(&mut node, conn)[0].kind, Kind::Refused);
}

#[test]
fn a_bad_frame_is_refused_and_counted_and_never_reaches_the_core() {
    let mut node = Node::start(config(1, 1, 0), MemStorage::new(), 0);
    let conn = connected_client(&mut node, 0);
    let e = node
        .on_frame(1, conn, frame(0, Kind::Request, &[1, 2, 3]))
        .unwrap_err();
    assert!(matches!(e, ConnError::Frame(_)));
    let e = node
        .on_frame(1, conn, frame(0, Kind::Commit, &[0; 8]))
        .unwrap_err();
    assert!(matches!(e, ConnError::Frame(_)));
    assert_eq!(node.admin_info().bad_frames.get(), 2);
    assert_eq!(node.core().stats().proposed, 0);
}

#[test]
fn a_command_for_another_shard_is_forwarded_and_its_answer_comes_back() {
    let key = (0u32..)
        .map(|i| format!("key{i}").into_bytes())
        .find(|k| shard_of(k, 2) == 1)
        .unwrap();
    let mut front = Node::start(config(1, 2, 0), MemStorage::new(), 0);
    let mut owner = Node::start(config(1, 2, 1), MemStorage::new(), 0);
    let conn = connected_client(&mut front, 0);
    front.on_frame(1, conn, request(0, 7, 1, &key)).unwrap();
    front.turn(1);
    assert_eq!(outputs(&mut front), vec![Output::Cross(1)]);
    assert_eq!(front.core().stats().proposed, 0, "not the owner");
    for msg in front.take_cross(1, Vec::new()) {
        owner.on_cross(msg);
    }
    owner.turn(2);
    sync(&mut owner);
    assert_eq!(outputs(&mut owner), vec![Output::Cross(0)]);
    let answers = owner.take_cross(0, Vec::new());
    assert_eq!(answers.len(), 1);
    for msg in answers {
        front.on_cross(msg);
    }
    let r = decode_response(&frames_for(&mut front, conn)[0].body).unwrap();
    assert_eq!((r.client, r.request, r.code), (7, 1, Code::Done));
}

#[test]
fn the_pipeline_limit_holds_a_partial_batch_while_instances_are_in_flight() {
    let mut cfg = config(3, 1, 0);
    cfg.pipeline = 1;
    let (mut node, conn) = linked_with_a_client(cfg);
    node.on_frame(1, conn, request(0, 7, 1, b"a")).unwrap();
    node.turn(1);
    node.on_frame(2, conn, request(0, 7, 2, b"b")).unwrap();
    node.turn(2);
    // No peer answered: the first instance is in flight, the second waits.
    assert_eq!(node.core().proposals_in_flight(), 1);
    assert_eq!(node.core().stats().proposed, 1);
}

#[test]
fn messages_for_a_peer_whose_link_is_down_are_dropped_and_counted() {
    let mut node = Node::start(config(3, 1, 0), MemStorage::new(), 0);
    peers_hold_nothing(&mut node);
    node.link_up(ReplicaId(1));
    let conn = connected_client(&mut node, 0);
    node.on_frame(1, conn, request(0, 7, 1, b"a")).unwrap();
    node.turn(1);
    sync(&mut node);
    assert_eq!(outputs(&mut node), vec![Output::Link(ReplicaId(1))]);
    assert!(!node
        .take_link_bytes(ReplicaId(1), BytesMut::new())
        .is_empty());
    assert_eq!(
        node.admin_info().dropped_messages.get(),
        1,
        "the PreAccept to replica 2"
    );
}

#[test]
fn a_link_that_comes_back_is_announced_again_even_if_the_old_one_was_never_drained() {
    let mut node = Node::start(config(3, 1, 0), MemStorage::new(), 0);
    peers_hold_nothing(&mut node);
    node.link_up(ReplicaId(1));
    node.link_up(ReplicaId(2));
    let conn = connected_client(&mut node, 0);
    node.on_frame(1, conn, request(0, 7, 1, b"a")).unwrap();
    node.turn(1);
    sync(&mut node);
    assert!(outputs(&mut node).contains(&Output::Link(ReplicaId(1))));
    // The driver lost the link before it took the bytes (its send was in
    // flight), then connected again.
    node.link_down(ReplicaId(1));
    node.link_up(ReplicaId(1));
    node.on_frame(2, conn, request(0, 7, 2, b"b")).unwrap();
    node.turn(2);
    sync(&mut node);
    assert!(
        outputs(&mut node).contains(&Output::Link(ReplicaId(1))),
        "the new link's bytes must be announced, or they are never sent"
    );
    assert!(!node
        .take_link_bytes(ReplicaId(1), BytesMut::new())
        .is_empty());
}

#[test]
fn on_a_storage_that_syncs_at_once_the_answer_leaves_within_the_turn() {
    let mut node = Node::start(config(1, 1, 0), crate::storage::Volatile::default(), 0);
    let conn = node.accept();
    node.on_frame(0, conn, client_hello(0, 1)).unwrap();
    node.take_conn_bytes(conn, BytesMut::new());
    node.on_frame(1, conn, request(0, 7, 1, b"k")).unwrap();
    node.turn(2);
    assert_eq!(node.sync_wanted(), None);
    assert_eq!(node.turns_held(), 0);
    let mut bytes = node.take_conn_bytes(conn, BytesMut::new());
    let answer = FrameReader::new(CLUSTER).next(&mut bytes).unwrap().unwrap();
    assert_eq!(decode_response(&answer.body).unwrap().code, Code::Done);
}

/// A storage whose next sync completes at once only when told.
struct Switching {
    inner: MemStorage,
    at_once: bool,
}

impl Storage for Switching {
    fn append(&mut self, records: &[crate::protocol::Record]) -> Token {
        self.inner.append(records)
    }

    fn sync(&mut self, upto: Token) -> crate::storage::Synced {
        if self.at_once {
            self.inner.make_durable(upto);
            return crate::storage::Synced::Now;
        }
        crate::storage::Synced::Later
    }

    fn load(&mut self) -> Vec<crate::protocol::Record> {
        self.inner.load()
    }
}

#[test]
fn a_sync_that_completes_at_once_releases_the_turns_held_before_it() {
    let storage = Switching {
        inner: MemStorage::new(),
        at_once: false,
    };
    let mut node = Node::start(config(1, 1, 0), storage, 0);
    let conn = node.accept();
    node.on_frame(0, conn, client_hello(0, 1)).unwrap();
    node.take_conn_bytes(conn, BytesMut::new());
    node.on_frame(1, conn, request(0, 7, 1, b"a")).unwrap();
    node.turn(2);
    assert_eq!(node.turns_held(), 1, "its sync completes later");
    // The driver has not been asked yet when the next sync completes at
    // once: it covers the first turn's records too.
    node.storage_mut().at_once = true;
    node.on_frame(3, conn, request(0, 7, 2, b"b")).unwrap();
    node.turn(4);
    assert_eq!(node.turns_held(), 0);
    assert_eq!(node.sync_wanted(), None);
    let mut bytes = node.take_conn_bytes(conn, BytesMut::new());
    let reader = FrameReader::new(CLUSTER);
    let mut answered = Vec::new();
    while let Some(f) = reader.next(&mut bytes).unwrap() {
        answered.push(decode_response(&f.body).unwrap().request);
    }
    assert_eq!(answered, vec![1, 2]);
}

/// The frames queued for the link to `peer`, by kind.
fn link_kinds(node: &mut Node<MemStorage>, peer: u8) -> Vec<Kind> {
    let mut bytes = node.take_link_bytes(ReplicaId(peer), BytesMut::new());
    let reader = FrameReader::new(CLUSTER);
    std::iter::from_fn(|| reader.next(&mut bytes).unwrap())
        .map(|f| f.kind)
        .collect()
}

#[test]
fn a_preaccept_on_a_durably_reserved_slot_leaves_before_its_record() {
    let (mut node, conn) = linked_with_a_client(config(3, 1, 0));
    // Nothing reserved yet: the first PreAccept waits for its record (and
    // for the reservation the same turn appends).
    node.on_frame(1, conn, request(0, 7, 1, b"a")).unwrap();
    node.turn(1);
    assert!(link_kinds(&mut node, 1).is_empty());
    sync(&mut node);
    assert_eq!(link_kinds(&mut node, 1), vec![Kind::PreAccept]);
    // Slot 2 is reserved now: its PreAccept leaves within the turn, while
    // its record is still to be made durable.
    node.on_frame(2, conn, request(0, 7, 2, b"b")).unwrap();
    node.turn(2);
    assert_eq!(link_kinds(&mut node, 1), vec![Kind::PreAccept]);
    assert!(node.sync_wanted().is_some(), "its record is not durable");
    // A crash loses that record. The restarted shard knows slot 2 taken:
    // it proposes above the reservation and recovers the reserved slots
    // it holds no vote for (slot 2 among them).
    let mut storage = node.into_storage();
    storage.crash();
    let node = Node::start(config(3, 1, 0), storage, 10);
    let reserved = 2 + crate::constants::SLOT_RESERVATION_AHEAD;
    assert_eq!(node.core().next_slot(), reserved + 1);
    let slot2 = crate::protocol::InstanceId::new(ReplicaId(0), 2);
    assert_eq!(node.core().status(slot2), crate::protocol::Status::None);
    assert_eq!(
        node.core().proposals_in_flight() as u64,
        reserved,
        "slot 1 (pre-accepted) and slots 2 to {reserved} (reserved)"
    );
}

#[test]
fn a_vote_never_leaves_before_its_record_even_on_a_reserved_slot() {
    // Replica 1 leads a command; replica 0's PreAcceptOk is a vote.
    let mut leader_cfg = config(3, 1, 0);
    leader_cfg.replica = ReplicaId(1);
    let mut leader = Node::start(leader_cfg, MemStorage::new(), 0);
    peers_hold_nothing(&mut leader);
    leader.link_up(ReplicaId(0));
    let conn = connected_client(&mut leader, 0);
    leader.on_frame(1, conn, request(0, 7, 1, b"a")).unwrap();
    leader.turn(1);
    sync(&mut leader);
    let mut to_acceptor = leader.take_link_bytes(ReplicaId(0), BytesMut::new());
    let mut node = Node::start(config(3, 1, 0), MemStorage::new(), 0);
    peers_hold_nothing(&mut node);
    node.link_up(ReplicaId(1));
    let peer = node.accept();
    let mut hello = BytesMut::new();
    leader.link_hello(ReplicaId(0), Nonce::default(), &mut hello);
    let reader = FrameReader::new(CLUSTER);
    node.on_frame(1, peer, reader.next(&mut hello).unwrap().unwrap())
        .unwrap();
    node.take_conn_bytes(peer, BytesMut::new());
    let pre_accept = reader.next(&mut to_acceptor).unwrap().unwrap();
    assert_eq!(pre_accept.kind, Kind::PreAccept);
    node.on_frame(2, peer, pre_accept).unwrap();
    node.turn(2);
    assert!(link_kinds(&mut node, 1).is_empty(), "the PreAcceptOk waits");
    sync(&mut node);
    assert_eq!(link_kinds(&mut node, 1), vec![Kind::PreAcceptOk]);
}

#[test]
fn a_replica_that_starts_empty_waits_for_its_peers_and_refuses_if_one_holds_its_instances() {
    // On probation: no proposal, no vote, until a majority of its peers
    // said they hold nothing of its space.
    let mut node = Node::start(config(5, 1, 0), MemStorage::new(), 0);
    assert!(node.on_probation());
    let conn = connected_client(&mut node, 0);
    node.on_frame(1, conn, request(0, 7, 1, b"a")).unwrap();
    node.turn(1);
    assert_eq!(node.core().stats().proposed, 0, "no proposal on probation");
    node.peer_knows(ReplicaId(1), 0);
    node.peer_knows(ReplicaId(2), 0);
    assert!(
        node.on_probation(),
        "two peers of four may be exactly the two that never heard of it"
    );
    node.peer_knows(ReplicaId(3), 0);
    assert!(!node.on_probation());
    node.turn(2);
    assert_eq!(node.core().stats().proposed, 1, "the waiting command goes");

    // Another empty start, and a peer holds slot 3 of its space: refused,
    // and its clients are told so.
    let mut node = Node::start(config(3, 1, 0), MemStorage::new(), 0);
    let conn = connected_client(&mut node, 0);
    node.on_frame(1, conn, request(0, 7, 1, b"a")).unwrap();
    node.peer_knows(ReplicaId(2), 3);
    assert!(node.refused());
    let why = node.failed().unwrap().to_string();
    assert!(
        why.contains("replica 2 holds instances of this replica's space up to slot 3"),
        "{why}"
    );
    let answers = frames_for(&mut node, conn);
    let r = decode_response(&answers[0].body).unwrap();
    assert_eq!(r.code, Code::Unavailable);
}

#[test]
fn a_replica_whose_log_lost_its_tail_is_refused_when_a_peer_holds_more() {
    // A restarted shard whose log names slots up to 4 (the next is 5) while
    // a peer holds slot 5: part of its log is gone.
    let mut storage = MemStorage::new();
    let id = crate::protocol::InstanceId::new(ReplicaId(0), 4);
    let token = storage.append(&[crate::protocol::Record::reservation(id)]);
    storage.make_durable(token);
    let mut node = Node::start(config(3, 1, 0), storage, 0);
    assert!(!node.on_probation(), "its log is not empty");
    node.peer_knows(ReplicaId(1), 4);
    assert!(!node.refused(), "a peer may hold every slot the log names");
    node.peer_knows(ReplicaId(2), 5);
    assert!(node.refused());
}

/// Shard 0 of replica `from` (incarnation `incarnation`) opens a link to
/// the node: its Hello, as the node config encodes it.
fn peer_hello(from: u8, incarnation: u64, peers: Vec<String>) -> Frame {
    let mut cfg = config(3, 1, 0);
    cfg.replica = ReplicaId(from);
    cfg.incarnation = incarnation;
    cfg.peers = peers;
    let mut buf = BytesMut::new();
    cfg.encode_hello(&mut buf, Nonce::default());
    FrameReader::new(CLUSTER).next(&mut buf).unwrap().unwrap()
}

pub(super) fn refused_text(node: &mut Node<MemStorage>, conn: ConnId) -> String {
    let answer = frames_for(node, conn);
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].kind, Kind::Refused);
    String::from_utf8(answer[0].body.to_vec()).unwrap()
}

#[test]
fn a_peer_with_its_peer_list_in_another_order_is_refused_naming_both_lists() {
    let cfg = config(3, 1, 0);
    let mut swapped = cfg.peers.clone();
    swapped.swap(0, 1);
    let mut node = Node::start(cfg.clone(), MemStorage::new(), 0);
    let conn = node.accept_from("127.0.0.1:40000".into(), Nonce::default());
    let Err(ConnError::Refused(why)) = node.on_frame(0, conn, peer_hello(2, 5, swapped)) else {
        panic!("a hello with a swapped peer list is accepted");
    };
    assert_eq!(refused_text(&mut node, conn), why);
    assert!(
        why.starts_with(crate::wire::client::REFUSED_CONFIG),
        "{why}"
    );
    let mine = "--peers 127.0.0.1:7000,127.0.0.1:7010,127.0.0.1:7020";
    let theirs = "--peers 127.0.0.1:7010,127.0.0.1:7000,127.0.0.1:7020";
    assert!(why.contains(mine) && why.contains(theirs), "{why}");
    assert!(
        why.contains("entry 0: \"127.0.0.1:7000\" here, \"127.0.0.1:7010\" at replica 2"),
        "{why}"
    );
    assert!(outputs(&mut node).contains(&Output::Close(conn)));
    assert_eq!(node.who(conn), Peer::Unknown);
    // The same list is taken.
    let ok = node.accept();
    node.on_frame(0, ok, peer_hello(2, 5, cfg.peers)).unwrap();
    assert_eq!(node.who(ok), Peer::Replica(ReplicaId(2)));
}

#[test]
fn a_second_process_with_a_replica_id_is_refused_then_told_it_is_the_duplicate() {
    let cfg = config(3, 1, 0);
    let mut node = Node::start(cfg.clone(), MemStorage::new(), 0);
    // Our link to replica 2's advertised address answers as incarnation 100.
    node.link_up(ReplicaId(2));
    node.peer_incarnation(ReplicaId(2), 100);
    let first = node.accept_from("127.0.0.1:40001".into(), Nonce::default());
    node.on_frame(0, first, peer_hello(2, 100, cfg.peers.clone()))
        .unwrap();
    outputs(&mut node);
    // A second process claims id 2 while the first's connection is open.
    // The link's answer predates it: refused for now, the link re-opened.
    let second = node.accept_from("127.0.0.1:40002".into(), Nonce::default());
    let Err(ConnError::Refused(why)) =
        node.on_frame(0, second, peer_hello(2, 200, cfg.peers.clone()))
    else {
        panic!("a second incarnation is accepted while the first is connected");
    };
    assert!(
        why.starts_with(crate::wire::client::REFUSED_CONTESTED),
        "{why}"
    );
    assert!(
        why.contains("127.0.0.1:40001") && why.contains("127.0.0.1:40002"),
        "{why}"
    );
    assert!(outputs(&mut node).contains(&Output::Reprobe(ReplicaId(2))));
    // The re-opened link finds the first process at the address: the
    // second, trying again, is the duplicate.
    node.link_down(ReplicaId(2));
    node.link_up(ReplicaId(2));
    node.peer_incarnation(ReplicaId(2), 100);
    let again = node.accept_from("127.0.0.1:40003".into(), Nonce::default());
    let Err(ConnError::Refused(why)) =
        node.on_frame(0, again, peer_hello(2, 200, cfg.peers.clone()))
    else {
        panic!("the duplicate is accepted");
    };
    assert!(
        why.starts_with(crate::wire::client::REFUSED_DUPLICATE),
        "{why}"
    );
    assert!(
        why.contains("127.0.0.1:40001") && why.contains("127.0.0.1:40003"),
        "{why}"
    );
    assert_eq!(refused_text(&mut node, again), why);
    // The first keeps its place.
    assert_eq!(node.who(first), Peer::Replica(ReplicaId(2)));
    assert!(!outputs(&mut node).contains(&Output::Close(first)));
}

#[test]
fn a_restarted_replica_replaces_its_old_connection_once_seen_at_its_address() {
    let cfg = config(3, 1, 0);
    let mut node = Node::start(cfg.clone(), MemStorage::new(), 0);
    node.link_up(ReplicaId(1));
    node.peer_incarnation(ReplicaId(1), 100);
    let old = node.accept();
    node.on_frame(0, old, peer_hello(1, 100, cfg.peers.clone()))
        .unwrap();
    // Replica 1 restarted (incarnation 300); its old connection still
    // looks open here.
    let new = node.accept();
    assert!(node
        .on_frame(0, new, peer_hello(1, 300, cfg.peers.clone()))
        .is_err());
    assert!(outputs(&mut node).contains(&Output::Reprobe(ReplicaId(1))));
    node.link_down(ReplicaId(1));
    node.link_up(ReplicaId(1));
    node.peer_incarnation(ReplicaId(1), 300);
    let retry = node.accept();
    node.on_frame(0, retry, peer_hello(1, 300, cfg.peers.clone()))
        .unwrap();
    assert_eq!(node.who(retry), Peer::Replica(ReplicaId(1)));
    assert!(outputs(&mut node).contains(&Output::Close(old)));
    // And once a holder's connection closed, a new incarnation is taken at
    // once, whatever the link knows.
    node.closed(old);
    node.closed(retry);
    let later = node.accept();
    node.on_frame(0, later, peer_hello(1, 400, cfg.peers))
        .unwrap();
    assert_eq!(node.who(later), Peer::Replica(ReplicaId(1)));
}

#[test]
fn a_shard_refused_for_its_configuration_by_most_peers_answers_unavailable() {
    let (mut node, conn) = linked_with_a_client(config(3, 1, 0));
    let why = "configuration mismatch: shard count: this replica runs 1 shards (--cores), \
               replica 0 says 2";
    // One peer of two refusing leaves a quorum: it serves.
    assert_eq!(node.link_refused(ReplicaId(1), why), None);
    assert_eq!(node.misconfigured(), None);
    let cannot = node.link_refused(ReplicaId(2), why).expect("cannot serve");
    assert!(
        cannot.contains("2 of its 2 peers") && cannot.contains("runs 1 shards"),
        "{cannot}"
    );
    node.on_frame(0, conn, request(0, 7, 1, b"k")).unwrap();
    let answer = frames_for(&mut node, conn);
    let r = decode_response(&answer[0].body).unwrap();
    assert_eq!(r.code, Code::Unavailable);
    assert!(
        String::from_utf8_lossy(&r.value).contains("says 2"),
        "{r:?}"
    );
    // Other refusals are not counted; a link that comes up clears its own.
    assert_eq!(
        node.link_refused(ReplicaId(1), "shard 0 stopped: disk full"),
        None
    );
    node.link_up(ReplicaId(2));
    assert_eq!(node.misconfigured(), None);
}

#[test]
fn a_backed_up_link_sheds_whole_frames_and_never_queues_past_its_bound() {
    // Nobody drains the links (a peer stopped mid-run): 40 PreAccepts of
    // 512 KiB each are four times what one link may hold.
    let (mut node, conn) = linked_with_a_client(config(3, 1, 0));
    let value = vec![7u8; 512 << 10];
    for r in 1..=40u64 {
        let mut b = BatchBuilder::new();
        let key = format!("k{r}");
        b.push(&CommandRef {
            client: 7,
            request: r,
            first_outstanding: 1,
            op: Op::Put,
            key: key.as_bytes(),
            value: &value,
        });
        node.on_frame(r, conn, frame(0, Kind::Request, b.finish().bytes()))
            .unwrap();
        node.turn(r);
        sync(&mut node);
    }
    let dropped = node.admin_info().dropped_messages.get();
    assert!(dropped > 0, "some PreAccepts were shed");
    let mut kept = 0;
    for peer in [1u8, 2] {
        let mut bytes = node.take_link_bytes(ReplicaId(peer), BytesMut::new());
        assert!(
            bytes.len() <= crate::constants::PEER_SEND_BUFFER_BYTES_MAX,
            "{} bytes queued for replica {peer}",
            bytes.len()
        );
        // Whole frames only, back to back to the end.
        let reader = FrameReader::new(CLUSTER);
        while let Some(f) = reader.next(&mut bytes).unwrap() {
            kept += u64::from(f.kind == Kind::PreAccept);
        }
        assert!(bytes.is_empty(), "a partial frame was queued");
    }
    assert!(
        kept + dropped >= 80,
        "every PreAccept kept or counted as dropped"
    );
}

/// One command of client 7 through a one-replica node, made durable:
/// the code and value it is answered with.
fn one_command(
    node: &mut Node<MemStorage>,
    conn: ConnId,
    request: u64,
    op: Op,
    key: &[u8],
    value: &[u8],
) -> (Code, Vec<u8>) {
    let mut b = BatchBuilder::new();
    b.push(&CommandRef {
        client: 7,
        request,
        first_outstanding: request,
        op,
        key,
        value,
    });
    node.on_frame(request, conn, frame(0, Kind::Request, b.finish().bytes()))
        .unwrap();
    node.turn(request);
    if let Some(token) = node.sync_wanted() {
        node.storage_mut().make_durable(token);
        node.durable(token);
    }
    outputs(node);
    let answers = frames_for(node, conn);
    assert_eq!(answers.len(), 1, "{op:?} answered once");
    let r = decode_response(&answers[0].body).unwrap();
    assert_eq!((r.client, r.request), (7, request));
    (r.code, r.value.to_vec())
}

#[test]
fn incr_and_conditional_puts_answer_with_their_own_codes() {
    let mut node = Node::start(config(1, 1, 0), MemStorage::new(), 0);
    let conn = connected_client(&mut node, 0);
    let by = |n: i64| n.to_le_bytes();
    let mut run = |request, op, key: &[u8], value: &[u8]| {
        one_command(&mut node, conn, request, op, key, value)
    };
    assert_eq!(
        run(1, Op::Incr, b"n", &by(5)),
        (Code::Integer, by(5).to_vec())
    );
    // A retry of the same request is answered from the session, not added.
    assert_eq!(
        run(1, Op::Incr, b"n", &by(5)),
        (Code::Integer, by(5).to_vec())
    );
    assert_eq!(
        run(2, Op::Incr, b"n", &by(-7)),
        (Code::Integer, by(-2).to_vec())
    );
    assert_eq!(run(3, Op::Get, b"n", b""), (Code::Value, b"-2".to_vec()));
    assert_eq!(run(4, Op::PutIfAbsent, b"n", b"x"), (Code::NotDone, vec![]));
    assert_eq!(run(5, Op::PutIfPresent, b"n", b"x"), (Code::Done, vec![]));
    let not_an_integer = (Code::Error, routes::NOT_AN_INTEGER.to_vec());
    assert_eq!(run(6, Op::Incr, b"n", &by(1)), not_an_integer);
    assert_eq!(run(7, Op::Delete, b"n", b""), (Code::Done, vec![]));
    assert_eq!(run(8, Op::Delete, b"n", b""), (Code::NotFound, vec![]));
    assert_eq!(
        run(9, Op::PutIfPresent, b"n", b"y"),
        (Code::NotDone, vec![])
    );
    assert_eq!(run(10, Op::PutIfAbsent, b"n", b"y"), (Code::Done, vec![]));
    assert_eq!(run(11, Op::Get, b"n", b""), (Code::Value, b"y".to_vec()));
}

mod resp;
