//! Blaster's executor: one thread, its tasks, its timers and one io_uring.
//!
//! Blaster shares its machine with the replicas it loads, so its own CPU per
//! request is part of what it measures. The loop is kept to: poll the woken
//! tasks, reap completions, fire due timers, and when nothing is ready make
//! one `io_uring_enter` that submits what the tasks queued and sleeps until
//! a completion or the nearest timer. No other system call but the sockets'
//! own setup; no atomics, no threads to wake.
//!
//! What it offers is what the load needs: `start` (a thread running one
//! future), `spawn` (a task on this thread, with a handle to await; dropping
//! the handle cancels it), `sleep`, and `TcpStream` (`net`). It must never
//! be used across threads: tasks, wakers and sockets stay on the thread that
//! made them.

mod net;
mod ring;
mod task;
mod timer;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

pub use net::TcpStream;
use ring::{Completion, Ring};
use task::{TaskId, Tasks};
use timer::{TimerKey, Timers};

/// Batches polled in a row without going idle before the loop enters the
/// kernel anyway, without waiting, to submit what is queued and take the
/// completions that arrived: a task that keeps yielding must not hold up
/// the IO of the others.
const BUSY_BATCHES_ENTER: u32 = 16;
/// How long the end of a run waits for the operations it cancelled.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// The executor of this thread. Borrows of its cells are never held across
/// a poll, a wake or the drop of a future.
struct Core {
    tasks: RefCell<Tasks>,
    timers: RefCell<Timers>,
    ring: RefCell<Ring>,
}

thread_local! {
    static CORE: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's executor.
///
/// # Panics
/// Outside an executor's thread.
fn with_core<R>(f: impl FnOnce(&Core) -> R) -> R {
    CORE.with_borrow(|c| f(c.as_ref().expect("not on a blaster executor thread")))
}

/// Runs `f` on this thread's executor, if it still has one.
fn try_with_core(f: impl FnOnce(&Core)) {
    let _ = CORE.try_with(|c| {
        if let Some(core) = c.borrow().as_ref() {
            f(core);
        }
    });
}

/// A thread running one future on its own executor.
pub struct Thread<T> {
    handle: std::thread::JoinHandle<Option<T>>,
}

impl<T> Thread<T> {
    /// The future's output, once the thread ends; `Err` if it panicked.
    pub fn join(self) -> std::thread::Result<T> {
        // `None` only if the ring could not be made, which `start` reported.
        self.handle
            .join()
            .map(|t| t.expect("a started executor runs"))
    }
}

/// Starts a thread named `name` with an executor, and runs the future
/// `make` returns there to its end. Fails if the thread or its io_uring
/// cannot be made.
pub fn start<F, Fut>(name: &str, make: F) -> io::Result<Thread<Fut::Output>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future + 'static,
    Fut::Output: Send + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let ring = match Ring::new() {
                Ok(r) => {
                    let _ = ready_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return None;
                }
            };
            Some(block_on(ring, make()))
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Thread { handle }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(io::Error::new(e.kind(), format!("io_uring: {e}")))
        }
        Err(_) => Err(io::Error::other("the executor thread died starting")),
    }
}

/// Runs `future` to its end on this thread, with `ring`; then drops the
/// tasks left and waits for their operations.
fn block_on<F: Future + 'static>(ring: Ring, future: F) -> F::Output {
    let core = Rc::new(Core {
        tasks: RefCell::new(Tasks::default()),
        timers: RefCell::new(Timers::default()),
        ring: RefCell::new(ring),
    });
    CORE.with_borrow_mut(|c| {
        assert!(c.is_none(), "one executor per thread");
        *c = Some(core.clone());
    });
    let main = spawn(future);
    core.run(&main.result);
    let output = main.result.value.borrow_mut().take().expect("ended");
    drop(main);
    core.shut_down();
    CORE.with_borrow_mut(|c| *c = None);
    output
}

impl Core {
    /// Polls, reaps and sleeps until `main` has its value.
    fn run<T>(&self, main: &Join<T>) {
        let mut batch = Vec::new();
        let mut completions = Vec::new();
        let mut wakers = Vec::new();
        let mut batches = 0u64;
        let mut busy = 0u32;
        loop {
            batches += 1;
            task::take_woken(&mut batch);
            for &id in &batch {
                self.poll_task(id, batches);
            }
            batch.clear();
            if main.value.borrow().is_some() {
                return;
            }
            self.settle(&mut completions, &mut wakers);
            if task::any_woken() {
                busy += 1;
                if busy >= BUSY_BATCHES_ENTER {
                    busy = 0;
                    self.ring
                        .borrow_mut()
                        .wait(Some(Duration::ZERO))
                        .expect("io_uring enter");
                }
                continue;
            }
            busy = 0;
            let timeout = self
                .timers
                .borrow()
                .next()
                .map(|at| at.saturating_duration_since(Instant::now()));
            assert!(
                timeout.is_some() || self.ring.borrow().in_flight() > 0,
                "every task waits, and nothing is left to wake one"
            );
            self.ring.borrow_mut().wait(timeout).expect("io_uring wait");
            self.settle(&mut completions, &mut wakers);
        }
    }

    /// Hands the reaped completions to their owners and wakes the tasks of
    /// the timers due.
    fn settle(&self, completions: &mut Vec<Completion>, wakers: &mut Vec<Waker>) {
        self.ring.borrow_mut().reap(completions);
        completions.drain(..).for_each(Completion::deliver);
        self.timers.borrow_mut().expire(Instant::now(), wakers);
        wakers.drain(..).for_each(Waker::wake);
    }

