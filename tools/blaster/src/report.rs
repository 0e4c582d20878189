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

/// One line per second until the measured period ends (or Ctrl-C): the
/// requests answered in that second, each with its latency from its
/// intended send time (so a request sent during a stall counts, whole, in
/// the second it is answered). Prints a line a second until the measured window ends; returns the CPU
/// sample taken when the warm-up ended (`pids`: the local replicas).
pub fn progress(
    live: &[Arc<Mutex<Tally>>],
    start: Instant,
    w: &Workload,
    stop: &AtomicBool,
    pids: &[u32],
) -> crate::cpu::Sample {
    let end = start + w.warmup + w.duration;
    let warm_end = start + w.warmup;
    let mut measured_from = None;
    let mut next = start + Duration::from_secs(1);
    while Instant::now() < end && !crate::stop_requested(stop) {
        let target = if measured_from.is_none() {
            next.min(warm_end)
        } else {
            next
        };
        std::thread::sleep(
            target
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
        if measured_from.is_none() && Instant::now() >= warm_end {
            measured_from = Some(crate::cpu::sample(pids));
        }
        if Instant::now() < next {
            continue;
        }
        let mut second = Tally::new();
        for l in live {
            let mut l = l.lock().expect("progress lock");
            second.add(&l);
            l.clear();
        }
        let elapsed = next.duration_since(start).as_secs_f64();
        let phase = if next <= start + w.warmup {
            " (warm-up)"
        } else {
            ""
        };
        eprintln!(
            "{elapsed:5.0}s {:>10.0} ops/s  p50 {:>8.1} us  p99 {:>8.1} us  max {:>8.1} us  errors {}{phase}",
            second.ops as f64,
            us(second.hist.value_at_quantile(0.5)),
            us(second.hist.value_at_quantile(0.99)),
            us(second.hist.max()),
            second.errors,
        );
        next += Duration::from_secs(1);
    }
    measured_from.unwrap_or_else(|| crate::cpu::sample(pids))
}

/// The run's summary; `faults`: the nemesis's kills and restarts, if it ran.
pub fn summary(
    t: &Tally,
    duration: Duration,
    args: &Args,
    faults: Option<(u64, u64)>,
    cpu: (Option<f64>, f64),
) -> Result<(), String> {
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
    if t.failed > 0 {
        println!(
            "failed connections {} (their errors are above; {} requests were in flight on them, \
             not counted as ops, errors or timeouts)",
            t.failed, t.lost_in_flight
        );
    }
    if let Some((kills, restarts)) = faults {
        println!(
            "nemesis: {kills} kills, {restarts} restarts; {} reconnects, {} requests sent again \
             after them, {} after Overloaded",
            t.reconnects, t.resent, t.retried
        );
    }
    println!(
        "latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        us(h.max())
    );
    let (replica_cpu, blaster_cpu) = cpu;
    match replica_cpu {
        Some(r) => println!(
            "CPU us per command (user + system, measured window): replicas {r:.1}  blaster {blaster_cpu:.1}"
        ),
        None => println!("CPU us per command (user + system, measured window): blaster {blaster_cpu:.1}"),
    }
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
    if let Some(path) = &args.plot {
        let title = format!(
            "latency by percentile: {} ops in {secs:.0} s, {:.0} ops/s",
            t.ops,
            t.ops as f64 / secs
        );
        std::fs::write(path, plot_svg(h, &title))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let json = format!(
            "{{\"ops\": {}, \"duration_s\": {secs}, \"throughput_ops_s\": {:.1}, \
             \"p50_us\": {:.1}, \"p90_us\": {:.1}, \"p99_us\": {:.1}, \"p999_us\": {:.1}, \
             \"max_us\": {:.1}, \"errors\": {}, \"timeouts\": {}, \
             \"reconnects\": {}, \"resent\": {}, \"retried\": {}, \
             \"failed_connections\": {}, \"lost_in_flight\": {}, \
             \"replica_cpu_us_per_op\": {}, \"blaster_cpu_us_per_op\": {:.2}}}\n",
            t.ops,
            t.ops as f64 / secs,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            us(h.max()),
            t.errors,
            t.timeouts,
            t.reconnects,
            t.resent,
            t.retried,
            t.failed,
            t.lost_in_flight,
            replica_cpu.map_or("null".to_string(), |r| format!("{r:.2}")),
            blaster_cpu
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
    let (mut frames, mut bytes, mut commands) = (0u64, 0u64, 0u64);
    for (r, &addr) in targets.iter().enumerate() {
        for s in 0..shards {
            let info = crate::cluster::connect(addr, s, cluster_id, Duration::from_secs(2))
                .and_then(|mut c| c.admin());
            match info {
                Ok(i) => {
                    frames += i.frames_out.get();
                    bytes += i.bytes_out.get();
                    commands += i.batched_commands.get();
                    eprintln!(
                    "replica {r} shard {s}: {} batches of {:.1} commands, {} fast / {} slow commits, \
                     {} recoveries, {} bad frames, {} peer messages dropped, {} MB in / {} MB out, \
                     {} keys stored ({} MB by the store's account), {} in the conflict index \
                     ({} forgotten), {} client sessions ({} expired){}",
                    i.batches.get(),
                    i.batched_commands.get() as f64 / i.batches.get().max(1) as f64,
                    i.fast_commits.get(),
                    i.slow_commits.get(),
                    i.recoveries.get(),
                    i.bad_frames.get(),
                    i.dropped_messages.get(),
                    i.bytes_in.get() >> 20,
                    i.bytes_out.get() >> 20,
                    i.keys.get(),
                    i.kv_bytes.get() >> 20,
                    i.indexed_keys.get(),
                    i.keys_forgotten.get(),
                    i.sessions.get(),
                    i.sessions_expired.get(),
                    log_counters(&i),
                    )
                }
                Err(e) => eprintln!("replica {r} shard {s}: no counters: {e}"),
            }
        }
    }
    if commands > 0 {
        // Lifetime counters (warm-up and drain included) over every command
        // a leader batched: what one command costs the cluster on the wire.
        eprintln!(
            "replicas sent {:.1} frames to peers and {:.0} bytes in all (replies included) per command",
            frames as f64 / commands as f64,
            bytes as f64 / commands as f64
        );
    }
}

/// The log's part of a shard's counters line; empty without a log.
fn log_counters(i: &epaxos_fast::wire::client::AdminInfo) -> String {
    let fsyncs = i.fsyncs.get();
    if fsyncs == 0 {
        return String::new();
    }
    format!(
        ", {fsyncs} fsyncs of {:.1} records / {:.0} bytes, fsync p50 {} us p99 {} us max {} us{}",
        i.synced_records.get() as f64 / fsyncs as f64,
        i.synced_bytes.get() as f64 / fsyncs as f64,
        i.fsync_p50_us.get(),
        i.fsync_p99_us.get(),
        i.fsync_max_us.get(),
        if i.log_failed != 0 {
            ", LOG FAILED"
        } else {
            ""
        },
    )
}

/// A latency-by-percentile chart as a self-contained SVG: x is the
/// percentile on HdrHistogram's usual log scale (1/(1-p): 0, 90, 99, 99.9,
/// ...), y the latency in microseconds on a log scale.
pub fn plot_svg(h: &Histogram<u64>, title: &str) -> String {
    let (w, ht, left, right, top, bottom) = (800.0, 480.0, 70.0, 20.0, 40.0, 50.0);
    let points: Vec<(f64, f64)> = h
        .iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            let x = (1.0 / (1.0 - v.quantile_iterated_to())).log10();
            (x, us(v.value_iterated_to()).max(1.0).log10())
        })
        .collect();
    let x_max = points
        .iter()
        .map(|p| p.0)
        .fold(1.0f64, f64::max)
        .ceil()
        .max(1.0);
    let y_min = points
        .iter()
        .map(|p| p.1)
        .fold(f64::MAX, f64::min)
        .floor()
        .min(2.0);
    let y_max = points
        .iter()
        .map(|p| p.1)
        .fold(0.0f64, f64::max)
        .ceil()
        .max(y_min + 1.0);
    let sx = |x: f64| left + x / x_max * (w - left - right);
    let sy = |y: f64| ht - bottom - (y - y_min) / (y_max - y_min) * (ht - top - bottom);
    let mut s = svg_open(w, ht, title);
    for d in 0..=(x_max as i32) {
        let x = sx(f64::from(d));
        let label = match d {
            0 => "0%".to_string(),
            d => format!("{}%", 100.0 - 100.0 / 10f64.powi(d)),
        };
        let _ = writeln!(
            s,
            "<line x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{}\" stroke=\"#ddd\"/>\
             <text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            ht - bottom,
            ht - bottom + 18.0
        );
    }
    latency_axis(&mut s, (y_min as i32)..=(y_max as i32), sy, left, w - right);
    let path: Vec<String> = points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
        .collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">latency</text>\n</svg>",
        path.join(" "),
        w / 2.0,
        ht - 12.0,
        ht / 2.0,
        ht / 2.0
    );
    s
}

