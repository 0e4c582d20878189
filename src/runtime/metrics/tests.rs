//! The published block and its exposition, on a node with nothing real
//! underneath: a one-replica node on `MemStorage` takes a client's
//! commands, publishes, and the text is parsed with a Prometheus text
//! parser (`prometheus-parse`).

use bytes::BytesMut;
use prometheus_parse::{LineInfo, Sample, Scrape, Value};

use super::expose::{health, text};
use super::*;
use crate::client::Session;
use crate::command::Op;
use crate::node::tests::{config, CLUSTER};
use crate::node::ConnId;
use crate::protocol::ReplicaId;
use crate::storage::MemStorage;
use crate::wire::FrameReader;

fn node(replicas: usize) -> Node<MemStorage> {
    Node::start(config(replicas, 1, 0), MemStorage::new(), 0)
}

/// Feeds every frame in `bytes` to the node on `conn`.
fn feed(node: &mut Node<MemStorage>, conn: ConnId, mut bytes: BytesMut) {
    let reader = FrameReader::new(CLUSTER);
    while let Some(f) = reader.next(&mut bytes).unwrap() {
        node.on_frame(1, conn, f).unwrap();
    }
}

/// Client `client` on `node` sends `n` PUTs of its own keys in one
/// request; the turn that proposes (and, alone, commits) them.
fn client_puts(node: &mut Node<MemStorage>, client: u64, n: usize) {
    let mut session = Session::new(client, CLUSTER, 0);
    let conn = node.accept();
    let mut buf = BytesMut::new();
    session.hello(&mut buf);
    feed(node, conn, buf);
    let mut buf = BytesMut::new();
    for i in 0..n {
        session
            .queue(Op::Put, format!("{client}-{i}").as_bytes(), b"v")
            .unwrap();
    }
    session.encode(&mut buf);
    feed(node, conn, buf);
    node.turn(2);
    let token = node.sync_wanted().expect("records");
    node.storage_mut().make_durable(token);
    node.durable(token);
}

/// The exposition, parsed. The parser skips lines it cannot read, so each
/// line is checked first to be a HELP, TYPE or sample line whose value is a
/// number.
fn scrape(m: &Arc<Metrics>) -> Scrape {
    let body = text(m);
    for line in body.lines() {
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } | LineInfo::Type { .. } => {}
            LineInfo::Sample { value, .. } => {
                let v = value.parse::<f64>();
                assert!(
                    v.is_ok() || value == "+Inf",
                    "{line:?}: its value is not a number"
                );
            }
            other => panic!("the parser skips {line:?} ({other:?})"),
        }
    }
    if std::env::var_os("EPAXOS_PRINT_METRICS").is_some() {
        println!("{body}");
    }
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

fn samples<'a>(s: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    s.samples.iter().filter(|x| x.metric == name).collect()
}

