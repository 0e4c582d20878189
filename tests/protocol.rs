//! Scripted runs of the core on replicas wired in memory.

use epaxos_fast::command::{Batch, BatchBuilder, CommandRef, Op};
use epaxos_fast::constants::{RESENDS_PER_PACE_MAX, RESEND_PACE_NS};
use epaxos_fast::protocol::{
    Attrs, Ballot, Config, InstanceId, Message, Outbox, Replica, ReplicaId, Value,
};
use epaxos_fast::sim::wired::WiredCluster;
use epaxos_fast::state_machine::{KvResult, KvStore};

fn batch(cmds: &[(u64, u64, Op, &str, &str)]) -> Batch {
    let mut b = BatchBuilder::new();
    for &(client, request, op, key, value) in cmds {
        b.push(&CommandRef {
            client,
            request,
            first_outstanding: request,
            op,
            key: key.as_bytes(),
            value: value.as_bytes(),
        });
    }
    b.finish()
}

fn digests(c: &WiredCluster) -> Vec<u64> {
    c.replicas
        .iter()
        .map(|r| r.state_machine().digest())
        .collect()
}

#[test]
fn one_replica_commits_locally_without_messages() {
    let cfg = Config::new(1, ReplicaId(0)).unwrap();
    let mut r = Replica::new(cfg, KvStore::new());
    let mut out = Outbox::new(1);
    r.propose(
        0,
        batch(&[(1, 1, Op::Put, "k", "v"), (2, 1, Op::Get, "k", "")]),
        &mut out,
    )
    .unwrap();
    assert!(out.messages.iter().all(Vec::is_empty));
    let results: Vec<_> = out.replies.iter().map(|r| r.result.clone()).collect();
    assert_eq!(
        results,
        [Ok(KvResult::Done), Ok(KvResult::Value("v".into()))]
    );
    assert_eq!(r.next_deadline(), None);
}

#[test]
fn non_conflicting_commands_take_the_fast_path_at_every_size() {
    for n in [3, 5, 7, 9] {
        let mut c = WiredCluster::new(n, |_| {});
        for r in 0..n {
            let key = format!("own{r}");
            c.propose(r, batch(&[(r as u64 + 1, 1, Op::Put, &key, "v")]));
        }
        c.run_until_quiet();
        let fast: u64 = c.replicas.iter().map(|r| r.stats().fast_commits).sum();
        let slow: u64 = c.replicas.iter().map(|r| r.stats().slow_commits).sum();
        assert_eq!((fast, slow), (n as u64, 0), "n = {n}");
        assert_eq!(c.replies_total, n as u64);
        for r in &c.replicas {
            assert_eq!(r.stats().executed_instances, n as u64, "n = {n}");
            assert_eq!(r.state_machine().len(), n);
            // Everything executed and acknowledged: nothing left in memory.
            assert_eq!(r.instances_in_memory(), 0, "n = {n}");
        }
    }
}

#[test]
fn concurrent_conflicts_take_the_slow_path_and_converge() {
    let mut c = WiredCluster::new(5, |_| {});
    for round in 1..=20u64 {
        for r in 0..5 {
            let value = format!("{r}-{round}");
            c.propose(r, batch(&[(r as u64 + 1, round, Op::Put, "hot", &value)]));
        }
        c.run_until_quiet();
    }
    let slow: u64 = c.replicas.iter().map(|r| r.stats().slow_commits).sum();
    assert!(slow > 0, "concurrent writes of one key must conflict");
    let d = digests(&c);
    assert!(d.iter().all(|&x| x == d[0]), "{d:x?}");
    assert!(c
        .replicas
        .iter()
        .all(|r| r.stats().executed_instances == 100));
}

#[test]
fn thrifty_sends_pre_accept_to_the_fast_quorum_only() {
    let mut cfg = Config::new(5, ReplicaId(2)).unwrap();
    cfg.thrifty = true;
    let mut r = Replica::new(cfg, KvStore::new());
    let mut out = Outbox::new(5);
    r.propose(0, batch(&[(1, 1, Op::Put, "k", "v")]), &mut out)
        .unwrap();
    let targets: Vec<usize> = (0..5).filter(|&p| !out.messages[p].is_empty()).collect();
    // Fast quorum of 5 is 3: the leader and the next two in ring order.
    assert_eq!(targets, [3, 4]);
    assert!(matches!(out.messages[3][0], Message::PreAccept(_)));
    assert_eq!(out.persist.len(), 1, "the leader persists before sending");
}

