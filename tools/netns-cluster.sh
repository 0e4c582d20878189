#!/usr/bin/env bash
# Runs N epaxos-fast replicas in network namespaces of their own, joined by a
# bridge, with `tc netem` delay, and loads them with blaster from a client
# namespace. Everything it creates (namespaces, bridge, veths) is removed on
# exit, also on error and Ctrl-C. Addresses are private to the namespaces
# (10.77.0.0/24); nothing leaves this machine. Needs root and iproute2.
#
#   tools/netns-cluster.sh [--lan | --wan [FILE]] [--replicas N] [--duration S] [-- BLASTER FLAGS]
#
# --lan (default): 0.1 ms each way on every link (0.2 ms RTT).
# --no-delay: the same namespaces and bridge, no netem (for kernels built
#   without CONFIG_NET_SCH_NETEM, which the script detects and reports).
# --wan [FILE]: per-pair delay of half the RTT in FILE (default
#   tools/wan-5-regions.rtt, five regions: needs --replicas 5); the client
#   sits next to replica 0 and sends to it only.
# Bounded: blaster runs --duration seconds (default 10); the whole script is
# killed after duration + 120 s.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=lan
rtt_file=tools/wan-5-regions.rtt
replicas=5
duration=10
while [[ $# -gt 0 ]]; do
    case "$1" in
        --lan) mode=lan; shift ;;
        --no-delay) mode=none; shift ;;
        --wan) mode=wan; shift
               if [[ $# -gt 0 && "$1" != --* ]]; then rtt_file="$1"; shift; fi ;;
        --replicas) replicas="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "netns-cluster.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "netns-cluster.sh: needs root (ip netns)" >&2; exit 1; }

prefix="epx$$"
hub="${prefix}hub"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for ns in $(ip netns list | awk '{print $1}' | grep "^${prefix}" || true); do
        ip netns delete "$ns" 2>/dev/null || true
    done
}
trap cleanup EXIT INT TERM

# RTT matrix: numbers only, comments and row labels dropped.
declare -A rtt
if [[ $mode == wan ]]; then
    i=0
    while read -r line; do
        line="${line%%#*}"
        nums=($(echo "$line" | tr -s ' \t' '\n' | grep -E '^[0-9.]+$' || true))
        [[ ${#nums[@]} -eq 0 ]] && continue
        for j in "${!nums[@]}"; do rtt[$i,$j]=${nums[$j]}; done
        i=$((i + 1))
    done < "$rtt_file"
    [[ $i -eq $replicas ]] || { echo "netns-cluster.sh: $rtt_file has $i regions, --replicas is $replicas" >&2; exit 2; }
fi

cargo build --release --bin epaxos-fast >&2
cargo build --release -p blaster >&2

# The hub namespace holds the bridge; every host gets a veth into it.
ip netns add "$hub"
ip -n "$hub" link add br0 type bridge
ip -n "$hub" link set br0 up
if [[ $mode != none ]] && ! tc -n "$hub" qdisc add dev lo root netem delay 1ms 2>/dev/null; then
    echo "netns-cluster.sh: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM)," \
         "so no delay can be emulated here; --no-delay runs without it" >&2
    exit 1
fi
add_host() { # name address
    local ns="${prefix}$1" addr=$2
    ip netns add "$ns"
    ip link add "v$$$1" type veth peer name eth0 netns "$ns"
    ip link set "v$$$1" netns "$hub"
    ip -n "$hub" link set "v$$$1" master br0 up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
}
add_host cl 10.77.0.2
peers=()
for ((i = 0; i < replicas; i++)); do
    add_host "r$i" "10.77.0.$((10 + i))"
    peers+=("10.77.0.$((10 + i)):7000")
done

# Delay on each host's egress: LAN everywhere; WAN per destination replica.
delay_lan() { tc -n "${prefix}$1" qdisc add dev eth0 root netem delay 0.1ms limit 100000; }
if [[ $mode == none ]]; then
    :
elif [[ $mode == lan ]]; then
    delay_lan cl
    for ((i = 0; i < replicas; i++)); do delay_lan "r$i"; done
else
    delay_lan cl
    for ((i = 0; i < replicas; i++)); do
        ns="${prefix}r$i"
        tc -n "$ns" qdisc add dev eth0 root handle 1: prio bands $((replicas + 1)) \
            priomap 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        tc -n "$ns" qdisc add dev eth0 parent 1:1 handle 10: netem delay 0.1ms limit 100000
        for ((j = 0; j < replicas; j++)); do
            [[ $i -eq $j ]] && continue
            half=$(awk -v r="${rtt[$i,$j]}" 'BEGIN { printf "%.3f", r / 2 }')
            tc -n "$ns" qdisc add dev eth0 parent "1:$((j + 2))" handle "$((20 + j)):" \
                netem delay "${half}ms" limit 100000
            tc -n "$ns" filter add dev eth0 parent 1: protocol ip prio 1 u32 \
                match ip dst "10.77.0.$((10 + j))/32" flowid "1:$((j + 2))"
        done
    done
fi

list=$(IFS=,; echo "${peers[*]}")
# In WAN mode the client is in replica 0's region (0.1 ms from everything,
# as on a LAN), so it loads replica 0 only; elsewhere it loads them all.
targets=$list
[[ $mode == wan ]] && targets=${peers[0]}
for ((i = 0; i < replicas; i++)); do
    ip netns exec "${prefix}r$i" target/release/epaxos-fast --id "$i" --peers "$list" \
        --cpus none --log-level warn &
    pids+=($!)
done
echo "== $replicas replicas ($mode) at $list" >&2
sleep 1
timeout $((duration + 120)) ip netns exec "${prefix}cl" target/release/blaster \
    --targets "$targets" --duration "$duration" "$@"
