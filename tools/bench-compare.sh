#!/usr/bin/env bash
# Compares two builds row by row on this machine, alternating them so that
# the host's drift hits both alike (the machine is shared and noisy: compare
# within one run, never with a figure from another day). Each directory holds
# a `blaster` and the `epaxos-fast` it starts (blaster finds it beside itself).
#
#   tools/bench-compare.sh OLD_DIR NEW_DIR [SECONDS] [ROUNDS]
#
# e.g. build the previous commit in a worktree, copy its two release binaries
# to /tmp/old, the current ones to /tmp/new, then
#   tools/bench-compare.sh /tmp/old /tmp/new 5 2
#
# ARGS (environment) is added to every row of both builds, e.g.
# ARGS=--in-memory (blaster's local replicas are on disk by default since
# durability became the default; builds before that know no --in-memory and
# ran in memory). NEW_ARGS is added to the new build's rows only (e.g.
# NEW_ARGS=--scrape-metrics=1: its replicas serve /metrics, scraped every
# second), and ROWS, a regular expression, keeps only the rows whose name
# matches it (e.g. ROWS='^5 replicas, 0%, closed').
#
# Per row and build: throughput, p50, p99 (blaster's JSON summary) and CPU
# per command: user + system time of blaster and every replica it started
# (getrusage of the process tree, warm-up 0, so start-up and the 2 s drain
# are included), divided by the commands measured. Then NEW/OLD ratios.
set -euo pipefail
old="${1:?usage: bench-compare.sh OLD_DIR NEW_DIR [SECONDS] [ROUNDS]}"
new="${2:?usage: bench-compare.sh OLD_DIR NEW_DIR [SECONDS] [ROUNDS]}"
secs="${3:-5}"
rounds="${4:-1}"
for d in "$old" "$new"; do
    [[ -x "$d/blaster" && -x "$d/epaxos-fast" ]] || { echo "$d: needs blaster and epaxos-fast" >&2; exit 2; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One run: prints "ops/s p50_us p99_us cpu_us_per_op".
one() {
    local dir="$1"; shift
    local json="$tmp/run.json" times="$tmp/time"
    rm -f "$json"
    # blaster exits 1 on errors or timeouts: the row still counts, flagged.
    /usr/bin/time -o "$times" -f "%U %S" timeout $((secs + 60)) \
        "$dir/blaster" --duration "$secs" --warmup 0 --json "$json" ${ARGS:-} "$@" >/dev/null 2>&1 || true
    [[ -s "$json" ]] || { echo "- - - -"; return; }
    python3 - "$json" "$times" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
u, s = map(float, open(sys.argv[2]).read().split()[-2:])
ops = max(j["ops"], 1)
flag = "" if j["errors"] == 0 and j["timeouts"] == 0 else "!"
print(f'{j["throughput_ops_s"]:.0f}{flag} {j["p50_us"]:.0f} {j["p99_us"]:.0f} {(u + s) * 1e6 / ops:.1f}')
EOF
}

rows=(
    "5 replicas, 0%, closed, 100 keys|--local-cluster 5 --connections 10 --outstanding 800 --keys 10"
    "1 replica, 0%, closed, 100 keys|--local-cluster 1 --connections 10 --outstanding 800 --keys 10"
    "5 replicas, 100%, closed, 100 keys|--local-cluster 5 --connections 10 --outstanding 800 --keys 10 --conflicts 100"
    "5 replicas, 0%, closed, 10k keys (default 1000/conn)|--local-cluster 5 --connections 10 --outstanding 800"
    "5 replicas, 0%, closed, 1M keys|--local-cluster 5 --connections 10 --outstanding 800 --keys 100000"
    "5 replicas, open 5k ops/s, 10k keys|--local-cluster 5 --connections 10 --rate 5000"
    "5 replicas, open 50k ops/s, 10k keys|--local-cluster 5 --connections 10 --rate 50000"
    "5 replicas, 1 in flight, 1000 keys|--local-cluster 5 --connections 1 --outstanding 1"
)
printf '%-52s %-5s %12s %9s %9s %11s\n' row build "ops/s" "p50 us" "p99 us" "CPU us/op"
n=0
for round in $(seq "$rounds"); do
    for row in "${rows[@]}"; do
        name="${row%%|*}"; args="${row#*|}"
        [[ -z "${ROWS:-}" || "$name" =~ $ROWS ]] || continue
        # Alternate which build goes first, row by row and round by round
        # (a row after a heavy one starts on a machine still tearing down).
        if (( (n++ + round) % 2 == 0 )); then order=(old new); else order=(new old); fi
        declare -A got=()
        for b in "${order[@]}"; do
            dir=$old; extra=""
            [[ $b == new ]] && { dir=$new; extra="${NEW_ARGS:-}"; }
            # shellcheck disable=SC2086
            got[$b]=$(one "$dir" $args $extra)
            sleep 1
        done
        for b in old new; do
            read -r t p50 p99 cpu <<<"${got[$b]}"
            printf '%-52s %-5s %12s %9s %9s %11s\n' "$name" "$b" "$t" "$p50" "$p99" "$cpu"
        done
        python3 - "${got[old]}" "${got[new]}" <<'EOF'
import sys
o, n = sys.argv[1].split(), sys.argv[2].split()
def r(i):
    try:
        return f"{float(n[i].rstrip('!')) / float(o[i].rstrip('!')):.2f}"
    except (ValueError, ZeroDivisionError):
        return "-"
print(f'{"":52} {"ratio":5} {r(0):>12} {r(1):>9} {r(2):>9} {r(3):>11}')
EOF
        unset got
    done
done
echo "command per row: blaster --duration $secs --warmup 0 ARGS (ARGS as in this script; new: + ${NEW_ARGS:-nothing})"
