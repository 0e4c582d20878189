//! Execution: committed instances run in an order every replica agrees on.
//!
//! An instance runs once everything it depends on is committed. The
//! dependency graph is cut into strongly connected components with Tarjan's
//! algorithm, written iteratively (an explicit stack of frames) so a chain of
//! a hundred thousand instances needs no call stack. Components complete in
//! reverse topological order, which is the order they execute in; inside one,
//! instances run by (seq, replica, slot).
//!
//! Nothing polls. A walk that reaches an uncommitted instance m stops: the
//! instance whose edge led to m waits on m's commit, the walk's root waits
//! on that instance's execution, and every instance on the walk's stack is
//! marked as blocked on m. A later walk that meets an instance blocked on a
//! still-uncommitted m stops there and waits for that instance's execution.
//! So a chain committed newest-first costs O(1) per commit, not a walk of
//! the chain, and each wake-up retries only the walks that can now progress.
//! The missing instance is also watched: if it stays uncommitted past the
//! recovery timeout, this replica recovers it (a dead leader's instance must
//! not hold execution up forever; efficient/epaxos issue #26).

use super::config::InjectedBug;
use super::outbox::{Outbox, TraceEvent};
use super::replica::Replica;
use super::space::Lookup;
use super::types::{InstanceId, ReplicaId, Status};
use crate::command::Op;
use crate::state_machine::StateMachine;

/// One node being explored: which dependency to look at next.
struct Frame {
    id: InstanceId,
    /// Next edge to follow: 0 is the previous slot of the same replica,
    /// 1 + q is the dependency on replica q.
    edge: usize,
}

enum Edge {
    /// A committed, unexecuted dependency to explore.
    To(InstanceId),
    /// A dependency that is not committed yet.
    Blocked(InstanceId),
    /// No dependencies left.
    Done,
}

/// Scratch space reused by every execution walk: no allocation per walk.
#[derive(Default)]
pub(crate) struct ExecScratch {
    /// Committed instances whose execution should be (re)tried.
    pub ready: Vec<InstanceId>,
    epoch: u64,
    counter: u32,
    frames: Vec<Frame>,
    stack: Vec<InstanceId>,
    component: Vec<(u64, InstanceId)>,
}

impl<S: StateMachine> Replica<S> {
    /// Executes what can be executed among the instances queued as ready.
    pub(super) fn execute_ready(&mut self, out: &mut Outbox<S::Output>) {
        if self.exec.ready.is_empty() {
            return;
        }
        while let Some(id) = self.exec.ready.pop() {
            self.try_execute(id, out);
        }
        for r in 0..self.cfg.replicas {
            self.spaces.compact(ReplicaId(r as u8));
        }
    }

    fn try_execute(&mut self, root: InstanceId, out: &mut Outbox<S::Output>) {
        match self.spaces.get(root) {
            Lookup::Found(inst) if inst.status == Status::Committed => {}
            _ => return,
        }
        self.exec.epoch += 1;
        self.exec.counter = 0;
        debug_assert!(self.exec.frames.is_empty() && self.exec.stack.is_empty());
        self.visit(root);
        while let Some(frame) = self.exec.frames.last_mut() {
            match next_edge(&self.spaces, frame, self.cfg.replicas) {
                Edge::Blocked(missing) => {
                    let top = frame.id;
                    self.block(missing);
                    if self.cfg.injected_bug != Some(InjectedBug::ExecutorNeverRecovers) {
                        self.watch(missing);
                    }
                    self.wait_for(missing, top);
                    if root != top {
                        self.wait_for(top, root);
                    }
                    return;
                }
                Edge::To(w) => {
                    let epoch = self.exec.epoch;
                    let v = frame.id;
                    let target = match self.spaces.get(w) {
                        Lookup::Found(inst) => inst,
                        _ => unreachable!("edge to a committed instance"),
                    };
                    if target.mark.epoch != epoch {
                        if let Some(m) = target.blocked_on {
                            if !self.spaces.is_committed(m) {
                                // w is committed but waits for m: so does root.
                                self.block(m);
                                self.wait_for(w, root);
                                return;
                            }
                        }
                        self.visit(w);
                    } else if target.mark.on_stack {
                        let w_index = target.mark.index;
                        let v_mark = &mut self.spaces.get_mut(v).expect("on stack").mark;
                        v_mark.low = v_mark.low.min(w_index);
                    }
                }
                Edge::Done => {
                    let v = frame.id;
                    self.exec.frames.pop();
                    self.finish(v, out);
                }
            }
        }
    }

    fn visit(&mut self, id: InstanceId) {
        let counter = self.exec.counter;
        self.exec.counter += 1;
        let inst = self.spaces.get_mut(id).expect("visiting a known instance");
        inst.mark.epoch = self.exec.epoch;
        inst.mark.index = counter;
        inst.mark.low = counter;
        inst.mark.on_stack = true;
        self.exec.stack.push(id);
        self.exec.frames.push(Frame { id, edge: 0 });
    }

