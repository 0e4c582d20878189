//! The executor on large dependency graphs, fed commits directly: a 100,000
//! instance chain and a 10,000 instance cycle, executed on a thread with a
//! small stack, which a recursive walk would overflow.

use epaxos_fast::command::{Batch, BatchBuilder, CommandRef, Op};
use epaxos_fast::protocol::{
    Attrs, Ballot, Config, Deps, InstanceId, Message, Outbox, Replica, ReplicaId, TraceEvent, Value,
};
use epaxos_fast::state_machine::{KvResult, KvStore};

const SMALL_STACK_BYTES: usize = 256 * 1024;

fn put(builder: &mut BatchBuilder, request: u64, value: &str) -> Batch {
    // One client per command: the exactly-once table must not drop any.
    builder.push(&CommandRef {
        client: request,
        request,
        first_outstanding: request,
        op: Op::Put,
        key: b"k",
        value: value.as_bytes(),
    });
    builder.finish()
}

/// Replica 0 of 3 receives commits of replica 1's instances.
fn commit(
    replica: &mut Replica<KvStore>,
    out: &mut Outbox<KvResult>,
    slot: u64,
    seq: u64,
    dep: u64,
    batch: Batch,
) {
    let mut deps = Deps::default();
    deps.0[1] = dep;
    let msg = Message::Commit(Value {
        id: InstanceId::new(ReplicaId(1), slot),
        ballot: Ballot::initial(ReplicaId(1)),
        attrs: Attrs { seq, deps },
        batch,
        noop: false,
    });
    replica.handle(0, ReplicaId(1), msg, out);
}

fn executed(out: &Outbox<KvResult>) -> Vec<u64> {
    out.trace
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Executed { id } => Some(id.slot.0),
            _ => None,
        })
        .collect()
}

fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK_BYTES)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn chain_of_100k_committed_newest_first_executes_in_order() {
    on_small_stack(|| {
        const N: u64 = 100_000;
        let mut cfg = Config::new(3, ReplicaId(0)).unwrap();
        cfg.trace = true;
        let mut replica = Replica::new(cfg, KvStore::new());
        let mut out = Outbox::new(3);
        let mut builder = BatchBuilder::new();
        // Slot s depends on s - 1. Commits arrive newest first, so every one
        // waits, and the last commit (slot 1) releases the whole chain.
        for slot in (1..=N).rev() {
            let batch = put(&mut builder, slot, &format!("v{slot}"));
            commit(&mut replica, &mut out, slot, slot, slot - 1, batch);
            if slot > 1 {
                assert!(
                    executed(&out).is_empty(),
                    "slot {slot} ran before slot 1 committed"
                );
            }
        }
        let order = executed(&out);
        assert_eq!(order, (1..=N).collect::<Vec<_>>());
        assert_eq!(
            replica.state_machine().get(b"k").unwrap(),
            format!("v{N}").as_bytes()
        );
        assert_eq!(replica.stats().executed_instances, N);
        // Executed instances are compacted away.
        assert!(
            replica.instances_in_memory() < 16,
            "{}",
            replica.instances_in_memory()
        );
    });
}

#[test]
fn cycle_of_10k_executes_by_seq() {
    on_small_stack(|| {
        const N: u64 = 10_000;
        let mut cfg = Config::new(3, ReplicaId(0)).unwrap();
        cfg.trace = true;
        let mut replica = Replica::new(cfg, KvStore::new());
        let mut out = Outbox::new(3);
        let mut builder = BatchBuilder::new();
        // Slot s depends on s + 1 and the last on everything: one component.
        // Seqs run backwards, so the component must execute N, N-1, ..., 1.
        for slot in 1..=N {
            let dep = if slot == N { N } else { slot + 1 };
            let batch = put(&mut builder, slot, &format!("v{slot}"));
            commit(&mut replica, &mut out, slot, N + 1 - slot, dep, batch);
            if slot < N {
                assert!(
                    executed(&out).is_empty(),
                    "ran before the cycle was committed"
                );
            }
        }
        let order = executed(&out);
        assert_eq!(order, (1..=N).rev().collect::<Vec<_>>());
        assert_eq!(replica.state_machine().get(b"k").unwrap(), &b"v1"[..]);
    });
}

#[test]
fn waits_for_an_uncommitted_dependency_without_polling() {
    let mut cfg = Config::new(3, ReplicaId(0)).unwrap();
    cfg.trace = true;
    let mut replica = Replica::new(cfg, KvStore::new());
    let mut out = Outbox::new(3);
    let mut builder = BatchBuilder::new();
    let b2 = put(&mut builder, 2, "two");
    commit(&mut replica, &mut out, 2, 2, 1, b2);
    assert!(executed(&out).is_empty());
    // The CommitOk owed to replica 1 goes once due (nothing else goes to
    // it meanwhile)...
    let ack = replica.next_deadline().expect("the CommitOk's deadline");
    assert!(ack < replica.config().retransmit_timeout_ns);
    replica.flush_acks(ack, &mut out);
    assert!(matches!(&out.messages[1][..], [Message::CommitOk(_)]));
    out.clear();
    // ...then nothing until slot 1 commits, except one recovery check of
    // slot 1 after the recovery timeout (no polling in between).
    let check = replica.next_deadline().expect("a recovery check of slot 1");
    assert!(check >= replica.config().recovery_timeout_ns);
    let b1 = put(&mut builder, 1, "one");
    commit(&mut replica, &mut out, 1, 1, 0, b1);
    assert_eq!(executed(&out), vec![1, 2]);
}
