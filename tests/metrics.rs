//! The metrics endpoint of real replicas (`--metrics`): `/metrics` parses
//! as Prometheus text and counts the commands sent; `/health` answers 200
//! while every shard has a quorum, and 503, naming the shard and why, once
//! a majority of the peers is killed. HTTP through plain `std::net`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Cluster, TIMEOUT};
use epaxos_fast::command::Op;
use epaxos_fast::harness::http_get;
use epaxos_fast::wire::client::Code;
use prometheus_parse::{Scrape, Value};

const POLL: Duration = Duration::from_millis(50);

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get(addr, path, TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `GET path` until `done` holds for the answer, for at most
/// `TIMEOUT`; the last answer.
fn poll(addr: SocketAddr, path: &str, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (status, body) = get(addr, path);
        if done(status, &body) || Instant::now() > deadline {
            return (status, body);
        }
        std::thread::sleep(POLL);
    }
}

fn parse(body: &str) -> Scrape {
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

/// The sum over shards of the counter or gauge `name`.
fn total(s: &Scrape, name: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) => v,
            ref other => panic!("{name}: {other:?}"),
        })
        .sum()
}

#[test]
fn metrics_count_commands_and_health_fails_once_a_majority_is_gone() {
    let (replicas, shards) = (5, 2);
    let mut cluster = Cluster::start_with_metrics(replicas, shards);
    let endpoints: Vec<SocketAddr> = (0..replicas)
        .map(|r| cluster.metrics_addr(r).expect("metrics on"))
        .collect();
    let addr = |r: usize| endpoints[r];
    for r in 0..replicas {
        let (status, body) = poll(addr(r), "/health", |s, _| s == 200);
        assert_eq!((status, body.as_str()), (200, "ok\n"), "replica {r}");
    }
    let (status, _) = get(addr(0), "/nothing");
    assert_eq!(status, 404);

    let puts = 40;
    let mut conn = cluster.connect(0, 0);
    for i in 0..puts {
        let key = format!("key-{i}");
        assert_eq!(
            conn.call(Op::Put, key.as_bytes(), b"v").unwrap().code,
            Code::Done
        );
    }
    // Published every 250 ms: wait until the scrape shows them.
    let proposed = |body: &str| total(&parse(body), "epaxos_commands_proposed_total");
    let (status, body) = poll(addr(0), "/metrics", |_, b| proposed(b) >= puts as f64);
    assert_eq!(status, 200);
    let s = parse(&body);
    assert!(proposed(&body) >= puts as f64, "{body}");
    assert!(total(&s, "epaxos_fast_commits_total") + total(&s, "epaxos_slow_commits_total") > 0.0);
    assert!(total(&s, "epaxos_received_bytes_total") > 0.0);
    // Two shards, each with a link to each of 4 peers, all up.
    let links: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == "epaxos_peer_link_up")
        .collect();
    assert_eq!(
        links.len(),
        usize::from(shards) * (replicas - 1),
        "{links:?}"
    );
    assert_eq!(total(&s, "epaxos_peer_link_up"), links.len() as f64);
    let batches = s
        .samples
        .iter()
        .find(|x| x.metric == "epaxos_batch_commands");
    assert!(
        matches!(batches.map(|b| &b.value), Some(Value::Histogram(_))),
        "{batches:?}"
    );

    // Three of replica 0's four peers gone: one link left, a quorum of
    // five needs two.
    for r in 1..=3 {
        cluster.kill(r).unwrap();
    }
    let lines: Vec<String> = (0..shards)
        .map(|s| format!("shard {s}: no quorum: 1 of its 4 peer links up"))
        .collect();
    let all_named = |b: &str| lines.iter().all(|l| b.contains(l.as_str()));
    let (status, body) = poll(addr(0), "/health", |s, b| s == 503 && all_named(b));
    assert_eq!(status, 503, "{body}");
    assert!(all_named(&body), "{body:?} lacks one of {lines:?}");
    // So is the one peer left, which lost the same three.
    let (status, _) = poll(addr(4), "/health", |s, _| s == 503);
    assert_eq!(status, 503);
}
