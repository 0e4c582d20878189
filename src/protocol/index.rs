//! The conflict index: per key, the latest instance of each replica that
//! touched it. Computing an instance's attributes is one hash lookup per key.
//!
//! Besides the state machine's conflicts, every command conflicts with the
//! other commands of the same client. The exactly-once table (`sessions.rs`)
//! is per client: if two commands of one client on different keys could run
//! in different orders at two replicas, the table would forget a result at
//! one replica before applying it there and apply it at another, and the
//! replicas would diverge. Ordering a client's commands makes the table part
//! of the agreed order. It costs nothing for a client with one request in
//! flight, and little for a pipelining client that talks to one replica.
//!
//! Layout, for cache misses (the measured cost of this module): a hash map
//! turns a key (or client id) into a dense row number; rows live in one flat
//! `Vec<u64>` sized to N, not to the largest cluster. A row is
//! `[seq, latest slot of replica 0..N]`; a key has two (any access, writes),
//! a client one. Beside each row, in a separate vector so that computing
//! attributes does not drag it through the cache, the latest slot of each
//! replica executed here: it serves recovery alone (`frontier`). Executed
//! instances are dropped from memory, but a recovering replica must still
//! learn that one of them conflicts with the command it recovers. Computing attributes looks each key up
//! once and remembers its row, so recording the instance afterwards (once
//! the seq is known) is array indexing, not a second hash lookup.
//!
//! The client table also holds each client's exactly-once session
//! (`sessions.rs`): execution looks up the same entry the index touched when
//! the command was pre-accepted, which is then likely still in cache, and
//! there is one table per client instead of two.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::hash::IdMap;
use super::sessions::Session;
use super::stable::Slots;
use super::types::{Attrs, InstanceId};
use crate::command::Batch;
use crate::constants::REPLICAS_MAX;
use crate::state_machine::{Access, InlineKey, StateMachine};

/// Row pairs the sweep examines beyond twice those created, when the floor
/// rose: what empties the index once the load stops.
const SWEEP_ROWS_ON_RISE: usize = 64;
/// Below this many map entries the sweep never shrinks the map.
const SWEEP_SHRINK_KEYS_MIN: usize = 4096;

/// Rows of `[seq, slots..]`, one per key or client, in a flat vector, and
/// rows of executed slots beside them.
struct Rows {
    replicas: usize,
    /// Words per row: 1 + N.
    width: usize,
    words: Vec<u64>,
    /// N words per row: the latest executed slot of each replica.
    executed: Vec<u64>,
}

impl Rows {
    fn new(replicas: usize) -> Rows {
        Rows {
            replicas,
            width: 1 + replicas,
            words: Vec::new(),
            executed: Vec::new(),
        }
    }

    fn push_zeroed(&mut self, rows: usize) -> u32 {
        let first = self.words.len() / self.width;
        self.words.resize(self.words.len() + rows * self.width, 0);
        self.executed
            .resize(self.executed.len() + rows * self.replicas, 0);
        u32::try_from(first).expect("fewer than 2^32 rows")
    }

    #[inline]
    fn row(&self, row: u32) -> &[u64] {
        let at = row as usize * self.width;
        &self.words[at..at + self.width]
    }

    /// Folds a row into `attrs`: deps take the element-wise max (the union),
    /// `seq_max` the row's seq.
    #[inline]
    fn add_to(&self, row: u32, attrs: &mut Attrs, seq_max: &mut u64) {
        let row = self.row(row);
        *seq_max = (*seq_max).max(row[0]);
        for (d, s) in attrs.deps.0.iter_mut().zip(&row[1..]) {
            *d = (*d).max(*s);
        }
    }

    #[inline]
    fn record(&mut self, row: u32, id: InstanceId, seq: u64) {
        let at = row as usize * self.width;
        let row = &mut self.words[at..at + self.width];
        row[0] = row[0].max(seq);
        let slot = &mut row[1 + id.replica.index()];
        *slot = (*slot).max(id.slot.0);
    }