/// One phase of `--rates`.
pub struct Row {
    /// Requests per second asked for.
    pub rate: f64,
    pub throughput: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub errors: u64,
    pub timeouts: u64,
    /// CPU µs per command: the local replicas' (if measured), blaster's.
    pub replica_cpu: Option<f64>,
    pub blaster_cpu: f64,
}

impl Row {
    pub fn new(rate: f64, t: &Tally, measured: Duration, cpu: (Option<f64>, f64)) -> Row {
        let q = |x: f64| us(t.hist.value_at_quantile(x));
        Row {
            rate,
            throughput: t.ops as f64 / measured.as_secs_f64(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            errors: t.errors,
            timeouts: t.timeouts,
            replica_cpu: cpu.0,
            blaster_cpu: cpu.1,
        }
    }
}

/// The `--rates` table, and its JSON and plot if asked for.
pub fn rates(rows: &[Row], args: &Args) -> Result<(), String> {
    println!(
        "{:>10} {:>11} {:>10} {:>10} {:>10} {:>17} {:>17}",
        "rate/s", "ops/s", "p50 us", "p99 us", "p99.9 us", "replica CPU us/op", "blaster CPU us/op"
    );
    for r in rows {
        let replica = r.replica_cpu.map_or("-".to_string(), |c| format!("{c:.1}"));
        println!(
            "{:>10.0} {:>11.0} {:>10.1} {:>10.1} {:>10.1} {:>17} {:>17.1}{}",
            r.rate,
            r.throughput,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            replica,
            r.blaster_cpu,
            if r.errors + r.timeouts > 0 {
                format!("  errors {} timeouts {}", r.errors, r.timeouts)
            } else {
                String::new()
            }
        );
    }
    if let Some(path) = &args.json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"rate\": {:.1}, \"throughput_ops_s\": {:.1}, \"p50_us\": {:.1}, \
                     \"p99_us\": {:.1}, \"p999_us\": {:.1}, \"errors\": {}, \"timeouts\": {}, \
                     \"replica_cpu_us_per_op\": {}, \"blaster_cpu_us_per_op\": {:.2}}}",
                    r.rate,
                    r.throughput,
                    r.p50_us,
                    r.p99_us,
                    r.p999_us,
                    r.errors,
                    r.timeouts,
                    r.replica_cpu
                        .map_or("null".to_string(), |c| format!("{c:.2}")),
                    r.blaster_cpu
                )
            })
            .collect();
        let json = format!("[\n  {}\n]\n", items.join(",\n  "));
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, rates_svg(rows)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Latency (p50 and p99, log scale) against throughput, one point a rate.
fn rates_svg(rows: &[Row]) -> String {
    let (w, ht, left, right, top, bottom) = (800.0, 480.0, 80.0, 20.0, 40.0, 50.0);
    let x_max = rows.iter().map(|r| r.throughput).fold(1.0f64, f64::max) * 1.05;
    let lat = |v: f64| v.max(1.0).log10();
    let y_min = rows
        .iter()
        .map(|r| lat(r.p50_us))
        .fold(f64::MAX, f64::min)
        .floor();
    let y_max = rows
        .iter()
        .map(|r| lat(r.p99_us))
        .fold(0.0f64, f64::max)
        .ceil()
        .max(y_min + 1.0);
    let sx = |x: f64| left + x / x_max * (w - left - right);
    let sy = |y: f64| ht - bottom - (y - y_min) / (y_max - y_min) * (ht - top - bottom);
    let mut s = svg_open(w, ht, "latency against throughput (p50 blue, p99 red)");
    latency_axis(&mut s, (y_min as i32)..=(y_max as i32), sy, left, w - right);
    for i in 0..=4 {
        let v = x_max * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.0}k ops/s</text>",
            sx(v),
            ht - bottom + 18.0,
            v / 1000.0
        );
    }
    for (color, pick) in [
        ("#1f77b4", (|r: &Row| r.p50_us) as fn(&Row) -> f64),
        ("#d62728", |r: &Row| r.p99_us),
    ] {
        let points: Vec<String> = rows
            .iter()
            .map(|r| format!("{:.1},{:.1}", sx(r.throughput), sy(lat(pick(r)))))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        for p in &points {
            let (x, y) = p.split_once(',').expect("x,y");
            let _ = writeln!(
                s,
                "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{color}\"/>"
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Horizontal grid lines and labels of a log-scale latency axis: one per
/// power of ten of microseconds in `decades`, at `sy(decade)`.
fn latency_axis(
    s: &mut String,
    decades: std::ops::RangeInclusive<i32>,
    sy: impl Fn(f64) -> f64,
    left: f64,
    right_edge: f64,
) {
    for e in decades {
        let y = sy(f64::from(e));
        let label = match e.max(0) as u32 {
            e if e < 3 => format!("{} us", 10u64.pow(e)),
            e if e < 6 => format!("{} ms", 10u64.pow(e - 3)),
            e => format!("{} s", 10u64.pow(e - 6)),
        };
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{y}\" x2=\"{right_edge}\" y2=\"{y}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>",
            left - 6.0,
            y + 4.0
        );
    }
}

/// An SVG document's opening: size, white background, centred title.
fn svg_open(w: f64, ht: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">{title}</text>\n",
        w / 2.0
    )
}
