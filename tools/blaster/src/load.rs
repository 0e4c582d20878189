//! One load connection: a socket to one shard of one replica, driven closed
//! loop (keep K requests outstanding) or open loop (requests due at fixed
//! intervals, latency measured from the time each was due, so a stalled
//! server shows in the histogram instead of slowing the load down).
//!
//! With `--nemesis` a connection outlives its socket: when the socket
//! breaks (its replica was killed) it dials the same replica again with
//! backoff and sends every unanswered request again under its number, so
//! that the replicas' exactly-once sessions (replicated, and rebuilt from
//! the log by a restarted replica) apply each once. A request's latency
//! runs from its first send to its answer, outage included.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use epaxos_fast::client::{fresh_client_id, Received, Session};
use epaxos_fast::command::shard_of;
use epaxos_fast::command::Op;
use epaxos_fast::constants::CLIENT_WINDOW_REQUESTS_MAX;
use epaxos_fast::rng::Rng;
use epaxos_fast::wire::client::{shard_addr, Code};
use epaxos_fast::wire::{Frame, FrameReader, ReadBuffer};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hdrhistogram::Histogram;

use crate::exec::{self, TcpStream};
use crate::history::History;
use crate::wake::Wake;
use crate::written::{write_value, KeyCheck, Written};

/// What every connection of a run shares.
#[derive(Clone, Debug)]
pub struct Workload {
    pub cluster_id: u64,
    /// Requests in flight per connection (closed loop).
    pub outstanding: usize,
    /// Requests per second for this connection (open loop), if any.
    pub rate: Option<f64>,
    /// Connections in the run: open-loop schedules are interleaved over them.
    pub connections: usize,
    pub keys: u64,
    pub conflicts_pct: u32,
    pub reads_pct: u32,
    pub value_bytes: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Time allowed after the end for answers to outstanding requests.
    pub drain: Duration,
    /// Keep what `--verify` needs.
    pub verify: bool,
    /// Keep every operation for `--history`.
    pub history: bool,
    /// Zipf exponent of the key choice (`None`: uniform).
    pub zipf: Option<f64>,
    /// Set on Ctrl-C: stop sending, as at the end of the run.
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Replicas may go away (`--nemesis`): a socket that breaks is opened
    /// again and its requests sent again, and requests answered
    /// `Overloaded` are sent again, all under their numbers.
    pub reconnect: bool,
}

/// What one connection measured.
pub struct Tally {
    pub hist: Histogram<u64>,
    /// Open loop: how late blaster itself sent each request after it was
    /// due (its own scheduling delay, included in `hist`).
    pub lag: Histogram<u64>,
    pub ops: u64,
    pub errors: u64,
    /// Requests unanswered when the drain ended, and (open loop) requests
    /// that fell due but could not be sent because the window was full.
    pub timeouts: u64,
    /// Connections that failed (their error is reported on its own), and
    /// the requests that were in flight on them when they did.
    pub failed: u64,
    pub lost_in_flight: u64,
    /// Sockets opened again after theirs broke, the requests sent again on
    /// them, and requests sent again after an `Overloaded` answer.
    pub reconnects: u64,
    pub resent: u64,
    pub retried: u64,
    pub checks: Vec<KeyCheck>,
    /// `--history` lines.
    pub history: Vec<String>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            hist: latency_histogram(),
            lag: latency_histogram(),
            ops: 0,
            errors: 0,
            timeouts: 0,
            failed: 0,
            lost_in_flight: 0,
            reconnects: 0,
            resent: 0,
            retried: 0,
            checks: Vec::new(),
            history: Vec::new(),
        }
    }

    pub fn add(&mut self, other: &Tally) {
        self.hist.add(&other.hist).expect("same bounds");
        self.lag.add(&other.lag).expect("same bounds");
        self.ops += other.ops;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.failed += other.failed;
        self.lost_in_flight += other.lost_in_flight;
        self.reconnects += other.reconnects;
        self.resent += other.resent;
        self.retried += other.retried;
    }

    /// `add`, and takes `other`'s checks and history lines too.
    pub fn absorb(&mut self, mut other: Tally) {
        self.add(&other);
        self.checks.append(&mut other.checks);
        self.history.append(&mut other.history);
    }

    /// Back to empty, keeping the histograms' memory (the progress
    /// reporter empties the live tallies ten times a second).
    pub fn clear(&mut self) {
        self.hist.reset();
        self.lag.reset();
        self.ops = 0;
        self.errors = 0;
        self.timeouts = 0;
        self.failed = 0;
        self.lost_in_flight = 0;
        self.reconnects = 0;
        self.resent = 0;
        self.retried = 0;
        self.checks.clear();
        self.history.clear();
    }
}

