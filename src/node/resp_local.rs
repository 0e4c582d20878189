//! The RESP commands a shard answers without the store: PING, ECHO,
//! SELECT, DBSIZE, INFO, COMMAND, CLIENT, HELLO, AUTH, CONFIG GET.
//!
//! DBSIZE and INFO's key count are this shard's own, read locally: not
//! linearizable, and with `--cores` above 1 not the whole replica's.

use std::fmt::Write as _;

use super::auth::AuthOutcome;
use super::resp::Step;
use super::{ConnId, Node};
use crate::resp::command::{parse_i64, COMMANDS};
use crate::resp::{Args, Request};
use crate::storage::Storage;

/// What INFO's server section reports, from the driver (the node reads no
/// process state).
#[derive(Clone, Copy, Debug, Default)]
pub struct RespServerInfo {
    pub process_id: u32,
    /// This shard's RESP port.
    pub tcp_port: u16,
}

/// The Redis version INFO and HELLO report: clients pick features by it,
/// and these are the commands of that version this front serves.
const REDIS_VERSION: &str = "7.0.0";

/// Redis's answers to AUTH, which its clients know.
const AUTH_NOT_CONFIGURED: &str = "ERR AUTH <password> called without any password configured \
                                   for the default user. Are you sure your configuration is correct?";
const AUTH_WRONG: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, \
                            otherwise the HELLO <proto> AUTH <user> <pass> option can be used to \
                            authenticate the client and select the RESP protocol version at the \
                            same time";

/// A wrong password, and whether it was the connection's last allowed one.
struct AuthRefused {
    text: String,
    close: bool,
}

impl<S: Storage> Node<S> {
    /// Where INFO's server section comes from; the driver sets it once.
    pub fn set_resp_info(&mut self, info: RespServerInfo) {
        self.resp_info = info;
    }

    /// Answers a command that needs nothing of the store.
    pub(super) fn resp_local(&mut self, conn: ConnId, req: Request<'_>) {
        let reply = match req {
            Request::Ping(None) => Ok(Local::Simple("PONG".into())),
            Request::Ping(Some(m)) | Request::Echo(m) => Ok(Local::Bulk(m.to_vec())),
            Request::Select(db) => match parse_i64(db) {
                Some(0) => Ok(Local::Ok),
                Some(_) => Err("ERR DB index is out of range".to_string()),
                None => Err("ERR value is not an integer or out of range".into()),
            },
            Request::DbSize => Ok(Local::Int(self.core.state_machine().len() as i64)),
            Request::Info(section) => Ok(Local::Text(self.info_text(section))),
            Request::Command(sub) => command_reply(sub),
            Request::Client(args) => self.client_reply(conn, args),
            Request::Hello(_) => unreachable!("HELLO is answered by resp_hello"),
            Request::ConfigGet => Ok(Local::EmptyMap),
            _ => unreachable!("store commands are not local"),
        };
        self.resp_now(conn, |e, b| match reply {
            Err(text) => e.error(b, &text),
            Ok(Local::Ok) => e.ok(b),
            Ok(Local::Simple(s)) => e.simple(b, &s),
            Ok(Local::Bulk(v)) => e.bulk(b, &v),
            Ok(Local::Null) => e.null(b),
            Ok(Local::Int(n)) => e.integer(b, n),
            Ok(Local::Text(t)) => e.text(b, &t),
            Ok(Local::EmptyArray) => e.array(b, 0),
            Ok(Local::EmptyMap) => e.map(b, 0),
        });
    }

