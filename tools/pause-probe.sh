#!/usr/bin/env bash
# Pauses one of five local replicas under load and shows what it costs.
#
#   tools/pause-probe.sh BIN_DIR [VICTIM] [TARGET]
#
# BIN_DIR holds epaxos-fast, blaster and the blaster example `admin`
# (cargo build --release --workspace --bins --examples; copy them there).
# Starts five replicas (--in-memory, one shard each, --cpus none) on
# loopback, drives replica TARGET (default 0) alone with blaster at RATE
# requests/s (default 20000, default keys), SIGSTOPs replica VICTIM (default
# 1; give TARGET to stop the one the clients talk to) at PAUSE_AT seconds
# (default 8) for PAUSE_S seconds (default 5), SIGCONTs it, and prints:
# blaster's per-second lines (each second's answers, latency from the
# intended send time: a request sent during the pause counts in the second
# it is answered), which seconds the pause covered, every replica's VmRSS
# before, right after and 10 s after the pause, and their counters
# (retransmits, recoveries, dropped peer messages, instances in memory)
# before the pause and at the end. Bounded: blaster runs DURATION seconds
# (default 28); everything started is killed on exit or Ctrl-C.
set -euo pipefail

BIN=${1:?usage: pause-probe.sh BIN_DIR [VICTIM] [TARGET]}
VICTIM=${2:-1}
TARGET=${3:-0}
RATE=${RATE:-20000}
PAUSE_AT=${PAUSE_AT:-8}
PAUSE_S=${PAUSE_S:-5}
DURATION=${DURATION:-28}
OUT=$(mktemp -d /tmp/pause-probe.XXXXXX)
BASE=$((20000 + ($$ % 400) * 100))

pids=()
bpid=
cleanup() {
    [ -n "$bpid" ] && kill "$bpid" 2>/dev/null || true
    for p in "${pids[@]}"; do
        kill -CONT "$p" 2>/dev/null || true
        kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

addrs=()
for i in 0 1 2 3 4; do addrs+=("127.0.0.1:$((BASE + i * 10))"); done
peers=$(IFS=,; echo "${addrs[*]}")
for i in 0 1 2 3 4; do
    "$BIN/epaxos-fast" --id "$i" --peers "$peers" --in-memory --cpus none \
        --log-level warn 2>"$OUT/replica-$i.log" &
    pids+=($!)
done

rss() { # VmRSS of every replica, MB
    local line="$1:"
    for p in "${pids[@]}"; do
        line+=" $(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$p/status" 2>/dev/null || echo '?')"
    done
    echo "$line MB (replicas 0..4)"
}
cpu() { # user + system clock ticks of all replicas together
    local t=0
    for p in "${pids[@]}"; do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
counters() { echo "counters $1:"; "$BIN/admin" "${addrs[@]}" | sed 's/^/  /'; }

sleep 2 # the replicas connect to each other (blaster waits for them too)
t0=$(date +%s.%N)
"$BIN/blaster" --targets "${addrs[$TARGET]}" --rate "$RATE" --duration "$DURATION" \
    --warmup 1 >"$OUT/blaster.out" 2>"$OUT/blaster.err" &
bpid=$!
at() { sleep "$(echo "$1 - ($(date +%s.%N) - $t0)" | bc)"; }

at "$((PAUSE_AT - 1))"
counters "before the pause"
rss_before=$(rss "RSS before")
cpu_before=$(cpu); cpu_t0=$(date +%s.%N)
at "$PAUSE_AT"
kill -STOP "${pids[$VICTIM]}"
stop_s=$(echo "$(date +%s.%N) - $t0" | bc)
at "$((PAUSE_AT + PAUSE_S))"
kill -CONT "${pids[$VICTIM]}"
cont_s=$(echo "$(date +%s.%N) - $t0" | bc)
sleep 0.5
rss_after=$(rss "RSS 0.5 s after SIGCONT")
sleep 9.5
rss_later=$(rss "RSS 10 s after SIGCONT")
cpu_after=$(cpu); cpu_t1=$(date +%s.%N)
wait "$bpid" || echo "blaster exited with $?"
bpid=
counters "at the end"

echo "replica $VICTIM stopped at ${stop_s}s, continued at ${cont_s}s (blaster's clock, +-0.1 s); clients on replica $TARGET at $RATE/s"
echo "$rss_before"
echo "$rss_after"
echo "$rss_later"
echo "replicas' CPU from 1 s before the pause to 10 s after it: $(echo "scale=2; ($cpu_after - $cpu_before) / $(getconf CLK_TCK)" | bc) s in $(echo "scale=1; ($cpu_t1 - $cpu_t0) / 1" | bc) s, $(echo "scale=1; ($cpu_after - $cpu_before) * 1000000 / $(getconf CLK_TCK) / ($RATE * ($cpu_t1 - $cpu_t0))" | bc) us a command"
grep -E '^ *[0-9]+s ' "$OUT/blaster.err" || true
grep -E 'latency us|CPU us|dropped' "$OUT/blaster.out" "$OUT/blaster.err" | sed "s|$OUT/||" || true
echo "logs in $OUT"
