#!/usr/bin/env bash
# Profiles a local five-replica cluster under load: builds with frame
# pointers (so perf can walk Rust stacks), runs blaster --local-cluster under
# `perf record -e cpu-clock -g -a` (software events: no hardware counters
# needed), and writes into OUT_DIR (default perf/out):
#   perf.data, flamegraph.svg (inferno), top.txt (top symbols, by process).
# Usage: perf/profile.sh [SECONDS] [extra blaster flags...]
# Bounded: blaster runs SECONDS (default 10) plus its warm-up and drain.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
shift || true
out="${OUT_DIR:-perf/out}"
mkdir -p "$out"

command -v perf >/dev/null || { echo "perf/profile.sh: perf not found (apt-get install linux-perf)" >&2; exit 1; }
if ! command -v inferno-flamegraph >/dev/null; then
    echo "== installing inferno (flamegraphs)" >&2
    cargo install inferno --locked
fi

echo "== building with frame pointers (target/perf)" >&2
export CARGO_TARGET_DIR=target/perf
RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release --bin epaxos-fast >&2
RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release -p blaster >&2

echo "== recording ${secs}s of a 5-replica cluster under load" >&2
timeout $((secs + 120)) perf record -e cpu-clock -F 999 -g -a -o "$out/perf.data" -- \
    target/perf/release/blaster --local-cluster 5 --duration "$secs" \
    --connections 10 --outstanding 400 --keys 10 "$@" | tee "$out/blaster.txt" ||
    echo "== blaster or perf exited non-zero (see above); profiling what was recorded" >&2

echo "== flamegraph and top symbols" >&2
perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf > "$out/stacks.folded"
inferno-flamegraph --title "epaxos-fast: 5 replicas under blaster" < "$out/stacks.folded" > "$out/flamegraph.svg"
{
    echo "# samples by process"
    perf report -i "$out/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -10 || true
    echo
    echo "# top symbols (self time), all processes"
    perf report -i "$out/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -40 || true
} > "$out/top.txt"
echo "wrote $out/flamegraph.svg, $out/top.txt, $out/perf.data" >&2
