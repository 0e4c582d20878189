#!/usr/bin/env bash
# Issue 19's hostile-input probes, re-run against replicas built from this
# tree (loopback, in memory): one line per probe, "probe | bound |
# measured | verdict". The loopback probes are examples/hostile_probes.rs;
# the keepalive probe runs here, with root and iproute2: the replica in a
# network namespace, 1,000 idle clients outside it, the veth between taken
# down across the replica's first keepalive probe (and, as a control that
# the probes really are lost, across all three). Everything it starts or
# creates is removed on exit, also on error and Ctrl-C.
#
#   tools/hostile-probes.sh [NEW_CLIENT_IDS]    (default 200000)
#
# Every cargo command and run holds /tmp/cargo.lock (shared cores).
set -euo pipefail
cd "$(dirname "$0")/.."

new_ids="${1:-200000}"
target="${CARGO_TARGET_DIR:-target}"
lock="flock /tmp/cargo.lock"
pids=()
ns="epxhp$$"
outer="ephp$$a"
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    ip link del "$outer" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

$lock cargo build --release --bin epaxos-fast >&2
$lock cargo build --example hostile_probes >&2
bin="$target/release/epaxos-fast"
probes="$target/debug/examples/hostile_probes"

echo "# $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
timeout 600 $lock "$probes" all "$bin" "$new_ids" 2>/dev/null

if [[ $(id -u) -ne 0 ]] || ! ip netns list >/dev/null 2>&1; then
    echo "idle clients through a lost keepalive probe | - | SKIPPED: needs root and iproute2 | -"
    exit 0
fi

# One idle run: CONNS clients, the link down from 8 s after they connected
# for DOWN_S seconds; prints the answered/reset counts 25 s in.
idle_run() {
    local down_s="$1" conns=1000 sub="10.78.$(($$ % 250))"
    ip netns add "$ns"
    ip link add "$outer" type veth peer name "ephp$$b"
    ip link set "ephp$$b" netns "$ns"
    ip addr add "$sub.1/24" dev "$outer"
    ip link set "$outer" up
    ip -n "$ns" addr add "$sub.2/24" dev "ephp$$b"
    ip -n "$ns" link set "ephp$$b" up
    ip -n "$ns" link set lo up
    ip netns exec "$ns" "$bin" --id 0 --peers "$sub.2:7300" --cpus none --in-memory \
        --log-level error --cluster-id 1919 &
    pids+=($!)
    local replica=$!
    sleep 1
    "$probes" idle "$sub.2:7300" "$conns" 25 >"$out" &
    local idle=$!
    pids+=($idle)
    for _ in $(seq 100); do grep -q ready "$out" && break; sleep 0.1; done
    sleep 8
    ip link set "$outer" down
    sleep "$down_s"
    ip link set "$outer" up
    wait "$idle" || true
    kill "$replica" 2>/dev/null || true
    wait "$replica" 2>/dev/null || true
    ip link del "$outer"
    ip netns del "$ns"
}

# The measurement holds the shared lock, as the runs above do.
exec 9>>/tmp/cargo.lock
flock 9
out=$(mktemp)
pids=()
idle_run 2.5
got=$(tr '\n' ' ' <"$out")
answered=$(sed -E 's/.*answered ([0-9]+).*/\1/' <<<"$got")
echo "1000 idle clients, the link down 8-10.5 s after they connected (the first keepalive probe lost) | none reset (user timeout 20 s > keepalive 10 + 2 x 4 s) | $got | $([[ $answered == 1000 ]] && echo held || echo 'NOT HELD')"
idle_run 12
got=$(tr '\n' ' ' <"$out")
rm -f "$out"
answered=$(sed -E 's/.*answered ([0-9]+).*/\1/' <<<"$got")
echo "control: the same, link down 8-20 s (every probe lost) | all closed by keepalive (3 probes) | $got | $([[ $answered == 0 ]] && echo 'held (probes were lost)' || echo 'NOT HELD: the link-down does not lose probes')"