    fn client_reply(&mut self, conn: ConnId, args: Args<'_>) -> Result<Local, String> {
        let sub = args.get(0);
        let is = |s: &str| sub.eq_ignore_ascii_case(s.as_bytes());
        let r = self.resp_conn(conn).expect("a RESP connection");
        if is("SETNAME") && args.len() == 2 {
            let name = args.get(1);
            if name.iter().any(|&b| b <= b' ' || b > b'~') {
                return Err(
                    "ERR Client names cannot contain spaces, newlines or special characters."
                        .into(),
                );
            }
            r.name = (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned());
            Ok(Local::Ok)
        } else if is("GETNAME") && args.len() == 1 {
            Ok(r.name
                .clone()
                .map_or(Local::Null, |n| Local::Bulk(n.into_bytes())))
        } else if is("ID") && args.len() == 1 {
            Ok(Local::Int(conn.0 as i64))
        } else if is("SETINFO") && args.len() == 3 {
            Ok(Local::Ok)
        } else if is("INFO") && args.len() == 1 {
            Ok(Local::Text(self.client_info(conn)))
        } else {
            Err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(sub)
            ))
        }
    }

    /// CLIENT INFO's line.
    fn client_info(&mut self, conn: ConnId) -> String {
        let c = self.conns.get(&conn).expect("a RESP connection");
        let r = c.resp.as_deref().expect("a RESP connection");
        format!(
            "id={} addr={} name={} db=0 resp={} epaxos-client-id={} shard={}\n",
            conn.0,
            c.remote,
            r.name.as_deref().unwrap_or(""),
            if r.enc.resp3 { 3 } else { 2 },
            r.client,
            self.cfg.shard
        )
    }

    /// AUTH [user] password, as Redis has it (the one user is `default`):
    /// `--requirepass-file`'s password, checked in constant time; the last
    /// allowed wrong one (`AUTH_FAILURES_PER_CONNECTION_MAX`) also closes
    /// the connection after its answer.
    pub(super) fn resp_auth(&mut self, conn: ConnId, args: &Args<'_>) -> Step {
        let (user, password) = match args.len() {
            1 => (None, args.get(0)),
            _ => (Some(args.get(0)), args.get(1)),
        };
        match self.resp_password(conn, user, password) {
            Ok(()) => {
                self.resp_now(conn, |e, b| e.ok(b));
                Step::Read
            }
            Err(refused) => self.refuse_auth(conn, &refused),
        }
    }

    /// Answers a refused password; the last allowed one ends the
    /// connection after its answer.
    fn refuse_auth(&mut self, conn: ConnId, refused: &AuthRefused) -> Step {
        self.resp_now(conn, |e, b| e.error(b, &refused.text));
        if refused.close {
            Step::Close
        } else {
            Step::Read
        }
    }

    /// A password, for Redis's one user `default` when `user` is named.
    fn resp_password(
        &mut self,
        conn: ConnId,
        user: Option<&[u8]>,
        password: &[u8],
    ) -> Result<(), AuthRefused> {
        let default_user = user.is_none_or(|u| u == b"default");
        let outcome = self.try_auth(conn, if default_user { password } else { &[] });
        let refused = |text: &str, close| AuthRefused {
            text: text.to_string(),
            close,
        };
        match outcome {
            AuthOutcome::Accepted if default_user => Ok(()),
            AuthOutcome::Accepted => unreachable!("an empty password is never right"),
            AuthOutcome::NotConfigured => Err(refused(AUTH_NOT_CONFIGURED, false)),
            AuthOutcome::Wrong { close } => Err(refused(AUTH_WRONG, close)),
        }
    }

    /// HELLO [protover [AUTH user pass] [SETNAME name]].
    /// Like AUTH, the last allowed wrong password (in its AUTH option)
    /// ends the connection: nothing after it is read (`Step::Close`).
    pub(super) fn resp_hello(&mut self, conn: ConnId, args: Args<'_>) -> Step {
        match self.hello_checked(conn, args) {
            Err(refused) => self.refuse_auth(conn, &refused),
            Ok(resp3) => {
                let r = self.resp_conn(conn).expect("a RESP connection");
                if let Some(v) = resp3 {
                    r.enc.resp3 = v;
                }
                let proto = if r.enc.resp3 { 3 } else { 2 };
                let id = conn.0 as i64;
                self.resp_now(conn, |e, b| {
                    e.map(b, 7);
                    e.bulk(b, b"server");
                    e.bulk(b, b"redis");
                    e.bulk(b, b"version");
                    e.bulk(b, REDIS_VERSION.as_bytes());
                    e.bulk(b, b"proto");
                    e.integer(b, proto);
                    e.bulk(b, b"id");
                    e.integer(b, id);
                    e.bulk(b, b"mode");
                    e.bulk(b, b"standalone");
                    e.bulk(b, b"role");
                    e.bulk(b, b"master");
                    e.bulk(b, b"modules");
                    e.array(b, 0);
                });
                Step::Read
            }
        }
    }

    /// HELLO's arguments checked: the protocol asked for, if any.
    fn hello_checked(&mut self, conn: ConnId, args: Args<'_>) -> Result<Option<bool>, AuthRefused> {
        let error = |text: &str| AuthRefused {
            text: text.to_string(),
            close: false,
        };
        let authed = args
            .len()
            .checked_sub(2)
            .and_then(|last| (1..last).find(|&i| args.get(i).eq_ignore_ascii_case(b"AUTH")));
        if !self.is_authenticated(conn) && authed.is_none() {
            return Err(error(HELLO_NOAUTH));
        }
        if args.is_empty() {
            return Ok(None);
        }
        let resp3 = match parse_i64(args.get(0)) {
            Some(2) => false,
            Some(3) => true,
            Some(_) => return Err(error("NOPROTO unsupported protocol version")),
            None => {
                return Err(error(
                    "ERR Protocol version is not an integer or out of range",
                ))
            }
        };
        let mut i = 1;
        while i < args.len() {
            let opt = args.get(i);
            if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
                self.resp_password(conn, Some(args.get(i + 1)), args.get(i + 2))?;
                i += 3;
            } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() {
                let name = String::from_utf8_lossy(args.get(i + 1)).into_owned();
                self.resp_conn(conn).expect("a RESP connection").name = Some(name);
                i += 2;
            } else {
                return Err(error(&format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(opt)
                )));
            }
        }
        Ok(Some(resp3))
    }

    /// INFO: the sections asked for (all by default).
    fn info_text(&self, section: Option<&[u8]>) -> String {
        let want = |name: &str| match section {
            None => true,
            Some(s) => {
                s.eq_ignore_ascii_case(name.as_bytes())
                    || [&b"all"[..], b"default", b"everything"]
                        .iter()
                        .any(|a| s.eq_ignore_ascii_case(a))
                    || (name == "replication" && s.eq_ignore_ascii_case(b"cluster"))
            }
        };
        let info = self.admin_info();
        let mut t = String::new();
        if want("server") {
            let _ = write!(
                t,
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nepaxos_fast_version:{}\r\n\
                 redis_mode:standalone\r\nprocess_id:{}\r\ntcp_port:{}\r\n\
                 uptime_in_seconds:{}\r\nshard:{}\r\nshards:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                self.resp_info.process_id,
                self.resp_info.tcp_port,
                self.resp_clock_ns / 1_000_000_000,
                self.cfg.shard,
                self.cfg.shards
            );
        }
        if want("clients") {
            let _ = write!(t, "# Clients\r\nconnected_clients:{}\r\n\r\n", self.clients);
        }
        if want("replication") {
            let _ = write!(
                t,
                "# Replication\r\nrole:master\r\nreplica_id:{}\r\nreplicas:{}\r\n\
                 links_up:{}\r\nlog_failed:{}\r\n\r\n",
                info.replica, info.replicas, info.peers_connected, info.log_failed
            );
        }
        if want("stats") {
            t.push_str("# Stats\r\n");
            let rows: [(&str, u64); 14] = [
                ("batches", info.batches.get()),
                ("batched_commands", info.batched_commands.get()),
                ("fast_commits", info.fast_commits.get()),
                ("slow_commits", info.slow_commits.get()),
                ("executed_commands", info.executed_commands.get()),
                ("retransmits", info.retransmits.get()),
                ("recoveries", info.recoveries.get()),
                ("recovered_noops", info.recovered_noops.get()),
                ("forwarded_out", info.forwarded_out.get()),
                ("forwarded_in", info.forwarded_in.get()),
                ("bad_frames", info.bad_frames.get()),
                ("instances_in_memory", info.instances_in_memory.get()),
                ("sessions", info.sessions.get()),
                ("sessions_expired", info.sessions_expired.get()),
            ];
            for (name, v) in rows {
                let _ = write!(t, "{name}:{v}\r\n");
            }
            t.push_str("\r\n");
        }
        if want("keyspace") {
            let _ = write!(
                t,
                "# Keyspace\r\ndb0:keys={},expires=0,avg_ttl=0\r\n",
                info.keys.get()
            );
        }
        t
    }
}

/// A local reply, before it is encoded.
enum Local {
    Ok,
    Simple(String),
    Bulk(Vec<u8>),
    Null,
    Int(i64),
    Text(String),
    EmptyArray,
    EmptyMap,
}

/// COMMAND, COMMAND COUNT, COMMAND DOCS, COMMAND INFO: enough for
/// redis-cli (which falls back to its own hints on an empty answer).
fn command_reply(sub: Option<&[u8]>) -> Result<Local, String> {
    let Some(sub) = sub else {
        return Ok(Local::EmptyArray);
    };
    let is = |s: &str| sub.eq_ignore_ascii_case(s.as_bytes());
    if is("COUNT") {
        Ok(Local::Int(COMMANDS.len() as i64))
    } else if is("DOCS") {
        Ok(Local::EmptyMap)
    } else if is("INFO") || is("LIST") {
        Ok(Local::EmptyArray)
    } else {
        Err(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        ))
    }
}