#[test]
fn lost_messages_are_re_sent_after_the_timeout() {
    let mut c = WiredCluster::new(3, |_| {});
    c.propose(0, batch(&[(1, 1, Op::Put, "k", "v")]));
    c.drop_in_flight(|_, _, _| false);
    assert_eq!(c.run_until_quiet(), 0);
    assert_eq!(c.replies_total, 0);
    let timeout = c.replicas[0].config().retransmit_timeout_ns;
    c.advance(timeout);
    c.run_until_quiet();
    assert_eq!(c.replies_total, 1);
    // Now lose every CommitOk: the commit is re-sent until acknowledged.
    c.propose(1, batch(&[(2, 1, Op::Put, "k2", "v")]));
    c.run_until_quiet_losing(|_, _, m| matches!(m, Message::CommitOk(_)));
    assert_eq!(c.replies_total, 2);
    assert_eq!(
        c.replicas[1].instances_in_memory(),
        1,
        "kept until acknowledged"
    );
    let before = c.replicas[1].stats().retransmits;
    c.advance(timeout);
    c.run_until_quiet();
    assert!(c.replicas[1].stats().retransmits > before);
    assert_eq!(c.replicas[1].instances_in_memory(), 0);
    let d = digests(&c);
    assert!(d.iter().all(|&x| x == d[0]));
}

#[test]
fn a_retried_request_is_applied_once() {
    let mut c = WiredCluster::new(3, |_| {});
    c.keep_replies = true;
    // Client 7 writes "a" through replica 0; client 8 then writes "b"; a late
    // retry of client 7's request through replica 1 must not bring "a" back.
    c.propose(0, batch(&[(7, 1, Op::Put, "k", "a")]));
    c.run_until_quiet();
    c.propose(2, batch(&[(8, 1, Op::Put, "k", "b")]));
    c.run_until_quiet();
    c.propose(1, batch(&[(7, 1, Op::Put, "k", "a")]));
    c.run_until_quiet();
    for r in &c.replicas {
        assert_eq!(r.state_machine().get(b"k").unwrap(), b"b");
    }
    // The retry is answered, with the first result.
    assert_eq!(c.replies[1].len(), 1);
    assert_eq!(c.replies[1][0].result, Ok(KvResult::Done));
    // A read retried after a write is answered with what it first read.
    c.propose(0, batch(&[(9, 1, Op::Get, "k", "")]));
    c.run_until_quiet();
    c.propose(2, batch(&[(8, 2, Op::Put, "k", "c")]));
    c.run_until_quiet();
    c.propose(1, batch(&[(9, 1, Op::Get, "k", "")]));
    c.run_until_quiet();
    assert_eq!(c.replies[1][1].result, Ok(KvResult::Value("b".into())));
}

#[test]
fn memory_stays_bounded_over_a_long_run() {
    // 2,000 rounds of 5 x 8 commands over 32 keys and 40 clients: what the
    // replicas hold must not grow with the number of commands.
    let mut c = WiredCluster::new(5, |_| {});
    let keys: Vec<String> = (0..32).map(|k| format!("key{k}")).collect();
    for round in 1..=2000u64 {
        for r in 0..5 {
            let cmds: Vec<(u64, u64, Op, &str, &str)> = (0..8u64)
                .map(|i| {
                    let client = r as u64 * 8 + i + 1;
                    let key = &keys[((round + client) % 32) as usize];
                    let op = if i % 3 == 0 { Op::Get } else { Op::Put };
                    (
                        client,
                        round,
                        op,
                        key.as_str(),
                        if op == Op::Put { "v" } else { "" },
                    )
                })
                .collect();
            c.propose(r, batch(&cmds));
        }
        c.run_until_quiet();
        for r in &c.replicas {
            assert_eq!(r.instances_in_memory(), 0, "round {round}");
        }
    }
    for r in &c.replicas {
        assert_eq!(r.stats().executed_commands, 2000 * 40);
        assert_eq!(r.indexed_keys(), 32);
        assert_eq!(r.client_sessions(), 40);
    }
    let d = digests(&c);
    assert!(d.iter().all(|&x| x == d[0]));
}

