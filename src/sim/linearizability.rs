//! Linearizability checker for key-value histories recorded by the simulator.
//!
//! The simulator records every client operation: when it was invoked, when (if ever)
//! it returned, and what a read observed. This module decides whether such a history
//! could have come from a single atomic key-value store, i.e. whether every operation
//! can be given one instant between its invocation and its return so that the resulting
//! sequential execution is legal for a map of registers that all start absent.
//!
//! # Approach
//!
//! * **Per-key partitioning.** Linearizability is local (Herlihy & Wing, 1990): a
//!   history is linearizable iff every per-object sub-history is. Each key is an
//!   independent register, so keys are checked one at a time, in sorted key order so
//!   that the reported violation is deterministic. This turns one search that is
//!   exponential in the whole history into many small ones.
//! * **Wing & Gong search with Lowe's memoization** ("Testing for linearizability",
//!   Lowe, 2017). A depth-first search builds a linearization one operation at a time.
//!   An operation may be linearized next only if no other not-yet-linearized operation
//!   returned strictly before it was invoked (that one would have to come first in
//!   real-time order), and applying it to the register must succeed (a Get must observe
//!   the current value). A configuration — the *set* of linearized operations plus the
//!   register value — determines everything about the rest of the search, so each one
//!   is explored at most once; without this the search is factorial in the overlap.
//! * **Stale-read pre-check.** Refuting by search means exhausting every configuration,
//!   which takes long when operations overlap. Most real bugs show up as a read that no
//!   write can explain (a stale read, or a value never written); those are found first
//!   in O(n log n) with the same real-time rules as the search, so the pre-check never
//!   rejects a history the search would accept.
//! * **Pending operations** (never returned) may take effect at any instant after their
//!   invocation, or never. They are treated as returning at +infinity and the search
//!   succeeds as soon as every *completed* operation is linearized. A pending Get has
//!   neither an effect nor an observed result, so it is dropped up front.
//!
//! Operation `a` precedes `b` in real time iff `a.return_ns < b.invoke_ns`. Equal
//! timestamps count as concurrent, which can only make the checker more permissive: a
//! coarse clock never produces a false violation.
//!
//! The search is iterative (an explicit stack plus a dancing-links list of the
//! operations not yet linearized), so histories with thousands of operations per key
//! cannot overflow the thread stack. Its cost is bounded by `search_steps_max`, where
//! one step is one candidate operation tried in one configuration; a mostly sequential
//! history of `n` operations needs about `n` steps. When the budget runs out the answer
//! is [`LinError::Inconclusive`] rather than a guess.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Get,
    Put(Vec<u8>),
    /// A DELETE whose answer is unknown (it never returned).
    Delete,
    /// A DELETE that answered whether it found a value to remove.
    DeleteFound(bool),
    /// A PUT of the value that applies only if the key holds a value
    /// (`present`, SET XX) or holds none (SET NX); `applied` is its answer,
    /// `None` if it never returned.
    PutIf {
        present: bool,
        value: Vec<u8>,
        applied: Option<bool>,
    },
    /// An INCR by 1 of a counter key (one that only INCRs touch); `sum` is
    /// its answer, `None` if it never returned. Checked by
    /// [`super::counters`], not by the register search.
    Incr {
        sum: Option<i64>,
    },
}

/// One client operation on one key. `return_ns == None` means it never returned
/// (pending: it may or may not have taken effect, at any point after invoke).
#[derive(Clone, Debug)]
pub struct HistoryOp {
    pub client: u64,
    pub key: Vec<u8>,
    pub kind: OpKind,
    pub invoke_ns: u64,
    pub return_ns: Option<u64>,
    /// For Get: the value read (None = key absent). For Put/Delete: ignored (None).
    pub read: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinError {
    /// No linearization exists for this key. `ops` are the indices (into the slice given
    /// to `check_history`) of that key's operations, for the report.
    NotLinearizable { key: Vec<u8>, ops: Vec<usize> },
    /// The search for this key exceeded `search_steps_max` states; neither proven nor refuted.
    Inconclusive { key: Vec<u8>, steps: u64 },
}

/// How many operation indices `Display` lists before eliding the rest; a failing key can
/// have thousands, and the message must stay one readable line.
const DISPLAY_MAX_INDICES: usize = 10;

impl fmt::Display for LinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinError::NotLinearizable { key, ops } => {
                write!(
                    f,
                    "key {} is not linearizable ({} ops: ",
                    DisplayBytes(key),
                    ops.len()
                )?;
                write_indices(f, ops)?;
                write!(f, ")")
            }
            LinError::Inconclusive { key, steps } => write!(
                f,
                "linearizability of key {} is inconclusive: search gave up after {steps} steps",
                DisplayBytes(key)
            ),
        }
    }
}

impl std::error::Error for LinError {}