/// Latencies in ns, 1 ns to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// Shared with the progress reporter of this executor's thread.
pub type Live = Rc<RefCell<Tally>>;

pub struct Target {
    pub addr: SocketAddr,
    pub shard: u8,
    /// Index of this connection among all of the run (key names).
    pub index: usize,
}

const HOT_KEY: &[u8] = b"hot";

/// Keys only this connection uses, owned by its shard (so no hop).
pub fn own_keys(index: usize, count: u64, shard: u8, shards: usize) -> Vec<Vec<u8>> {
    let mut keys = Vec::with_capacity(count as usize);
    let mut i = 0u64;
    while (keys.len() as u64) < count {
        let key = format!("c{index}-k{i}").into_bytes();
        if shard_of(&key, shards) == usize::from(shard) {
            keys.push(key);
        }
        i += 1;
    }
    keys
}

/// Drives one connection for the whole run. A connection that fails keeps
/// what it measured until then; its requests still in flight count as lost.
/// With `Workload::reconnect`, a socket that closes is opened again and the
/// requests in flight on it are sent again; the connection fails only if
/// its replica stays unreachable.
pub async fn run(
    target: Target,
    w: Workload,
    seed: u64,
    start: Instant,
    live: Live,
) -> (Tally, Option<String>) {
    match connect_and_run(target, w, seed, start, live).await {
        Ok((tally, failure)) => (tally, failure),
        Err(e) => {
            let mut tally = Tally::new();
            tally.failed = 1;
            (tally, Some(e))
        }
    }
}

/// How long one attempt to reach a replica (connect, hello, its answer)
/// may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits between attempts to reconnect: doubling from the first to the last.
const RECONNECT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const RECONNECT_BACKOFF_LAST: Duration = Duration::from_millis(200);
/// A replica unreachable for this long fails its connections (the
/// harness's own wait for a restarted replica is as long).
const RECONNECT_GIVE_UP: Duration = Duration::from_secs(30);
/// An `Overloaded` request goes again this much later.
const RETRY_DELAY: Duration = Duration::from_millis(5);

/// Why a socket's conversation ended early.
enum Broken {
    /// The socket failed or closed: reconnecting may help.
    Socket(String),
    /// The replica sent something this client cannot take: a bug, not an
    /// outage.
    Protocol(String),
}