    #[inline]
    fn record_executed(&mut self, row: u32, id: InstanceId) {
        let at = row as usize * self.replicas + id.replica.index();
        self.executed[at] = self.executed[at].max(id.slot.0);
    }

    /// Every instance the row records is at or below `floor`: executed at
    /// every replica, so nothing the row says can matter any more.
    #[inline]
    fn stale(&self, row: u32, floor: &Slots) -> bool {
        self.row(row)[1..].iter().zip(floor).all(|(s, f)| s <= f)
    }

    /// Forgets `rows` rows from `row` on, as if never touched.
    fn reset(&mut self, row: u32, rows: usize) {
        let at = row as usize * self.width;
        self.words[at..at + rows * self.width].fill(0);
        let at = row as usize * self.replicas;
        self.executed[at..at + rows * self.replicas].fill(0);
    }

    /// Folds the row's latest and latest executed slots into `frontier`.
    fn add_frontier(&self, row: u32, frontier: &mut Frontier) {
        let n = self.replicas;
        let known = self.row(row);
        let executed = &self.executed[row as usize * n..(row as usize + 1) * n];
        for r in 0..n {
            frontier.latest[r] = frontier.latest[r].max(known[1 + r]);
            frontier.executed[r] = frontier.executed[r].max(executed[r]);
        }
    }
}

/// For one batch: per replica, the latest slot known here that conflicts with
/// it, and the latest such slot executed here.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Frontier {
    pub latest: [u64; REPLICAS_MAX],
    pub executed: [u64; REPLICAS_MAX],
}

/// Keyed by fixed hashers (no random state): the core is deterministic.
/// One row pair per key touched by an instance not yet executed at every
/// replica (rows at or below the stable floor are dropped, `sweep`), and one
/// row per client ever seen.
pub(crate) struct ConflictIndex<S: StateMachine> {
    /// Key -> first of its two rows (any access; writes at +1).
    key_rows: FxHashMap<InlineKey, u32>,
    keys: Rows,
    /// The key of each row pair (by first row / 2), to drop it from the map.
    row_keys: Vec<InlineKey>,
    /// Row pairs dropped, for new keys to reuse.
    free: Vec<u32>,
    /// Every held row pair once, oldest first: the sweep's round.
    sweep: VecDeque<u32>,
    /// Row pairs created since the last sweep: the sweep keeps up with them.
    created: usize,
    /// The floor rose since the last sweep: rows that were not stale may be.
    floor_rose: bool,
    /// The last sweep beyond what was created dropped rows: more may be
    /// stale, worth another call even with nothing new (`sweep_owed`).
    sweep_owed: bool,
    /// Rows recording nothing above this are stale (`stable.rs`'s floor).
    floor: Slots,
    /// Row pairs forgotten so far (dropped, or reset when found stale).
    forgotten: u64,
    /// Client id -> its conflict row and its session.
    client_table: IdMap<u64, Client<S::Output>>,
    clients: Rows,
    /// Rows a batch touches, between computing its attributes and recording it.
    touched: Vec<Touched>,
}

struct Client<O> {
    row: u32,
    session: Session<O>,
}

#[derive(Clone, Copy)]
enum Touched {
    Key { row: u32, access: Access },
    Client { row: u32 },
}

impl<S: StateMachine> ConflictIndex<S> {
    pub fn new(replicas: usize) -> Self {
        ConflictIndex {
            key_rows: FxHashMap::default(),
            keys: Rows::new(replicas),
            row_keys: Vec::new(),
            free: Vec::new(),
            sweep: VecDeque::new(),
            created: 0,
            floor_rose: false,
            sweep_owed: false,
            floor: [0; REPLICAS_MAX],
            forgotten: 0,
            client_table: IdMap::default(),
            clients: Rows::new(replicas),
            touched: Vec::new(),
        }
    }

