//! Issue 19's hostile-input probes, re-run against real replicas built from
//! this tree (loopback, in memory): one line per probe with its bound and
//! what was measured. Driven by `tools/hostile-probes.sh`, which builds the
//! replica and also runs the `idle` mode below inside network namespaces.
//!
//! `hostile_probes all BINARY [NEW_CLIENTS]`: every loopback probe, each
//!   against fresh replicas, each bounded in time.
//! `hostile_probes idle ADDR CONNS IDLE_S`: opens CONNS client connections
//!   to ADDR, prints `ready` and their connect spread, stays idle IDLE_S
//!   seconds, then sends one PUT on each and prints how many were answered
//!   and how many found their connection reset (the script drops a
//!   keepalive probe meanwhile).
//!
//! RSS is the replica's VmRSS from /proc; "peak" is its VmHWM (the
//! process is fresh for each probe, so the peak is the probe's).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use epaxos_fast::client::{fresh_client_id, read_frame, Connection, Session};
use epaxos_fast::command::{BatchBuilder, CommandRef, Op};
use epaxos_fast::harness::{ClusterConfig, LocalCluster};
use epaxos_fast::wire::client::{decode_response, Code};
use epaxos_fast::wire::{FrameEncoder, Kind, ReadBuffer};

const CLUSTER_ID: u64 = 1919;
const TIMEOUT: Duration = Duration::from_secs(20);
const MIB: f64 = (1u64 << 20) as f64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("only") if args.len() == 4 => {
            let n = args[3].parse().expect("a count");
            match args[2].as_str() {
                "ids" => {
                    new_client_ids(&args[1], n);
                    one_client_control(&args[1], n)
                }
                "fd" => fd_limit(&args[1]),
                other => panic!("no probe {other}"),
            }
        }
        Some("all") if args.len() >= 2 => {
            let new_clients = args.get(2).map_or(200_000, |n| n.parse().expect("a count"));
            all(&args[1], new_clients)
        }
        Some("idle") if args.len() == 4 => idle(
            args[1].parse().expect("ADDR"),
            args[2].parse().expect("CONNS"),
            args[3].parse().expect("IDLE_S"),
        ),
        _ => {
            eprintln!("usage: hostile_probes all BINARY [NEW_CLIENTS] | idle ADDR CONNS IDLE_S");
            std::process::exit(2);
        }
    }
}

fn status_kb(pid: u32, field: &str) -> u64 {
    epaxos_fast::harness::status_kib(pid, field).expect("a status line")
}

fn rss(pid: u32) -> f64 {
    status_kb(pid, "VmRSS:") as f64 * 1024.0 / MIB
}

fn peak(pid: u32) -> f64 {
    status_kb(pid, "VmHWM:") as f64 * 1024.0 / MIB
}

fn report(probe: &str, bound: &str, measured: &str, held: bool) {
    let verdict = if held { "held" } else { "NOT HELD" };
    println!("{probe} | {bound} | {measured} | {verdict}");
}

fn cluster(binary: &str, replicas: usize, extra: &[&str]) -> LocalCluster {
    let cfg = ClusterConfig {
        binary: binary.into(),
        replicas,
        cores: 1,
        cluster_id: CLUSTER_ID,
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ready_timeout: TIMEOUT,
        data_root: None,
        remove_data: false,
        resp: false,
        metrics: false,
        password: None,
        stderr_dir: None,
    };
    LocalCluster::start(cfg).unwrap_or_else(|e| panic!("{e}"))
}

fn all(binary: &str, new_clients: u64) {
    println!("probe | bound | measured | verdict");
    headers_before_hello(binary);
    headers_after_hello(binary);
    new_client_ids(binary, new_clients);
    one_client_control(binary, new_clients);
    large_values_oldest_outstanding(binary);
    fd_limit(binary);
    config_mistakes(binary);
    sigterm_under_load(binary);
}

fn hello() -> Vec<u8> {
    epaxos_fast::harness::client_hello_frame(CLUSTER_ID)
}

fn header_4mib() -> Vec<u8> {
    epaxos_fast::harness::request_header_announcing(CLUSTER_ID, 4 << 20)
}