/// One batch per replica of 8 PUTs, each on a key never used before, from
/// 8 clients of its own.
fn propose_fresh_keys(c: &mut WiredCluster, round: u64) {
    for r in 0..c.replicas.len() {
        let keys: Vec<String> = (0..8).map(|i| format!("k{round}.{r}.{i}")).collect();
        let cmds: Vec<(u64, u64, Op, &str, &str)> = (0..8)
            .map(|i| {
                (
                    r as u64 * 8 + i as u64 + 1,
                    round,
                    Op::Put,
                    keys[i].as_str(),
                    "v",
                )
            })
            .collect();
        c.propose(r, batch(&cmds));
    }
}

#[test]
fn keys_no_undecided_instance_touches_are_forgotten_without_costing_the_fast_path() {
    // 400 rounds, 1 ms apart, of 5 x 8 commands, each on a key never used
    // before: 16,000 keys. What the index holds follows the keys touched in
    // the last few report intervals, not all of them.
    let mut c = WiredCluster::new(5, |_| {});
    let mut held_max = 0;
    for round in 1..=400u64 {
        propose_fresh_keys(&mut c, round);
        c.run_until_quiet();
        c.advance(1_000_000);
        c.run_until_quiet();
        held_max = held_max.max(c.replicas.iter().map(|r| r.indexed_keys()).max().unwrap());
    }
    assert!(held_max <= 2_000, "held up to {held_max} of 16,000 keys");
    // Once quiet, a few intervals later, nothing is held.
    for _ in 0..300 {
        c.advance(1_000_000);
        c.run_until_quiet();
    }
    for r in &c.replicas {
        assert_eq!(r.indexed_keys(), 0);
        assert_eq!(r.stats().executed_commands, 400 * 40);
        assert_eq!(
            r.stats().slow_commits,
            0,
            "a forgotten key cost a fast path"
        );
    }
    let d = digests(&c);
    assert!(d.iter().all(|&x| x == d[0]));
}

#[test]
fn progress_lost_on_a_dead_link_is_sent_again_when_the_link_comes_back() {
    // Every Progress report is lost while 40 keys are written: nobody learns
    // what is stable, and nothing new would make the reports change. Once
    // the links come back up, the reports go again and the keys are forgotten.
    let mut c = WiredCluster::new(3, |_| {});
    let lose = |_: ReplicaId, _: ReplicaId, m: &Message| matches!(m, Message::Progress(_));
    for round in 1..=5u64 {
        propose_fresh_keys(&mut c, round);
        c.run_until_quiet_losing(lose);
    }
    for _ in 0..300 {
        c.advance(1_000_000);
        c.run_until_quiet_losing(lose);
    }
    assert!(c.replicas.iter().all(|r| r.indexed_keys() > 0));
    for r in 0..3 {
        for p in 0..3 {
            if p != r {
                c.replicas[r].set_reachable(ReplicaId(p as u8), true);
            }
        }
    }
    // Two rounds of reports (executed prefixes, then stable frontiers), each
    // alone after five re-send timeouts without other traffic.
    for _ in 0..400 {
        c.advance(1_000_000);
        c.run_until_quiet();
    }
    for r in &c.replicas {
        assert_eq!(r.indexed_keys(), 0);
    }
}