/// `run`, with the failures before any request was sent as errors.
async fn connect_and_run(
    target: Target,
    w: Workload,
    seed: u64,
    start: Instant,
    live: Live,
) -> Result<(Tally, Option<String>), String> {
    let who = format!("{} shard {}", target.addr, target.shard);
    let addr = shard_addr(target.addr, usize::from(target.shard))
        .ok_or_else(|| format!("{who}: no port for that shard"))?;
    let mut session = Session::new(fresh_client_id(), w.cluster_id, target.shard);
    session.set_retry_overloaded(w.reconnect);
    session.set_password(crate::cluster::password());
    let (hello, reader) = opening(&session);
    let (mut stream, mut inbuf, answer) = dial(addr, &hello, reader)
        .await
        .map_err(|e| format!("{who}: {e}"))?;
    let shards = session
        .on_hello_answer(&answer)
        .map_err(|e| format!("{who}: {e}"))?
        .shards;
    let keys = own_keys(target.index, w.keys.max(1), target.shard, shards.into());
    let conn = Conn::new(session, keys, seed, start, &target, &w);
    let measure_from = start + w.warmup;
    let state = Rc::new(RefCell::new(State {
        conn,
        end: measure_from + w.duration,
        broken: None,
        done: false,
        due_sent: 0,
        lag: latency_histogram(),
        unsent: None,
    }));
    let wake = Rc::new(Wake::new());
    let schedule = start
        + w.rate.map_or(Duration::ZERO, |rate| {
            phase(target.index, rate, w.connections)
        });
    let mut tally = Tally::new();
    let failure = loop {
        let talked = converse(
            stream,
            inbuf,
            &state,
            &wake,
            &w,
            (schedule, measure_from),
            &live,
            &mut tally,
        )
        .await;
        let why = match talked {
            Ok(()) => break None,
            Err(Broken::Protocol(e)) => break Some(e),
            Err(Broken::Socket(e)) if !w.reconnect => break Some(e),
            Err(Broken::Socket(e)) => e,
        };
        {
            let s = state.borrow();
            if Instant::now() >= s.end && s.conn.session.outstanding() == 0 {
                break None; // nothing left to say
            }
        }
        tally.reconnects += 1;
        live.borrow_mut().reconnects += 1;
        match redial(addr, &state, &w, shards).await {
            Ok((s, b)) => (stream, inbuf) = (s, b),
            Err(e) => break Some(format!("{e} (the connection broke: {why})")),
        }
        tally.resent += state.borrow_mut().conn.resend_outstanding(&w);
    };
    let failure = failure.map(|e| format!("{who}: {e}"));
    let mut s = state.borrow_mut();
    let inflight = s.conn.session.outstanding() as u64;
    if failure.is_some() {
        // What was answered before the failure still counts, and its
        // writes are still checked by --verify. What is in flight now is
        // lost.
        tally.lost_in_flight = inflight;
        tally.failed = 1;
    } else {
        tally.timeouts += inflight;
        live.borrow_mut().timeouts += inflight;
        // After a failure the writer stopped early: what it did not send
        // was not the server's stall.
        tally.timeouts += s.unsent.unwrap_or(0);
    }
    tally.lag.add(&s.lag).expect("same bounds");
    tally.checks = s.conn.checks(w.value_bytes);
    tally.history = s.conn.history.as_mut().map_or(Vec::new(), History::lines);
    Ok((tally, failure))
}

/// Connects to `addr`, sends `hello` and reads the first frame back (the
/// hello's answer), within `DIAL_TIMEOUT`.
async fn dial(
    addr: SocketAddr,
    hello: &[u8],
    reader: FrameReader,
) -> Result<(TcpStream, ReadBuffer, Frame), String> {
    let timeout = async {
        exec::sleep(DIAL_TIMEOUT).await;
        Err(format!("no answer to the hello within {DIAL_TIMEOUT:?}"))
    };
    futures_lite::future::or(dial_now(addr, hello, reader), timeout).await
}

async fn dial_now(
    addr: SocketAddr,
    hello: &[u8],
    reader: FrameReader,
) -> Result<(TcpStream, ReadBuffer, Frame), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.write_all(hello).await.map_err(|e| e.to_string())?;
    let mut inbuf = ReadBuffer::default();
    loop {
        if let Some(f) = reader.next(inbuf.received()).map_err(|e| e.to_string())? {
            return Ok((stream, inbuf, f));
        }
        read_more(&mut stream, &mut inbuf)
            .await
            .map_err(|e| e.to_string())?;
    }
}

/// The hello that opens a socket of `session`, and the reader of its frames.
fn opening(session: &Session) -> (BytesMut, FrameReader) {
    let mut hello = BytesMut::new();
    session.hello(&mut hello);
    (hello, session.reader())
}

