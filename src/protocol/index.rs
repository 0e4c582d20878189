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
//! Keys are forgotten once every instance recorded for them is executed at
//! every replica (`stable.rs`): the index holds the keys touched in its
//! last two generations, not the key space. What makes forgetting change
//! no attributes, and why it is safe, is in ARCHITECTURE.md ("Forgetting
//! keys"). Client rows are kept (with the sessions they sit beside).
//!
//! The client table also holds each client's exactly-once session
//! (`sessions.rs`): execution looks up the same entry the index touched when
//! the command was pre-accepted, which is then likely still in cache, and
//! there is one table per client instead of two.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::hash::IdMap;
use super::outbox::Refused;
use super::sessions::Session;
use super::stable::Slots;
use super::types::{Attrs, InstanceId};
use crate::command::{Batch, CommandRef, Op};
use crate::constants::REPLICAS_MAX;
use crate::state_machine::{Access, InlineKey, StateMachine};

/// A generation emptied with room for eight times this many keys, and for
/// eight times what the other holds, gives its memory back (after a
/// restart replayed a long log); otherwise its tables are reused.
const GENERATION_KEEP_KEYS_MAX: usize = 4096;

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

    /// Copies the row pair at `from` of `other` (same width) to `row`.
    fn copy_pair(&mut self, row: u32, other: &Rows, from: u32) {
        let (to, from_at, w) = (
            row as usize * self.width,
            from as usize * self.width,
            2 * self.width,
        );
        self.words[to..to + w].copy_from_slice(&other.words[from_at..from_at + w]);
        let (to, from_at, w) = (
            row as usize * self.replicas,
            from as usize * self.replicas,
            2 * self.replicas,
        );
        self.executed[to..to + w].copy_from_slice(&other.executed[from_at..from_at + w]);
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

/// The keys of one generation and their rows.
struct Generation {
    /// Key -> first of its two rows (any access; writes at +1).
    map: FxHashMap<InlineKey, u32>,
    rows: Rows,
    /// Per space, at least the highest slot a row of this generation
    /// records (an upper bound: never lowered when a row moves or resets).
    max: Slots,
}

impl Generation {
    fn new(replicas: usize) -> Generation {
        Generation {
            map: FxHashMap::default(),
            rows: Rows::new(replicas),
            max: [0; REPLICAS_MAX],
        }
    }

    /// Forgets every key, keeping the tables' room unless it is far more
    /// than `other_keys` (what the other generation holds) would need.
    fn clear(&mut self, other_keys: usize) {
        let keep = 8 * GENERATION_KEEP_KEYS_MAX.max(other_keys);
        if self.map.capacity() > keep {
            *self = Generation::new(self.rows.replicas);
            return;
        }
        self.map.clear();
        self.rows.words.clear();
        self.rows.executed.clear();
        self.max = [0; REPLICAS_MAX];
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
/// One row pair per key touched in the last two generations (a generation
/// whose rows are all at or below the stable floor is dropped whole,
/// `sweep`; so every key touched by an instance not yet executed at every
/// replica is held, and some stale ones), and one row per client ever seen.
pub(crate) struct ConflictIndex<S: StateMachine> {
    /// Keys touched since the last rotation, and in the one before: a key
    /// is in one of them or forgotten. Using a key of `old` moves it to
    /// `young`; `sweep` drops `old` whole once all it records is stable.
    young: Generation,
    old: Generation,
    /// Rows recording nothing above this are stale (`stable.rs`'s floor).
    floor: Slots,
    /// Row pairs forgotten so far (dropped, or reset when found stale).
    forgotten: u64,
    /// Client id -> its conflict row and its session.
    client_table: IdMap<u64, Client<S::Output>>,
    clients: Rows,
    /// Client rows given back, for reuse (zeroed when taken).
    free_client_rows: Vec<u32>,
    /// Clients whose entry may hold no session (new, or expired): each is
    /// dropped once it holds none and its row is stale (`sweep`).
    unused: VecDeque<u64>,
    /// The session table's own conflict rows (any access; expiries at +1):
    /// a command that may start a session reads it, an `Op::Expire`
    /// writes it, so every replica sees the same watermark when it
    /// decides whether a session may start.
    sessions_rows: Rows,
    /// Sessions held (entries with a session).
    sessions: usize,
    /// Session ids below this that hold no session are expired: they never
    /// start one again. Replicated state (raised by `Op::Expire`).
    retired_below: u64,
    /// Sessions in order of their last use, roughly (each once): where
    /// the search for idle ones starts. (client, local time queued.)
    idle: VecDeque<(u64, u64)>,
    /// Sessions expired, and client entries dropped, so far.
    expired: u64,
    clients_dropped: u64,
    /// Rows a batch touches, between computing its attributes and recording it.
    touched: Vec<Touched>,
}

struct Client<O> {
    row: u32,
    /// None until a command starts the session (`execute_command`), and
    /// again once it expired.
    session: Option<Session<O>>,
}

#[derive(Clone, Copy)]
enum Touched {
    Key { row: u32, access: Access },
    Client { row: u32 },
    Sessions { access: Access },
}

/// The first of the session table's conflict rows read by a command with
/// `access` (reads conflict with expiries only).
fn sessions_row(access: Access) -> u32 {
    u32::from(access == Access::Read)
}

/// When a session is expired: idle for `idle_ns`, or the least recently
/// used past `max` sessions.
#[derive(Clone, Copy, Debug)]
pub struct SessionBounds {
    pub idle_ns: u64,
    pub max: usize,
}

/// Most entries one `sweep` looks at for dropping.
const UNUSED_CHECKS_MAX: usize = 4096;

/// A command that may start a session: any client command (a client that
/// talks to several shards starts a session at each with whichever of its
/// commands executes there first).
fn may_start_session(cmd: &CommandRef<'_>) -> bool {
    cmd.op != Op::Expire
}

impl<S: StateMachine> ConflictIndex<S> {
    pub fn new(replicas: usize) -> Self {
        ConflictIndex {
            young: Generation::new(replicas),
            old: Generation::new(replicas),
            floor: [0; REPLICAS_MAX],
            forgotten: 0,
            client_table: IdMap::default(),
            clients: Rows::new(replicas),
            free_client_rows: Vec::new(),
            unused: VecDeque::new(),
            sessions_rows: {
                let mut rows = Rows::new(replicas);
                rows.push_zeroed(2);
                rows
            },
            sessions: 0,
            retired_below: 0,
            idle: VecDeque::new(),
            expired: 0,
            clients_dropped: 0,
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
                    index.young.rows.add_to(conflicting, attrs, &mut seq_max);
                }
                Touched::Client { row } => index.clients.add_to(row, attrs, &mut seq_max),
                Touched::Sessions { access } => {
                    let conflicting = sessions_row(access);
                    index.sessions_rows.add_to(conflicting, attrs, &mut seq_max);
                }
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
            for generation in [&mut self.young, &mut self.old] {
                if let Some(&row) = generation.map.get(key) {
                    generation.rows.record_executed(row, id);
                    if access == Access::Write {
                        generation.rows.record_executed(row + 1, id);
                    }
                    break;
                }
            }
        }
    }

    /// Executes one command of instance `id` against its client's session
    /// (recorded as executed for the client's row): the result to answer
    /// with, or why it did not run; `None` for an `Op::Expire`, which
    /// answers nobody.
    ///
    /// A client without a session starts one if its id is not below
    /// `retired_below`; otherwise the command is refused as
    /// `SessionExpired`, so a late copy of a request of an expired session
    /// is never applied again. Every replica decides the same: a client's
    /// commands are ordered with each other and with its expiry (its row),
    /// and every command is ordered with every expiry (the session rows),
    /// so all see the same session and watermark.
    pub fn execute_command(
        &mut self,
        sm: &mut S,
        id: InstanceId,
        cmd: &CommandRef<'_>,
        now: u64,
    ) -> Option<Result<S::Output, Refused>> {
        let entry = Self::client_in(
            &mut self.client_table,
            &mut self.clients,
            &mut self.free_client_rows,
            &mut self.unused,
            cmd.client,
        );
        self.clients.record_executed(entry.row, id);
        // As `record_row` recorded it: every command in the session rows'
        // any-access row, an expiry in its writes row too.
        self.sessions_rows.record_executed(0, id);
        if cmd.op == Op::Expire {
            self.sessions_rows.record_executed(1, id);
            // Only if the client ran nothing since its proposer looked.
            if entry
                .session
                .as_ref()
                .is_some_and(|s| s.executed == cmd.first_outstanding)
            {
                entry.session = None;
                self.sessions -= 1;
                self.expired += 1;
                self.retired_below = self.retired_below.max(cmd.client.saturating_add(1));
                self.unused.push_back(cmd.client);
            }
            return None;
        }
        if entry.session.is_none() {
            if cmd.client < self.retired_below {
                let retired_below = self.retired_below;
                return Some(Err(Refused::SessionExpired { retired_below }));
            }
            entry.session = Some(Session::new(now));
            self.sessions += 1;
            self.idle.push_back((cmd.client, now));
        }
        let session = entry.session.as_mut().expect("a session");
        Some(session.execute(sm, cmd, now))
    }

    /// Sessions to expire now, each as (client, commands it executed), at
    /// most `limit`, appended to `out`: those idle for `idle_ns` (by this
    /// replica's clock), and the least recently used past `max` sessions.
    /// Replica `me` of `replicas` proposes those whose id it is assigned
    /// (id mod N), and any idle twice as long (its assignee may be down).
    pub fn expiry_candidates(
        &mut self,
        now: u64,
        bounds: SessionBounds,
        (me, replicas): (usize, usize),
        limit: usize,
        out: &mut Vec<(u64, u64)>,
    ) {
        let SessionBounds { idle_ns, max } = bounds;
        let mut over = self.sessions.saturating_sub(max);
        let mut steps = 0;
        while let Some(&(client, queued)) = self.idle.front() {
            if out.len() >= limit || steps >= 4 * limit || queued >= now {
                return; // went round once, or enough for now
            }
            steps += 1;
            let Some(session) = self
                .client_table
                .get(&client)
                .and_then(|c| c.session.as_ref())
            else {
                self.idle.pop_front(); // expired already
                continue;
            };
            let (last, executed) = (session.last_ns, session.executed);
            if last > queued {
                // Used since it was queued: to the back, in order of use.
                self.idle.pop_front();
                self.idle.push_back((client, last));
                continue;
            }
            let idle_for = now.saturating_sub(last);
            if idle_for < idle_ns && over == 0 {
                return; // the least recently used is in use
            }
            over = over.saturating_sub(1);
            self.idle.pop_front();
            self.idle.push_back((client, now));
            let assigned = (client % replicas as u64) as usize == me;
            if assigned || idle_for >= 2 * idle_ns || self.sessions > 2 * max {
                out.push((client, executed));
            }
        }
    }

    /// Per replica, the latest instance known here that conflicts with
    /// `batch`, and the latest executed here.
    pub fn frontier(&mut self, batch: &Batch) -> Frontier {
        let mut frontier = Frontier::default();
        self.visit_rows(batch, |index, touched| match touched {
            Touched::Key { row, access } => {
                let conflicting = if access == Access::Read { row + 1 } else { row };
                index.young.rows.add_frontier(conflicting, &mut frontier);
            }
            Touched::Client { row } => index.clients.add_frontier(row, &mut frontier),
            Touched::Sessions { access } => {
                let conflicting = sessions_row(access);
                index.sessions_rows.add_frontier(conflicting, &mut frontier);
            }
        });
        frontier
    }

    /// Calls `f` with the rows of every key and client of `batch`, creating
    /// the rows of ones never seen. Consecutive commands of one client share
    /// its row: one lookup.
    fn visit_rows(&mut self, batch: &Batch, mut f: impl FnMut(&mut Self, Touched)) {
        let mut last_client = None;
        let (mut starts, mut expires) = (false, false);
        for cmd in batch.iter() {
            if last_client != Some(cmd.client) {
                last_client = Some(cmd.client);
                let row = self.client(cmd.client).row;
                if self.clients.stale(row, &self.floor) {
                    self.clients.reset(row, 1);
                }
                f(self, Touched::Client { row });
            }
            if cmd.op == Op::Expire && !expires {
                expires = true;
                f(
                    self,
                    Touched::Sessions {
                        access: Access::Write,
                    },
                );
            } else if may_start_session(&cmd) && !starts {
                starts = true;
                f(
                    self,
                    Touched::Sessions {
                        access: Access::Read,
                    },
                );
            }
            let Some((key, access)) = S::conflict_key(&cmd) else {
                continue;
            };
            let row = match self.young.map.get(key) {
                Some(&row) => {
                    if self.young.rows.stale(row, &self.floor) {
                        // Counted when its generation goes.
                        self.young.rows.reset(row, 2);
                    }
                    row
                }
                None => self.add_key(key),
            };
            f(self, Touched::Key { row, access });
        }
    }

    /// A row pair in `young` for a key it lacks: moved from `old` (unless
    /// stale there), or new (the only place the index copies a key).
    fn add_key(&mut self, key: &[u8]) -> u32 {
        let row = self.young.rows.push_zeroed(2);
        let key = match self.old.map.remove_entry(key) {
            Some((key, from)) => {
                if self.old.rows.stale(from, &self.floor) {
                    self.forgotten += 1;
                } else {
                    self.young.rows.copy_pair(row, &self.old.rows, from);
                    let recorded = &self.young.rows.row(row)[1..];
                    for (m, &s) in self.young.max.iter_mut().zip(recorded) {
                        *m = (*m).max(s);
                    }
                }
                key
            }
            None => InlineKey::from_slice(key),
        };
        self.young.map.insert(key, row);
        row
    }

    /// Rows recording nothing above `floor` are stale from now on. The
    /// floor only rises.
    pub fn set_floor(&mut self, floor: &Slots) {
        debug_assert!(floor.iter().zip(&self.floor).all(|(a, b)| a >= b));
        self.floor = *floor;
    }

    /// Drops `old` once everything it records is at or below the floor,
    /// and `young` becomes `old`: the keys held are those touched in the
    /// last two generations, each about as long as the floor takes to
    /// pass what was recorded, and forgetting a generation costs a clear
    /// of its tables, not a lookup per key. Twice, so that once the load
    /// stops the last report empties the index.
    pub fn sweep(&mut self) {
        self.drop_unused();
        for _ in 0..2 {
            let n = self.young.rows.replicas;
            if self.old.max[..n]
                .iter()
                .zip(&self.floor)
                .any(|(m, f)| m > f)
            {
                return;
            }
            self.forgotten += self.old.map.len() as u64;
            self.old.clear(self.young.map.len());
            std::mem::swap(&mut self.young, &mut self.old);
        }
    }

    /// The client's entry, created (with a conflict row, and no session)
    /// on first sight.
    fn client(&mut self, client: u64) -> &mut Client<S::Output> {
        Self::client_in(
            &mut self.client_table,
            &mut self.clients,
            &mut self.free_client_rows,
            &mut self.unused,
            client,
        )
    }

    /// `client`, on the index's fields one by one (so that the caller may
    /// use the others while it holds the entry).
    fn client_in<'a>(
        table: &'a mut IdMap<u64, Client<S::Output>>,
        clients: &mut Rows,
        free: &mut Vec<u32>,
        unused: &mut VecDeque<u64>,
        client: u64,
    ) -> &'a mut Client<S::Output> {
        table.entry(client).or_insert_with(|| {
            unused.push_back(client);
            let row = match free.pop() {
                Some(row) => {
                    clients.reset(row, 1);
                    row
                }
                None => clients.push_zeroed(1),
            };
            Client { row, session: None }
        })
    }

    /// Drops the entries of clients without a session whose rows are
    /// stale: what they record is executed everywhere, so the entry says
    /// nothing any more (a later command of the client finds no session
    /// either way, and a fresh row).
    fn drop_unused(&mut self) {
        for _ in 0..UNUSED_CHECKS_MAX {
            let Some(&client) = self.unused.front() else {
                return;
            };
            match self.client_table.get(&client) {
                Some(c) if c.session.is_none() => {
                    if !self.clients.stale(c.row, &self.floor) {
                        return; // later ones are about as recent
                    }
                    self.free_client_rows.push(c.row);
                    self.client_table.remove(&client);
                    self.clients_dropped += 1;
                }
                _ => {} // gone already, or in a session (queued again when it expires)
            }
            self.unused.pop_front();
        }
    }

    /// Client entries held (with or without a session).
    pub fn clients(&self) -> usize {
        self.client_table.len()
    }

    /// Sessions held.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// Sessions expired so far, and client entries dropped.
    pub fn sessions_expired(&self) -> (u64, u64) {
        (self.expired, self.clients_dropped)
    }

    /// Session ids below this that hold no session never start one.
    pub fn retired_below(&self) -> u64 {
        self.retired_below
    }

    fn record_row(&mut self, touched: Touched, id: InstanceId, seq: u64) {
        match touched {
            Touched::Key { row, access } => {
                self.young.rows.record(row, id, seq);
                if access == Access::Write {
                    self.young.rows.record(row + 1, id, seq);
                }
                let m = &mut self.young.max[id.replica.index()];
                *m = (*m).max(id.slot.0);
            }
            Touched::Client { row } => self.clients.record(row, id, seq),
            Touched::Sessions { access } => {
                self.sessions_rows.record(0, id, seq);
                if access == Access::Write {
                    self.sessions_rows.record(1, id, seq);
                }
            }
        }
    }

    /// Keys forgotten so far: dropped with their generation, or found stale
    /// in `old` on their next use. (A row reset in `young` is counted when
    /// its generation goes.)
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Keys held: those of the last two generations.
    pub fn keys(&self) -> usize {
        self.young.map.len() + self.old.map.len()
    }
}