/// Writes `[i, j, ...]`, eliding after [`DISPLAY_MAX_INDICES`] entries.
fn write_indices(f: &mut fmt::Formatter<'_>, ops: &[usize]) -> fmt::Result {
    write!(f, "[")?;
    for (n, i) in ops.iter().take(DISPLAY_MAX_INDICES).enumerate() {
        if n > 0 {
            write!(f, ", ")?;
        }
        write!(f, "{i}")?;
    }
    if ops.len() > DISPLAY_MAX_INDICES {
        write!(f, ", ... {} more", ops.len() - DISPLAY_MAX_INDICES)?;
    }
    write!(f, "]")
}

/// Shows a key as a quoted string when it is printable ASCII, as hex otherwise, so that
/// binary keys never garble the one-line report.
struct DisplayBytes<'a>(&'a [u8]);

impl fmt::Display for DisplayBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            // Only ASCII, so this conversion is lossless.
            write!(f, "{:?}", String::from_utf8_lossy(self.0))
        } else {
            write!(f, "0x")?;
            self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
}

/// Checks the history; keys are independent registers that start absent.
/// Put(v) sets the key to v, Delete makes it absent, Get returns the current value.
///
/// Keys are checked in ascending byte order and the first failing key is reported.
/// `search_steps_max` bounds the search per key (see the module docs for what a step is).
///
/// # Panics
///
/// If an operation returns before it was invoked: that is a bug in the recorder, not a
/// property of the system under test.
pub fn check_history(history: &[HistoryOp], search_steps_max: u64) -> Result<(), LinError> {
    validate(history);
    for (key, indices) in partition_by_key(history) {
        check_key(history, key, &indices, search_steps_max)?;
    }
    Ok(())
}

/// Rejects malformed input loudly instead of returning a misleading verdict.
fn validate(history: &[HistoryOp]) {
    for (i, op) in history.iter().enumerate() {
        if let Some(ret) = op.return_ns {
            assert!(
                ret >= op.invoke_ns,
                "linearizability: history op #{i} (client {}) returned at {ret} ns, \
                 before it was invoked at {} ns",
                op.client,
                op.invoke_ns
            );
        }
    }
}

/// Groups operation indices by key. A `BTreeMap` keeps the key order, and therefore the
/// reported error, deterministic; indices stay in ascending order within a key.
fn partition_by_key(history: &[HistoryOp]) -> BTreeMap<&[u8], Vec<usize>> {
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_slice()).or_default().push(i);
    }
    by_key
}

/// Checks one key's sub-history (`indices` into `history`).
fn check_key(
    history: &[HistoryOp],
    key: &[u8],
    indices: &[usize],
    search_steps_max: u64,
) -> Result<(), LinError> {
    if indices
        .iter()
        .any(|&i| matches!(history[i].kind, OpKind::Incr { .. }))
    {
        return match super::counters::check(history, indices) {
            Ok(()) => Ok(()),
            Err(()) => Err(LinError::NotLinearizable {
                key: key.to_vec(),
                ops: indices.to_vec(),
            }),
        };
    }
    let entries = model_entries(history, indices);
    // Refuting by search means exhausting every configuration, which is exponential in
    // the overlap; the pre-check catches the common violations (stale reads, reads of
    // values never written) in O(n log n) first.
    let outcome = if has_unexplainable_read(&entries) {
        Outcome::Refuted
    } else {
        Search::new(&entries).run(search_steps_max)
    };
    match outcome {
        Outcome::Linearizable => Ok(()),
        Outcome::Refuted => Err(LinError::NotLinearizable {
            key: key.to_vec(),
            ops: indices.to_vec(),
        }),
        Outcome::GaveUp { steps } => Err(LinError::Inconclusive {
            key: key.to_vec(),
            steps,
        }),
    }
}

/// A register value, interned per key so that configurations are cheap to hash and
/// compare no matter how large the stored values are.
type ValueId = u32;

/// The register holds nothing (initially, and after a Delete).
const ABSENT: ValueId = 0;

/// A read observed a value no Put on this key wrote; it can never match.
const NEVER_WRITTEN: ValueId = ValueId::MAX;

/// An operation as the register model sees it: Put and Delete are both writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelOp {
    Write(ValueId),
    Read(ValueId),
    /// A conditional write of `value` when the register holds a value
    /// (`present`) or holds none; `applied` is what it answered (`None`:
    /// pending, so the state it meets decides).
    WriteIf {
        present: bool,
        value: ValueId,
        applied: Option<bool>,
    },
    /// A DELETE that answered whether the register held a value.
    DeleteFound(bool),
}

