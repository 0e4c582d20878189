//! One load connection: a socket to one shard of one replica, driven closed
//! loop (keep K requests outstanding) or open loop (requests due at fixed
//! intervals, latency measured from the time each was due, so a stalled
//! server shows in the histogram instead of slowing the load down).

use std::cell::RefCell;
use std::collections::HashMap;
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
use epaxos_fast::wire::{FrameReader, ReadBuffer};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use hdrhistogram::Histogram;

use crate::wake::Wake;

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
fn own_keys(index: usize, count: u64, shard: u8, shards: usize) -> Vec<Vec<u8>> {
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
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{who}: connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("{who}: {e}"))?;
    let mut session = Session::new(fresh_client_id(), w.cluster_id, target.shard);
    let reader = session.reader();
    let mut out = BytesMut::new();
    session.hello(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("{who}: {e}"))?;
    let mut inbuf = ReadBuffer::default();
    let shards = loop {
        if let Some(f) = reader
            .next(inbuf.received())
            .map_err(|e| format!("{who}: {e}"))?
        {
            let server = session
                .on_hello_answer(&f)
                .map_err(|e| format!("{who}: {e}"))?;
            break usize::from(server.shards);
        }
        read_more(&mut stream, &mut inbuf)
            .await
            .map_err(|e| format!("{who}: {e}"))?;
    };
    let keys = own_keys(target.index, w.keys.max(1), target.shard, shards);
    let keys_len = keys.len();
    let conn = Conn {
        session,
        sent_at: vec![None; CLIENT_WINDOW_REQUESTS_MAX as usize],
        rng: Rng::new(seed),
        keys,
        value: vec![b'v'; w.value_bytes],
        zipf_cdf: w.zipf.map(|s| zipf_cdf(keys_len, s)),
        history: w.history.then(|| History {
            pending: (0..CLIENT_WINDOW_REQUESTS_MAX).map(|_| None).collect(),
            lines: Vec::new(),
        }),
        epoch: start,
        index: target.index,
        shard: target.shard,
        verify: w.verify.then(|| Verify {
            sent: vec![None; CLIENT_WINDOW_REQUESTS_MAX as usize],
            keys: HashMap::new(),
        }),
    };
    // Silence for this long wakes the reader, so it can see the run end.
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| format!("{who}: {e}"))?;
    let measure_from = start + w.warmup;
    let state = Rc::new(RefCell::new(State {
        conn,
        end: measure_from + w.duration,
    }));
    let wake = Rc::new(Wake::new());
    let (mut rx, mut tx) = futures_lite::io::split(stream);
    let schedule = start
        + w.rate.map_or(Duration::ZERO, |rate| {
            phase(target.index, rate, w.connections)
        });
    let writer = {
        let (state, wake, w) = (state.clone(), wake.clone(), w.clone());
        glommio::spawn_local(async move {
            send_loop(&mut tx, &state, &wake, &w, schedule, measure_from).await
        })
    };
    let received = recv_loop(
        &mut rx,
        reader,
        inbuf,
        &state,
        &wake,
        &w,
        measure_from,
        live,
    )
    .await;
    let sent = writer.await;
    let (mut tally, failure) = received;
    let mut failure = failure.map(|e| format!("{who}: {e}"));
    match sent {
        Ok((lag, unsent)) => {
            tally.lag.add(&lag).expect("same bounds");
            // After a failure the writer stopped early: what it did not
            // send was not the server's stall.
            if failure.is_none() {
                tally.timeouts += unsent;
            }
        }
        Err(e) if failure.is_none() => failure = Some(format!("{who}: {e}")),
        Err(_) => {} // the reader's error says why
    }
    tally.failed = u64::from(failure.is_some());
    Ok((tally, failure))
}

struct State {
    conn: Conn,
    /// When sending stops (moved earlier on Ctrl-C).
    end: Instant,
}