#[test]
fn commits_wait_for_an_unreachable_peer_instead_of_being_re_sent() {
    // Replica 2 of 3 is down: whatever is sent to it is lost. Replica 0
    // leads ten commands and commits them with replica 1.
    let two = ReplicaId(2);
    let commits_to_two = std::cell::Cell::new(0);
    let down = |_: ReplicaId, to: ReplicaId, m: &Message| {
        if to == two && matches!(m, Message::Commit(_)) {
            commits_to_two.set(commits_to_two.get() + 1);
        }
        to == two
    };
    let mut c = WiredCluster::new(3, |_| {});
    let timeout = c.replicas[0].config().retransmit_timeout_ns;
    for i in 0..10u64 {
        let key = format!("k{i}");
        c.propose(0, batch(&[(i + 1, 1, Op::Put, &key, "v")]));
    }
    c.run_until_quiet_losing(down);
    assert_eq!(c.replies_total, 10);
    assert_eq!(commits_to_two.get(), 10);
    // Unacknowledged commits are re-sent on the timer...
    c.advance(timeout);
    c.run_until_quiet_losing(down);
    assert_eq!(commits_to_two.get(), 20);
    // ...until the runtime says replica 2 is unreachable: then none is,
    // however long it stays down, and none is forgotten either.
    c.replicas[0].set_reachable(two, false);
    for _ in 0..50 {
        c.advance(timeout);
        c.run_until_quiet_losing(down);
    }
    assert_eq!(commits_to_two.get(), 20);
    assert_eq!(c.replicas[0].parked_commits(), 10);
    assert_eq!(
        c.replicas[0].instances_in_memory(),
        10,
        "kept for replica 2"
    );
    // Back: every commit is re-sent, acknowledged, and dropped. Replica 2
    // said nothing for a long while, so it is stalled: one commit probes it
    // first, its answer ends the stall, and the rest follow at the next tick.
    c.replicas[0].set_reachable(two, true);
    assert_eq!(c.replicas[0].parked_commits(), 0);
    for _ in 0..3 {
        c.advance(1);
        c.run_until_quiet();
    }
    assert_eq!(c.replicas[0].instances_in_memory(), 0);
    assert_eq!(c.replicas[2].stats().executed_commands, 10);
    let d = digests(&c);
    assert!(d.iter().all(|&x| x == d[0]));
}

#[test]
fn a_stopped_peer_gets_one_commit_a_timeout_and_the_rest_paced_once_it_answers() {
    // Replica 2 of 3 is stopped (SIGSTOP): its link stays up, but nothing
    // reaches it and it says nothing. Replica 0 commits 200 commands with
    // replica 1 meanwhile.
    let two = ReplicaId(2);
    let stopped = std::cell::Cell::new(true);
    let commits_to_two = std::cell::Cell::new(0u64);
    let pre_accepts_to_two = std::cell::Cell::new(0u64);
    let lose = |from: ReplicaId, to: ReplicaId, m: &Message| {
        if to == two && matches!(m, Message::Commit(_)) {
            commits_to_two.set(commits_to_two.get() + 1);
        }
        if to == two && matches!(m, Message::PreAccept(_)) {
            pre_accepts_to_two.set(pre_accepts_to_two.get() + 1);
        }
        stopped.get() && (from == two || to == two)
    };
    let mut c = WiredCluster::new(3, |_| {});
    let timeout = c.replicas[0].config().retransmit_timeout_ns;
    for i in 0..200u64 {
        let key = format!("k{i}");
        c.propose(0, batch(&[(i + 1, 1, Op::Put, &key, "v")]));
    }
    c.run_until_quiet_losing(lose);
    assert_eq!(c.replies_total, 200);
    assert_eq!(commits_to_two.get(), 200);
    // 50 timeouts of silence: one round of re-sends before replica 2 counts
    // as stalled (at most 200, paced), then one probe a timeout; before,
    // every commit went again every timeout (10,000 here).
    for _ in 0..50 {
        c.advance(timeout);
        c.run_until_quiet_losing(lose);
    }
    let during = commits_to_two.get() - 200;
    assert!(
        during <= 200 + 50,
        "{during} commits re-sent to a stopped peer"
    );
    assert_eq!(
        c.replicas[0].instances_in_memory(),
        200,
        "kept for replica 2"
    );
    // Commands proposed now commit with replica 1. After the quiet spell
    // replica 1 looks stalled too, so the first PreAccept goes to both;
    // once replica 1 answered, the next leaves the stalled replica 2 out
    // (3 replicas: the fast quorum is the leader and one peer).
    c.propose(0, batch(&[(201, 1, Op::Put, "late", "v")]));
    c.run_until_quiet_losing(lose);
    let pre_accepts = pre_accepts_to_two.get();
    c.propose(0, batch(&[(202, 1, Op::Put, "later", "v")]));
    c.run_until_quiet_losing(lose);
    assert_eq!(c.replies_total, 202);
    assert_eq!(
        pre_accepts_to_two.get(),
        pre_accepts,
        "no PreAccept to a stalled peer"
    );
    // SIGCONT: the next probe is answered, and what replica 2 missed goes
    // out at most RESENDS_PER_PACE_MAX (+ the probe) a tick.
    stopped.set(false);
    let mut ticks = 0;
    while c.replicas[0].instances_in_memory() > 0 {
        let before = commits_to_two.get();
        c.advance(RESEND_PACE_NS);
        c.run_until_quiet_losing(lose);
        let sent = commits_to_two.get() - before;
        assert!(
            sent <= RESENDS_PER_PACE_MAX + 1,
            "{sent} commits in one tick"
        );
        ticks += 1;
        assert!(ticks < 1_000, "replica 2 never caught up");
    }
    assert_eq!(c.replicas[2].stats().executed_commands, 202);
    let d = digests(&c);
    assert!(d.iter().all(|&x| x == d[0]));
}

