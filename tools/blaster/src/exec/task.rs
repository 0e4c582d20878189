//! The tasks of one executor thread: a slab of boxed futures, and the waker
//! that queues a task for its next poll.
//!
//! A waker is a task id and nothing else: it allocates nothing, clones for
//! free, and pushes the id onto this thread's `WOKEN` list. The executor
//! takes that list as one batch and polls each live task in it once; an id
//! whose task has ended (its generation moved on) is skipped.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{RawWaker, RawWakerVTable, Waker};

/// A spawned future, boxed so that the slab can hold any of them.
pub type Boxed = Pin<Box<dyn Future<Output = ()>>>;

thread_local! {
    /// Tasks woken since the executor last took the batch. A task woken
    /// twice is here twice; the executor polls it once per batch.
    static WOKEN: RefCell<Vec<TaskId>> = const { RefCell::new(Vec::new()) };
}

/// A slot of the slab and the generation of the task in it: a stale id
/// (of a task that ended, its slot reused) matches nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskId {
    index: u32,
    generation: u32,
}

// A waker's data pointer carries a whole `TaskId`.
const _: () = assert!(usize::BITS >= 64);

impl TaskId {
    fn pack(self) -> usize {
        ((self.generation as usize) << 32) | self.index as usize
    }

    fn unpack(data: usize) -> TaskId {
        TaskId {
            index: data as u32,
            generation: (data >> 32) as u32,
        }
    }
}

/// Queues `id` for a poll on this thread. Woken on a thread without an
/// executor (blaster never moves a waker across threads), the id just sits
/// in a list nobody reads: a lost wake-up, never a dangling pointer.
pub fn wake(id: TaskId) {
    // `try_with`: a waker dropped into a thread's teardown must not panic.
    let _ = WOKEN.try_with(|w| w.borrow_mut().push(id));
}

/// Moves the woken ids into `batch` (empty), leaving the list empty.
pub fn take_woken(batch: &mut Vec<TaskId>) {
    debug_assert!(batch.is_empty());
    WOKEN.with_borrow_mut(|w| std::mem::swap(w, batch));
}

pub fn any_woken() -> bool {
    WOKEN.with_borrow(|w| !w.is_empty())
}

/// Forgets the wake-ups left at the end of an executor's run.
pub fn clear_woken() {
    WOKEN.with_borrow_mut(Vec::clear);
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_raw, wake_raw, wake_raw, drop_raw);

fn raw(id: TaskId) -> RawWaker {
    RawWaker::new(std::ptr::without_provenance(id.pack()), &VTABLE)
}

fn clone_raw(data: *const ()) -> RawWaker {
    raw(TaskId::unpack(data.addr()))
}

fn wake_raw(data: *const ()) {
    wake(TaskId::unpack(data.addr()));
}

fn drop_raw(_: *const ()) {}

pub fn waker(id: TaskId) -> Waker {
    // SAFETY: the data pointer is a number, never dereferenced; the vtable's
    // functions only copy it (clone, drop) or push it onto the calling
    // thread's own list (wake), so they are sound from any thread and for
    // any value, as `RawWaker`'s contract asks.
    unsafe { Waker::from_raw(raw(id)) }
}

enum State {
    Free,
    /// Waiting for a wake-up; its future is in the slot.
    Idle,
    /// Being polled: its future is out of the slot, with the executor.
    Running,
    /// Cancelled (its handle dropped) while being polled: dropped when the
    /// poll returns.
    Cancelled,
}

struct Slot {
    generation: u32,
    state: State,
    future: Option<Boxed>,
    /// The batch that last polled it: a task is polled once per batch.
    polled_in: u64,
}

