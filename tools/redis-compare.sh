#!/usr/bin/env bash
# The price of consensus, in Redis's own yardstick: redis-benchmark against
# Debian's redis-server on one core, one epaxos-fast replica, and five
# epaxos-fast replicas on loopback, in one sitting.
#
#   tools/redis-compare.sh BIN_DIR
#
# BIN_DIR holds a release epaxos-fast (cargo build --release; copy it
# there). Needs redis-server and redis-benchmark (apt-get install
# redis-server redis-tools). Each system gets the same command:
#
#   redis-benchmark -t set,get -n N -P 32 -c 50 -r 1000000 -q
#
# with N=${N:-2000000}. Rows, in this order, ROUNDS times (default 1):
#   redis          redis-server on CPU 0, Debian's defaults (no AOF)
#   redis-aof      redis-server on CPU 0, --appendonly yes --appendfsync always
#   one replica    epaxos-fast --cores 1, its durable log (fsync before answers)
#   five replicas  five epaxos-fast --cores 1 on loopback, durable logs,
#                  redis-benchmark talking to replica 0
# and, for each, the CPU the servers used per request (from /proc), which is
# what carries over to real hosts: here everything shares this machine's CPUs.
# Bounded: each redis-benchmark run is killed after LIMIT_S (default 300) s;
# everything started is killed on exit or Ctrl-C; data dirs are temporary.
set -euo pipefail

BIN=${1:?usage: redis-compare.sh BIN_DIR}
N=${N:-2000000}
ROUNDS=${ROUNDS:-1}
LIMIT_S=${LIMIT_S:-300}
OUT=$(mktemp -d /tmp/redis-compare.XXXXXX)
BASE=$((21000 + ($$ % 300) * 100))
for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "redis-compare: $tool not found (apt-get install redis-server redis-tools)" >&2; exit 2; }
done

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ticks() { # user + system clock ticks of the given pids together
    local t=0
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    echo "$t"
}

wait_ping() { # PORT: until the server answers PING (at most 20 s)
    for _ in $(seq 200); do
        [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    echo "redis-compare: nothing answers PING on port $1; logs in $OUT" >&2
    exit 1
}

bench() { # NAME PORT PIDS...: one redis-benchmark run, its lines and the servers' CPU
    local name=$1 port=$2
    shift 2
    local t0 c0 t1 c1
    c0=$(ticks "$@"); t0=$(date +%s.%N)
    timeout "$LIMIT_S" redis-benchmark -p "$port" -t set,get -n "$N" -P 32 -c 50 -r 1000000 -q \
        >"$OUT/$name.txt" 2>&1 || echo "redis-benchmark ($name) exited with $?" >>"$OUT/$name.txt"
    c1=$(ticks "$@"); t1=$(date +%s.%N)
    tr '\r' '\n' <"$OUT/$name.txt" | grep -E 'requests per second|exited' | sed "s/^/$name: /"
    local secs cpu
    secs=$(echo "$t1 - $t0" | bc)
    cpu=$(echo "scale=2; ($c1 - $c0) / $(getconf CLK_TCK)" | bc)
    echo "$name: servers' CPU $cpu s in $secs s wall; $(echo "scale=2; ($c1 - $c0) * 1000000 / $(getconf CLK_TCK) / (2 * $N)" | bc) us a request"
}

stop_all() { # SIGTERM: a graceful stop (bounded at 5 s), so no "Killed" notices
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}

run_redis() { # NAME EXTRA_ARGS...
    local name=$1 port=$((BASE + 1))
    shift
    mkdir -p "$OUT/$name-data"
    taskset -c 0 redis-server --port "$port" --dir "$OUT/$name-data" --save '' "$@" \
        >"$OUT/$name.log" 2>&1 &
    pids+=($!)
    wait_ping "$port"
    bench "$name" "$port" "${pids[@]}"
    stop_all
}

run_replicas() { # NAME COUNT
    local name=$1 count=$2 addrs=() i
    for ((i = 0; i < count; i++)); do addrs+=("127.0.0.1:$((BASE + 10 + i * 10))"); done
    local peers
    peers=$(IFS=,; echo "${addrs[*]}")
    for ((i = 0; i < count; i++)); do
        "$BIN/epaxos-fast" --id "$i" --peers "$peers" --cores 1 --cpus none \
            --data-dir "$OUT/$name-data-$i" --resp "127.0.0.1:$((BASE + 60 + i))" \
            --log-level warn 2>"$OUT/$name-$i.log" &
        pids+=($!)
    done
    wait_ping $((BASE + 60))
    sleep 1 # the replicas' links come up
    bench "$name" $((BASE + 60)) "${pids[@]}"
    stop_all
}

echo "redis-benchmark -t set,get -n $N -P 32 -c 50 -r 1000000 -q; $(nproc) CPUs; $(redis-server --version | cut -d' ' -f1-3)"
for ((round = 1; round <= ROUNDS; round++)); do
    echo "== round $round"
    run_redis redis
    run_redis redis-aof --appendonly yes --appendfsync always
    run_replicas one-replica 1
    run_replicas five-replicas 5
done
echo "outputs in $OUT"
