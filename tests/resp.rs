//! The RESP front (`--resp`) against a real 3-replica cluster with
//! `--cores 2`: raw RESP sockets, and `redis-cli` and `redis-benchmark`
//! where installed (`.ci/run` installs `redis-tools`; without them those
//! tests print SKIPPED and pass).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use common::{Cluster, TIMEOUT};

/// A reply as a test compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

/// A blocking RESP client over one socket.
struct Resp {
    r: BufReader<TcpStream>,
}

impl Resp {
    fn connect(addr: SocketAddr) -> Resp {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Resp {
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).expect("write");
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read");
        assert!(l.ends_with("\r\n"), "closed or cut: {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    fn read(&mut self) -> Reply {
        let l = self.line();
        let (tag, rest) = l.split_at(1);
        match tag {
            "+" => Reply::Simple(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse().unwrap()),
            "_" => Reply::Nil,
            "$" if rest == "-1" => Reply::Nil,
            "$" => {
                let mut v = vec![0; rest.parse::<usize>().unwrap() + 2];
                self.r.read_exact(&mut v).unwrap();
                v.truncate(v.len() - 2);
                Reply::Bulk(v)
            }
            "*" | "%" => {
                let n: usize = rest.parse().unwrap();
                let n = if tag == "%" { 2 * n } else { n };
                Reply::Array((0..n).map(|_| self.read()).collect())
            }
            _ => panic!("not a reply: {l:?}"),
        }
    }

    fn call(&mut self, args: &[&str]) -> Reply {
        self.send(&encode(args));
        self.read()
    }

    /// Whether the server closed the connection (after what was read).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut b = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        b.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    b
}

/// The first `n` keys that shard `s` of a 2-core replica owns.
fn keys_on(s: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("key-{i}"))
        .filter(|k| epaxos_fast::command::shard_of(k.as_bytes(), 2) == s)
        .take(n)
        .collect()
}

/// A key of shard 0 and one of shard 1.
fn keys_on_two_shards() -> (String, String) {
    (keys_on(0, 1).remove(0), keys_on(1, 1).remove(0))
}

fn tool(name: &str) -> bool {
    let found = Command::new(name).arg("--version").output().is_ok();
    if !found {
        eprintln!("SKIPPED: {name} is not installed (apt-get install redis-tools)");
    }
    found
}

