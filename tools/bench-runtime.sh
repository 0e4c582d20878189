#!/usr/bin/env bash
# Runs the runtime's headline measurements back to back on this machine, so
# that the figures compare within one run (the machine is shared and noisy).
# Every run is a local cluster started, loaded and stopped by blaster; each is
# bounded by --duration (plus start-up and a 2 s drain). Usage:
#   tools/bench-runtime.sh [SECONDS]        (default 10 per run)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
cargo build --release --bin epaxos-fast >&2
cargo build --release -p blaster >&2
b=target/release/blaster
run() {
    local name="$1"; shift
    local out rc=0
    # blaster exits 1 on errors or timeouts: report that row, go on.
    out=$(timeout $((secs + 60)) "$b" --duration "$secs" "$@" 2>/dev/null) || rc=$?
    printf '%-44s %s\n' "$name" "$(echo "$out" | tr '\n' ' ')"
    [[ $rc -eq 0 ]] || printf '    (blaster exited %s: errors, timeouts or a failure; rerun the command to see)\n' "$rc"
    printf '    command: blaster --duration %s %s\n' "$secs" "$*"
}
closed=(--connections 10 --outstanding 800 --keys 10)
for c in 0 2 100; do
    run "5 replicas, ${c}% conflicts, closed loop" --local-cluster 5 "${closed[@]}" --conflicts "$c"
    run "1 replica, ${c}% conflicts, closed loop"  --local-cluster 1 "${closed[@]}" --conflicts "$c"
done
run "5 replicas, 0%, 1000 keys per connection"   --local-cluster 5 --connections 10 --outstanding 800 --keys 1000
run "5 replicas, open loop 50k ops/s"            --local-cluster 5 --connections 10 --rate 50000
run "5 replicas, open loop 5k ops/s"             --local-cluster 5 --connections 10 --rate 5000
run "1 replica, open loop 50k ops/s"             --local-cluster 1 --connections 10 --rate 50000
run "5 replicas, 1 request in flight"            --local-cluster 5 --connections 1 --outstanding 1
