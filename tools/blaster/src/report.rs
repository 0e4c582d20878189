//! Progress lines while the load runs; the summary, `.hgrm` and JSON after.

use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::load::{Tally, Workload};
use crate::Args;

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// One line per second until the measured period ends (or Ctrl-C).
pub fn progress(live: &[Arc<Mutex<Tally>>], start: Instant, w: &Workload, stop: &AtomicBool) {
    let end = start + w.warmup + w.duration;
    let mut next = start + Duration::from_secs(1);
    while Instant::now() < end && !crate::stop_requested(stop) {
        std::thread::sleep(
            next.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
        if Instant::now() < next {
            continue;
        }
        let mut second = Tally::new();
        for l in live {
            let mut l = l.lock().expect("progress lock");
            second.add(&l);
            *l = Tally::new();
        }
        let elapsed = next.duration_since(start).as_secs_f64();
        let phase = if next <= start + w.warmup {
            " (warm-up)"
        } else {
            ""
        };
        eprintln!(
            "{elapsed:5.0}s {:>10.0} ops/s  p50 {:>8.1} us  p99 {:>8.1} us  errors {}{phase}",
            second.ops as f64,
            us(second.hist.value_at_quantile(0.5)),
            us(second.hist.value_at_quantile(0.99)),
            second.errors,
        );
        next += Duration::from_secs(1);
    }
}

pub fn summary(t: &Tally, duration: Duration, args: &Args) -> Result<(), String> {
    let secs = duration.as_secs_f64();
    let h = &t.hist;
    let q = |x: f64| us(h.value_at_quantile(x));
    println!(
        "ops {}  duration {secs:.1} s  throughput {:.0} ops/s  errors {}  timeouts {}",
        t.ops,
        t.ops as f64 / secs,
        t.errors,
        t.timeouts
    );
    println!(
        "latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        us(h.max())
    );
    if args.rate.is_some() {
        println!(
            "send lag us (blaster's own delay after each request was due, included above): \
             p50 {:.1}  p99 {:.1}  max {:.1}",
            us(t.lag.value_at_quantile(0.5)),
            us(t.lag.value_at_quantile(0.99)),
            us(t.lag.max())
        );
    }
    if let Some(path) = &args.hgrm {
        std::fs::write(path, hgrm(h)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let json = format!(
            "{{\"ops\": {}, \"duration_s\": {secs}, \"throughput_ops_s\": {:.1}, \
             \"p50_us\": {:.1}, \"p90_us\": {:.1}, \"p99_us\": {:.1}, \"p999_us\": {:.1}, \
             \"max_us\": {:.1}, \"errors\": {}, \"timeouts\": {}}}\n",
            t.ops,
            t.ops as f64 / secs,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            us(h.max()),
            t.errors,
            t.timeouts
        );
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// HdrHistogram's percentile distribution text, values in microseconds,
/// five steps per halving of the distance to 100%.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let p = v.quantile_iterated_to();
        let inv = if p < 1.0 {
            format!("{:14.2}", 1.0 / (1.0 - p))
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{:12.3} {:14.12} {:10} {inv}",
            us(v.value_iterated_to()),
            p,
            total
        );
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        us(h.max()),
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    s
}

/// One line per shard of every target: how it batched and committed.
pub fn replica_counters(targets: &[std::net::SocketAddr], shards: u8, cluster_id: u64) {
    for (r, &addr) in targets.iter().enumerate() {
        for s in 0..shards {
            let info = epaxos_fast::client::Connection::connect(
                addr,
                s,
                cluster_id,
                Duration::from_secs(2),
            )
            .and_then(|mut c| c.admin());
            match info {
                Ok(i) => eprintln!(
                    "replica {r} shard {s}: {} batches of {:.1} commands, {} fast / {} slow commits, \
                     {} recoveries, {} bad frames, {} MB in / {} MB out",
                    i.batches.get(),
                    i.batched_commands.get() as f64 / i.batches.get().max(1) as f64,
                    i.fast_commits.get(),
                    i.slow_commits.get(),
                    i.recoveries.get(),
                    i.bad_frames.get(),
                    i.bytes_in.get() >> 20,
                    i.bytes_out.get() >> 20,
                ),
                Err(e) => eprintln!("replica {r} shard {s}: no counters: {e}"),
            }
        }
    }
}
