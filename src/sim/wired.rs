//! Replicas wired together in memory with a perfect, instant network: the
//! harness for benchmarks of the core alone and for scripted protocol tests.
//! Messages are delivered in FIFO order until none is left; nothing is lost.

use std::collections::VecDeque;

use crate::command::{Batch, BatchBuilder, CommandRef, Op};
use crate::protocol::{Config, Message, Outbox, Replica, ReplicaId, Reply};
use crate::state_machine::{KvResult, KvStore};

pub struct WiredCluster {
    pub replicas: Vec<Replica<KvStore>>,
    outbox: Outbox<KvResult>,
    in_flight: VecDeque<(ReplicaId, ReplicaId, Message)>,
    /// Replies produced so far, per replica (kept only with `keep_replies`).
    pub replies: Vec<Vec<Reply<KvResult>>>,
    pub keep_replies: bool,
    pub replies_total: u64,
    pub messages_total: u64,
    now: u64,
}

impl WiredCluster {
    /// `configure` may adjust each replica's config (thrifty, trace, ...).
    pub fn new(replicas: usize, configure: impl Fn(&mut Config)) -> WiredCluster {
        let reps = (0..replicas)
            .map(|r| {
                let mut c = Config::new(replicas, ReplicaId(r as u8)).expect("valid size");
                configure(&mut c);
                Replica::new(c, KvStore::new())
            })
            .collect();
        WiredCluster {
            replicas: reps,
            outbox: Outbox::new(replicas),
            in_flight: VecDeque::new(),
            replies: vec![Vec::new(); replicas],
            keep_replies: false,
            replies_total: 0,
            messages_total: 0,
            now: 0,
        }
    }

    pub fn propose(&mut self, replica: usize, batch: Batch) {
        let now = self.now;
        self.replicas[replica]
            .propose(now, batch, &mut self.outbox)
            .expect("wired runs stay far below the window");
        // As a driver does at the end of a turn.
        self.replicas[replica].flush_acks(now, &mut self.outbox);
        self.collect(replica);
    }

    /// Delivers messages until none is in flight; returns how many.
    pub fn run_until_quiet(&mut self) -> u64 {
        self.run_until_quiet_losing(|_, _, _| false)
    }

    /// Like `run_until_quiet`, but loses the messages `lose` picks.
    pub fn run_until_quiet_losing(
        &mut self,
        lose: impl Fn(ReplicaId, ReplicaId, &Message) -> bool,
    ) -> u64 {
        let mut delivered = 0;
        loop {
            while let Some((from, to, msg)) = self.in_flight.pop_front() {
                if lose(from, to, &msg) {
                    continue;
                }
                delivered += 1;
                let now = self.now;
                let r = &mut self.replicas[to.index()];
                r.handle(now, from, msg, &mut self.outbox);
                // As a driver does once a call's messages are all out.
                r.flush_acks(now, &mut self.outbox);
                self.collect(to.index());
            }
            // Quiet: the CommitOks still held would go on their own once
            // due; send them now (no other timer fires meanwhile).
            for r in 0..self.replicas.len() {
                self.replicas[r].flush_all_acks(&mut self.outbox);
                self.collect(r);
            }
            if self.in_flight.is_empty() {
                return delivered;
            }
        }
    }

    /// The cluster's clock.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Replica `r` proposes the expiry of the sessions it finds idle past
    /// `idle_ns` or past `max` (as a node's turn does); how many.
    pub fn expire_sessions(&mut self, r: usize, idle_ns: u64, max: usize) -> usize {
        let mut batches = Vec::new();
        let now = self.now;
        let bounds = crate::protocol::SessionBounds { idle_ns, max };
        let n = self.replicas[r].expire_sessions(now, bounds, 1 << 16, &mut batches);
        for b in batches {
            self.propose(r, b);
        }
        n
    }

    /// Advances the clock without ticking: the next calls see the time.
    pub fn pass_time(&mut self, ns: u64) {
        self.now += ns;
    }

