//! Cutting a RESP byte stream into commands: multibulk arrays of bulk
//! strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what every client library
//! sends) and inline commands (`PING\r\n`, what telnet users and
//! `redis-cli` in some modes send).
//!
//! The parser keeps no bytes: it reads the caller's buffer and records
//! each argument as a span of it, so a command costs no allocation once
//! the span vector has grown. A command that has not fully arrived is
//! `Ok(None)`, and parsing starts again from its first byte when more
//! bytes come; that costs one pass over its header lines, never over its
//! bulk payloads (their lengths are read, not scanned).
//!
//! Every bound is checked from the header that announces it, before the
//! bytes arrive: an argument count above `RESP_ARGS_MAX`, a bulk longer
//! than `RESP_BULK_BYTES_MAX`, a command over `RESP_COMMAND_BYTES_MAX`,
//! an inline line over `RESP_INLINE_BYTES_MAX`. Each is a
//! [`ProtocolError`], after which the connection is answered
//! `-ERR Protocol error: ...` and closed, as Redis does. No input panics.

use crate::constants::{
    RESP_ARGS_MAX, RESP_BULK_BYTES_MAX, RESP_COMMAND_BYTES_MAX, RESP_INLINE_BYTES_MAX,
};

/// Longest `*N` or `$N` header line, digits and sign included.
const HEADER_LINE_BYTES_MAX: usize = 24;

/// Why the stream is not RESP; the text follows `-ERR Protocol error: `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn err<T>(why: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(why.into()))
}

/// The arguments of the last command parsed, as spans of the buffer it was
/// parsed from.
#[derive(Default, Debug)]
pub struct Parser {
    spans: Vec<(u32, u32)>,
}

/// The arguments of one command, borrowing the receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct Args<'a> {
    buf: &'a [u8],
    spans: &'a [(u32, u32)],
}

impl<'a> Args<'a> {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Argument `i` (0 is the command's name). Panics past `len`.
    pub fn get(&self, i: usize) -> &'a [u8] {
        let (a, b) = self.spans[i];
        &self.buf[a as usize..b as usize]
    }