impl ModelOp {
    /// The register value after applying `self` to `current`, or `None` if
    /// its answer (a read's value, a conditional write's outcome) does not
    /// fit `current`.
    fn apply(self, current: ValueId) -> Option<ValueId> {
        match self {
            ModelOp::Write(v) => Some(v),
            ModelOp::Read(v) => (v == current).then_some(current),
            ModelOp::WriteIf {
                present,
                value,
                applied,
            } => {
                let holds = (current != ABSENT) == present;
                let after = if holds { value } else { current };
                applied.is_none_or(|a| a == holds).then_some(after)
            }
            ModelOp::DeleteFound(found) => ((current != ABSENT) == found).then_some(ABSENT),
        }
    }

    /// The value it writes, or may write if pending: what the fast
    /// pre-check counts as a write (a completed one as a certain write).
    fn written(self) -> Option<ValueId> {
        match self {
            ModelOp::Write(v) => Some(v),
            ModelOp::WriteIf { value, applied, .. } => (applied != Some(false)).then_some(value),
            ModelOp::DeleteFound(_) => Some(ABSENT),
            ModelOp::Read(_) => None,
        }
    }
}

/// One operation of a key's sub-history, ready for the search.
#[derive(Clone, Copy, Debug)]
struct Entry {
    invoke: u64,
    /// `u64::MAX` for a pending operation: it never forces anything to come after it.
    ret: u64,
    /// Only completed operations must be linearized; pending ones are optional.
    completed: bool,
    op: ModelOp,
}

/// Translates one key's operations into model entries sorted by invocation time,
/// interning values and dropping pending Gets (they have no effect and no result).
fn model_entries(history: &[HistoryOp], indices: &[usize]) -> Vec<Entry> {
    let values = intern_written_values(history, indices);
    let mut entries: Vec<Entry> = indices
        .iter()
        .filter_map(|&i| model_entry(&history[i], &values))
        .collect();
    // Stable, so equal invocation times keep history order: deterministic search order.
    entries.sort_by_key(|e| e.invoke);
    entries
}

/// Gives every distinct value written to the key an id; ids start after [`ABSENT`].
fn intern_written_values<'h>(
    history: &'h [HistoryOp],
    indices: &[usize],
) -> HashMap<&'h [u8], ValueId> {
    let mut values: HashMap<&[u8], ValueId> = HashMap::new();
    for &i in indices {
        if let OpKind::Put(v) | OpKind::PutIf { value: v, .. } = &history[i].kind {
            let next = ValueId::try_from(values.len() + 1)
                .ok()
                .filter(|id| *id != NEVER_WRITTEN)
                .expect("linearizability: too many distinct values for one key");
            values.entry(v.as_slice()).or_insert(next);
        }
    }
    values
}

/// The model entry for `op`, or `None` for a pending Get.
fn model_entry(op: &HistoryOp, values: &HashMap<&[u8], ValueId>) -> Option<Entry> {
    let model_op = match &op.kind {
        OpKind::Put(v) => ModelOp::Write(values[v.as_slice()]),
        OpKind::Delete => ModelOp::Write(ABSENT),
        OpKind::DeleteFound(found) => ModelOp::DeleteFound(*found),
        OpKind::PutIf {
            present,
            value,
            applied,
        } => ModelOp::WriteIf {
            present: *present,
            value: values[value.as_slice()],
            applied: *applied,
        },
        OpKind::Incr { .. } => unreachable!("counter keys are checked apart"),
        OpKind::Get => {
            op.return_ns?;
            ModelOp::Read(match &op.read {
                None => ABSENT,
                Some(v) => values.get(v.as_slice()).copied().unwrap_or(NEVER_WRITTEN),
            })
        }
    };
    Some(Entry {
        invoke: op.invoke_ns,
        ret: op.return_ns.unwrap_or(u64::MAX),
        completed: op.return_ns.is_some(),
        op: model_op,
    })
}

/// Whether some read provably cannot be linearized, whatever the other reads saw.
///
/// A read `r` observing `v` must be linearized right after some write `w` of `v` with no
/// other write in between (or with no write before it at all, if `v` is absent). `w`
/// cannot be that write if `r` returned before `w` was invoked, or if some completed
/// write `x` was invoked after `w` returned and returned before `r` was invoked: real
/// time then forces `w < x < r` in every linearization. The check uses the same strict
/// precedence as the search, so it never refutes what the search would accept; it is
/// only a fast path, and anything it misses is left to the search.
fn has_unexplainable_read(entries: &[Entry]) -> bool {
    let writes = WriteIndex::new(entries);
    entries.iter().any(|e| match e.op {
        ModelOp::Read(v) => !writes.can_explain(e, v),
        _ => false,
    })
}

/// Write timing data for [`has_unexplainable_read`], built once per key.
struct WriteIndex {
    /// Invocation times of completed writes, ascending.
    completed_invokes: Vec<u64>,
    /// `suffix_min_ret[i]` is the earliest return among completed writes
    /// `i..`, in the order of `completed_invokes`; the last element is `u64::MAX`.
    suffix_min_ret: Vec<u64>,
    /// Writes (completed or pending) of each value.
    by_value: HashMap<ValueId, ValueWrites>,
}

