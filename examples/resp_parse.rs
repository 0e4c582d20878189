//! The RESP parser on the hot path against the `redis-protocol` crate:
//! nanoseconds per pipelined `SET key value` command, each parser cutting
//! the same buffer of commands into arguments without copying them
//! (ours: spans of the buffer; the crate: `decode_range`, its zero-copy
//! decoder). Run in release:
//!
//! ```sh
//! cargo run --release --example resp_parse
//! ```

use std::hint::black_box;
use std::time::Instant;

use epaxos_fast::resp::Parser;

const COMMANDS: usize = 10_000;
const ROUNDS: usize = 200;

fn buffer() -> Vec<u8> {
    let mut b = Vec::new();
    for i in 0..COMMANDS {
        let key = format!("key:{i:012}");
        let value = "x".repeat(16);
        b.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .as_bytes(),
        );
    }
    b
}

/// The best of `ROUNDS` passes, in ns per command.
fn best(mut pass: impl FnMut() -> usize) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(pass(), COMMANDS);
            t.elapsed().as_nanos() as f64 / COMMANDS as f64
        })
        .fold(f64::MAX, f64::min)
}

fn ours(buf: &[u8], p: &mut Parser) -> usize {
    let (mut at, mut n) = (0, 0);
    while let Some(len) = p.next(&buf[at..]).expect("valid") {
        let args = p.args(&buf[at..]);
        black_box((args.get(0), args.get(1), args.get(2)));
        at += len;
        n += 1;
    }
    n
}

fn crate_range(buf: &[u8]) -> usize {
    let (mut at, mut n) = (0, 0);
    while let Some((frame, len)) =
        redis_protocol::resp2::decode::decode_range(&buf[at..]).expect("valid")
    {
        black_box(&frame);
        at += len;
        n += 1;
    }
    n
}

fn main() {
    let buf = buffer();
    let mut p = Parser::new();
    let a = best(|| ours(&buf, &mut p));
    let b = best(|| crate_range(&buf));
    println!(
        "SET key value ({} bytes a command), best of {ROUNDS} passes over {COMMANDS}:",
        buf.len() / COMMANDS
    );
    println!("  epaxos-fast resp::Parser         {a:6.1} ns/command");
    println!("  redis-protocol 6 decode_range    {b:6.1} ns/command");
}