/// Opens the connection again after its socket broke, trying with backoff
/// until the replica answers, `RECONNECT_GIVE_UP` passed, or the run and
/// its drain are over. The session starts over on the new socket: the
/// caller sends its outstanding requests again.
async fn redial(
    addr: SocketAddr,
    state: &RefCell<State>,
    w: &Workload,
    shards: u8,
) -> Result<(TcpStream, ReadBuffer), String> {
    let give_up = {
        let end = state.borrow().end + w.drain;
        (Instant::now() + RECONNECT_GIVE_UP).min(end.max(Instant::now()))
    };
    let (hello, reader) = {
        let mut s = state.borrow_mut();
        (s.broken, s.done) = (None, false);
        s.conn.session.reconnect();
        opening(&s.conn.session)
    };
    let mut backoff = RECONNECT_BACKOFF_FIRST;
    loop {
        let why = match dial(addr, &hello, reader).await {
            Ok((stream, inbuf, answer)) => {
                let mut s = state.borrow_mut();
                match s.conn.session.on_hello_answer(&answer) {
                    Ok(h) if h.shards == shards => return Ok((stream, inbuf)),
                    Ok(h) => {
                        return Err(format!(
                            "reconnected to a replica of {} shards, not {shards}",
                            h.shards
                        ))
                    }
                    // Refused (not ready yet?): the session took nothing.
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => e,
        };
        if Instant::now() + backoff >= give_up {
            return Err(format!("cannot reconnect: {why}"));
        }
        exec::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_LAST);
    }
}

/// One socket's life: a writer task and this reader, until the run has
/// ended and every request is answered (or the drain time ran out), or the
/// socket breaks.
#[allow(clippy::too_many_arguments)]
async fn converse(
    stream: TcpStream,
    inbuf: ReadBuffer,
    state: &Rc<RefCell<State>>,
    wake: &Rc<Wake>,
    w: &Workload,
    (schedule, measure_from): (Instant, Instant),
    live: &Live,
    tally: &mut Tally,
) -> Result<(), Broken> {
    // Silence for this long wakes the reader, so it can see the run end
    // (or the writer fail).
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| Broken::Socket(e.to_string()))?;
    let reader = state.borrow().conn.session.reader();
    let (mut rx, mut tx) = futures_lite::io::split(stream);
    let writer = {
        let (state, wake, w) = (state.clone(), wake.clone(), w.clone());
        exec::spawn(
            async move { send_loop(&mut tx, &state, &wake, &w, schedule, measure_from).await },
        )
    };
    let received = receive(
        &mut rx,
        reader,
        inbuf,
        state,
        wake,
        w,
        measure_from,
        live,
        tally,
    )
    .await;
    match &received {
        // Stop the writer, so that it does not send more into a socket
        // nobody reads.
        Err(Broken::Socket(e) | Broken::Protocol(e)) => {
            state.borrow_mut().broken.get_or_insert_with(|| e.clone());
        }
        Ok(()) => state.borrow_mut().done = true,
    }
    wake.notify();
    let sent = writer.await;
    match (received, sent) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(Broken::Socket(e)),
        (Ok(()), Ok(())) => Ok(()),
    }
}

struct State {
    conn: Conn,
    /// When sending stops (moved earlier on Ctrl-C).
    end: Instant,
    /// Why the current socket failed, once either side saw it.
    broken: Option<String>,
    /// The reader has every answer it waits for (or the drain ran out).
    done: bool,
    /// Open loop: requests that fell due and went out (over every socket).
    due_sent: u64,
    /// Open loop: how late each went out.
    lag: Histogram<u64>,
    /// Open loop: requests that fell due and could not go out, once the
    /// end came.
    unsent: Option<u64>,
}

/// How far connection `index` of `connections`, each sending `rate` requests
/// a second, shifts its open-loop schedule: by `index` / (total rate), so the
/// run's requests are due evenly spaced. Without it every connection sent at
/// the same instants, and the server saw bursts of one request per
/// connection (the figures are in perf/RESULTS.md, "At a3384f2").
fn phase(index: usize, rate: f64, connections: usize) -> Duration {
    Duration::from_secs_f64(index as f64 / (rate * connections as f64))
}

