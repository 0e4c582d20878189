#!/usr/bin/env bash
# How long a replica takes to restart from its log after about a million
# commands: three local replicas with --data-dir take a closed-loop load for
# SECONDS (default 3), are stopped, and replica 0 is started again alone;
# prints its log lines (records read, restore time) and the time from the
# process start to its shard listening. Usage: tools/restart-time.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-3}"
cargo build --release --bin epaxos-fast >&2
cargo build --release -p blaster >&2
bin=target/release
root=$(mktemp -d /tmp/restart-time-XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$root"' EXIT
peers=127.0.9.1:7100,127.0.9.1:7110,127.0.9.1:7120
start() {
    "$bin/epaxos-fast" --id "$1" --peers $peers --cpus none --cluster-id 7 \
        --data-dir "$root/r$1" --log-level info 2>>"$root/log$1" &
}
for i in 0 1 2; do start $i; done
sleep 1
"$bin/blaster" --targets $peers --cluster-id 7 --connections 6 --outstanding 500 \
    --keys 1000 --duration "$secs" --warmup 0 2>/dev/null | grep -E "^ops"
kill $(jobs -p); wait || true
echo "log of replica 0: $(du -sh "$root/r0" | cut -f1)"
: >"$root/log0"
t0=$(date +%s.%N)
start 0
until grep -q "listening;" "$root/log0"; do sleep 0.01; done
t1=$(date +%s.%N)
grep -E "records|restored" "$root/log0" | sed 's/^.*INFO //'
echo "process start to listening: $(echo "$t1 - $t0" | bc) s"