/// How far connection `index` of `connections`, each sending `rate` requests
/// a second, shifts its open-loop schedule: by `index` / (total rate), so the
/// run's requests are due evenly spaced. Without it every connection sent at
/// the same instants, and the server saw bursts of one request per
/// connection (the figures are in perf/RESULTS.md, "At a3384f2").
fn phase(index: usize, rate: f64, connections: usize) -> Duration {
    Duration::from_secs_f64(index as f64 / (rate * connections as f64))
}

/// Queues requests as the mode says and writes them, one write per wake-up.
/// Open loop: request k is due at `start + k / rate`; how late each one
/// due in the measured time (from `measure_from`) went out is recorded.
async fn send_loop(
    tx: &mut (impl AsyncWrite + Unpin),
    state: &RefCell<State>,
    wake: &Wake,
    w: &Workload,
    start: Instant,
    measure_from: Instant,
) -> std::io::Result<(Histogram<u64>, u64)> {
    let mut out = BytesMut::new();
    let mut due_sent = 0u64;
    let mut lag = latency_histogram();
    loop {
        let now = Instant::now();
        let next = {
            let mut s = state.borrow_mut();
            if w.stop.load(std::sync::atomic::Ordering::Relaxed) && now < s.end {
                s.end = now;
            }
            if now >= s.end {
                // Requests that fell due while the window was full and never
                // went out: the server's stall, which must not vanish from
                // the figures. (With room left, what is unsent at the end
                // was due in the instant the loop took to notice the end.)
                let unsent = match w.rate {
                    Some(rate) if !s.conn.room() => {
                        let due = (s.end.saturating_duration_since(start).as_secs_f64() * rate)
                            .ceil() as u64;
                        due.saturating_sub(due_sent)
                    }
                    _ => 0,
                };
                return Ok((lag, unsent));
            }
            let end = s.end;
            let conn = &mut s.conn;
            let next = match w.rate {
                None => {
                    while conn.session.outstanding() < w.outstanding && conn.room() {
                        conn.queue(w, now);
                    }
                    s.end
                }
                Some(rate) => {
                    // Request k is due at start + k / rate: those due by now.
                    let elapsed = now.saturating_duration_since(start).as_secs_f64();
                    let due = if now < start {
                        0
                    } else {
                        (elapsed * rate) as u64 + 1
                    };
                    while due_sent < due && conn.room() {
                        // Latency counts from when the request was due.
                        let intended = start + Duration::from_secs_f64(due_sent as f64 / rate);
                        conn.queue(w, intended);
                        if intended >= measure_from && intended < end {
                            let late = now.saturating_duration_since(intended).as_nanos() as u64;
                            lag.saturating_record(late.max(1));
                        }
                        due_sent += 1;
                    }
                    if conn.room() {
                        (start + Duration::from_secs_f64(due_sent as f64 / rate)).min(s.end)
                    } else {
                        // The window is full: only an answer can make room.
                        s.end
                    }
                }
            };
            s.conn.session.encode(&mut out);
            next
        };
        if !out.is_empty() {
            tx.write_all(&out).await?;
            out.clear();
        }
        let wait = next.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            // Let the reader run: a task that never waits starves the others.
            futures_lite::future::yield_now().await;
        } else {
            futures_lite::future::or(wake.wait(), glommio::timer::sleep(wait)).await;
        }
    }
}