    /// Adds the conflicts of `batch` to `attrs` (deps gain every conflicting
    /// instance, seq rises above every conflicting seq), then records instance
    /// `id` with the resulting seq. The instance never depends on itself,
    /// even when the batch touches a key twice.
    pub fn add_conflicts_and_record(&mut self, id: InstanceId, batch: &Batch, attrs: &mut Attrs) {
        self.touched.clear();
        let mut seq_max = 0;
        self.visit_rows(batch, |index, touched| {
            match touched {
                Touched::Key { row, access } => {
                    // Reads conflict with writes only, writes with everything.
                    let conflicting = if access == Access::Read { row + 1 } else { row };
                    index.keys.add_to(conflicting, attrs, &mut seq_max);
                }
                Touched::Client { row } => index.clients.add_to(row, attrs, &mut seq_max),
            }
            index.touched.push(touched);
        });
        attrs.seq = attrs.seq.max(seq_max + 1);
        for i in 0..self.touched.len() {
            let touched = self.touched[i];
            self.record_row(touched, id, attrs.seq);
        }
    }

    /// Records that instance `id` with sequence number `seq` touches the keys
    /// of `batch`. Idempotent, and safe in any order: it only raises values.
    pub fn record(&mut self, id: InstanceId, seq: u64, batch: &Batch) {
        self.visit_rows(batch, |index, touched| index.record_row(touched, id, seq));
    }

    /// Records that instance `id`, which touches the keys of `batch`, executed.
    /// (Its clients are recorded by `session_executing`, which execution
    /// looks up anyway.)
    pub fn record_executed_keys(&mut self, id: InstanceId, batch: &Batch) {
        for cmd in batch.iter() {
            let Some((key, access)) = S::conflict_key(&cmd) else {
                continue;
            };
            if let Some(&row) = self.key_rows.get(key) {
                self.keys.record_executed(row, id);
                if access == Access::Write {
                    self.keys.record_executed(row + 1, id);
                }
            }
        }
    }

    /// The client's exactly-once session, for executing one of its commands
    /// in instance `id` (recorded as executed for the client's row).
    pub fn session_executing(&mut self, id: InstanceId, client: u64) -> &mut Session<S::Output> {
        let clients = &mut self.clients;
        let entry = self.client_table.entry(client).or_insert_with(|| Client {
            row: clients.push_zeroed(1),
            session: Session::new(),
        });
        clients.record_executed(entry.row, id);
        &mut entry.session
    }

    /// Per replica, the latest instance known here that conflicts with
    /// `batch`, and the latest executed here.
    pub fn frontier(&mut self, batch: &Batch) -> Frontier {
        let mut frontier = Frontier::default();
        self.visit_rows(batch, |index, touched| match touched {
            Touched::Key { row, access } => {
                let conflicting = if access == Access::Read { row + 1 } else { row };
                index.keys.add_frontier(conflicting, &mut frontier);
            }
            Touched::Client { row } => index.clients.add_frontier(row, &mut frontier),
        });
        frontier
    }

    /// Calls `f` with the rows of every key and client of `batch`, creating
    /// the rows of ones never seen. Consecutive commands of one client share
    /// its row: one lookup.
    fn visit_rows(&mut self, batch: &Batch, mut f: impl FnMut(&mut Self, Touched)) {
        let mut last_client = None;
        for cmd in batch.iter() {
            if last_client != Some(cmd.client) {
                last_client = Some(cmd.client);
                let row = self.client(cmd.client).row;
                if self.clients.stale(row, &self.floor) {
                    self.clients.reset(row, 1);
                }
                f(self, Touched::Client { row });
            }
            let Some((key, access)) = S::conflict_key(&cmd) else {
                continue;
            };
            let row = match self.key_rows.get(key) {
                Some(&row) => {
                    if self.keys.stale(row, &self.floor) {
                        self.keys.reset(row, 2);
                        self.forgotten += 1;
                    }
                    row
                }
                None => self.add_key(key),
            };
            f(self, Touched::Key { row, access });
        }
    }

