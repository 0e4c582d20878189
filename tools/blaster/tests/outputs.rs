//! A short run against local clusters writes the JSON summary, the `.hgrm`
//! table and the SVG chart, and the unreplicated baseline works too.

mod common;

/// Runs blaster and insists that it succeeds; what it printed.
fn run(args: &[&str]) -> String {
    succeeded(common::blaster(args))
}

/// `common::short_local_run`, insisting that it succeeds.
fn short_run(replicas: &str, extra: &[&str]) -> String {
    succeeded(common::short_local_run(replicas, extra))
}

fn succeeded((ok, text): (bool, String)) -> String {
    assert!(ok, "blaster failed:\n{text}");
    text
}

#[test]
fn json_hgrm_and_plot_are_written() {
    let dir = std::env::temp_dir().join(format!("blaster-outputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, hgrm, svg) = (
        dir.join("out.json"),
        dir.join("out.hgrm"),
        dir.join("out.svg"),
    );
    run(&[
        "--local-cluster",
        "5",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--connections",
        "5",
        "--outstanding",
        "8",
        "--json",
        json.to_str().unwrap(),
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let json = std::fs::read_to_string(json).unwrap();
    for key in [
        "ops",
        "duration_s",
        "throughput_ops_s",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
        "errors",
        "timeouts",
        "failed_connections",
        "lost_in_flight",
        "replica_cpu_us_per_op",
        "blaster_cpu_us_per_op",
    ] {
        assert!(
            json.contains(&format!("\"{key}\":")),
            "{key} missing from {json}"
        );
    }
    assert!(
        json.contains("\"errors\": 0,")
            && json.contains("\"timeouts\": 0,")
            && json.contains("\"failed_connections\": 0,")
            && json.contains("\"lost_in_flight\": 0,"),
        "{json}"
    );
    // CPU per command, from /proc: the local replicas' and blaster's own,
    // both measured (a number, not null) and above zero.
    for key in ["replica_cpu_us_per_op", "blaster_cpu_us_per_op"] {
        let at = json.find(&format!("\"{key}\": ")).unwrap() + key.len() + 4;
        let value: String = json[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("{key}: {json}"));
        assert!(v > 0.0, "{key}: {json}");
    }
    let hgrm = std::fs::read_to_string(hgrm).unwrap();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(hgrm.contains("#[Max     ="), "{hgrm}");
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `--rates` runs each rate in turn against the same replicas: one table
/// row, one JSON object and one plotted point per rate, each with the
/// replicas' and blaster's CPU per command.
#[test]
fn rates_sweep_one_cluster_and_print_a_row_per_rate() {
    let dir = std::env::temp_dir().join(format!("blaster-rates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("rates.json"), dir.join("rates.svg"));
    let out = run(&[
        "--local-cluster",
        "3",
        "--in-memory",
        "--connections",
        "3",
        "--rates",
        "300,900",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    // One start of the cluster, two phases.
    assert_eq!(out.matches("started 3 local replicas").count(), 1, "{out}");
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("rate/s"))
        .skip(1)
        .take(2)
        .collect();
    assert_eq!(table.len(), 2, "{out}");
    for (line, rate) in table.iter().zip(["300", "900"]) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], rate, "{line}");
        let ops: f64 = cols[1].parse().unwrap();
        let want: f64 = rate.parse().unwrap();
        assert!((ops - want).abs() < want * 0.2, "{line}");
        let replica_cpu: f64 = cols[5].parse().unwrap();
        assert!(replica_cpu > 0.0, "{line}");
    }
    let json = std::fs::read_to_string(json).unwrap();
    assert_eq!(json.matches("\"rate\": ").count(), 2, "{json}");
    assert!(
        json.trim_start().starts_with('[') && !json.contains("null"),
        "{json}"
    );
    let svg = std::fs::read_to_string(svg).unwrap();
    assert_eq!(svg.matches("<circle").count(), 4, "two rates, p50 and p99");
    let _ = std::fs::remove_dir_all(dir);
}

/// `--preload` writes every key of every connection once before the load,
/// each acknowledged `Done` (it fails otherwise).
#[test]
fn preload_writes_every_key_once_before_the_load() {
    let out = run(&[
        "--local-cluster",
        "1",
        "--in-memory",
        "--preload",
        "--connections",
        "3",
        "--keys",
        "700",
        "--rate",
        "100",
        "--duration",
        "0.5",
        "--warmup",
        "0",
    ]);
    assert!(out.contains("preloaded 2100 keys"), "{out}");
}

#[test]
fn one_unreplicated_replica_is_the_baseline() {
    let out = run(&["--local-cluster", "1", "--duration", "1", "--warmup", "0.2"]);
    assert!(out.contains("errors 0  timeouts 0"), "{out}");
}

/// `--history` writes one JSON object per operation, every one answered.
#[test]
fn history_has_one_line_per_operation() {
    let path = std::env::temp_dir().join(format!("blaster-history-{}.jsonl", std::process::id()));
    let out = short_run(
        "3",
        &[
            "--connections",
            "2",
            "--rate",
            "300",
            "--reads",
            "50",
            "--zipf",
            "0.99",
            "--keys",
            "50",
            "--history",
            path.to_str().unwrap(),
        ],
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 100, "{} lines\n{out}", lines.len());
    for l in &lines {
        assert!(l.starts_with("{\"client\": ") && l.ends_with('}'), "{l}");
        assert!(
            l.contains("\"invoke_ns\": ") && !l.contains("\"timeout\""),
            "{l}"
        );
        assert!(
            l.contains("\"op\": \"put\"") || l.contains("\"op\": \"get\""),
            "{l}"
        );
    }
    let _ = std::fs::remove_file(path);
}

/// A connection's window of large values is more than one request frame may
/// carry: blaster splits it over several frames (it used to panic).
#[test]
fn large_values_are_split_over_request_frames() {
    let out = short_run(
        "1",
        &[
            "--connections",
            "1",
            "--outstanding",
            "64",
            "--value-size",
            "200000",
        ],
    );
    assert!(out.contains("errors 0  timeouts 0"), "{out}");
}

/// Flag values blaster cannot honour are refused before anything starts.
#[test]
fn impossible_flag_values_exit_2() {
    for (args, says) in [
        (&["--local-cluster", "0"][..], "--local-cluster takes 1 to"),
        (
            &["--local-cluster", "1", "--outstanding", "5000"][..],
            "--outstanding takes 1 to",
        ),
        (
            &["--local-cluster", "1", "--rates", "1000,0"][..],
            "--rates take positive",
        ),
        (
            &["--local-cluster", "1", "--rates", "1000", "--rate", "5"][..],
            "cannot be used with",
        ),
        (
            &["--local-cluster", "1", "--preload", "--verify"][..],
            "cannot be used with",
        ),
    ] {
        let (code, err) = common::blaster_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