/// Reads responses and records their latency until the run has ended and
/// every request is answered (or the drain time ran out).
#[allow(clippy::too_many_arguments)]
async fn recv_loop(
    rx: &mut (impl AsyncRead + Unpin),
    reader: FrameReader,
    inbuf: ReadBuffer,
    state: &RefCell<State>,
    wake: &Wake,
    w: &Workload,
    measure_from: Instant,
    live: Live,
) -> (Tally, Option<String>) {
    let mut tally = Tally::new();
    let failure = receive(
        rx,
        reader,
        inbuf,
        state,
        wake,
        w,
        measure_from,
        live,
        &mut tally,
    )
    .await
    .err();
    if failure.is_some() {
        // What was answered before the failure still counts, and its
        // writes are still checked by --verify. What is in flight now is
        // lost; stop the writer, so that it does not send more into a
        // connection nobody reads.
        let mut s = state.borrow_mut();
        tally.lost_in_flight = s.conn.session.outstanding() as u64;
        s.end = s.end.min(Instant::now());
        tally.checks = s.conn.checks(w.value_bytes);
        tally.history = s.conn.history_unanswered();
        wake.notify();
    }
    (tally, failure)
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    rx: &mut (impl AsyncRead + Unpin),
    reader: FrameReader,
    mut inbuf: ReadBuffer,
    state: &RefCell<State>,
    wake: &Wake,
    w: &Workload,
    measure_from: Instant,
    live: Live,
    tally: &mut Tally,
) -> Result<(), String> {
    loop {
        match read_more(rx, &mut inbuf).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.to_string()),
        }
        let now = Instant::now();
        let mut s = state.borrow_mut();
        let end = s.end;
        while let Some(f) = reader.next(inbuf.received()).map_err(|e| e.to_string())? {
            let r = match s.conn.session.on_frame(f).map_err(|e| e.to_string())? {
                Received::Answer(r) => r,
                Received::Stale(_) => continue, // a retry's answer
                Received::Admin(_) => unreachable!("blaster sends no Admin"),
            };
            let ok = matches!(r.code, Code::Done | Code::Value | Code::NotFound);
            let slot = (r.request % CLIENT_WINDOW_REQUESTS_MAX) as usize;
            let sent = s.conn.sent_at[slot]
                .take()
                .expect("an outstanding request has its send time");
            s.conn.verify_answer(r.request, ok);
            s.conn.history_answer(r.request, r.code, &r.value, now);
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
        let inflight = s.conn.session.outstanding() as u64;
        if now >= end && (inflight == 0 || now > end + w.drain) {
            tally.timeouts += inflight;
            live.borrow_mut().timeouts += inflight;
            tally.checks = s.conn.checks(w.value_bytes);
            tally.history = s.conn.history_unanswered();
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
    rng: Rng,
    keys: Vec<Vec<u8>>,
    value: Vec<u8>,
    /// Cumulative Zipf weights over `keys`, if `--zipf`.
    zipf_cdf: Option<Vec<f64>>,
    /// With `--history`: each outstanding request's operation, by number
    /// mod window, and the finished lines.
    history: Option<History>,
    /// When the run started (history times count from it).
    epoch: Instant,
    /// This connection's index in the run: the `client` of its history
    /// lines (a small number any JSON reader takes exactly, unlike the
    /// random 64-bit client id).
    index: usize,
    shard: u8,
    /// With `--verify`: the key (own keys only) and PUT-ness of each
    /// outstanding request, by number mod window, and per key what was
    /// written.
    verify: Option<Verify>,
}

struct History {
    pending: Vec<Option<Invoked>>,
    lines: Vec<String>,
}

struct Invoked {
    put: bool,
    key: Vec<u8>,
    value: Vec<u8>,
    at: Instant,
}

/// One operation as a JSON line: times in ns since the run started; a GET's
/// result is the value read, `null` when the key had none.
fn history_line(
    client: u64,
    op: &Invoked,
    epoch: Instant,
    done: Option<Instant>,
    result: &str,
) -> String {
    let invoke = op.at.saturating_duration_since(epoch).as_nanos();
    let ret = done.map_or("null".to_string(), |d| {
        d.saturating_duration_since(epoch).as_nanos().to_string()
    });
    format!(
        "{{\"client\": {client}, \"op\": \"{}\", \"key\": {}, \"value\": {}, \"invoke_ns\": {invoke}, \"return_ns\": {ret}, \"result\": {result}}}",
        if op.put { "put" } else { "get" },
        json_str(&op.key),
        if op.put { json_str(&op.value) } else { "null".to_string() },
    )
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

fn json_str(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Verify {
    sent: Vec<Option<u32>>,
    keys: HashMap<u32, KeyLog>,
}

/// The PUTs of one key: the highest acknowledged request, and the ones
/// never answered (which may or may not have been applied).
#[derive(Default)]
struct KeyLog {
    acked: u64,
    unanswered: Vec<u64>,
}

/// What `--verify` must find for one key at every replica.
pub struct KeyCheck {
    pub shard: u8,
    pub key: Vec<u8>,
    /// Values the key may hold: the last acknowledged write's, and those of
    /// later writes that were never answered.
    pub acceptable: Vec<Vec<u8>>,
    /// Whether some write of the key was acknowledged (else it may be absent).
    pub acked: bool,
}

/// Writes into `v` the value request `request` of client `client` puts:
/// unique per write and per run (client ids are drawn afresh for every
/// connection), so neither an earlier run's data nor another connection's
/// can pass for it; padded to `size` with '.' (longer if `size` is too
/// small).
fn write_value(v: &mut Vec<u8>, client: u64, request: u64, size: usize) {
    use std::io::Write;
    v.clear();
    write!(v, "{client:x}:{request}").expect("writing to a Vec");
    if v.len() < size {
        v.resize(size, b'.');
    }
}

fn value_of(client: u64, request: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    write_value(&mut v, client, request, size);
    v
}

impl Conn {
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
        if let Some(v) = &mut self.verify {
            let own_put = key_index.filter(|_| !read);
            v.sent[slot] = own_put;
            if let Some(k) = own_put {
                v.keys.entry(k).or_default().unanswered.push(request);
            }
        }
        if !read && (self.verify.is_some() || self.history.is_some()) {
            write_value(&mut self.value, client, request, w.value_bytes);
        }
        if let Some(h) = &mut self.history {
            h.pending[slot] = Some(Invoked {
                put: !read,
                key: key.to_vec(),
                value: if read { Vec::new() } else { self.value.clone() },
                at: Instant::now(),
            });
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

    /// Records the answer to `request` for `--history`.
    fn history_answer(&mut self, request: u64, code: Code, value: &[u8], now: Instant) {
        let (client, epoch) = (self.index as u64, self.epoch);
        let Some(h) = &mut self.history else {
            return;
        };
        let slot = (request % CLIENT_WINDOW_REQUESTS_MAX) as usize;
        if let Some(op) = h.pending[slot].take() {
            let result = match code {
                Code::Done => "\"ok\"".to_string(),
                Code::Value => json_str(value),
                Code::NotFound => "null".to_string(),
                other => json_str(format!("error: {other:?}").as_bytes()),
            };
            h.lines
                .push(history_line(client, &op, epoch, Some(now), &result));
        }
    }

    /// History lines of requests never answered (result unknown).
    fn history_unanswered(&mut self) -> Vec<String> {
        let (client, epoch) = (self.index as u64, self.epoch);
        let Some(h) = &mut self.history else {
            return Vec::new();
        };
        let mut lines = std::mem::take(&mut h.lines);
        for op in h.pending.iter_mut().filter_map(Option::take) {
            lines.push(history_line(client, &op, epoch, None, "\"timeout\""));
        }
        lines
    }

    /// Records the answer to an own-key PUT for `--verify`.
    fn verify_answer(&mut self, request: u64, ok: bool) {
        let slot = (request % CLIENT_WINDOW_REQUESTS_MAX) as usize;
        let Some(v) = &mut self.verify else {
            return;
        };
        let Some(k) = v.sent[slot].take() else {
            return;
        };
        let log = v.keys.get_mut(&k).expect("logged when sent");
        log.unanswered.retain(|&r| r != request);
        if ok {
            log.acked = log.acked.max(request);
        }
    }

    /// What every replica must hold for this connection's keys.
    fn checks(&self, value_bytes: usize) -> Vec<KeyCheck> {
        let Some(v) = &self.verify else {
            return Vec::new();
        };
        v.keys
            .iter()
            .map(|(&k, log)| {
                let later = log.unanswered.iter().filter(|&&r| r > log.acked);
                let mut acceptable: Vec<Vec<u8>> = later
                    .map(|&r| value_of(self.session.client_id(), r, value_bytes))
                    .collect();
                if log.acked > 0 {
                    acceptable.push(value_of(self.session.client_id(), log.acked, value_bytes));
                }
                KeyCheck {
                    shard: self.shard,
                    key: self.keys[k as usize].clone(),
                    acceptable,
                    acked: log.acked > 0,
                }
            })
            .collect()
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
