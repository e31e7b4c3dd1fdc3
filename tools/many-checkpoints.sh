#!/usr/bin/env bash
# Measures reading one entity's history from a ledger of many checkpoints
# (one a close, as a ledger written by many short-lived writers, or one
# checkpointed every five minutes, collects them): CALLS runs of
# `bi-ledger append` of EVENTS events each, spread over 10,000 entities,
# each run closing with a checkpoint; then times `read --stream` of one
# entity, `stats` and `verify`, with their peak resident memory
# (`/usr/bin/time`), and counts the stream index blobs.
#
#   tools/many-checkpoints.sh [CALLS] [EVENTS] [BINARY]
#
# CALLS defaults to 1200, EVENTS to 1000, BINARY to target/release/bi-ledger
# (built first). Needs about 300 MB of disk per million events under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

calls="${1:-1200}"
events="${2:-1000}"
bin="${3:-target/release/bi-ledger}"
work="target/many-checkpoints"
. tools/timed.sh

start=$(date +%s)
for c in $(seq 0 $((calls - 1))); do
    awk -v call="$c" -v n="$events" 'BEGIN {
        srand(call);
        for (i = 0; i < n; i++)
            printf "{\"stream\":\"entity-%05d\",\"type\":\"MetricRecorded\",\"payload\":{\"call\":%d,\"i\":%d,\"value\":%.3f}}\n", int(rand() * 10000), call, i, rand() * 1000
    }' | "$bin" --data "$data" append >/dev/null
done
echo "appended $((calls * events)) events in $calls runs ($(( $(date +%s) - start )) s)"
echo "stream indexes: $(find "$data" -path '*/.streams-0*' -type f | wc -l), merged: $(find "$data" -path '*/.streams-merged-*' -type f | wc -l)"
timed "read --stream entity-00007" read --stream entity-00007
echo "  ($(wc -l <"$work/stdout") events)"
timed "read --stream entity-00007 (again)" read --stream entity-00007
timed "stats" stats
timed "verify" verify
rm -rf "$work"