/// Reads until the replica closes `s` (or `TIMEOUT`); whether it did.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut sink = Vec::new();
    match s.read_to_end(&mut sink) {
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
    }
}

const ATTACKERS: usize = 150;
const GROWTH_MIB_MAX: f64 = 32.0;

fn headers_before_hello(binary: &str) {
    let c = cluster(binary, 1, &[]);
    let pid = c.pid(0);
    let base = rss(pid);
    let header = header_4mib();
    let mut socks: Vec<TcpStream> = (0..ATTACKERS)
        .map(|_| {
            let mut s = TcpStream::connect(c.peers[0]).expect("connect");
            s.write_all(&header).unwrap();
            s
        })
        .collect();
    let during = rss(pid);
    let all_closed = socks.iter_mut().map(closed).filter(|&c| c).count();
    std::thread::sleep(Duration::from_secs(1));
    let (top, after) = (peak(pid), rss(pid));
    report(
        "150 conns, Request header announcing 4 MiB before any hello",
        "peak and after < base + 32 MiB; each closed",
        &format!(
            "RSS base {base:.1} MiB, under attack {during:.1}, peak {top:.1}, after {after:.1}; \
             {all_closed}/{ATTACKERS} closed by the replica"
        ),
        top < base + GROWTH_MIB_MAX && after < base + GROWTH_MIB_MAX && all_closed == ATTACKERS,
    );
}

fn headers_after_hello(binary: &str) {
    let c = cluster(binary, 1, &["--test-frame-deadline-ms", "3000"]);
    let pid = c.pid(0);
    let base = rss(pid);
    let (hello, header) = (hello(), header_4mib());
    let mut socks: Vec<TcpStream> = (0..ATTACKERS)
        .map(|_| {
            let mut s = TcpStream::connect(c.peers[0]).expect("connect");
            s.write_all(&hello).unwrap();
            s.write_all(&header).unwrap();
            s
        })
        .collect();
    for s in &mut socks {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut ok = vec![0; hello.len()];
        s.read_exact(&mut ok).expect("a HelloOk");
    }
    let during = rss(pid);
    let t = Instant::now();
    let all_closed = socks.iter_mut().map(closed).filter(|&c| c).count();
    let closed_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let (top, after) = (peak(pid), rss(pid));
    report(
        "150 conns, valid hello then a 4 MiB Request header (frame deadline 3 s here, 10 s default)",
        "while open and after < base + 32 MiB; closed at the deadline",
        &format!(
            "RSS base {base:.1} MiB, all open {during:.1}, peak {top:.1}, after {after:.1}; \
             {all_closed}/{ATTACKERS} closed {closed_s:.1} s after all were open"
        ),
        top < base + GROWTH_MIB_MAX && after < base + GROWTH_MIB_MAX && all_closed == ATTACKERS,
    );
}

/// A raw client connection: hello answered, then frames of commands built
/// by hand (any client id, any `first_outstanding`).
struct Raw {
    stream: TcpStream,
    enc: FrameEncoder,
    rbuf: ReadBuffer,
    wbuf: BytesMut,
    session: Session,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut session = Session::new(1, CLUSTER_ID, 0);
        let mut wbuf = BytesMut::new();
        session.hello(&mut wbuf);
        stream.write_all(&wbuf).unwrap();
        let mut rbuf = ReadBuffer::default();
        let f = read_frame(&mut stream, session.reader(), &mut rbuf).expect("HelloOk");
        session.on_hello_answer(&f).expect("HelloOk");
        Raw {
            stream,
            enc: session.encoder(),
            rbuf,
            wbuf: BytesMut::new(),
            session,
        }
    }

    fn send(&mut self, cmds: &[CommandRef<'_>]) {
        let mut b = BatchBuilder::new();
        for c in cmds {
            b.push(c);
        }
        let batch = b.finish();
        self.wbuf.clear();
        self.enc.frame(&mut self.wbuf, Kind::Request, |out| {
            out.extend_from_slice(batch.bytes())
        });
        self.stream.write_all(&self.wbuf).expect("write");
    }

    fn recv(&mut self) -> (u64, u64, Code, usize) {
        let f = read_frame(&mut self.stream, self.session.reader(), &mut self.rbuf)
            .expect("a response");
        let r = decode_response(&f.body).expect("a response");
        (r.client, r.request, r.code, r.value.len())
    }
}