/// Queues requests as the mode says and writes them, one write per wake-up,
/// until the reader is done or the socket broke (a failed write says why).
/// After the end it queues no new request, but still writes what is sent
/// again (after a reconnect, or an `Overloaded` answer).
/// Open loop: request k is due at `start + k / rate`; how late each one
/// due in the measured time (from `measure_from`) went out is recorded.
async fn send_loop(
    tx: &mut (impl AsyncWrite + Unpin),
    state: &RefCell<State>,
    wake: &Wake,
    w: &Workload,
    start: Instant,
    measure_from: Instant,
) -> Result<(), String> {
    let mut out = BytesMut::new();
    loop {
        let now = Instant::now();
        let next = {
            let mut s = state.borrow_mut();
            if s.broken.is_some() || s.done {
                return Ok(()); // if broken, the reader says why
            }
            if w.stop.load(std::sync::atomic::Ordering::Relaxed) && now < s.end {
                s.end = now;
            }
            let next = if now < s.end {
                queue_due(&mut s, w, now, start, measure_from)
            } else {
                if s.unsent.is_none() {
                    s.unsent = Some(unsent_at_end(&s, w, start));
                }
                // Only a retry falling due, or the reader, wakes it now.
                retry_due(&mut s.conn, w, now).unwrap_or(now + w.drain)
            };
            s.conn.session.encode(&mut out);
            next
        };
        if !out.is_empty() {
            if let Err(e) = tx.write_all(&out).await {
                let why = format!("write: {e}");
                state.borrow_mut().broken.get_or_insert(why.clone());
                return Err(why);
            }
            out.clear();
        }
        let wait = next.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            // Let the reader run: a task that never waits starves the others.
            futures_lite::future::yield_now().await;
        } else {
            futures_lite::future::or(wake.wait(), exec::sleep(wait)).await;
        }
    }
}

/// Requests that fell due while the window was full and never went out:
/// the server's stall, which must not vanish from the figures. (With room
/// left, what is unsent at the end was due in the instant the loop took to
/// notice the end.)
fn unsent_at_end(s: &State, w: &Workload, start: Instant) -> u64 {
    match w.rate {
        Some(rate) if !s.conn.room() => {
            let due = (s.end.saturating_duration_since(start).as_secs_f64() * rate).ceil() as u64;
            due.saturating_sub(s.due_sent)
        }
        _ => 0,
    }
}

/// Queues the requests due by `now` (and the `Overloaded` ones due again);
/// when the writer should look again.
fn queue_due(
    s: &mut State,
    w: &Workload,
    now: Instant,
    start: Instant,
    measure_from: Instant,
) -> Instant {
    let end = s.end;
    let conn = &mut s.conn;
    let retry = retry_due(conn, w, now);
    let next = match w.rate {
        None => {
            while conn.session.outstanding() < w.outstanding && conn.room() {
                conn.queue(w, now);
            }
            end
        }
        Some(rate) => {
            // Request k is due at start + k / rate: those due by now.
            let elapsed = now.saturating_duration_since(start).as_secs_f64();
            let due = if now < start {
                0
            } else {
                (elapsed * rate) as u64 + 1
            };
            while s.due_sent < due && conn.room() {
                // Latency counts from when the request was due.
                let intended = start + Duration::from_secs_f64(s.due_sent as f64 / rate);
                conn.queue(w, intended);
                if intended >= measure_from && intended < end {
                    let late = now.saturating_duration_since(intended).as_nanos() as u64;
                    s.lag.saturating_record(late.max(1));
                }
                s.due_sent += 1;
            }
            if conn.room() {
                (start + Duration::from_secs_f64(s.due_sent as f64 / rate)).min(end)
            } else {
                // The window is full: only an answer can make room.
                end
            }
        }
    };
    retry.map_or(next, |at| next.min(at))
}

/// Queues again the `Overloaded` requests due by `now`; when the next one
/// falls due.
fn retry_due(conn: &mut Conn, w: &Workload, now: Instant) -> Option<Instant> {
    while let Some(&(at, request)) = conn.retries.front() {
        if at > now {
            return Some(at);
        }
        conn.retries.pop_front();
        conn.resend(request, w);
    }
    None
}

