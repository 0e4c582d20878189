//! What a parsed RESP command asks for: its name and arguments checked
//! against the commands this front supports, or the error Redis would
//! answer. Pure; borrows the arguments.

use super::parse::Args;

/// SET's condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetIf {
    Always,
    /// NX: only if the key is absent.
    Absent,
    /// XX: only if the key is present.
    Present,
}

/// One command a client may send, its arguments checked.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    Get(&'a [u8]),
    Set {
        key: &'a [u8],
        value: &'a [u8],
        cond: SetIf,
    },
    /// DEL of these keys (one, or several on one shard).
    Del(Args<'a>),
    Exists(Args<'a>),
    /// INCR, INCRBY, DECR, DECRBY: the delta.
    IncrBy(&'a [u8], i64),
    MGet(Args<'a>),
    /// Key, value, key, value, ...
    MSet(Args<'a>),
    Ping(Option<&'a [u8]>),
    Echo(&'a [u8]),
    Select(&'a [u8]),
    DbSize,
    Info(Option<&'a [u8]>),
    /// COMMAND with its subcommand, if any.
    Command(Option<&'a [u8]>),
    Client(Args<'a>),
    /// HELLO's arguments after the name.
    Hello(Args<'a>),
    Auth(Args<'a>),
    Quit,
    /// CONFIG GET: answered with no parameters (redis-benchmark asks).
    ConfigGet,
}

/// The commands `COMMAND COUNT` reports.
pub const COMMANDS: &[&str] = &[
    "get", "set", "del", "exists", "incr", "incrby", "decr", "decrby", "mget", "mset", "ping",
    "echo", "select", "dbsize", "info", "command", "client", "hello", "auth", "quit", "config",
];

/// How Redis words an unknown command: its name and the first arguments,
/// quoted.
pub fn unknown(args: &Args<'_>) -> String {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(args.get(0))
    );
    for a in args.from(1).iter() {
        if text.len() > 256 {
            break;
        }
        text.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
    }
    text
}

fn arity(name: &[u8]) -> String {
    format!(
        "ERR wrong number of arguments for '{}' command",
        String::from_utf8_lossy(name).to_ascii_lowercase()
    )
}

/// A decimal i64 as Redis reads one (no sign on zero needed, no spaces).
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

fn set<'a>(args: &Args<'a>) -> Result<Request<'a>, String> {
    let mut cond = SetIf::Always;
    for opt in args.from(3).iter() {
        let next = if opt.eq_ignore_ascii_case(b"NX") {
            SetIf::Absent
        } else if opt.eq_ignore_ascii_case(b"XX") {
            SetIf::Present
        } else {
            return Err(format!(
                "ERR syntax error: SET option '{}' is not supported (only NX or XX)",
                String::from_utf8_lossy(opt)
            ));
        };
        if cond != SetIf::Always && cond != next {
            return Err("ERR syntax error".into());
        }
        cond = next;
    }
    Ok(Request::Set {
        key: args.get(1),
        value: args.get(2),
        cond,
    })
}

/// Reads one command; `Err` is the error reply's text. `args` is not empty.
pub fn interpret<'a>(args: Args<'a>) -> Result<Request<'a>, String> {
    let name = args.get(0);
    let n = args.len();
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    let want = |ok: bool| if ok { Ok(()) } else { Err(arity(name)) };
    let delta = |i: usize, sign: i64| {
        let d = parse_i64(args.get(i)).ok_or(NOT_INTEGER.to_string())?;
        d.checked_mul(sign).ok_or(NOT_INTEGER.to_string())
    };
    Ok(if is("GET") {
        want(n == 2)?;
        Request::Get(args.get(1))
    } else if is("SET") {
        want(n >= 3)?;
        set(&args)?
    } else if is("DEL") {
        want(n >= 2)?;
        Request::Del(args.from(1))
    } else if is("EXISTS") {
        want(n >= 2)?;
        Request::Exists(args.from(1))
    } else if is("INCR") || is("DECR") {
        want(n == 2)?;
        Request::IncrBy(args.get(1), if is("INCR") { 1 } else { -1 })
    } else if is("INCRBY") || is("DECRBY") {
        want(n == 3)?;
        Request::IncrBy(args.get(1), delta(2, if is("INCRBY") { 1 } else { -1 })?)
    } else if is("MGET") {
        want(n >= 2)?;
        Request::MGet(args.from(1))
    } else if is("MSET") {
        want(n >= 3 && n % 2 == 1)?;
        Request::MSet(args.from(1))
    } else if is("PING") {
        want(n <= 2)?;
        Request::Ping((n == 2).then(|| args.get(1)))
    } else if is("ECHO") {
        want(n == 2)?;
        Request::Echo(args.get(1))
    } else if is("SELECT") {
        want(n == 2)?;
        Request::Select(args.get(1))
    } else if is("DBSIZE") {
        want(n == 1)?;
        Request::DbSize
    } else if is("INFO") {
        Request::Info((n >= 2).then(|| args.get(1)))
    } else if is("COMMAND") {
        Request::Command((n >= 2).then(|| args.get(1)))
    } else if is("CLIENT") {
        want(n >= 2)?;
        Request::Client(args.from(1))
    } else if is("HELLO") {
        Request::Hello(args.from(1))
    } else if is("AUTH") {
        want((2..=3).contains(&n))?;
        Request::Auth(args.from(1))
    } else if is("QUIT") {
        Request::Quit
    } else if is("CONFIG") && n >= 2 && args.get(1).eq_ignore_ascii_case(b"GET") {
        Request::ConfigGet
    } else {
        return Err(unknown(&args));
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse::Parser;
    use super::*;

    fn with<R>(line: &str, f: impl FnOnce(Result<Request<'_>, String>) -> R) -> R {
        let bytes = format!("{line}\r\n").into_bytes();
        let mut p = Parser::new();
        p.next(&bytes).unwrap().unwrap();
        f(interpret(p.args(&bytes)))
    }

    #[test]
    fn commands_are_read_case_blind() {
        with("set k v", |r| {
            assert!(matches!(
                r,
                Ok(Request::Set {
                    key: b"k",
                    value: b"v",
                    cond: SetIf::Always
                })
            ))
        });
        with("SET k v nx", |r| {
            assert!(matches!(
                r,
                Ok(Request::Set {
                    cond: SetIf::Absent,
                    ..
                })
            ))
        });
        with("SET k v XX", |r| {
            assert!(matches!(
                r,
                Ok(Request::Set {
                    cond: SetIf::Present,
                    ..
                })
            ))
        });
        with("decrby k 5", |r| {
            assert!(matches!(r, Ok(Request::IncrBy(b"k", -5))))
        });
        with("incr k", |r| {
            assert!(matches!(r, Ok(Request::IncrBy(b"k", 1))))
        });
        with("mget a b c", |r| {
            assert!(matches!(r, Ok(Request::MGet(a)) if a.len() == 3))
        });
    }

    #[test]
    fn unsupported_options_and_arities_are_refused() {
        with("SET k v EX 10", |r| {
            let e = r.unwrap_err();
            assert!(
                e.starts_with("ERR syntax error") && e.contains("'EX'"),
                "{e}"
            )
        });
        with("SET k v NX XX", |r| {
            assert_eq!(r.unwrap_err(), "ERR syntax error")
        });
        with("GET", |r| {
            assert_eq!(
                r.unwrap_err(),
                "ERR wrong number of arguments for 'get' command"
            )
        });
        with("MSET a 1 b", |r| assert!(r.is_err()));
        with("INCRBY k x", |r| {
            assert_eq!(
                r.unwrap_err(),
                "ERR value is not an integer or out of range"
            )
        });
        with("DECRBY k -9223372036854775808", |r| assert!(r.is_err()));
        with("FLUSHALL now", |r| {
            assert_eq!(
                r.unwrap_err(),
                "ERR unknown command 'FLUSHALL', with args beginning with: 'now' "
            )
        });
    }
}