#[derive(Default)]
pub struct Tasks {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl Tasks {
    pub fn insert(&mut self, future: Boxed) -> TaskId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    state: State::Free,
                    future: None,
                    polled_in: 0,
                });
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 tasks")
            }
        };
        let slot = &mut self.slots[index as usize];
        assert!(matches!(slot.state, State::Free) && slot.future.is_none());
        slot.state = State::Idle;
        slot.future = Some(future);
        slot.polled_in = 0;
        TaskId {
            index,
            generation: slot.generation,
        }
    }

    fn slot(&mut self, id: TaskId) -> Option<&mut Slot> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)
    }

    /// Takes the future of `id` out to poll it, unless the task ended or
    /// was polled in this batch already.
    pub fn start(&mut self, id: TaskId, batch: u64) -> Option<Boxed> {
        let slot = self.slot(id)?;
        if !matches!(slot.state, State::Idle) || slot.polled_in == batch {
            return None;
        }
        slot.state = State::Running;
        slot.polled_in = batch;
        let future = slot.future.take();
        assert!(future.is_some(), "an idle task has its future");
        future
    }

    /// Puts back the future of a task whose poll returned `Pending`; hands
    /// it back to be dropped if the task was cancelled meanwhile.
    pub fn park(&mut self, id: TaskId, future: Boxed) -> Option<Boxed> {
        let slot = self.slot(id).expect("a running task keeps its slot");
        match slot.state {
            State::Running => {
                slot.state = State::Idle;
                slot.future = Some(future);
                None
            }
            State::Cancelled => {
                self.free_slot(id);
                Some(future)
            }
            State::Free | State::Idle => unreachable!("parked a task that was not running"),
        }
    }

    /// The task's future returned `Ready`: its slot is free again.
    pub fn finish(&mut self, id: TaskId) {
        let slot = self.slot(id).expect("a running task keeps its slot");
        assert!(matches!(slot.state, State::Running | State::Cancelled));
        self.free_slot(id);
    }

    /// Ends task `id` (if it still runs): its future, to be dropped by the
    /// caller outside any borrow, or `None` if it is being polled (it is
    /// dropped when that poll returns) or ended already.
    pub fn cancel(&mut self, id: TaskId) -> Option<Boxed> {
        let slot = self.slot(id)?;
        match slot.state {
            State::Idle => {
                let future = slot.future.take();
                self.free_slot(id);
                future
            }
            State::Running => {
                slot.state = State::Cancelled;
                None
            }
            State::Cancelled | State::Free => None,
        }
    }

    fn free_slot(&mut self, id: TaskId) {
        let slot = &mut self.slots[id.index as usize];
        slot.state = State::Free;
        slot.future = None;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
    }

    /// Takes every task's future out, to be dropped (the executor's end).
    pub fn take_all(&mut self) -> Vec<Boxed> {
        let ids: Vec<TaskId> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, State::Idle))
            .map(|(i, s)| TaskId {
                index: i as u32,
                generation: s.generation,
            })
            .collect();
        ids.into_iter().filter_map(|id| self.cancel(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Boxed {
        Box::pin(async {})
    }

    #[test]
    fn a_stale_id_matches_nothing() {
        let mut tasks = Tasks::default();
        let a = tasks.insert(ready());
        let f = tasks.start(a, 1).expect("idle");
        tasks.finish(a);
        drop(f);
        let b = tasks.insert(ready());
        assert_eq!(a.index, b.index, "the slot is reused");
        assert!(tasks.start(a, 2).is_none());
        assert!(tasks.cancel(a).is_none());
        assert!(tasks.start(b, 2).is_some());
    }

    #[test]
    fn once_per_batch_and_cancel_while_running() {
        let mut tasks = Tasks::default();
        let a = tasks.insert(ready());
        let f = tasks.start(a, 1).expect("idle");
        assert!(tasks.park(a, f).is_none());
        assert!(tasks.start(a, 1).is_none(), "polled in this batch already");
        let f = tasks.start(a, 2).expect("next batch");
        assert!(tasks.cancel(a).is_none(), "running: dropped after its poll");
        assert!(tasks.park(a, f).is_some());
        assert!(tasks.start(a, 3).is_none());
    }

    #[test]
    fn waker_round_trips_the_id() {
        let id = TaskId {
            index: 7,
            generation: 0xdead_beef,
        };
        assert_eq!(TaskId::unpack(id.pack()), id);
        clear_woken();
        waker(id).wake_by_ref();
        let cloned = waker(id).clone();
        cloned.wake();
        let mut batch = Vec::new();
        take_woken(&mut batch);
        assert_eq!(batch, vec![id, id]);
        assert!(!any_woken());
    }
}