impl WriteIndex {
    /// `entries` must be sorted by invocation time, as [`model_entries`] returns them.
    fn new(entries: &[Entry]) -> Self {
        let mut completed_invokes = Vec::new();
        let mut completed_rets = Vec::new();
        let mut by_value: HashMap<ValueId, ValueWrites> = HashMap::new();
        for e in entries {
            if let Some(v) = e.op.written() {
                if e.completed {
                    completed_invokes.push(e.invoke);
                    completed_rets.push(e.ret);
                }
                by_value.entry(v).or_default().push(e.invoke, e.ret);
            }
        }
        let mut suffix_min_ret = vec![u64::MAX; completed_rets.len() + 1];
        for i in (0..completed_rets.len()).rev() {
            suffix_min_ret[i] = suffix_min_ret[i + 1].min(completed_rets[i]);
        }
        WriteIndex {
            completed_invokes,
            suffix_min_ret,
            by_value,
        }
    }

    /// The earliest return among completed writes invoked strictly after `t`, or
    /// `u64::MAX` if there is none.
    fn earliest_return_of_writes_invoked_after(&self, t: u64) -> u64 {
        let first = self
            .completed_invokes
            .partition_point(|&invoke| invoke <= t);
        self.suffix_min_ret[first]
    }

    /// Whether some write of `v` (or the initial absent state) can be the one `read`
    /// observes. Among the candidate writes of `v` not invoked after `read` returned, the
    /// one that returned last is the hardest to rule out (fewer writes can be invoked
    /// after it), so it is the only one worth testing.
    fn can_explain(&self, read: &Entry, v: ValueId) -> bool {
        let initial_state_visible = v == ABSENT && self.suffix_min_ret[0] >= read.invoke;
        initial_state_visible
            || self
                .by_value
                .get(&v)
                .and_then(|w| w.latest_return_of_writes_invoked_by(read.ret))
                .is_some_and(|ret| self.earliest_return_of_writes_invoked_after(ret) >= read.invoke)
    }
}

/// Writes of one value, ascending by invocation time.
#[derive(Default)]
struct ValueWrites {
    invokes: Vec<u64>,
    /// `prefix_max_ret[i]` is the latest return among writes `..=i`.
    prefix_max_ret: Vec<u64>,
}

impl ValueWrites {
    /// Appends a write; must be called in ascending invocation order.
    fn push(&mut self, invoke: u64, ret: u64) {
        let latest = self.prefix_max_ret.last().map_or(ret, |&m| m.max(ret));
        self.invokes.push(invoke);
        self.prefix_max_ret.push(latest);
    }

    /// The latest return among writes invoked at or before `t`, if any.
    fn latest_return_of_writes_invoked_by(&self, t: u64) -> Option<u64> {
        let count = self.invokes.partition_point(|&invoke| invoke <= t);
        count.checked_sub(1).map(|last| self.prefix_max_ret[last])
    }
}

/// Result of searching one key.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Linearizable,
    Refuted,
    GaveUp { steps: u64 },
}

/// The set of linearized entries, one bit per entry. A plain `Vec<u64>` because a key
/// can have thousands of operations.
struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    fn new(len: usize) -> Self {
        Bitset {
            words: vec![0; len.div_ceil(64)],
        }
    }

    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    /// A compact, canonical copy for the memo table. Linearized sets are usually "a
    /// prefix plus a few", so leading all-ones and trailing all-zeros words are not
    /// stored; for a given length the result is still unique per set.
    fn snapshot(&self) -> (usize, Box<[u64]>) {
        let full = self.words.iter().take_while(|w| **w == u64::MAX).count();
        let end = self
            .words
            .iter()
            .rposition(|w| *w != 0)
            .map_or(full, |last| (last + 1).max(full));
        (full, self.words[full..end].into())
    }
}

/// A memoized configuration: which entries are linearized and the register value.
#[derive(PartialEq, Eq, Hash)]
struct Config {
    full_words: usize,
    rest: Box<[u64]>,
    value: ValueId,
}

/// Where to resume scanning after backtracking out of a linearization choice.
struct Frame {
    /// The entry that was linearized.
    entry: usize,
    /// The minimum return time of the entries before `entry` in the list at the time.
    min_ret_before: u64,
    /// The register value before `entry` was applied.
    value_before: ValueId,
}

/// State of the Wing & Gong search for one key.
struct Search<'a> {
    entries: &'a [Entry],
    /// Doubly linked list, in invocation order, of entries not yet linearized; index
    /// `entries.len()` is the sentinel. Unlinking and relinking in LIFO order (dancing
    /// links) makes lifting and backtracking O(1) and lets the candidate scan skip
    /// linearized entries.
    next: Vec<usize>,
    prev: Vec<usize>,
    linearized: Bitset,
    value: ValueId,
    /// Completed entries not yet linearized; the search succeeds when it hits zero.
    completed_left: usize,
    seen: HashSet<Config>,
    steps: u64,
}