#[test]
fn resp_commands_against_a_three_replica_cluster() {
    let cluster = Cluster::start_resp(3, 2, &[]);
    let (k0, k1) = keys_on_two_shards();
    // SET through replica 0 (shard 0 forwards k1 to shard 1), GET through 2.
    let mut a = Resp::connect(cluster.resp_addr(0, 0));
    let mut c = Resp::connect(cluster.resp_addr(2, 1));
    assert_eq!(a.call(&["SET", &k0, "v0"]), ok());
    assert_eq!(a.call(&["SET", &k1, "v1"]), ok());
    assert_eq!(c.call(&["GET", &k0]), bulk("v0"));
    assert_eq!(c.call(&["GET", &k1]), bulk("v1"));
    assert_eq!(c.call(&["GET", "never-set"]), Reply::Nil);
    assert_eq!(a.call(&["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(a.call(&["ECHO", "hi"]), bulk("hi"));
    assert_eq!(a.call(&["SELECT", "0"]), ok());
    assert!(matches!(a.call(&["SELECT", "1"]), Reply::Error(e) if e.starts_with("ERR")));
    assert_eq!(
        a.call(&["FLUSHALL", "sync"]),
        Reply::Error("ERR unknown command 'FLUSHALL', with args beginning with: 'sync' ".into())
    );
    assert!(
        matches!(a.call(&["SET", &k0, "v", "EX", "10"]), Reply::Error(e) if e.contains("syntax error"))
    );
    assert_eq!(
        c.call(&["GET", &k0]),
        bulk("v0"),
        "a refused SET did nothing"
    );
    // Several keys: one shard is fine, two are CROSSSLOT.
    let crossslot = Reply::Error("CROSSSLOT Keys in request don't hash to the same shard".into());
    assert_eq!(a.call(&["MSET", &k0, "x", &k1, "y"]), crossslot);
    assert_eq!(a.call(&["MGET", &k0, &k1]), crossslot);
    let m = keys_on(1, 2);
    assert_eq!(a.call(&["MSET", &m[0], "m0", &m[1], "m1"]), ok());
    assert_eq!(
        c.call(&["MGET", &m[0], &m[1], &m[0]]),
        Reply::Array(vec![bulk("m0"), bulk("m1"), bulk("m0")])
    );
    // SET NX and XX, DEL's count, INCR's integer rules.
    assert_eq!(a.call(&["SET", "nx", "1", "NX"]), ok());
    assert_eq!(a.call(&["SET", "nx", "2", "NX"]), Reply::Nil);
    assert_eq!(a.call(&["SET", "xx", "1", "XX"]), Reply::Nil);
    assert_eq!(c.call(&["GET", "xx"]), Reply::Nil);
    assert_eq!(a.call(&["SET", "nx", "3", "XX"]), ok());
    assert_eq!(c.call(&["GET", "nx"]), bulk("3"));
    assert_eq!(a.call(&["DEL", "nx"]), Reply::Int(1));
    assert_eq!(a.call(&["DEL", "nx"]), Reply::Int(0));
    assert_eq!(a.call(&["DEL", &m[0], &m[1]]), Reply::Int(2));
    assert_eq!(a.call(&["DEL", &m[0], &k0]), crossslot);
    assert_eq!(a.call(&["EXISTS", &k0]), Reply::Int(1));
    assert_eq!(a.call(&["INCR", "n"]), Reply::Int(1));
    assert_eq!(c.call(&["INCRBY", "n", "41"]), Reply::Int(42));
    assert_eq!(c.call(&["DECRBY", "n", "50"]), Reply::Int(-8));
    assert_eq!(c.call(&["DECR", "n"]), Reply::Int(-9));
    assert_eq!(
        c.call(&["INCR", &k0]),
        Reply::Error("ERR value is not an integer or out of range".into())
    );
    // HELLO 3 switches to RESP3: maps and `_` nulls.
    assert!(matches!(c.call(&["HELLO", "3"]), Reply::Array(m) if m.len() == 14));
    c.send(b"GET never-set\r\n");
    c.r.fill_buf().unwrap();
    assert_eq!(c.line(), "_");
    assert!(matches!(a.call(&["INFO", "replication"]), Reply::Bulk(t)
        if String::from_utf8_lossy(&t).contains("replicas:3")));
    assert_eq!(a.call(&["QUIT"]), ok());
    assert!(a.closed());
}

#[test]
fn resp_clients_must_auth_when_a_password_is_asked() {
    let dir = std::env::temp_dir().join(format!("resp-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = Cluster::start_resp_protected(3, 1, "resp-password-77", &dir);
    let mut a = Resp::connect(cluster.resp_addr(0, 0));
    let noauth = Reply::Error("NOAUTH Authentication required.".into());
    assert_eq!(a.call(&["SET", "k", "v"]), noauth);
    assert_eq!(a.call(&["GET", "k"]), noauth);
    assert_eq!(a.call(&["PING"]), noauth);
    let wrongpass =
        Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into());
    assert_eq!(a.call(&["AUTH", "nope"]), wrongpass);
    assert_eq!(a.call(&["AUTH", "someone", "resp-password-77"]), wrongpass);
    assert_eq!(a.call(&["AUTH", "resp-password-77"]), ok());
    assert_eq!(a.call(&["SET", "k", "v"]), ok());
    // HELLO needs the client authenticated, or its AUTH option.
    let mut b = Resp::connect(cluster.resp_addr(1, 0));
    assert!(matches!(b.call(&["HELLO", "3"]), Reply::Error(e) if e.starts_with("NOAUTH HELLO")));
    let hello = b.call(&["HELLO", "3", "AUTH", "default", "resp-password-77"]);
    assert!(matches!(hello, Reply::Array(_)), "{hello:?}");
    assert_eq!(b.call(&["GET", "k"]), bulk("v"));
    // The third wrong password is answered, then the connection closes.
    let mut c = Resp::connect(cluster.resp_addr(2, 0));
    for _ in 0..3 {
        assert_eq!(c.call(&["AUTH", "nope"]), wrongpass);
    }
    assert!(c.closed(), "closed after the last allowed wrong password");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resp_concurrent_incrs_end_at_the_exact_total() {
    let cluster = Cluster::start_resp(3, 2, &[]);
    let (clients, bursts, per_burst) = (6, 20, 25);
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let addr = cluster.resp_addr(i % 3, (i % 2) as u8);
            std::thread::spawn(move || {
                let mut c = Resp::connect(addr);
                for _ in 0..bursts {
                    let burst: Vec<u8> = (0..per_burst)
                        .flat_map(|_| encode(&["INCR", "counter"]))
                        .collect();
                    c.send(&burst);
                    for _ in 0..per_burst {
                        assert!(matches!(c.read(), Reply::Int(n) if n > 0));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client failed");
    }
    let total = (clients * bursts * per_burst) as i64;
    for r in 0..3 {
        let mut c = Resp::connect(cluster.resp_addr(r, 1));
        assert_eq!(c.call(&["GET", "counter"]), bulk(&total.to_string()));
    }
}

#[test]
fn resp_pipelined_replies_come_in_order_and_garbage_closes() {
    let cluster = Cluster::start_resp(3, 2, &[]);
    let (k0, k1) = keys_on_two_shards();
    let mut a = Resp::connect(cluster.resp_addr(1, 0));
    // Replies of both shards, interleaved, more than the client window.
    let n = 3000;
    let mut burst = Vec::new();
    for i in 0..n {
        let key = if i % 2 == 0 { &k0 } else { &k1 };
        burst.extend_from_slice(&encode(&["SET", key, &i.to_string()]));
        burst.extend_from_slice(&encode(&["GET", key]));
        burst.extend_from_slice(b"PING\r\n");
    }
    a.send(&burst);
    for i in 0..n {
        assert_eq!(a.read(), ok(), "SET {i}");
        assert_eq!(a.read(), bulk(&i.to_string()), "GET {i}");
        assert_eq!(a.read(), Reply::Simple("PONG".into()), "PING {i}");
    }
    // Garbage: a protocol error, then the connection is closed.
    let mut g = Resp::connect(cluster.resp_addr(0, 1));
    g.send(b"*2\r\n$3\r\nGET\r\n+nonsense\r\n");
    assert!(matches!(g.read(), Reply::Error(e) if e.starts_with("ERR Protocol error")));
    assert!(g.closed());
    let mut h = Resp::connect(cluster.resp_addr(0, 1));
    h.send(format!("*1\r\n${}\r\n", 1 << 30).as_bytes());
    assert!(matches!(h.read(), Reply::Error(e) if e.contains("invalid bulk length")));
    assert!(h.closed());
    // The replica still serves.
    assert_eq!(a.call(&["GET", &k0]), bulk(&(n - 2).to_string()));
}

#[test]
fn resp_redis_cli_and_redis_benchmark() {
    if !tool("redis-cli") || !tool("redis-benchmark") {
        return;
    }
    let cluster = Cluster::start_resp(3, 2, &[]);
    let cli = |r: usize, args: &[&str]| {
        let a = cluster.resp_addr(r, 0);
        let out = Command::new("redis-cli")
            .args(["-h", &a.ip().to_string(), "-p", &a.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(0, &["SET", "greeting", "hello"]), "OK");
    assert_eq!(cli(1, &["GET", "greeting"]), "hello");
    assert_eq!(cli(2, &["PING"]), "PONG");
    assert!(cli(2, &["NOSUCH"]).starts_with("ERR unknown command 'NOSUCH'"));
    let a = cluster.resp_addr(0, 0);
    let out = Command::new("redis-benchmark")
        .args(["-h", &a.ip().to_string(), "-p", &a.port().to_string()])
        .args(["-t", "set,get,incr", "-n", "100000", "-P", "16", "-q"])
        .output()
        .expect("redis-benchmark");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{text}");
    for t in ["SET", "GET", "INCR"] {
        assert!(text.contains(&format!("{t}: ")), "no {t} line: {text}");
    }
    assert!(!text.to_lowercase().contains("error"), "{text}");
}
