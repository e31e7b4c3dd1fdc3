# Sourced by tools/many-*.sh, which set $bin and $work: makes $work afresh
# with a new ledger in $data; then `timed WHAT ARGS...` runs `$bin --data
# $data ARGS...` under /usr/bin/time and prints its seconds and peak
# resident memory, leaving its stdout in $work/stdout.
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (GNU time)" >&2; exit 2; }
if [ "$bin" = target/release/bi-ledger ]; then
    cargo build --release --quiet --bin bi-ledger
fi
rm -rf "$work"
mkdir -p "$work"
data="$work/data"
"$bin" --data "$data" init >/dev/null

timed() {
    local what="$1"
    shift
    /usr/bin/time -o "$work/time" -f "%e %M" "$bin" --data "$data" "$@" >"$work/stdout" 2>"$work/stderr" || {
        echo "$what failed:" >&2
        cat "$work/stderr" >&2
        exit 1
    }
    read -r secs kb <"$work/time"
    printf '%-34s %7.2f s %8.1f MiB\n' "$what" "$secs" "$(awk "BEGIN{print $kb/1024}")"
}
