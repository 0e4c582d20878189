#!/usr/bin/env bash
# Runs the runtime's headline measurements back to back on this machine, so
# that the figures compare within one run (the machine is shared and noisy).
# Every run is a local cluster started, loaded and stopped by blaster; each is
# bounded by --duration (plus start-up and the drain). Usage:
#   tools/bench-runtime.sh [SECONDS] [ROUNDS]   (default 10 s a run, 1 round)
#
# Part 1, durability: the same workloads on disk (the default: each local
# replica logs to a fresh directory under $TMPDIR, /tmp if unset) and
# --in-memory, alternated row by row: closed loop at the default key count
# (1,000 a connection, 10,000 in all) and at a million keys (100,000 a
# connection), and open loop at 2k ops/s. Each row gives throughput, p50,
# p99, CPU per command (user + system time of blaster and every replica, from
# getrusage of the process tree, start-up and drain included), and for the
# durable rows fsyncs per second per replica (a group commit is one O_DSYNC
# write) and commands per fsync (commands measured over one replica's group
# commits, averaged over the replicas). Before and after the rows, the median
# fdatasync of a 4 KiB overwrite in that same directory, with nothing else
# running: what the 2k ops/s row's durable p50 is compared with.
#
# Part 2, the runtime in memory: conflicts, one replica against five, open
# loop at 2k, 10k and 50k ops/s, one request in flight (--in-memory, as
# these rows have always run). Every row prints blaster's summary: latency,
# CPU per command of the replicas and of blaster (from /proc, over the
# measured window), and the frames and bytes the replicas sent per command.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
rounds="${2:-1}"
cargo build --release --bin epaxos-fast >&2
cargo build --release -p blaster >&2
b=target/release/blaster
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dir="${TMPDIR:-/tmp}"

fsync_median() {
    python3 - "$dir" <<'PY'
import os, sys, time, statistics
path = os.path.join(sys.argv[1], "bench-runtime-fsync.%d" % os.getpid())
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"\0" * (1 << 20)); os.fdatasync(fd)
lat = []
for i in range(300):
    os.pwrite(fd, b"x" * 4096, (i % 256) * 4096)
    t = time.perf_counter(); os.fdatasync(fd); lat.append(time.perf_counter() - t)
os.close(fd); os.unlink(path)
print("%.3f" % (statistics.median(lat) * 1e3))
PY
}

# One durability row: prints throughput, latency, CPU, and the log's rates.
one() {
    /usr/bin/time -o "$tmp/time" -f "%U %S" timeout $((secs + 90)) \
        "$b" --duration "$secs" --warmup 0 --json "$tmp/run.json" "$@" >/dev/null 2>"$tmp/err" || true
    [[ -s "$tmp/run.json" ]] || { echo "no summary (blaster failed: $(tail -1 "$tmp/err"))"; return; }
    python3 - "$tmp/run.json" "$tmp/time" "$tmp/err" "$secs" <<'PY'
import json, re, sys
j = json.load(open(sys.argv[1]))
u, s = map(float, open(sys.argv[2]).read().split()[-2:])
secs = float(sys.argv[4])
line = "%9.0f ops/s  p50 %6.2f ms  p99 %7.2f ms  CPU %6.1f us/op" % (
    j["throughput_ops_s"], j["p50_us"] / 1000, j["p99_us"] / 1000,
    (u + s) * 1e6 / max(j["ops"], 1))
fsyncs = [int(m) for m in re.findall(r"(\d+) fsyncs of", open(sys.argv[3]).read())]
if fsyncs:
    avg = sum(fsyncs) / len(fsyncs)
    line += "  %6.0f fsyncs/s/replica  %6.1f commands/fsync" % (avg / secs, j["ops"] / max(avg, 1))
if j["errors"] or j["timeouts"]:
    line += "  errors %d timeouts %d" % (j["errors"], j["timeouts"])
print(line)
PY
}

echo "== Part 1: on disk (default) against --in-memory; fdatasync median in $dir: $(fsync_median) ms"
for round in $(seq "$rounds"); do
    for row in "default keys (10,000), closed loop|--connections 10 --outstanding 800" \
               "1M keys, closed loop|--connections 10 --outstanding 800 --keys 100000" \
               "default keys, open loop 2k ops/s|--connections 10 --rate 2000"; do
        name="${row%%|*}"; args="${row#*|}"
        # Alternate which goes first, round by round.
        if (( round % 2 == 1 )); then order=(disk memory); else order=(memory disk); fi
        for m in "${order[@]}"; do
            flag=""; [[ $m == memory ]] && flag=--in-memory
            printf '%-38s %-7s ' "$name" "$m"
            # shellcheck disable=SC2086
            one --local-cluster 5 $flag $args
            sleep 1
        done
    done
done
echo "   fdatasync median in $dir after the rows: $(fsync_median) ms"
echo "   command: blaster --local-cluster 5 --duration $secs --warmup 0 [--in-memory] ROW"

echo "== Part 2: the runtime, --in-memory"
run() {
    local name="$1"; shift
    local out rc=0
    # blaster exits 1 on errors or timeouts: report that row, go on.
    out=$(timeout $((secs + 60)) "$b" --duration "$secs" --in-memory "$@" 2>"$tmp/err") || rc=$?
    printf '%-44s %s %s\n' "$name" "$(echo "$out" | tr '\n' ' ')" "$(grep '^replicas sent' "$tmp/err" || true)"
    [[ $rc -eq 0 ]] || printf '    (blaster exited %s: errors, timeouts or a failure; rerun the command to see)\n' "$rc"
    printf '    command: blaster --duration %s --in-memory %s\n' "$secs" "$*"
}
closed=(--connections 10 --outstanding 800 --keys 10)
for c in 0 2 100; do
    run "5 replicas, ${c}% conflicts, closed loop" --local-cluster 5 "${closed[@]}" --conflicts "$c"
    run "1 replica, ${c}% conflicts, closed loop"  --local-cluster 1 "${closed[@]}" --conflicts "$c"
done
run "5 replicas, 0%, 1000 keys per connection"   --local-cluster 5 --connections 10 --outstanding 800 --keys 1000
run "5 replicas, 0%, 1M keys, closed loop"       --local-cluster 5 --connections 10 --outstanding 800 --keys 100000
# Cost and latency by load (issue 14's rows): CPU per command of the
# replicas and of blaster over the measured window, from /proc.
run "1 replica, open loop 2k ops/s"              --local-cluster 1 --connections 10 --rate 2000
run "5 replicas, open loop 2k ops/s"             --local-cluster 5 --connections 10 --rate 2000
run "5 replicas, open loop 2k ops/s, thrifty"    --local-cluster 5 --connections 10 --rate 2000 --thrifty
run "5 replicas, open loop 10k ops/s"            --local-cluster 5 --connections 10 --rate 10000
run "5 replicas, open loop 50k ops/s"            --local-cluster 5 --connections 10 --rate 50000
run "5 replicas, open loop 50k ops/s, 1M keys"   --local-cluster 5 --connections 10 --rate 50000 --keys 100000
run "1 replica, open loop 50k ops/s"             --local-cluster 1 --connections 10 --rate 50000
run "5 replicas, 1 request in flight"            --local-cluster 5 --connections 1 --outstanding 1
