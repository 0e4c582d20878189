#!/usr/bin/env bash
# In memory against --durable (every local replica on a temporary
# --data-dir), alternated row by row so the host's drift hits both alike.
# Rows: closed loop at the default key count (1,000 a connection, 10,000 in
# all), closed loop at a million keys, open loop at 2k ops/s. Each run is
# `blaster --local-cluster 5 --duration SECONDS --warmup 0 [--durable] ROW`;
# CPU per command is user + system time of blaster and every replica
# (getrusage of the process tree), start-up and drain included, over the
# commands measured. Usage: tools/bench-durable.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
cargo build --release --bin epaxos-fast >&2
cargo build --release -p blaster >&2
b=target/release/blaster
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
one() {
    /usr/bin/time -o "$tmp/time" -f "%U %S" timeout $((secs + 60)) \
        "$b" --duration "$secs" --warmup 0 --json "$tmp/run.json" "$@" >/dev/null 2>&1 || true
    [[ -s "$tmp/run.json" ]] || { echo "no summary (blaster failed)"; return; }
    python3 - "$tmp/run.json" "$tmp/time" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
u, s = map(float, open(sys.argv[2]).read().split()[-2:])
print("%9.0f ops/s  p50 %6.2f ms  p99 %7.2f ms  CPU %6.1f us/op  errors %d timeouts %d" % (
    j["throughput_ops_s"], j["p50_us"] / 1000, j["p99_us"] / 1000,
    (u + s) * 1e6 / max(j["ops"], 1), j["errors"], j["timeouts"]))
PY
}
for row in "--connections 10 --outstanding 800" \
           "--connections 10 --outstanding 800 --keys 100000" \
           "--connections 10 --rate 2000"; do
    for d in "" --durable --durable ""; do
        printf '%-50s %-9s ' "$row" "${d:-memory}"
        # shellcheck disable=SC2086
        one --local-cluster 5 $d $row
        sleep 1
    done
done