fn counter(s: &Scrape, name: &str, shard: &str) -> f64 {
    let found = samples(s, name);
    let x = found
        .iter()
        .find(|x| x.labels.get("shard") == Some(shard))
        .unwrap_or_else(|| panic!("no {name}{{shard={shard:?}}} in {:?}", s.samples));
    match x.value {
        Value::Counter(v) | Value::Gauge(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn the_exposition_parses_with_names_types_and_labels() {
    let m = Metrics::new(0, 3, 2);
    let n = node(3);
    let mut p0 = m.publisher(0);
    p0.publish(&n, [false, true, false].into_iter(), false);
    // Shard 1 never published: it is left out, not shown as zeros.
    let s = scrape(&m);
    for metric in Scalar::ALL {
        let (name, ty, help) = metric.spec();
        let full = match ty {
            Type::Counter => format!("epaxos_{name}_total"),
            Type::CounterBytes => format!("epaxos_{name}_bytes_total"),
            Type::Gauge => format!("epaxos_{name}"),
        };
        let found = samples(&s, &full);
        assert_eq!(found.len(), 1, "{full}: {found:?}");
        assert_eq!(found[0].labels.get("shard"), Some("0"));
        let is_counter = matches!(found[0].value, Value::Counter(_));
        assert_eq!(is_counter, ty != Type::Gauge, "{full}");
        assert_eq!(
            s.docs.get(&full).map(String::as_str),
            Some(help),
            "{full}'s help"
        );
    }
    // One sample per peer, this replica (0) left out.
    let links = samples(&s, "epaxos_peer_link_up");
    let peers: Vec<(&str, f64)> = links
        .iter()
        .map(|x| match x.value {
            Value::Gauge(v) => (x.labels.get("peer").unwrap(), v),
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(peers, [("1", 1.0), ("2", 0.0)]);
    for h in [
        "epaxos_batch_commands",
        "epaxos_commit_latency_seconds",
        "epaxos_log_fsync_seconds",
    ] {
        let found = samples(&s, h);
        assert_eq!(found.len(), 1, "{h}");
        let Value::Histogram(ref buckets) = found[0].value else {
            panic!("{h} is not a histogram: {:?}", found[0].value);
        };
        assert_eq!(buckets.last().unwrap().less_than, f64::INFINITY, "{h}");
    }
    // On probation and without a quorum: unhealthy, with the reasons.
    assert_eq!(counter(&s, "epaxos_shard_healthy", "0"), 0.0);
    let why = health(&m).unwrap_err();
    assert!(why.contains("shard 0: on probation"), "{why}");
    assert!(why.contains("shard 1: starting"), "{why}");
}

#[test]
fn counters_and_histograms_move_after_commands() {
    let m = Metrics::new(0, 1, 1);
    let mut n = node(1);
    let mut p = m.publisher(0);
    p.publish(&n, std::iter::empty(), false);
    let before = scrape(&m);
    assert_eq!(counter(&before, "epaxos_commands_proposed_total", "0"), 0.0);
    assert_eq!(health(&m), Ok(()), "one replica is its own quorum");
    client_puts(&mut n, 41, 5);
    client_puts(&mut n, 42, 3);
    // Not published yet: the scrape still shows the old numbers.
    assert_eq!(
        counter(&scrape(&m), "epaxos_commands_proposed_total", "0"),
        0.0
    );
    p.publish(&n, std::iter::empty(), false);
    let after = scrape(&m);
    assert_eq!(counter(&after, "epaxos_commands_proposed_total", "0"), 8.0);
    assert_eq!(counter(&after, "epaxos_batches_proposed_total", "0"), 2.0);
    assert_eq!(counter(&after, "epaxos_fast_commits_total", "0"), 2.0);
    assert_eq!(counter(&after, "epaxos_commands_executed_total", "0"), 8.0);
    assert_eq!(counter(&after, "epaxos_keys", "0"), 8.0);
    assert_eq!(counter(&after, "epaxos_client_connections", "0"), 2.0);
    assert!(counter(&after, "epaxos_frames_received_total", "0") >= 4.0);
    let batch = samples(&after, "epaxos_batch_commands");
    let Value::Histogram(ref buckets) = batch[0].value else {
        panic!("{batch:?}");
    };
    // Batches of 5 and 3: none up to 2, one up to 4, both up to 8.
    let at = |le: f64| buckets.iter().find(|b| b.less_than == le).unwrap().count;
    assert_eq!(
        (at(2.0), at(4.0), at(8.0), at(f64::INFINITY)),
        (0.0, 1.0, 2.0, 2.0)
    );
    let latency = samples(&after, "epaxos_commit_latency_seconds");
    let Value::Histogram(ref buckets) = latency[0].value else {
        panic!("{latency:?}");
    };
    assert_eq!(
        buckets.last().unwrap().count,
        2.0,
        "a commit latency per instance"
    );
}

#[test]
fn a_stopping_or_ended_shard_is_unhealthy() {
    let m = Metrics::new(0, 1, 1);
    let n = node(1);
    let mut p = m.publisher(0);
    p.publish(&n, std::iter::empty(), true);
    assert!(health(&m).unwrap_err().contains("shard 0: stopping"));
    p.publish(&n, std::iter::empty(), false);
    assert_eq!(health(&m), Ok(()));
    p.ended();
    assert_eq!(health(&m), Err("shard 0: stopped".to_string()));
}

#[test]
fn a_failed_shard_names_its_reason() {
    let m = Metrics::new(0, 1, 1);
    let mut n = node(1);
    n.storage_failed("disk full");
    let mut p = m.publisher(0);
    p.publish(&n, std::iter::empty(), false);
    let why = health(&m).unwrap_err();
    assert!(
        why.starts_with("shard 0: refuses writes: shard 0 stopped: disk full"),
        "{why}"
    );
}

#[test]
fn without_a_quorum_of_links_a_shard_is_unhealthy() {
    let m = Metrics::new(0, 3, 1);
    let mut n = node(3);
    n.peer_knows(ReplicaId(1), 0);
    n.peer_knows(ReplicaId(2), 0);
    let mut p = m.publisher(0);
    p.publish(&n, [false, false, false].into_iter(), false);
    let why = health(&m).unwrap_err();
    assert!(why.contains("no quorum: 0 of its 2 peer links up"), "{why}");
    n.link_up(ReplicaId(2));
    p.publish(&n, [false, false, true].into_iter(), false);
    assert_eq!(health(&m), Ok(()));
}