/// Reads responses and records their latency until the run has ended and
/// every request is answered (or the drain time ran out), or the socket
/// broke.
#[allow(clippy::too_many_arguments)]
async fn receive(
    rx: &mut (impl AsyncRead + Unpin),
    reader: FrameReader,
    mut inbuf: ReadBuffer,
    state: &RefCell<State>,
    wake: &Wake,
    w: &Workload,
    measure_from: Instant,
    live: &Live,
    tally: &mut Tally,
) -> Result<(), Broken> {
    loop {
        match read_more(rx, &mut inbuf).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(Broken::Socket(format!("read: {e}"))),
        }
        let now = Instant::now();
        let mut s = state.borrow_mut();
        if let Some(why) = &s.broken {
            return Err(Broken::Socket(why.clone()));
        }
        let end = s.end;
        while let Some(f) = reader
            .next(inbuf.received())
            .map_err(|e| Broken::Protocol(e.to_string()))?
        {
            let received = s
                .conn
                .session
                .on_frame(f)
                .map_err(|e| Broken::Protocol(e.to_string()))?;
            let r = match received {
                Received::Answer(r) => r,
                Received::Stale(_) => continue, // a retry's answer
                Received::Retry(r) => {
                    // It did not run: again, under its number, a little later.
                    s.conn.retries.push_back((now + RETRY_DELAY, r.request));
                    tally.retried += 1;
                    continue;
                }
                Received::Admin(_) => unreachable!("blaster sends no Admin"),
                Received::Expired { lost, .. } => {
                    return Err(Broken::Protocol(format!(
                        "the replica expired this connection's session (idle past its \
                         --session-idle-s, or evicted past its --sessions-max); {} requests \
                         outstanding have an unknown outcome",
                        lost.len() + 1
                    )))
                }
            };
            let ok = matches!(r.code, Code::Done | Code::Value | Code::NotFound);
            let sent = s.conn.answered(r.request);
            s.conn.verify_answer(r.request, ok);
            if let Some(h) = &mut s.conn.history {
                h.answered(r.request, r.code, &r.value, now);
            }
            let ns = now.duration_since(sent).as_nanos().max(1) as u64;
            // The progress lines show the warm-up too (marked as such).
            let mut l = live.borrow_mut();
            l.hist.saturating_record(ns);
            l.ops += 1;
            l.errors += u64::from(!ok);
            if sent >= measure_from && sent < end {
                tally.hist.saturating_record(ns);
                tally.ops += 1;
                tally.errors += u64::from(!ok);
            }
        }
        wake.notify();
        let inflight = s.conn.session.outstanding();
        if now >= end && (inflight == 0 || now > end + w.drain) {
            return Ok(());
        }
    }
}

/// Appends what the socket has to `buf`.
async fn read_more(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut ReadBuffer,
) -> std::io::Result<()> {
    let n = stream.read(buf.room()).await;
    buf.filled(*n.as_ref().unwrap_or(&0));
    if n? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

struct Conn {
    /// Numbering, the window, request frames and answer matching.
    session: Session,
    /// Send (or due) time of each outstanding request, by number mod window.
    sent_at: Vec<Option<Instant>>,
    /// What each outstanding request said, by number mod window, to say it
    /// again after a reconnect or an `Overloaded` answer.
    said: Vec<Option<Said>>,
    /// Requests answered `Overloaded`, to send again at the time beside each.
    retries: VecDeque<(Instant, u64)>,
    rng: Rng,
    keys: Vec<Vec<u8>>,
    value: Vec<u8>,
    /// Cumulative Zipf weights over `keys`, if `--zipf`.
    zipf_cdf: Option<Vec<f64>>,
    /// With `--history`: the operations, answered and not.
    history: Option<History>,
    shard: u8,
    /// With `--verify`: what was written to own keys.
    written: Option<Written>,
}

/// One request's operation and key (its value follows from its number).
#[derive(Clone, Copy)]
struct Said {
    read: bool,
    /// Index in the connection's keys; `None`: the shared hot key.
    key: Option<u32>,
}

/// Cumulative weights of ranks 1..=n under Zipf's law with exponent `s`.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut total = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            total += 1.0 / (k as f64).powf(s);
            total
        })
        .collect();
    cdf.iter_mut().for_each(|c| *c /= total);
    cdf
}

impl Conn {
    fn new(
        session: Session,
        keys: Vec<Vec<u8>>,
        seed: u64,
        epoch: Instant,
        target: &Target,
        w: &Workload,
    ) -> Conn {
        let window = CLIENT_WINDOW_REQUESTS_MAX as usize;
        let client = session.client_id();
        Conn {
            session,
            sent_at: vec![None; window],
            said: vec![None; window],
            retries: VecDeque::new(),
            rng: Rng::new(seed),
            zipf_cdf: w.zipf.map(|s| zipf_cdf(keys.len(), s)),
            keys,
            value: vec![b'v'; w.value_bytes],
            history: w.history.then(|| History::new(target.index as u64, epoch)),
            shard: target.shard,
            written: w.verify.then(|| Written::new(client)),
        }
    }