    /// Advances the clock and ticks every replica.
    pub fn advance(&mut self, ns: u64) {
        self.now += ns;
        for r in 0..self.replicas.len() {
            let now = self.now;
            self.replicas[r].tick(now, &mut self.outbox);
            self.collect(r);
        }
    }

    fn collect(&mut self, from: usize) {
        let from_id = ReplicaId(from as u8);
        for (to, msgs) in self.outbox.messages.iter_mut().enumerate() {
            self.messages_total += msgs.len() as u64;
            for msg in msgs.drain(..) {
                self.in_flight
                    .push_back((from_id, ReplicaId(to as u8), msg));
            }
        }
        self.replies_total += self.outbox.replies.len() as u64;
        if self.keep_replies {
            self.replies[from].append(&mut self.outbox.replies);
        }
        self.outbox.clear();
    }

    /// Drops every message in flight (a scripted loss).
    pub fn drop_in_flight(&mut self, keep: impl Fn(ReplicaId, ReplicaId, &Message) -> bool) {
        self.in_flight.retain(|(f, t, m)| keep(*f, *t, m));
    }
}

const VALUE: &[u8; 16] = b"0123456789abcdef";
/// A large prime: `n * SPREAD_STRIDE mod keys` visits every key once per
/// `keys` steps.
const SPREAD_STRIDE: u64 = 2_147_483_647;

/// The core benchmark's workload (all PUTs of 16-byte values). Builds each
/// round's batches; keys and clients are fixed per replica so
/// the key space (and memory) stays bounded however long criterion runs.
pub struct RoundWorkload {
    replicas: usize,
    batch: usize,
    hot: bool,
    round: u64,
    keys: Vec<Vec<Vec<u8>>>,
    /// With `spread`: commands walk this many keys, each key once per walk.
    spread: Option<u64>,
    builder: BatchBuilder,
}

impl RoundWorkload {
    /// `conflicts_pct` is 0 (every client writes its own key) or 100 (every
    /// command writes one key).
    pub fn new(replicas: usize, batch: usize, conflicts_pct: u32) -> RoundWorkload {
        assert!(conflicts_pct == 0 || conflicts_pct == 100);
        let keys = (0..replicas)
            .map(|r| {
                (0..batch)
                    .map(|i| format!("r{r}-client{i}").into_bytes())
                    .collect()
            })
            .collect();
        RoundWorkload {
            replicas,
            batch,
            hot: conflicts_pct == 100,
            round: 0,
            keys,
            spread: None,
            builder: BatchBuilder::new(),
        }
    }

    /// Every command writes the next of `keys` distinct keys, in an order
    /// that visits each once per `keys` commands and scatters neighbours:
    /// every command finds its key cold, as with a large uniform key space.
    pub fn spread_over(mut self, keys: u64) -> RoundWorkload {
        assert!(keys > 0);
        self.spread = Some(keys);
        self
    }

    /// Rounds produced so far.
    pub fn rounds(&self) -> u64 {
        self.round
    }

    /// One batch per replica, each from `batch` closed-loop clients.
    pub fn next_round(&mut self) -> Vec<Batch> {
        self.round += 1;
        (0..self.replicas)
            .map(|r| {
                for i in 0..self.batch {
                    let spread;
                    let key: &[u8] = if self.hot {
                        b"hot"
                    } else if let Some(keys) = self.spread {
                        let n = (self.round * self.replicas as u64 + r as u64) * self.batch as u64
                            + i as u64;
                        // A multiplier coprime with any `keys` that is not
                        // a multiple of its prime: a permutation.
                        spread = format!("key{:013}", n.wrapping_mul(SPREAD_STRIDE) % keys);
                        spread.as_bytes()
                    } else {
                        &self.keys[r][i]
                    };
                    self.builder.push(&CommandRef {
                        client: (r * self.batch + i) as u64 + 1,
                        request: self.round,
                        first_outstanding: self.round,
                        op: Op::Put,
                        key,
                        value: VALUE,
                    });
                }
                self.builder.finish()
            })
            .collect()
    }
}