    /// All of `v`'s dependencies are explored: if it roots a component, the
    /// component is complete and everything it depends on has run, so it runs.
    fn finish(&mut self, v: InstanceId, out: &mut Outbox<S::Output>) {
        let mark = self.spaces.get_mut(v).expect("finishing").mark;
        if let Some(parent) = self.exec.frames.last() {
            let parent = self.spaces.get_mut(parent.id).expect("parent on stack");
            parent.mark.low = parent.mark.low.min(mark.low);
        }
        if mark.low != mark.index {
            return;
        }
        self.exec.component.clear();
        loop {
            let w = self.exec.stack.pop().expect("component on stack");
            let inst = self.spaces.get_mut(w).expect("on stack");
            inst.mark.on_stack = false;
            self.exec.component.push((inst.attrs.seq, w));
            if w == v {
                break;
            }
        }
        // (seq, replica, slot): InstanceId orders by replica, then slot.
        self.exec.component.sort_unstable();
        for i in 0..self.exec.component.len() {
            let id = self.exec.component[i].1;
            self.execute_instance(id, out);
        }
    }

    fn execute_instance(&mut self, id: InstanceId, out: &mut Outbox<S::Output>) {
        let me = self.cfg.me;
        let inst = self.spaces.get_mut(id).expect("executing");
        assert_eq!(
            inst.status,
            Status::Committed,
            "executing {id} before its commit"
        );
        inst.status = Status::Executed;
        inst.blocked_on = None;
        self.seq_executed = self.seq_executed.max(inst.attrs.seq);
        self.exec.ready.append(&mut inst.waiters);
        if id.replica == me && self.expiries_in_flight > 0 {
            let expiries = inst.batch.iter().filter(|c| c.op == Op::Expire).count();
            self.expiries_in_flight = self.expiries_in_flight.saturating_sub(expiries);
        }
        if inst.noop {
            // A no-op keeps the batch its proposer had: if that is this
            // replica, its clients wait for these commands, which never ran.
            if id.replica == me {
                for cmd in inst.batch.iter().filter(|c| c.op != Op::Expire) {
                    out.replies.push(super::outbox::Reply {
                        client: cmd.client,
                        request: cmd.request,
                        result: Err(super::outbox::Refused::Superseded),
                    });
                }
            }
        } else {
            self.index.record_executed_keys(id, &inst.batch);
            for cmd in inst.batch.iter() {
                let now = self.now;
                let Some(result) = self.index.execute_command(&mut self.sm, id, &cmd, now) else {
                    continue; // an expiry: nobody waits for it
                };
                if id.replica == me {
                    out.replies.push(super::outbox::Reply {
                        client: cmd.client,
                        request: cmd.request,
                        result,
                    });
                }
            }
            self.stats.executed_commands += inst.batch.len() as u64;
        }
        self.stats.executed_instances += 1;
        if self.cfg.trace {
            out.trace.push(TraceEvent::Executed { id });
        }
    }

    /// Abandons the current walk: everything on its stack waits for `missing`.
    fn block(&mut self, missing: InstanceId) {
        self.exec.frames.clear();
        for id in self.exec.stack.drain(..) {
            let inst = self.spaces.get_mut(id).expect("on stack");
            inst.mark.on_stack = false;
            inst.blocked_on = Some(missing);
        }
    }

    /// Retries `waiter` when `on` commits, or, if `on` is committed already,
    /// when it executes.
    fn wait_for(&mut self, on: InstanceId, waiter: InstanceId) {
        match self.spaces.entry(on) {
            Some(inst) => inst.waiters.push(waiter),
            // Refused as implausibly far ahead: a peer sent a bogus dependency.
            None => debug_assert!(false, "dependency {on} outside the window"),
        }
    }
}

/// The next edge of the frame's instance that leads to an unexecuted
/// instance. Edges: to the previous slot of the same replica, and to the
/// entry deps[q] for each replica q. A dependency entry stands for every slot
/// of q up to it, and the same-replica edges make that prefix reachable, so a
/// node has at most N + 1 edges (a walk is linear in what it visits) while
/// still covering the prefix. The extra edges are a function of committed
/// attributes, so every replica walks the same graph; and they make each
/// replica's slots execute in slot order, so the executed part of a space is
/// always a prefix.
fn next_edge(spaces: &super::space::Spaces, frame: &mut Frame, replicas: usize) -> Edge {
    let deps = match spaces.get(frame.id) {
        Lookup::Found(inst) => inst.attrs.deps,
        _ => unreachable!("frame of a known instance"),
    };
    while frame.edge <= replicas {
        let edge = frame.edge;
        frame.edge += 1;
        let target = if edge == 0 {
            InstanceId::new(frame.id.replica, frame.id.slot.0 - 1)
        } else {
            let q = ReplicaId((edge - 1) as u8);
            InstanceId::new(q, deps.get(q).0)
        };
        if target.slot.0 == 0 || target == frame.id {
            continue;
        }
        match spaces.get(target) {
            Lookup::Compacted => {}
            Lookup::Missing => return Edge::Blocked(target),
            Lookup::Found(inst) => match inst.status {
                Status::Executed => {}
                Status::Committed => return Edge::To(target),
                _ => return Edge::Blocked(target),
            },
        }
    }
    Edge::Done
}