    fn queue(&mut self, w: &Workload, at: Instant) {
        // Verified and history values carry their request's number.
        let request = self.session.next_request();
        let client = self.session.client_id();
        let slot = (request % CLIENT_WINDOW_REQUESTS_MAX) as usize;
        debug_assert!(self.sent_at[slot].is_none());
        self.sent_at[slot] = Some(at);
        let (key_index, key): (Option<u32>, &[u8]) = if self.rng.chance(w.conflicts_pct) {
            (None, HOT_KEY)
        } else {
            let i = match &self.zipf_cdf {
                Some(cdf) => {
                    let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
                }
                None => self.rng.below(self.keys.len() as u64) as usize,
            };
            (Some(i as u32), &self.keys[i])
        };
        let read = self.rng.chance(w.reads_pct);
        self.said[slot] = Some(Said {
            read,
            key: key_index,
        });
        if let (Some(v), Some(k), false) = (&mut self.written, key_index, read) {
            v.put(request, k);
        }
        if !read && (self.written.is_some() || self.history.is_some()) {
            write_value(&mut self.value, client, request, w.value_bytes);
        }
        if let Some(h) = &mut self.history {
            let value: &[u8] = if read { b"" } else { &self.value };
            h.invoked(request, !read, key, value, Instant::now());
        }
        let (op, value): (Op, &[u8]) = if read {
            (Op::Get, b"")
        } else {
            (Op::Put, &self.value)
        };
        // The caller checked the room, `check` the value size.
        let queued = self
            .session
            .queue(op, key, value)
            .expect("a request in the window");
        debug_assert_eq!(queued, request);
    }

    /// Queues outstanding request `request` again, as it was first queued.
    fn resend(&mut self, request: u64, w: &Workload) {
        let slot = (request % CLIENT_WINDOW_REQUESTS_MAX) as usize;
        let said = self.said[slot].expect("an outstanding request was recorded");
        let key: &[u8] = match said.key {
            Some(i) => &self.keys[i as usize],
            None => HOT_KEY,
        };
        if said.read {
            self.session.requeue(request, Op::Get, key, b"");
            return;
        }
        if w.verify || w.history {
            write_value(
                &mut self.value,
                self.session.client_id(),
                request,
                w.value_bytes,
            );
        }
        self.session.requeue(request, Op::Put, key, &self.value);
    }

    /// After a reconnect: queues every outstanding request again (those
    /// waiting to be retried too); how many.
    fn resend_outstanding(&mut self, w: &Workload) -> u64 {
        self.retries.clear();
        let again: Vec<u64> = self.session.outstanding_requests().collect();
        for &request in &again {
            self.resend(request, w);
        }
        again.len() as u64
    }

    /// Forgets what answered request `request` said; when it was sent.
    fn answered(&mut self, request: u64) -> Instant {
        let slot = (request % CLIENT_WINDOW_REQUESTS_MAX) as usize;
        self.said[slot] = None;
        self.sent_at[slot]
            .take()
            .expect("an outstanding request has its send time")
    }

    /// Records the answer to an own-key PUT for `--verify`.
    fn verify_answer(&mut self, request: u64, ok: bool) {
        let horizon = self.session.next_request();
        if let Some(v) = &mut self.written {
            v.answered(request, ok, horizon);
        }
    }

    /// What every replica must hold for this connection's keys.
    fn checks(&self, value_bytes: usize) -> Vec<KeyCheck> {
        self.written.as_ref().map_or(Vec::new(), |v| {
            v.checks(self.shard, &self.keys, value_bytes)
        })
    }

    /// Whether one more request stays inside the client window.
    fn room(&self) -> bool {
        self.session.window_left() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedules_interleave_evenly() {
        let (total, connections) = (2000.0, 10);
        let rate = total / connections as f64;
        let mut due: Vec<f64> = (0..connections)
            .flat_map(|i| {
                let p = phase(i, rate, connections).as_secs_f64();
                (0..50).map(move |k| p + k as f64 / rate)
            })
            .collect();
        due.sort_by(f64::total_cmp);
        for pair in due.windows(2) {
            let gap = pair[1] - pair[0];
            assert!((gap - 1.0 / total).abs() < 1e-9, "gap {gap} s");
        }
    }
}
