#!/usr/bin/env bash
# Runs every simulator row of the README's table in turn (about 17 minutes
# on this 2-core machine) and prints each row's summary: the seeds, crashes,
# recoveries, the worst completion after the last fault, then "N passed, M
# failed". The node-bug rows must fail: they prove the checks catch each
# deliberate defect. Usage: tools/sim-rows.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin epaxos-sim >&2
rows=(
    "--seeds 5000 --replicas 3 --faults all"
    "--seeds 5000 --replicas 5 --faults all"
    "--seeds 5000 --replicas 7 --faults all"
    "--seeds 5000 --replicas 3 --faults all --conflicts 100"
    "--seeds 5000 --replicas 5 --faults all --conflicts 100"
    "--seeds 5000 --replicas 7 --faults all --conflicts 100"
    "--seeds 5000 --replicas 5 --faults all --shards 3"
    "--seeds 5000 --replicas 5 --faults all --sync-at-once"
    "--seeds 5000 --replicas 5 --faults all --keys 200 --ops 100"
    "--seeds 100 --replicas 3 --shards 2 --node-bug release-before-durable"
    "--seeds 100 --replicas 3 --shards 2 --node-bug answer-forwarded-twice"
    "--seeds 100 --replicas 3 --faults crash --node-bug ignore-reservations"
)
for r in "${rows[@]}"; do
    echo "== epaxos-sim $r"
    # shellcheck disable=SC2086
    target/release/epaxos-sim $r 2>&1 | grep -v '^\.\.\.\|^FAILED' | tail -2 || true
done