fn new_client_ids(binary: &str, count: u64) {
    const SESSIONS_MAX: &str = "10000";
    const BATCH: u64 = 1000;
    const IN_FLIGHT_BATCHES: u64 = 4;
    let c = cluster(binary, 3, &["--sessions-max", SESSIONS_MAX]);
    let pids: Vec<u32> = (0..3).map(|r| c.pid(r)).collect();
    let rss_all = || pids.iter().map(|&p| rss(p)).collect::<Vec<f64>>();
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut raw = Raw::connect(c.peers[0]);
    let base_id = fresh_client_id();
    let keys: Vec<Vec<u8>> = (0..BATCH).map(|i| format!("nc{i}").into_bytes()).collect();
    let mut samples = vec![(0, rss_all())];
    let (mut sent, mut answered, mut done, mut expired) = (0u64, 0u64, 0u64, 0u64);
    let t = Instant::now();
    let step = (count / 4).max(1);
    while answered < count {
        while sent < count && sent - answered < BATCH * IN_FLIGHT_BATCHES {
            let n = BATCH.min(count - sent);
            let cmds: Vec<CommandRef<'_>> = (0..n)
                .map(|i| CommandRef {
                    client: base_id + sent + i,
                    request: 1,
                    first_outstanding: 1,
                    op: Op::Put,
                    key: &keys[i as usize],
                    value: b"v",
                })
                .collect();
            raw.send(&cmds);
            sent += n;
        }
        let (_, _, code, _) = raw.recv();
        answered += 1;
        match code {
            Code::Done => done += 1,
            Code::SessionExpired => expired += 1,
            other => panic!("a new client's PUT answered {other:?}"),
        }
        if answered % step == 0 {
            samples.push((answered, rss_all()));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let end = rss_all();
    let instances = Connection::connect(c.peers[0], 0, CLUSTER_ID, TIMEOUT)
        .and_then(|mut a| a.admin())
        .map_or(0, |i| i.instances_in_memory.get());
    // Flat: the RSS at the end within 32 MiB of that at a quarter of the
    // count, on every replica (sessions past --sessions-max expire).
    let quarter = &samples[1.min(samples.len() - 1)].1;
    let held = quarter
        .iter()
        .zip(&end)
        .all(|(q, e)| *e < q + GROWTH_MIB_MAX);
    // Expiry goes on after the attack (at most EXPIRE_BATCH_MAX sessions
    // per EXPIRE_CHECK_NS): what is left after 20 s more.
    std::thread::sleep(Duration::from_secs(20));
    let later = rss_all();
    let by_count: Vec<String> = samples
        .iter()
        .map(|(n, v)| format!("{n}: {}", show(v)))
        .collect();
    report(
        &format!(
            "{count} PUTs, each from a new client id, 3 replicas, --sessions-max {SESSIONS_MAX} \
             (the issue ran 1.2 M at the default)"
        ),
        "RSS at the end < RSS at a quarter + 32 MiB, every replica",
        &format!(
            "RSS MiB (replica 0/1/2) by commands answered: {}; 1 s later {}, 21 s later {}; \
             {done} Done, \
             {expired} SessionExpired, {:.0} commands/s; replica 0 holds {instances} instances",
            by_count.join(", "),
            show(&end),
            show(&later),
            count as f64 / secs
        ),
        held,
    );
}

/// The same PUTs from one client (its window kept moving): what the
/// commands alone cost, for comparison with the new-client-id probe.
fn one_client_control(binary: &str, count: u64) {
    const WINDOW: u64 = 1000;
    let c = cluster(binary, 3, &["--sessions-max", "10000"]);
    let pids: Vec<u32> = (0..3).map(|r| c.pid(r)).collect();
    let show = || {
        pids.iter()
            .map(|&p| format!("{:.0}", rss(p)))
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut conn = c.connect(0, 0, TIMEOUT).expect("connect");
    let keys: Vec<Vec<u8>> = (0..WINDOW).map(|i| format!("nc{i}").into_bytes()).collect();
    let mut samples = vec![format!("0: {}", show())];
    let step = (count / 4).max(1);
    let mut answered = 0;
    while answered < count {
        let n = WINDOW.min(count - answered);
        for key in &keys[..n as usize] {
            conn.queue(Op::Put, key, b"v").unwrap();
        }
        for _ in 0..n {
            assert_eq!(conn.recv().unwrap().code, Code::Done);
            answered += 1;
            if answered % step == 0 {
                samples.push(format!("{answered}: {}", show()));
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let info = conn.admin().unwrap();
    report(
        &format!("control: the same {count} PUTs from one client id, 3 replicas"),
        "(none: for comparison)",
        &format!(
            "RSS MiB by commands answered: {}; 1 s later {}; replica 0 holds {} instances",
            samples.join(", "),
            show(),
            info.instances_in_memory.get()
        ),
        true,
    );
}

fn large_values_oldest_outstanding(binary: &str) {
    const CLIENTS: usize = 3;
    const REQUESTS: u64 = 1000;
    const PIPELINE: u64 = 8;
    let c = cluster(binary, 1, &[]);
    let pid = c.pid(0);
    let base = rss(pid);
    let addr = c.peers[0];
    let value = Arc::new(vec![b'x'; 1 << 20]);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let value = value.clone();
            std::thread::spawn(move || {
                let mut raw = Raw::connect(addr);
                let client = fresh_client_id();
                let key = format!("big{i}").into_bytes();
                let (mut sent, mut got, mut big_reads) = (0u64, 0u64, 0u64);
                // Request 1 is a GET; every later one says 1 is still
                // outstanding, so the replica keeps what it keeps for
                // requests 1 onwards.
                while got < REQUESTS {
                    while sent < REQUESTS && sent - got < PIPELINE {
                        let request = sent + 1;
                        let put = request % 2 == 0;
                        raw.send(&[CommandRef {
                            client,
                            request,
                            first_outstanding: 1,
                            op: if put { Op::Put } else { Op::Get },
                            key: &key,
                            value: if put { &value[..] } else { b"" },
                        }]);
                        sent += 1;
                    }
                    let (_, _, code, len) = raw.recv();
                    assert!(
                        matches!(code, Code::Done | Code::Value | Code::NotFound),
                        "{code:?}"
                    );
                    big_reads += u64::from(len == 1 << 20);
                    got += 1;
                }
                big_reads
            })
        })
        .collect();
    let mut during = base;
    while threads.iter().any(|t| !t.is_finished()) {
        during = during.max(rss(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let big_reads: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    std::thread::sleep(Duration::from_secs(1));
    let (top, after) = (peak(pid), rss(pid));
    report(
        "3 clients keeping request 1 outstanding, 1000 requests each alternating PUT and GET \
         of one 1 MiB value",
        "peak < base + 256 MiB, after < base + 64 MiB (reads > 1 KiB not kept)",
        &format!(
            "RSS base {base:.1} MiB, sampled max {during:.1}, peak {top:.1}, after {after:.1}; \
             {big_reads} reads of 1 MiB answered"
        ),
        top < base + 256.0 && after < base + 64.0,
    );
}

/// A replica this probe started itself, its stderr collected line by line.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn start(binary: &str, args: &[String], nofile: Option<u64>) -> Proc {
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .args(["--cpus", "none", "--in-memory", "--log-level", "warn"])
            .args(["--cluster-id", &CLUSTER_ID.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only `lim`.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().expect("start epaxos-fast");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// The first line with every one of `parts` within `wait`, and when.
    fn line_with(&mut self, parts: &[&str], wait: Duration) -> Option<(String, f64)> {
        let t = Instant::now();
        loop {
            if let Some(l) = self
                .seen
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return Some((l.clone(), t.elapsed().as_secs_f64()));
            }
            let left = wait.saturating_sub(t.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => return None,
            }
        }
    }

    fn exit_code(&mut self, wait: Duration) -> Option<i32> {
        let t = Instant::now();
        while t.elapsed() < wait {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn fd_limit(binary: &str) {
    const NOFILE: u64 = 64;
    const CONNS: usize = 150;
    const HOLD: Duration = Duration::from_secs(3);
    let addr = free_addr();
    let args: Vec<String> = ["--id", "0", "--peers", &addr.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut p = Proc::start(binary, &args, Some(NOFILE));
    let t = Instant::now();
    while Connection::connect(addr, 0, CLUSTER_ID, Duration::from_secs(1)).is_err() {
        assert!(t.elapsed() < TIMEOUT, "the replica never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let attack = Instant::now();
    let socks: Vec<TcpStream> = (0..CONNS)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok())
        .collect();
    let opened = socks.len();
    std::thread::sleep(HOLD);
    p.drain();
    let attack_s = attack.elapsed().as_secs_f64();
    let lines_max = 1 + (attack_s / 10.0) as usize;
    let failed: Vec<String> = p
        .seen
        .iter()
        .filter(|l| l.contains("accept failed"))
        .cloned()
        .collect();
    drop(socks);
    let t = Instant::now();
    let served = loop {
        match Connection::connect(addr, 0, CLUSTER_ID, Duration::from_secs(2)) {
            Ok(mut c) => break matches!(c.call(Op::Put, b"k", b"v"), Ok(r) if r.code == Code::Done),
            Err(_) if t.elapsed() < TIMEOUT => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break false,
        }
    };
    let first = failed
        .iter()
        .map(|l| {
            l.split_once("accept failed")
                .map_or(l.clone(), |(t, r)| format!("{t}\"accept failed{r}\""))
        })
        .collect::<Vec<_>>()
        .join(" || ");
    report(
        &format!(
            "{opened} of {CONNS} conns opened, held {} s, against --nofile {NOFILE}",
            HOLD.as_secs()
        ),
        "'accept failed' lines at most 1 + (attack s / 10), each with its count; a new \
         client served after",
        &format!(
            "{} line(s) in {attack_s:.1} s (bound {lines_max}): {first}; new client served \
             {:.1} s after they closed: {served}",
            failed.len(),
            t.elapsed().as_secs_f64()
        ),
        failed.len() <= lines_max && served,
    );
}

fn config_mistakes(binary: &str) {
    let wait = Duration::from_secs(15);
    let peers_of = |p: &[SocketAddr]| {
        p.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let args = |id: usize, peers: &str, more: &[&str]| -> Vec<String> {
        let mut a = vec![
            "--id".into(),
            id.to_string(),
            "--peers".into(),
            peers.into(),
        ];
        a.extend(more.iter().map(|s| s.to_string()));
        a
    };
    let short = |l: &str| -> String {
        let l = l.split_once("epaxos-fast: ").map_or(l, |(_, r)| r);
        let l = l.split_once(" WARN ").map_or(l, |(_, r)| r);
        l.chars().take(110).collect()
    };
    let mut c = cluster(binary, 3, &[]);
    let peers = c.peers.clone();

    let elsewhere = free_addr().to_string();
    let mut p = Proc::start(
        binary,
        &args(2, &peers_of(&peers), &["--listen", &elsewhere]),
        None,
    );
    let code = p.exit_code(wait);
    let line = p.line_with(&["duplicate replica id"], Duration::from_secs(1));
    report(
        "second process as --id 2 with --listen elsewhere",
        "refused, exits 2, the cluster serves on",
        &format!(
            "exit {code:?}; {}",
            line.map_or("no refusal line".into(), |(l, _)| short(&l))
        ),
        code == Some(2),
    );
    drop(p);

    c.kill(2).unwrap();
    let mut swapped = peers.clone();
    swapped.swap(0, 1);
    let mut p = Proc::start(binary, &args(2, &peers_of(&swapped), &[]), None);
    let line = p.line_with(&["configuration mismatch", "first difference"], wait);
    report(
        "replica 2 restarted with --peers entries 0 and 1 swapped",
        "refused naming both lists",
        &line.as_ref().map_or("silent".into(), |(l, s)| {
            format!("after {s:.1} s: {}", short(l))
        }),
        line.is_some(),
    );
    drop(p);

    let mut p = Proc::start(binary, &args(2, &peers_of(&peers), &["--cores", "2"]), None);
    let line = p.line_with(&["cannot serve", "runs 1 shards"], wait);
    report(
        "replica 2 restarted with --cores 2 (others 1)",
        "refused naming both counts",
        &line.as_ref().map_or("silent".into(), |(l, s)| {
            format!("after {s:.1} s: {}", short(l))
        }),
        line.is_some(),
    );
    drop(p);

    let dup = format!("{},{},{}", peers[0], peers[1], peers[0]);
    let mut p = Proc::start(binary, &args(0, &dup, &[]), None);
    let code = p.exit_code(wait);
    let line = p.line_with(&["are the same address"], Duration::from_secs(1));
    report(
        "--peers with an entry repeated",
        "exit 2 naming the entries",
        &format!(
            "exit {code:?}; {}",
            line.map_or("no line".into(), |(l, _)| short(&l))
        ),
        code == Some(2),
    );
}

fn sigterm_under_load(binary: &str) {
    const CLIENTS: usize = 16;
    const REQUESTS: usize = 1_000;
    let mut c = cluster(binary, 1, &[]);
    let value = vec![b'v'; 512];
    let sent = Arc::new(Barrier::new(CLIENTS + 1));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut conn = c.connect(0, 0, TIMEOUT).expect("connect");
            let (sent, value) = (sent.clone(), value.clone());
            std::thread::spawn(move || {
                for j in 0..REQUESTS {
                    conn.queue(Op::Put, format!("k{i}-{j}").as_bytes(), &value)
                        .unwrap();
                }
                conn.flush().unwrap();
                sent.wait();
                let (mut done, mut refused, mut lost) = (0, 0, 0);
                for _ in 0..REQUESTS {
                    match conn.recv() {
                        Ok(r) if r.code == Code::Done => done += 1,
                        Ok(r) if r.code == Code::Unavailable => refused += 1,
                        _ => {
                            lost += 1;
                            break;
                        }
                    }
                }
                (done, refused, lost)
            })
        })
        .collect();
    sent.wait();
    let status = c.terminate().remove(0);
    let (mut done, mut refused, mut lost) = (0, 0, 0);
    for t in threads {
        let (d, r, l) = t.join().unwrap();
        done += d;
        refused += r;
        lost += l;
    }
    report(
        "SIGTERM with 16 clients x 1000 PUTs in flight",
        "every request answered or refused Unavailable; exit 0",
        &format!(
            "{done} answered, {refused} refused Unavailable, {lost} connection(s) lost; \
             exit {:?}",
            status.and_then(|s| s.code())
        ),
        lost == 0 && done + refused == CLIENTS * REQUESTS && status.is_some_and(|s| s.success()),
    );
}

/// Idle clients for the keepalive probe (see the module docs).
fn idle(addr: SocketAddr, conns: usize, idle_s: u64) {
    let t = Instant::now();
    let mut clients: Vec<Connection> = (0..conns)
        .map(|_| Connection::connect(addr, 0, CLUSTER_ID, TIMEOUT).expect("connect"))
        .collect();
    println!("ready {conns} spread {:.2} s", t.elapsed().as_secs_f64());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(idle_s));
    let (mut ok, mut reset) = (0, 0);
    let mut other = Vec::new();
    for c in &mut clients {
        match c.call(Op::Put, b"idle", b"v") {
            Ok(r) if r.code == Code::Done => ok += 1,
            Ok(r) => other.push(format!("{:?}", r.code)),
            Err(epaxos_fast::client::ClientError::Io(e))
                if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
            {
                reset += 1
            }
            Err(epaxos_fast::client::ClientError::Closed) => reset += 1,
            Err(e) => other.push(e.to_string()),
        }
    }
    other.truncate(3);
    println!("answered {ok} reset {reset} other {other:?}");
}
