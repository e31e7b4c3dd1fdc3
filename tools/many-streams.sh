#!/usr/bin/env bash
# Measures what a ledger of many entities costs: appends MILLIONS x 1M
# events, each on a stream of its own, one `bi-ledger append` per million,
# then times one more append (an open, one event and the closing
# checkpoint), a `checkpoint` and a `verify`, with their peak resident
# memory (`/usr/bin/time`).
#
#   tools/many-streams.sh [MILLIONS] [BINARY]
#
# Each `append` of the CLI opens the ledger for writing (reading the newest
# snapshot) and closes it with a checkpoint (writing one). MILLIONS
# defaults to 4, BINARY to target/release/bi-ledger (built first). Needs about 120 MB of disk per million under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

millions="${1:-4}"
bin="${2:-target/release/bi-ledger}"
work="target/many-streams"
. tools/timed.sh

for m in $(seq 0 $((millions - 1))); do
    awk -v from=$((m * 1000000)) 'BEGIN {
        for (i = from; i < from + 1000000; i++)
            printf "{\"stream\":\"customer-%08d\",\"type\":\"CustomerRegistered\",\"payload\":{\"name\":\"Customer %d\",\"tier\":\"gold\",\"region\":\"eu-west\"}}\n", i, i
    }' >"$work/events.jsonl"
    timed "append 1M new streams (to $((m + 1))M)" append "$work/events.jsonl"
done
echo '{"stream":"customer-00000007","type":"CustomerUpdated","payload":{"tier":"silver"}}' >"$work/one.jsonl"
timed "append 1 event" append "$work/one.jsonl"
timed "append 1 event" append "$work/one.jsonl"
timed "checkpoint (none due: open, close)" checkpoint
timed "verify" verify
snap=$(find "$data" -path '*snapshot*' -type f -printf '%s\n' | sort -n | tail -1)
echo "largest snapshot: $snap bytes"
rm -rf "$work"
