//! A second opinion on blaster's open-loop latency: the same schedule (each
//! connection's requests due at evenly interleaved instants) driven by plain
//! blocking sockets, one thread per connection, through the crate's client
//! library instead of an event loop. If blaster and the probe read alike against
//! the same replicas, blaster's event loop is not what they measure.
//!
//! `cargo run --release -p blaster --example probe -- ADDR CONNECTIONS RATE SECONDS`
//! ADDR is a replica's base address (shard 0, cluster id 1, the default); RATE is ops/s over
//! all connections; one request is in flight per connection, so a rate the
//! replica cannot answer in time shows up as lateness, which counts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use epaxos_fast::client::Connection;
use epaxos_fast::command::Op;
use hdrhistogram::Histogram;

fn arg<T: std::str::FromStr>(i: usize, name: &str) -> T {
    let raw = std::env::args().nth(i).unwrap_or_else(|| {
        eprintln!("usage: probe ADDR CONNECTIONS RATE SECONDS (missing {name})");
        std::process::exit(2)
    });
    raw.parse().unwrap_or_else(|_| {
        eprintln!("probe: bad {name} {raw:?}");
        std::process::exit(2)
    })
}

fn main() {
    let addr: SocketAddr = arg(1, "ADDR");
    let connections: usize = arg(2, "CONNECTIONS");
    let total: f64 = arg(3, "RATE");
    let seconds: f64 = arg(4, "SECONDS");
    if connections == 0 || total.is_nan() || total <= 0.0 || seconds.is_nan() || seconds <= 0.0 {
        eprintln!("probe: CONNECTIONS, RATE and SECONDS must be positive");
        std::process::exit(2);
    }
    let rate = total / connections as f64;
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Connection::connect(addr, 0, 1, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("probe: connect {addr}: {e}"));
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                    .expect("histogram bounds");
                let phase = i as f64 / total;
                for k in 0u64.. {
                    let due = start + Duration::from_secs_f64(phase + k as f64 / rate);
                    if due >= end {
                        break;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let key = format!("probe{i}-{}", k % 1000);
                    c.call(Op::Put, key.as_bytes(), b"0123456789abcdef")
                        .unwrap_or_else(|e| panic!("probe: {e}"));
                    hist.saturating_record(due.elapsed().as_nanos().max(1) as u64);
                }
                hist
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    for t in threads {
        all.add(t.join().expect("probe thread"))
            .expect("same bounds");
    }
    let us = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "probe: {} ops over {connections} connections at {total} ops/s: \
         p50 {:.1} us  p90 {:.1} us  p99 {:.1} us",
        all.len(),
        us(0.5),
        us(0.9),
        us(0.99)
    );
}
