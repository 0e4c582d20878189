//! RESP connections on the node alone: order, window, MSET atomicity,
//! sessions that expire.

use super::*;
use crate::constants::CLIENT_WINDOW_REQUESTS_MAX;
use crate::protocol::TraceEvent;

fn key_on(shard: usize, shards: usize, nth: usize) -> String {
    (0..)
        .map(|i| format!("key{i}"))
        .filter(|k| shard_of(k.as_bytes(), shards) == shard)
        .nth(nth)
        .unwrap()
}

fn resp_client(node: &mut Node<MemStorage>, client: u64) -> ConnId {
    node.accept_resp("test".into(), client).unwrap()
}

/// Feeds every byte of `bytes` that the node takes; what it left.
fn feed(node: &mut Node<MemStorage>, conn: ConnId, bytes: &[u8]) -> usize {
    let fed = node.on_resp_bytes(0, conn, bytes).unwrap();
    bytes.len() - fed.consumed
}

fn replies(node: &mut Node<MemStorage>, conn: ConnId) -> String {
    let b = node.take_conn_bytes(conn, BytesMut::new());
    String::from_utf8_lossy(&b).into_owned()
}

fn durable_all(node: &mut Node<MemStorage>) {
    let t = node.appended;
    node.storage_mut().make_durable(t);
    node.durable(t);
}

#[test]
fn replies_keep_the_order_of_commands_across_shards() {
    let (k0, k1) = (key_on(0, 2, 0), key_on(1, 2, 0));
    let mut front = Node::start(config(1, 2, 0), MemStorage::new(), 0);
    let mut owner = Node::start(config(1, 2, 1), MemStorage::new(), 0);
    let conn = resp_client(&mut front, 7);
    let cmds = format!("SET {k1} a\r\nSET {k0} b\r\nGET {k0}\r\nPING\r\n");
    assert_eq!(feed(&mut front, conn, cmds.as_bytes()), 0);
    front.turn(1);
    durable_all(&mut front);
    // k0's answers are in, k1's is not: nothing may be written yet.
    assert_eq!(replies(&mut front, conn), "");
    for msg in front.take_cross(1, Vec::new()) {
        owner.on_cross(msg);
    }
    owner.turn(2);
    durable_all(&mut owner);
    for msg in owner.take_cross(0, Vec::new()) {
        front.on_cross(msg);
    }
    assert_eq!(
        replies(&mut front, conn),
        "+OK\r\n+OK\r\n$1\r\nb\r\n+PONG\r\n"
    );
}

#[test]
fn commands_past_the_window_wait_and_resume() {
    let mut node = Node::start(config(1, 1, 0), MemStorage::new(), 0);
    let conn = resp_client(&mut node, 7);
    let n = CLIENT_WINDOW_REQUESTS_MAX as usize + 10;
    let cmds: String = (0..n).map(|i| format!("SET k{i} v\r\n")).collect();
    let left = feed(&mut node, conn, cmds.as_bytes());
    assert_eq!(
        left,
        10 * "SET kNNNN v\r\n".len(),
        "the window's worth read"
    );
    assert!(!outputs(&mut node).contains(&Output::Resume(conn)));
    node.turn(1);
    durable_all(&mut node);
    assert!(outputs(&mut node).contains(&Output::Resume(conn)));
    assert_eq!(
        feed(&mut node, conn, &cmds.as_bytes()[cmds.len() - left..]),
        0
    );
    node.turn(2);
    durable_all(&mut node);
    assert_eq!(replies(&mut node, conn), "+OK\r\n".repeat(n));
    // A command of more keys than the window is refused, not held.
    let keys: String = (0..n).map(|i| format!(" k{i}")).collect();
    assert_eq!(
        feed(&mut node, conn, format!("DEL{keys}\r\n").as_bytes()),
        0
    );
    assert!(replies(&mut node, conn).starts_with("-ERR 1034 keys in one command"));
}

#[test]
fn an_mset_goes_whole_into_one_instance() {
    let mut cfg = config(1, 1, 0);
    cfg.batch_max = 4;
    cfg.trace = true;
    let mut node = Node::start(cfg, MemStorage::new(), 0);
    let conn = resp_client(&mut node, 7);
    // Two SETs in the open batch, then an MSET of three: split at the
    // batch limit, its puts would straddle two instances.
    let cmds = "SET a 1\r\nSET b 1\r\nMSET m1 x m2 y m3 z\r\n";
    assert_eq!(feed(&mut node, conn, cmds.as_bytes()), 0);
    node.turn(1);
    durable_all(&mut node);
    assert_eq!(replies(&mut node, conn), "+OK\r\n+OK\r\n+OK\r\n");
    let batches: Vec<Vec<Vec<u8>>> = node
        .take_trace()
        .filter_map(|e| match e {
            TraceEvent::Committed { batch, .. } => {
                Some(batch.iter().map(|c| c.key.to_vec()).collect())
            }
            _ => None,
        })
        .collect();
    let with_m: Vec<_> = batches
        .iter()
        .filter(|b| b.iter().any(|k| k.starts_with(b"m")))
        .collect();
    assert_eq!(with_m.len(), 1, "{batches:?}");
    assert_eq!(with_m[0].iter().filter(|k| k.starts_with(b"m")).count(), 3);
}

#[test]
fn an_expired_session_sends_the_commands_again_under_a_fresh_id() {
    let mut cfg = config(1, 1, 0);
    cfg.session_idle_ns = 1_000_000;
    let mut node = Node::start(cfg, MemStorage::new(), 0);
    let conn = resp_client(&mut node, 7);
    feed(&mut node, conn, b"SET a 1\r\n");
    node.turn(1);
    durable_all(&mut node);
    assert_eq!(replies(&mut node, conn), "+OK\r\n");
    // Idle past the bound: the session is expired.
    let s = 1_000_000_000;
    node.turn(s);
    durable_all(&mut node);
    node.turn(2 * s);
    durable_all(&mut node);
    assert_eq!(node.core().client_sessions(), 0);
    outputs(&mut node);
    feed(&mut node, conn, b"SET a 2\r\nINCR n\r\nGET a\r\n");
    node.turn(3 * s);
    durable_all(&mut node);
    let asked = outputs(&mut node)
        .into_iter()
        .find_map(|o| match o {
            Output::ClientId { conn: c, above } if c == conn => Some(above),
            _ => None,
        })
        .expect("a fresh id asked for");
    assert!(asked > 7);
    assert_eq!(replies(&mut node, conn), "", "nothing ran");
    node.resp_client_id(conn, asked + 3);
    node.turn(4 * s);
    durable_all(&mut node);
    assert_eq!(replies(&mut node, conn), "+OK\r\n:1\r\n$1\r\n2\r\n");
}