impl<'a> Search<'a> {
    fn new(entries: &'a [Entry]) -> Self {
        let n = entries.len();
        // Circular list over 0..=n, with n as the sentinel.
        let next = (0..=n).map(|i| if i == n { 0 } else { i + 1 }).collect();
        let prev = (0..=n).map(|i| if i == 0 { n } else { i - 1 }).collect();
        Search {
            entries,
            next,
            prev,
            linearized: Bitset::new(n),
            value: ABSENT,
            completed_left: entries.iter().filter(|e| e.completed).count(),
            seen: HashSet::new(),
            steps: 0,
        }
    }

    fn sentinel(&self) -> usize {
        self.entries.len()
    }

    /// Depth-first search for a linearization of all completed entries.
    ///
    /// `cursor` walks the list of unlinearized entries in invocation order and `min_ret`
    /// is the minimum return time of the entries already passed at this depth. An entry
    /// invoked after `min_ret` must come after an unlinearized entry, so neither it nor
    /// (the list being sorted by invocation) any later entry is a candidate: the scan at
    /// this depth is over. Entries invoked later than the one being considered cannot
    /// have returned before it was invoked, so the entries already passed are the only
    /// ones that can rule it out.
    fn run(mut self, steps_max: u64) -> Outcome {
        if self.completed_left == 0 {
            return Outcome::Linearizable;
        }
        let mut stack: Vec<Frame> = Vec::new();
        let mut cursor = self.next[self.sentinel()];
        let mut min_ret = u64::MAX;
        loop {
            if cursor != self.sentinel() && self.entries[cursor].invoke <= min_ret {
                if self.steps >= steps_max {
                    return Outcome::GaveUp { steps: self.steps };
                }
                self.steps += 1;
                if let Some(value) = self.try_candidate(cursor) {
                    stack.push(Frame {
                        entry: cursor,
                        min_ret_before: min_ret,
                        value_before: self.value,
                    });
                    self.lift(cursor, value);
                    if self.completed_left == 0 {
                        return Outcome::Linearizable;
                    }
                    cursor = self.next[self.sentinel()];
                    min_ret = u64::MAX;
                } else {
                    min_ret = min_ret.min(self.entries[cursor].ret);
                    cursor = self.next[cursor];
                }
            } else {
                // No candidate left at this depth: undo the last choice and try the
                // entry after it.
                let Some(frame) = stack.pop() else {
                    return Outcome::Refuted;
                };
                self.unlift(frame.entry, frame.value_before);
                min_ret = frame.min_ret_before.min(self.entries[frame.entry].ret);
                cursor = self.next[frame.entry];
            }
        }
    }

    /// The register value after linearizing `entry` next, if the model allows it and the
    /// resulting configuration was never explored. A configuration seen before either
    /// failed already or lies on the current path, which is impossible because the
    /// linearized set only grows along a path; so skipping it loses nothing.
    fn try_candidate(&mut self, entry: usize) -> Option<ValueId> {
        let value = self.entries[entry].op.apply(self.value)?;
        self.linearized.set(entry);
        let (full_words, rest) = self.linearized.snapshot();
        self.linearized.clear(entry);
        let fresh = self.seen.insert(Config {
            full_words,
            rest,
            value,
        });
        fresh.then_some(value)
    }

    /// Linearizes `entry`, leaving the register at `value`.
    fn lift(&mut self, entry: usize, value: ValueId) {
        let (p, n) = (self.prev[entry], self.next[entry]);
        self.next[p] = n;
        self.prev[n] = p;
        self.linearized.set(entry);
        self.value = value;
        if self.entries[entry].completed {
            self.completed_left -= 1;
        }
    }

