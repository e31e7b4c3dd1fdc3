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
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (GNU time)" >&2; exit 2; }
if [ "$bin" = target/release/bi-ledger ]; then
    cargo build --release --quiet --bin bi-ledger
fi

work="target/many-streams"
rm -rf "$work"
mkdir -p "$work"
data="$work/data"
"$bin" --data "$data" init >/dev/null

timed() {
    local what="$1"
    shift
    /usr/bin/time -o "$work/time" -f "%e %M" "$bin" --data "$data" "$@" >/dev/null 2>"$work/stderr" || {
        echo "$what failed:" >&2
        cat "$work/stderr" >&2
        exit 1
    }
    read -r secs kb <"$work/time"
    printf '%-34s %7.2f s %8.1f MiB\n' "$what" "$secs" "$(awk "BEGIN{print $kb/1024}")"
}

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