    /// The arguments from `i` on.
    pub fn from(&self, i: usize) -> Args<'a> {
        Args {
            buf: self.buf,
            spans: &self.spans[i.min(self.spans.len())..],
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Finds `\r\n` in `buf` from `from`, looking at most `limit` bytes.
/// `Ok(None)`: not there yet; `Err`: not within the limit.
fn line_end(buf: &[u8], from: usize, limit: usize) -> Result<Option<usize>, ()> {
    let window = &buf[from..buf.len().min(from + limit + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(from + i)),
        None if window.len() >= limit + 2 => Err(()),
        None => Ok(None),
    }
}

/// A header line's number: optional `-`, then decimal digits, nothing else.
fn number(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Some(if neg { -n } else { n })
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Parses the next command at the start of `buf`: `Ok(Some(n))` if one
    /// is complete in its first `n` bytes (its arguments are then
    /// [`Parser::args`] of `buf`; an empty command, a blank line or `*0`,
    /// has none), `Ok(None)` if it has not fully arrived.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        self.spans.clear();
        match buf.first() {
            None => Ok(None),
            Some(b'*') => self.multibulk(buf),
            Some(_) => self.inline(buf),
        }
    }

    /// The arguments of the command `next` last found in `buf`.
    pub fn args<'a>(&'a self, buf: &'a [u8]) -> Args<'a> {
        Args {
            buf,
            spans: &self.spans,
        }
    }

    fn multibulk(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let Some(end) = line_end(buf, 1, HEADER_LINE_BYTES_MAX)
            .or_else(|()| err("invalid multibulk length"))?
        else {
            return Ok(None);
        };
        let count = match number(&buf[1..end]) {
            Some(n) if n <= 0 => return Ok(Some(end + 2)), // `*0`, `*-1`: nothing
            Some(n) if n as u64 <= RESP_ARGS_MAX as u64 => n as usize,
            Some(n) => {
                return err(format!(
                    "command of {n} arguments (at most {RESP_ARGS_MAX})"
                ))
            }
            None => return err("invalid multibulk length"),
        };
        let mut at = end + 2;
        for _ in 0..count {
            let Some(&first) = buf.get(at) else {
                return Ok(None);
            };
            if first != b'$' {
                return err(format!("expected '$', got '{}'", char::from(first)));
            }
            let Some(end) = line_end(buf, at + 1, HEADER_LINE_BYTES_MAX)
                .or_else(|()| err("invalid bulk length"))?
            else {
                return Ok(None);
            };
            let len = match number(&buf[at + 1..end]) {
                Some(n) if (0..=RESP_BULK_BYTES_MAX as i64).contains(&n) => n as usize,
                _ => return err("invalid bulk length"),
            };
            let start = end + 2;
            if start + len > RESP_COMMAND_BYTES_MAX {
                return err(format!("command of over {RESP_COMMAND_BYTES_MAX} bytes"));
            }
            if buf.len() < start + len + 2 {
                return Ok(None);
            }
            if &buf[start + len..start + len + 2] != b"\r\n" {
                return err("bulk string not followed by CRLF");
            }
            self.spans.push((start as u32, (start + len) as u32));
            at = start + len + 2;
        }
        Ok(Some(at))
    }

    fn inline(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let (line, consumed) = match buf
            .iter()
            .take(RESP_INLINE_BYTES_MAX + 1)
            .position(|&b| b == b'\n')
        {
            Some(i) => (&buf[..i], i + 1),
            None if buf.len() > RESP_INLINE_BYTES_MAX => return err("too big inline request"),
            None => return Ok(None),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut i = 0;
        while i < line.len() {
            if line[i].is_ascii_whitespace() {
                i += 1;
                continue;
            }
            if line[i] == b'"' || line[i] == b'\'' {
                return err("quoted inline arguments are not supported; send a multibulk array");
            }
            let start = i;
            while i < line.len() && !line[i].is_ascii_whitespace() {
                i += 1;
            }
            if self.spans.len() == RESP_ARGS_MAX {
                return err(format!("command of over {RESP_ARGS_MAX} arguments"));
            }
            self.spans.push((start as u32, i as u32));
        }
        Ok(Some(consumed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Each command's arguments.
    type Commands = Vec<Vec<Vec<u8>>>;

    fn parse_all(bytes: &[u8]) -> Result<(Commands, usize), ProtocolError> {
        let mut p = Parser::new();
        let (mut out, mut at) = (Vec::new(), 0);
        while let Some(n) = p.next(&bytes[at..])? {
            let args = p.args(&bytes[at..]).iter().map(<[u8]>::to_vec).collect();
            out.push(args);
            at += n;
        }
        Ok((out, at))
    }

    fn words(cmd: &[&str]) -> Vec<Vec<u8>> {
        cmd.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_and_inline_commands_are_cut() {
        let bytes = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n  get   k\n*0\r\n\r\n";
        let (cmds, used) = parse_all(bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            cmds,
            vec![
                words(&["SET", "k", ""]),
                words(&["PING"]),
                words(&["get", "k"]),
                vec![],
                vec![]
            ]
        );
    }

    #[test]
    fn a_binary_value_with_crlf_inside_is_one_argument() {
        let bytes = b"*2\r\n$4\r\nECHO\r\n$4\r\n\r\n\r\n\r\n";
        let (cmds, used) = parse_all(bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(cmds, vec![vec![b"ECHO".to_vec(), b"\r\n\r\n".to_vec()]]);
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete() {
        let bytes = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
        let mut p = Parser::new();
        for cut in 0..bytes.len() {
            assert_eq!(p.next(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(p.next(bytes), Ok(Some(bytes.len())));
        assert_eq!(p.args(bytes).get(2), b"value");
    }

    #[test]
    fn bounds_are_refused_from_the_header() {
        let mut p = Parser::new();
        let too_many = format!("*{}\r\n", RESP_ARGS_MAX + 1);
        assert!(p.next(too_many.as_bytes()).is_err());
        let too_long = format!("*1\r\n${}\r\n", RESP_BULK_BYTES_MAX + 1);
        assert_eq!(
            p.next(too_long.as_bytes()),
            Err(ProtocolError("invalid bulk length".into()))
        );
        let header = format!("*2\r\n${}\r\n", RESP_BULK_BYTES_MAX);
        assert_eq!(p.next(header.as_bytes()), Ok(None), "announced, not held");
        let inline = vec![b'a'; RESP_INLINE_BYTES_MAX + 1];
        assert!(p.next(&inline).is_err());
        assert_eq!(p.next(&inline[..100]), Ok(None));
        assert!(p.next(b"*1\r\n+OK\r\n").is_err());
        assert!(p.next(b"*x\r\n").is_err());
        assert!(p.next(b"*1\r\n$2\r\nabc\r\n").is_err());
        assert!(p.next(&[b'*'; 40]).is_err(), "a header line without end");
    }

    #[test]
    fn a_command_of_many_large_bulks_is_bounded_in_total() {
        let mut p = Parser::new();
        let mut bytes = format!("*{}\r\n", RESP_ARGS_MAX).into_bytes();
        let bulk = vec![b'v'; RESP_BULK_BYTES_MAX];
        let mut refused = false;
        for _ in 0..RESP_ARGS_MAX {
            bytes.extend_from_slice(format!("${}\r\n", bulk.len()).as_bytes());
            bytes.extend_from_slice(&bulk);
            bytes.extend_from_slice(b"\r\n");
            if p.next(&bytes).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused && bytes.len() <= RESP_COMMAND_BYTES_MAX + 2 * RESP_BULK_BYTES_MAX);
    }

    /// Garbage, and commands cut and mutated at random, never panic the
    /// parser, and whatever it accepts is within its bounds. Replay a
    /// failure with `RESP_FUZZ_SEED=<seed> cargo nextest run -E 'test(garbage)'`.
    #[test]
    fn garbage_never_panics_the_parser() {
        let seed = std::env::var("RESP_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_0017);
        let mut rng = Rng::new(seed);
        let good = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
        let alphabet = b"*$\r\n-0123456789 \"'abcSETGET\x00\xff";
        for round in 0..20_000 {
            let mut bytes = good.to_vec();
            let len = rng.below(80) as usize;
            match round % 3 {
                0 => {
                    bytes = (0..len)
                        .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                        .collect()
                }
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(bytes.len() as u64) as usize;
                        bytes[i] = alphabet[rng.below(alphabet.len() as u64) as usize];
                    }
                }
                _ => bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize),
            }
            let mut p = Parser::new();
            let mut at = 0;
            while let Ok(Some(n)) = p.next(&bytes[at..]) {
                assert!(n > 0 && at + n <= bytes.len(), "seed {seed} round {round}");
                let args = p.args(&bytes[at..]);
                assert!(args.iter().all(|a| a.len() <= RESP_BULK_BYTES_MAX));
                at += n;
            }
        }
    }
}