    /// A row pair for a key not held: the only place the index copies one.
    fn add_key(&mut self, key: &[u8]) -> u32 {
        let row = match self.free.pop() {
            Some(row) => {
                self.row_keys[row as usize / 2] = InlineKey::from_slice(key);
                row
            }
            None => {
                let row = self.keys.push_zeroed(2);
                self.row_keys.push(InlineKey::from_slice(key));
                row
            }
        };
        self.key_rows.insert(InlineKey::from_slice(key), row);
        self.sweep.push_back(row);
        self.created += 1;
        row
    }

    /// The last sweep found stale rows and some remain to look at: the
    /// driver should call again soon even if nothing else happens.
    pub fn sweep_owed(&self) -> bool {
        self.sweep_owed
    }

    /// Rows recording nothing above `floor` are stale from now on. The
    /// floor only rises.
    pub fn set_floor(&mut self, floor: &Slots) {
        debug_assert!(floor.iter().zip(&self.floor).all(|(a, b)| a >= b));
        self.floor_rose |= *floor != self.floor;
        self.floor = *floor;
    }

    /// Drops the stale row pairs among the oldest held: twice as many
    /// looked at as were created since the last call, and a few more each
    /// time the floor rose, so that the rows held follow the keys touched
    /// by undecided instances, and no call does more than a bounded amount
    /// of work. Rows not stale yet go round again. Each row looked at is
    /// a likely cache miss, so the drivers' frequent calls with nothing
    /// new cost nothing.
    pub fn sweep(&mut self) {
        let extra = if self.floor_rose || self.sweep_owed {
            SWEEP_ROWS_ON_RISE
        } else {
            0
        };
        let budget = (2 * self.created + extra).min(self.sweep.len());
        self.created = 0;
        self.floor_rose = false;
        let mut dropped = 0;
        for _ in 0..budget {
            let row = self.sweep.pop_front().expect("within the round");
            if !self.keys.stale(row, &self.floor) {
                self.sweep.push_back(row);
                continue;
            }
            let key = std::mem::take(&mut self.row_keys[row as usize / 2]);
            let removed = self.key_rows.remove(key.as_slice());
            debug_assert_eq!(removed, Some(row));
            self.keys.reset(row, 2);
            self.free.push(row);
            self.forgotten += 1;
            dropped += 1;
        }
        self.sweep_owed = extra > 0 && dropped > 0 && !self.sweep.is_empty();
        // After a restart replays a long log, most rows go at once: give
        // the memory back rather than keep the peak.
        if self.key_rows.capacity() > SWEEP_SHRINK_KEYS_MIN.max(8 * self.key_rows.len()) {
            self.key_rows.shrink_to(2 * self.key_rows.len());
        }
    }

    /// The client's entry, created (with a conflict row) on first sight.
    fn client(&mut self, client: u64) -> &mut Client<S::Output> {
        let clients = &mut self.clients;
        self.client_table.entry(client).or_insert_with(|| Client {
            row: clients.push_zeroed(1),
            session: Session::new(),
        })
    }

    pub fn clients(&self) -> usize {
        self.client_table.len()
    }

    fn record_row(&mut self, touched: Touched, id: InstanceId, seq: u64) {
        match touched {
            Touched::Key { row, access } => {
                self.keys.record(row, id, seq);
                if access == Access::Write {
                    self.keys.record(row + 1, id, seq);
                }
            }
            Touched::Client { row } => self.clients.record(row, id, seq),
        }
    }

    /// Keys forgotten so far: dropped by the sweep, or reset when found
    /// stale on their next use.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Keys held: touched by an instance not known executed everywhere.
    pub fn keys(&self) -> usize {
        self.key_rows.len()
    }
}