#[test]
fn a_commit_leaves_the_batch_out_only_for_peers_that_voted_for_it() {
    // Replica 2 of 3 misses the PreAccept: replica 0 commits with replica 1
    // alone. Replica 1 voted for the batch, so its Commit is slim; replica 2
    // gets the batch in its Commit.
    let slim = std::cell::RefCell::new(Vec::new());
    let mut c = WiredCluster::new(3, |_| {});
    c.propose(0, batch(&[(1, 1, Op::Put, "k", "v")]));
    c.run_until_quiet_losing(|_, to, m| {
        if let Message::Commit(v) = m {
            slim.borrow_mut().push((to, v.is_slim()));
        }
        to == ReplicaId(2) && matches!(m, Message::PreAccept(_))
    });
    let mut seen = slim.borrow().clone();
    seen.sort();
    assert_eq!(seen, [(ReplicaId(1), true), (ReplicaId(2), false)]);
    for r in &c.replicas {
        assert_eq!(r.state_machine().get(b"k").unwrap(), &b"v"[..]);
    }
}

#[test]
fn a_slim_commit_for_commands_a_replica_never_saw_is_neither_applied_nor_acknowledged() {
    let cfg = Config::new(3, ReplicaId(2)).unwrap();
    let mut r = Replica::new(cfg, KvStore::new());
    let mut out = Outbox::new(3);
    let full = Value {
        id: InstanceId::new(ReplicaId(0), 1),
        ballot: Ballot::initial(ReplicaId(0)),
        attrs: Attrs::default(),
        batch: batch(&[(1, 1, Op::Put, "k", "v")]),
        noop: false,
    };
    let slim = Value {
        batch: Batch::empty(),
        ..full.clone()
    };
    r.handle(0, ReplicaId(0), Message::Commit(slim), &mut out);
    r.flush_all_acks(&mut out);
    assert!(out.messages.iter().all(Vec::is_empty), "{:?}", out.messages);
    assert_eq!(r.stats().executed_commands, 0);
    // The leader's re-send carries the batch: applied and acknowledged.
    r.handle(1, ReplicaId(0), Message::Commit(full), &mut out);
    r.flush_all_acks(&mut out);
    assert!(matches!(&out.messages[0][..], [Message::CommitOk(_)]));
    assert_eq!(r.state_machine().get(b"k").unwrap(), &b"v"[..]);
}

/// One command of client `client`: (request, first outstanding, op, key, value).
fn command(client: u64, request: u64, first: u64, op: Op, key: &str, value: &str) -> Batch {
    let mut b = BatchBuilder::new();
    b.push(&CommandRef {
        client,
        request,
        first_outstanding: first,
        op,
        key: key.as_bytes(),
        value: value.as_bytes(),
    });
    b.finish()
}