    fn poll_task(&self, id: TaskId, batch: u64) {
        let Some(mut future) = self.tasks.borrow_mut().start(id, batch) else {
            return;
        };
        let waker = task::waker(id);
        let ready = future
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        let done = if ready {
            self.tasks.borrow_mut().finish(id);
            Some(future)
        } else {
            self.tasks.borrow_mut().park(id, future)
        };
        // Outside the borrow: dropping a future may cancel other tasks.
        drop(done);
    }

    /// Drops the tasks left, then waits (a while) for the operations they
    /// had in flight, which their sockets' drops cancelled.
    fn shut_down(&self) {
        let left = self.tasks.borrow_mut().take_all();
        drop(left);
        let until = Instant::now() + SHUTDOWN_WAIT;
        let mut completions = Vec::new();
        loop {
            self.ring.borrow_mut().reap(&mut completions);
            completions.drain(..).for_each(Completion::deliver);
            let now = Instant::now();
            if self.ring.borrow().in_flight() == 0 || now >= until {
                break;
            }
            if self.ring.borrow_mut().wait(Some(until - now)).is_err() {
                break;
            }
        }
        task::clear_woken();
    }
}

/// Runs `future` as a task of this thread's executor.
///
/// # Panics
/// Outside an executor's thread.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let result = Rc::new(Join {
        value: RefCell::new(None),
        waiter: RefCell::new(None),
    });
    let task = {
        let result = result.clone();
        async move {
            let value = future.await;
            *result.value.borrow_mut() = Some(value);
            if let Some(w) = result.waiter.borrow_mut().take() {
                w.wake();
            }
        }
    };
    let id = with_core(|c| c.tasks.borrow_mut().insert(Box::pin(task)));
    task::wake(id);
    JoinHandle { id, result }
}

/// What a task hands its handle.
struct Join<T> {
    value: RefCell<Option<T>>,
    waiter: RefCell<Option<Waker>>,
}

/// Awaits a spawned task's output. Dropping it cancels the task.
#[must_use = "dropping the handle cancels the task"]
pub struct JoinHandle<T> {
    id: TaskId,
    result: Rc<Join<T>>,
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(v) = self.result.value.borrow_mut().take() {
            return Poll::Ready(v);
        }
        *self.result.waiter.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        // A task that ended has a new generation in its slot: no-op.
        let id = self.id;
        let mut dropped = None;
        try_with_core(|c| dropped = c.tasks.borrow_mut().cancel(id));
        drop(dropped);
    }
}

/// Resolves once `duration` has passed.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        at: Instant::now() + duration,
        key: None,
    }
}

pub struct Sleep {
    at: Instant,
    key: Option<TimerKey>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            if let Some(key) = self.key.take() {
                with_core(|c| c.timers.borrow_mut().remove(key));
            }
            return Poll::Ready(());
        }
        let at = self.at;
        let key = with_core(|c| {
            let mut timers = c.timers.borrow_mut();
            match self.key {
                Some(key) => {
                    timers.update(key, cx.waker());
                    key
                }
                None => timers.add(at, cx.waker()),
            }
        });
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            try_with_core(|c| c.timers.borrow_mut().remove(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use std::cell::Cell;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A peer on a plain thread: accepts one connection and hands it to `f`.
    fn peer(f: impl FnOnce(std::net::TcpStream) + Send + 'static) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || f(listener.accept().expect("accept").0));
        addr
    }

    fn run<T: Send + 'static, Fut: Future<Output = T> + 'static>(
        make: impl FnOnce() -> Fut + Send + 'static,
    ) -> T {
        start("exec-test", make)
            .expect("start")
            .join()
            .expect("no panic")
    }

    #[test]
    fn echoes_and_times_a_silent_read_out() {
        let addr = peer(|mut s| {
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf).expect("write");
            std::thread::sleep(Duration::from_secs(1));
        });
        let (echo, waited) = run(move || async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            s.write_all(b"hello").await.expect("write");
            let mut echo = [0u8; 5];
            s.read_exact(&mut echo).await.expect("echo");
            let t0 = Instant::now();
            let e = s.read(&mut [0u8; 8]).await.expect_err("silence");
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            // Dropped with its receive in flight: the end cancels it.
            (echo, t0.elapsed())
        });
        assert_eq!(&echo, b"hello");
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
    }

    #[test]
    fn a_read_given_up_leaves_the_stream_whole() {
        let addr = peer(|mut s| {
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(b"late").expect("write");
            std::thread::sleep(Duration::from_secs(1));
        });
        let got = run(move || async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut buf = [0u8; 4];
            let gave_up = futures_lite::future::or(async { Some(s.read(&mut buf).await) }, async {
                sleep(Duration::from_millis(10)).await;
                None
            })
            .await;
            assert!(gave_up.is_none(), "nothing was sent yet");
            s.read_exact(&mut buf).await.expect("read");
            buf
        });
        assert_eq!(&got, b"late");
    }

    #[test]
    fn a_refused_connect_fails() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        // The listener is gone: nothing listens there.
        let r = run(move || async move { TcpStream::connect(addr).await.map(|_| ()) });
        assert_eq!(
            r.expect_err("refused").kind(),
            io::ErrorKind::ConnectionRefused
        );
    }

    #[test]
    fn a_dropped_handle_cancels_its_task_and_a_kept_one_joins() {
        let (ran, joined) = run(|| async {
            let ran = Rc::new(Cell::new(false));
            let doomed = {
                let ran = ran.clone();
                spawn(async move {
                    sleep(Duration::from_secs(10)).await;
                    ran.set(true);
                })
            };
            let kept = spawn(async {
                sleep(Duration::from_millis(5)).await;
                7
            });
            drop(doomed);
            let joined = kept.await;
            sleep(Duration::from_millis(20)).await;
            (ran.get(), joined)
        });
        assert!(!ran);
        assert_eq!(joined, 7);
    }
}