    /// Undoes [`Search::lift`]; must be called in reverse order of the lifts.
    fn unlift(&mut self, entry: usize, value_before: ValueId) {
        let (p, n) = (self.prev[entry], self.next[entry]);
        self.next[p] = entry;
        self.prev[n] = entry;
        self.linearized.clear(entry);
        self.value = value_before;
        if self.entries[entry].completed {
            self.completed_left += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Generous budget for tests that must reach a verdict.
    const BUDGET: u64 = 1_000_000;

    fn op(key: &str, kind: OpKind, invoke_ns: u64, return_ns: Option<u64>) -> HistoryOp {
        HistoryOp {
            client: 0,
            key: key.as_bytes().to_vec(),
            kind,
            invoke_ns,
            return_ns,
            read: None,
        }
    }

    fn put(key: &str, value: &str, invoke_ns: u64, return_ns: u64) -> HistoryOp {
        let kind = OpKind::Put(value.as_bytes().to_vec());
        op(key, kind, invoke_ns, Some(return_ns))
    }

    fn pending_put(key: &str, value: &str, invoke_ns: u64) -> HistoryOp {
        op(key, OpKind::Put(value.as_bytes().to_vec()), invoke_ns, None)
    }

    fn del(key: &str, invoke_ns: u64, return_ns: u64) -> HistoryOp {
        op(key, OpKind::Delete, invoke_ns, Some(return_ns))
    }

    /// A completed Get that observed `read` (`None` = absent).
    fn get(key: &str, read: Option<&str>, invoke_ns: u64, return_ns: u64) -> HistoryOp {
        HistoryOp {
            read: read.map(|v| v.as_bytes().to_vec()),
            ..op(key, OpKind::Get, invoke_ns, Some(return_ns))
        }
    }

    fn check(history: &[HistoryOp]) -> Result<(), LinError> {
        check_history(history, BUDGET)
    }

    fn assert_violation_on(result: Result<(), LinError>, key: &str) {
        match result {
            Err(LinError::NotLinearizable { key: k, .. }) => assert_eq!(k, key.as_bytes()),
            other => panic!("expected NotLinearizable on {key:?}, got {other:?}"),
        }
    }

    /// Tiny deterministic PRNG (64-bit LCG) so tests need no dependencies.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check(&[]), Ok(()));
    }

    #[test]
    fn sequential_put_get_is_linearizable() {
        let h = [
            get("k", None, 0, 1),
            put("k", "a", 10, 20),
            get("k", Some("a"), 30, 40),
            put("k", "b", 50, 60),
            get("k", Some("b"), 70, 80),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn stale_read_after_completed_put_is_not_linearizable() {
        let h = [
            put("k", "a", 0, 10),
            put("k", "b", 20, 30),
            get("k", Some("a"), 40, 50),
        ];
        match check(&h) {
            Err(LinError::NotLinearizable { key, ops }) => {
                assert_eq!(key, b"k");
                assert_eq!(ops, vec![0, 1, 2]);
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn concurrent_get_may_see_old_or_new_value() {
        let with_read = |read| {
            [
                put("k", "a", 0, 10),
                put("k", "b", 20, 40),
                get("k", read, 25, 35),
            ]
        };
        assert_eq!(check(&with_read(Some("a"))), Ok(()));
        assert_eq!(check(&with_read(Some("b"))), Ok(()));
        // Absent was overwritten before the Get started, so it is not allowed.
        assert_violation_on(check(&with_read(None)), "k");
    }

    #[test]
    fn equal_timestamps_count_as_concurrent() {
        // The put returns at the instant the get is invoked: either order is allowed.
        let h = [put("k", "a", 0, 10), get("k", None, 10, 20)];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn read_of_never_written_value_is_not_linearizable() {
        let h = [put("k", "a", 0, 10), get("k", Some("zzz"), 20, 30)];
        assert_violation_on(check(&h), "k");
    }

    #[test]
    fn read_from_a_later_write_is_not_linearizable() {
        // The value exists, but its Put started only after the Get returned.
        let h = [get("k", Some("a"), 0, 10), put("k", "a", 20, 30)];
        assert_violation_on(check(&h), "k");
    }

    #[test]
    fn delete_then_get_absent_is_linearizable() {
        let h = [
            put("k", "a", 0, 10),
            del("k", 20, 30),
            get("k", None, 40, 50),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn delete_then_get_old_value_is_not_linearizable() {
        let h = [
            put("k", "a", 0, 10),
            del("k", 20, 30),
            get("k", Some("a"), 40, 50),
        ];
        assert_violation_on(check(&h), "k");
    }

    #[test]
    fn pending_put_whose_value_is_read_later_is_linearizable() {
        let h = [
            put("k", "a", 0, 10),
            pending_put("k", "b", 20),
            get("k", Some("a"), 30, 40),
            get("k", Some("b"), 100, 110),
            get("k", Some("b"), 120, 130),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn pending_put_never_read_is_linearizable() {
        let h = [
            pending_put("k", "b", 0),
            put("k", "a", 10, 20),
            get("k", Some("a"), 30, 40),
            get("k", Some("a"), 50, 60),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn pending_put_read_before_its_invocation_is_not_linearizable() {
        let h = [get("k", Some("b"), 0, 10), pending_put("k", "b", 20)];
        assert_violation_on(check(&h), "k");
    }

    #[test]
    fn pending_put_cannot_take_effect_twice() {
        // After "b" is overwritten by "c", nothing can bring "b" back.
        let h = [
            pending_put("k", "b", 0),
            get("k", Some("b"), 10, 20),
            put("k", "c", 30, 40),
            get("k", Some("b"), 50, 60),
        ];
        assert_violation_on(check(&h), "k");
    }

    #[test]
    fn pending_get_is_ignored() {
        let mut pending_get = get("k", Some("nonsense"), 5, 0);
        pending_get.return_ns = None;
        let h = [
            put("k", "a", 0, 10),
            pending_get,
            get("k", Some("a"), 20, 30),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn keys_are_independent_and_violation_names_its_key() {
        // As one register this would be a violation (the last Get of "a" would be stale);
        // as two keys it is fine.
        let mut h = vec![
            put("a", "1", 0, 10),
            put("b", "2", 20, 30),
            get("a", Some("1"), 40, 50),
            get("b", Some("2"), 60, 70),
        ];
        assert_eq!(check(&h), Ok(()));

        h.push(get("b", None, 80, 90));
        match check(&h) {
            Err(LinError::NotLinearizable { key, ops }) => {
                assert_eq!(key, b"b");
                assert_eq!(ops, vec![1, 3, 4]);
            }
            other => panic!("expected a violation on b, got {other:?}"),
        }
    }

    #[test]
    fn first_failing_key_in_byte_order_is_reported() {
        let h = [
            get("z", Some("x"), 0, 10),
            get("m", Some("x"), 0, 10),
            get("q", Some("x"), 0, 10),
        ];
        assert_violation_on(check(&h), "m");
    }

    /// A long single-key history with no overlap: put, get, delete, get, ...
    fn sequential_history(len: usize) -> Vec<HistoryOp> {
        let mut current: Option<String> = None;
        (0..len as u64)
            .map(|i| {
                let (invoke, ret) = (i * 10, i * 10 + 5);
                match i % 4 {
                    0 => {
                        let v = format!("v{i}");
                        current = Some(v.clone());
                        put("k", &v, invoke, ret)
                    }
                    2 if i % 8 == 2 => {
                        current = None;
                        del("k", invoke, ret)
                    }
                    _ => get("k", current.as_deref(), invoke, ret),
                }
            })
            .collect()
    }

    #[test]
    fn sequential_5000_ops_are_checked_quickly() {
        let h = sequential_history(5_000);
        let start = Instant::now();
        // A budget of one step per op proves the search never backtracked or rescanned.
        assert_eq!(check_history(&h, 5_000), Ok(()));
        // Generous wall-clock bound (debug build, shared machine); the step bound above is
        // the precise check.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn sequential_5000_ops_with_one_stale_read_is_refuted() {
        let mut h = sequential_history(5_000);
        // Op 4001 is a Get right after the Put at op 4000; make it read the previous value.
        assert_eq!(h[4001].kind, OpKind::Get);
        h[4001].read = Some(b"v3992".to_vec());
        assert_violation_on(check(&h), "k");
    }

    /// A history built from a known sequential execution: op `i` takes effect at
    /// `100 * i` and its interval extends up to 600 ns either side, so each op overlaps
    /// about a dozen others. Every Get reads the value current at its linearization
    /// point, so the history is linearizable by construction.
    fn overlapping_history(len: usize, seed: u64) -> Vec<HistoryOp> {
        let mut rng = Lcg(seed);
        let mut current: Option<String> = None;
        (0..len as u64)
            .map(|i| {
                let point = 1_000 + 100 * i;
                let (invoke, ret) = (point - rng.below(600), point + rng.below(600));
                let mut op = match rng.below(10) {
                    0..=4 => {
                        let v = format!("v{i}");
                        current = Some(v.clone());
                        put("k", &v, invoke, ret)
                    }
                    5 => {
                        current = None;
                        del("k", invoke, ret)
                    }
                    _ => get("k", current.as_deref(), invoke, ret),
                };
                op.client = i % 16;
                op
            })
            .collect()
    }

    #[test]
    fn overlapping_2000_ops_are_not_falsely_refuted() {
        for seed in 1..=3 {
            let h = overlapping_history(2_000, seed);
            let start = Instant::now();
            // Linearizable by construction: anything but Ok would be a checker bug (a
            // false violation) or a search too weak for realistic overlap.
            assert_eq!(check_history(&h, 200_000), Ok(()), "seed {seed}");
            assert!(start.elapsed() < Duration::from_secs(10), "seed {seed}");
        }
    }

    #[test]
    fn concurrent_puts_then_reads_are_not_falsely_refuted() {
        // 1000 fully concurrent Puts of distinct values, then 1000 sequential Gets that
        // all see the value of one of them. Any Put may be the last one, so this is
        // linearizable whichever value the Gets see; the search may still give up.
        for winner in [0u64, 500, 999] {
            let mut h: Vec<HistoryOp> = (0..1_000u64)
                .map(|i| put("k", &format!("v{i}"), i, 10_000 + i))
                .collect();
            let seen = format!("v{winner}");
            h.extend(
                (0..1_000u64).map(|i| get("k", Some(&seen), 20_000 + 10 * i, 20_005 + 10 * i)),
            );
            let result = check_history(&h, 100_000);
            assert!(
                matches!(result, Ok(()) | Err(LinError::Inconclusive { .. })),
                "winner {winner}: {result:?}"
            );
            if winner == 999 {
                // The depth-first order tries the Puts in invocation order, so this one
                // is found without backtracking.
                assert_eq!(result, Ok(()));
            }
        }
    }

    #[test]
    fn stale_read_in_overlapping_history_is_refuted_quickly() {
        for seed in 1..=3 {
            let mut h = overlapping_history(2_000, seed);
            // Make a late Get read a value overwritten hundreds of operations earlier.
            let late_get = (1_500..2_000)
                .find(|&i| h[i].kind == OpKind::Get)
                .expect("some Get");
            let old_put = (0..1_400)
                .rev()
                .find(|&i| matches!(h[i].kind, OpKind::Put(_)))
                .expect("some Put");
            let OpKind::Put(old_value) = h[old_put].kind.clone() else {
                unreachable!()
            };
            h[late_get].read = Some(old_value);
            // The budget is far too small for the search to refute this by exhaustion.
            assert_violation_on(check_history(&h, 10_000), "k");
        }
    }

    /// The per-key model entries of a single-key history.
    fn entries_of(h: &[HistoryOp]) -> Vec<Entry> {
        let indices: Vec<usize> = (0..h.len()).collect();
        model_entries(h, &indices)
    }

    #[test]
    fn search_alone_refutes_a_stale_read() {
        // The pre-check refutes this too; make sure the search does not depend on it.
        let h = [
            put("k", "a", 0, 10),
            put("k", "b", 20, 30),
            get("k", Some("a"), 40, 50),
        ];
        let entries = entries_of(&h);
        assert!(has_unexplainable_read(&entries));
        assert_eq!(Search::new(&entries).run(BUDGET), Outcome::Refuted);
    }

    #[test]
    fn search_refutes_reads_disagreeing_on_the_last_of_concurrent_writes() {
        // Either Put may be linearized last, but once both have returned every later read
        // must see that same one: reading a and then b is impossible. Each read on its
        // own is explainable, so only the search can refute this.
        let h = [
            put("k", "a", 0, 100),
            put("k", "b", 0, 100),
            get("k", Some("a"), 200, 210),
            get("k", Some("b"), 220, 230),
        ];
        assert!(!has_unexplainable_read(&entries_of(&h)));
        assert_violation_on(check(&h), "k");
        assert_eq!(check(&h[..3]), Ok(()));
    }

    #[test]
    fn precheck_accepts_reads_with_a_surviving_candidate_write() {
        // "a" is written twice; the second write is concurrent with the Put of "b" and
        // can therefore be linearized after it, so the final read of "a" is fine.
        let h = [
            put("k", "a", 0, 10),
            put("k", "b", 20, 100),
            put("k", "a", 30, 100),
            get("k", Some("a"), 200, 210),
            get("k", None, 220, 230),
        ];
        assert!(has_unexplainable_read(&entries_of(&h)));
        assert!(!has_unexplainable_read(&entries_of(&h[..4])));
        assert_eq!(check(&h[..4]), Ok(()));
        // Absent is visible only while no write has returned.
        let h = [
            get("k", None, 0, 50),
            put("k", "a", 10, 20),
            get("k", None, 15, 60),
        ];
        assert!(!has_unexplainable_read(&entries_of(&h)));
        let h = [put("k", "a", 10, 20), get("k", None, 30, 60)];
        assert!(has_unexplainable_read(&entries_of(&h)));
    }

    #[test]
    fn tiny_budget_gives_inconclusive() {
        // The Get forces the search to backtrack over the first choice of Put.
        let h = [
            put("k", "a", 0, 100),
            put("k", "b", 0, 100),
            get("k", Some("a"), 200, 300),
        ];
        assert_eq!(check(&h), Ok(()));
        assert_eq!(
            check_history(&h, 2),
            Err(LinError::Inconclusive {
                key: b"k".to_vec(),
                steps: 2
            })
        );
    }

    #[test]
    fn display_is_one_readable_line() {
        let refuted = LinError::NotLinearizable {
            key: b"user:1".to_vec(),
            ops: (0..25).collect(),
        };
        let text = refuted.to_string();
        assert!(!text.contains('\n'));
        assert!(text.contains("\"user:1\""), "{text}");
        assert!(text.contains("25 ops"), "{text}");
        assert!(text.contains("15 more"), "{text}");

        let gave_up = LinError::Inconclusive {
            key: vec![0, 0xff],
            steps: 7,
        };
        let text = gave_up.to_string();
        assert!(!text.contains('\n'));
        assert!(
            text.contains("0x00ff") && text.contains("7 steps"),
            "{text}"
        );
    }

    #[test]
    #[should_panic(expected = "returned at 5 ns, before it was invoked at 10 ns")]
    fn return_before_invoke_panics() {
        let _ = check(&[put("k", "a", 10, 5)]);
    }
}