#[test]
fn sessions_past_the_bound_expire_at_every_replica_and_their_entries_go() {
    // 3,000 clients, each with one PUT and never seen again (a reconnecting
    // client gets a new id): the table keeps at most the bound.
    const CLIENTS: u64 = 3_000;
    const MAX: usize = 100;
    let mut c = WiredCluster::new(3, |_| {});
    for i in 0..CLIENTS {
        let client = 1_000 + i;
        c.propose(
            (i % 3) as usize,
            command(client, 1, 1, Op::Put, &format!("k{i}"), "v"),
        );
        c.run_until_quiet();
        if i % 50 == 49 {
            c.advance(1_000_000);
            for r in 0..3 {
                c.expire_sessions(r, u64::MAX / 4, MAX);
            }
            c.run_until_quiet();
        }
    }
    // Quiet for a while: Progress reports go alone, and the floor passes
    // what the expired clients' rows recorded.
    for _ in 0..40 {
        c.advance(10_000_000);
        for r in 0..3 {
            c.expire_sessions(r, u64::MAX / 4, MAX);
        }
        c.run_until_quiet();
    }
    for r in &c.replicas {
        assert!(
            r.client_sessions() <= MAX,
            "replica {:?}: {} sessions, bound {MAX}",
            r.id(),
            r.client_sessions()
        );
        assert!(
            r.client_entries() <= 2 * MAX,
            "replica {:?}: {} client entries held",
            r.id(),
            r.client_entries()
        );
        assert!(r.stats().sessions_expired >= CLIENTS - MAX as u64);
    }
    // Every replica expired the same sessions, at the same point.
    let retired: Vec<u64> = c
        .replicas
        .iter()
        .map(|r| r.sessions_retired_below())
        .collect();
    assert!(
        retired.iter().all(|&w| w == retired[0] && w > 1_000),
        "{retired:?}"
    );
    let counts: Vec<usize> = c.replicas.iter().map(|r| r.client_sessions()).collect();
    assert!(counts.iter().all(|&n| n == counts[0]), "{counts:?}");
    assert_eq!(
        digests(&c)
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1
    );
}

#[test]
fn an_idle_session_expires_and_a_late_copy_of_its_request_is_never_applied_again() {
    let mut c = WiredCluster::new(3, |_| {});
    c.keep_replies = true;
    const IDLE: u64 = 1_000_000_000;
    // Client 7 writes, then another client overwrites the key.
    c.propose(0, command(7, 1, 1, Op::Put, "k", "first"));
    c.run_until_quiet();
    c.propose(1, command(8, 1, 1, Op::Put, "k", "second"));
    c.run_until_quiet();
    // Not idle long enough: nothing to expire.
    c.advance(IDLE / 2);
    assert_eq!(c.expire_sessions(7 % 3, IDLE, 1_000), 0);
    c.advance(IDLE);
    // Replica 7 mod 3 = 1 is the one assigned client 7 (and 8 mod 3 = 2, 8).
    assert_eq!(c.expire_sessions(0, IDLE, 1_000), 0, "not assigned to 0");
    assert_eq!(c.expire_sessions(1, IDLE, 1_000), 1);
    c.run_until_quiet();
    for r in &c.replicas {
        assert!(r.sessions_retired_below() > 7, "{:?}", r.id());
    }
    // A late copy of client 7's request 1 (a retry that was delayed) and a
    // new request of the expired session: neither runs.
    c.propose(2, command(7, 1, 1, Op::Put, "k", "first"));
    c.run_until_quiet();
    c.propose(0, command(7, 2, 2, Op::Get, "k", ""));
    c.run_until_quiet();
    let mine: Vec<_> = c
        .replies
        .iter()
        .flatten()
        .filter(|r| r.client == 7)
        .collect();
    assert_eq!(mine.len(), 3, "{mine:?}");
    assert_eq!(mine[0].result, Ok(KvResult::Done));
    for late in &mine[1..] {
        assert!(
            matches!(late.result, Err(epaxos_fast::protocol::Refused::SessionExpired { retired_below }) if retired_below > 7),
            "{late:?}"
        );
    }
    // The key keeps the second write at every replica.
    for r in &c.replicas {
        assert_eq!(r.state_machine().get(b"k"), Some(&b"second"[..]));
    }
    // A new session above the watermark works.
    let fresh = c.replicas[0].sessions_retired_below() + 1_000;
    c.propose(0, command(fresh, 1, 1, Op::Get, "k", ""));
    c.run_until_quiet();
    let last = c.replies[0].last().unwrap();
    assert_eq!(
        (last.client, &last.result),
        (fresh, &Ok(KvResult::Value("second".into())))
    );
}
