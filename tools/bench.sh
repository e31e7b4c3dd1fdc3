#!/usr/bin/env bash
# Runs the benchmarks of issue 2 and prints one summary of the headline
# figures: events/s, MB/s, p50/p99 latencies, and the ratios append/disk and
# verify/SHA-256 limit.
#
#   tools/bench.sh           criterion benches: append, read_verify (~2-3 min)
#   tools/bench.sh --big     also open_memory: the 10M-event ledger (minutes,
#                            ~3.5 GB of disk under target/bench-data)
#   tools/bench.sh --quick   every bench once, no measurement (CI smoke test)
#   tools/bench.sh --summary only print the summary of the last run
#   tools/bench.sh --azure   the Azure benches (benches/azure_*.rs) against an
#                            Azurite of their own (ports 10100-10102), started
#                            and stopped here; our layer beside the SDK's own
#                            calls
#
# Run it on a quiet machine: other builds on the 2 cores or the same disk
# show up in every figure. The summary is also written to
# target/criterion/bi-ledger-summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
big=0
for arg in "$@"; do
    case "$arg" in
        --azure) mode=azure ;;
        --quick) mode=quick ;;
        --big) big=1 ;;
        --summary) mode=summary ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

target="${CARGO_TARGET_DIR:-$PWD/target}"
crit="$target/criterion"

if [ "$mode" = azure ]; then
    # A private Azurite, started afresh for each bench and thrown away after
    # it: the blob bench leaves ~500 MB in it (deleting such a container
    # stalls Azurite for minutes), and a full Azurite drops connections.
    export AZURITE_BLOB_PORT=10100 AZURITE_QUEUE_PORT=10101 AZURITE_TABLE_PORT=10102
    export AZURITE_STATE_DIR="$target/azurite-bench"
    trap 'tools/azurite.sh stop >/dev/null 2>&1 || true' EXIT
    rm -f "$crit"/bi-ledger-latency.json "$crit"/bi-ledger-facts.json "$target/azure-bench.log"
    cargo bench --locked --no-run $(for b in benches/azure_*.rs; do echo --bench "$(basename "$b" .rs)"; done)
    for b in benches/azure_*.rs; do
        name="$(basename "$b" .rs)"
        tools/azurite.sh start
        eval "$(tools/azurite.sh env)"
        echo "== cargo bench --bench $name (Azurite on 127.0.0.1:$AZURITE_BLOB_PORT-$AZURITE_TABLE_PORT)"
        cargo bench --locked --bench "$name" 2>&1 | tee -a "$target/azure-bench.log" |
            grep -E '^azure|time:|thrpt:|LATENCY|FACT'
        tools/azurite.sh stop
    done
    echo
    echo "== summary (events or operations per second, criterion's middle estimate)"
    grep -E '^[a-z_/0-9]+ +time:|^[a-z_/0-9]+$|thrpt:' "$target/azure-bench.log" |
        awk '/^[a-z]/ {name=$1; seen=0} /thrpt:/ && !seen {gsub(/\[|\]/, ""); print name ": " $4 " " $5; seen=1}'
    grep -E '^LATENCY' "$target/azure-bench.log" || true
    exit 0
fi

if [ "$mode" != summary ]; then
    echo "== machine"
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
    df -h "$PWD" | tail -1
    # Figures of this run only.
    rm -f "$crit"/bi-ledger-latency.json "$crit"/bi-ledger-facts.json "$crit"/bi-ledger-summary.txt
    benches=(--bench append --bench read_verify)
    if [ "$big" = 1 ]; then
        export BI_LEDGER_BIG_BENCH=1
        benches+=(--bench open_memory)
    fi
    extra=()
    if [ "$mode" = quick ]; then
        extra=(-- --test)
    fi
    echo "== cargo bench ${benches[*]} ${extra[*]}"
    cargo bench --locked "${benches[@]}" "${extra[@]}"
    if [ "$mode" = quick ]; then
        echo "quick mode: every bench ran once; no figures to summarise"
        exit 0
    fi
fi

command -v python3 >/dev/null || { echo "python3 is needed for the summary" >&2; exit 2; }
python3 - "$crit" <<'PY' | tee "$crit/bi-ledger-summary.txt"
import json, os, sys

crit = sys.argv[1]

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def per_iter_ns(bench):
    """Criterion's typical time per iteration (slope, else mean), in ns."""
    e = load(os.path.join(crit, bench, "new", "estimates.json"))
    if not e:
        return None
    est = e.get("slope") or e.get("mean")
    return est["point_estimate"] if est else None

def throughput(bench):
    """(per second, unit) from the benchmark's declared throughput."""
    b = load(os.path.join(crit, bench, "new", "benchmark.json"))
    ns = per_iter_ns(bench)
    if not b or ns is None or not b.get("throughput"):
        return None, None
    (unit, n), = b["throughput"].items()
    return n / (ns * 1e-9), unit

lat = load(os.path.join(crit, "bi-ledger-latency.json")) or {}
facts = load(os.path.join(crit, "bi-ledger-facts.json")) or {}

def fmt(x, unit="", digits=0):
    return "n/a" if x is None else f"{x:,.{digits}f}{unit}"

def goal(ok):
    return "" if ok is None else ("  [goal met]" if ok else "  [goal NOT met]")

def latency(name):
    l = lat.get(name)
    if not l:
        return "p50 n/a, p99 n/a"
    return f"p50 {l['p50_us']:,.0f} us, p99 {l['p99_us']:,.0f} us (n = {l['count']:,})"

print()
print("== bi-ledger benchmark summary")
rows = []

ev, _ = throughput("append/batched_1000")
bpe = facts.get("append/bytes_per_event", {}).get("bytes_per_event")
disk, _ = throughput("disk/write_1MiB_fdatasync")
app_mb = ev * bpe / 1e6 if ev and bpe else None
disk_mb = disk / 1e6 if disk else None
ratio = app_mb / disk_mb if app_mb and disk_mb else None
print(f"batched append (1,000/batch):  {fmt(ev, ' events/s')}, {fmt(app_mb, ' MB/s', 1)} at {fmt(bpe, ' bytes/event', 1)}")
print(f"disk durable seq. write:       {fmt(disk_mb, ' MB/s', 1)} (1 MiB writes + fdatasync)")
ok = None
if ev:
    ok = ev >= 1e6 or (ratio is not None and ratio >= 0.8)
print(f"  append / disk bandwidth:     {fmt(ratio * 100 if ratio else None, ' %', 1)} (goal: 1M events/s, or >= 80 % of the disk){goal(ok)}")

gc, _ = throughput("append/group_commit_64")
epb = lat.get("append/group_commit_64", {}).get("events_per_block")
print(f"group commit, 64 appenders:    {fmt(gc, ' events/s')}, {latency('append/group_commit_64')}, {fmt(epb, ' events/fsync', 1)} (goal 100,000 events/s){goal(gc >= 1e5 if gc else None)}")

sd, _ = throughput("append/single_durable")
print(f"single durable append:         {fmt(sd, ' events/s')}, {latency('append/single_durable')}")
fs, _ = throughput("disk/write_300B_fdatasync")
print(f"  fsync cost (300 B + fdatasync, a pool thread each): {fmt(fs, ' ops/s')}, {latency('disk/write_300B_fdatasync')}")
fs1, _ = throughput("disk/write_300B_fdatasync_same_thread")
print(f"    same, back to back on one thread (as the writer): {fmt(fs1, ' ops/s')}, {latency('disk/write_300B_fdatasync_same_thread')}")

rd, _ = throughput("read/sequential_1m")
print(f"sequential read, 1M events:    {fmt(rd, ' events/s')} (goal 2,000,000){goal(rd >= 2e6 if rd else None)}")

vf, _ = throughput("verify/1m")
s2, _ = throughput("verify/sha256_2core_limit")
s1, _ = throughput("verify/sha256_1core")
vr = vf / s2 if vf and s2 else None
print(f"verify, 1M events:             {fmt(vf / 1e6 if vf else None, ' MB/s', 1)} of segment data")
print(f"  SHA-256 same bytes, 2 cores: {fmt(s2 / 1e6 if s2 else None, ' MB/s', 1)}; 1 core: {fmt(s1 / 1e6 if s1 else None, ' MB/s', 1)}")
print(f"  verify / 2-core SHA limit:   {fmt(vr * 100 if vr else None, ' %', 1)} (goal >= 80 %){goal(vr >= 0.8 if vr else None)}")
work = facts.get("read_verify/hash_work")
if work:
    print(f"  hash work: verify compresses {work['verify_sha_blocks_per_record']:.1f} SHA-256 blocks per record, "
          f"the stored bytes are {work['segment_sha_blocks_per_record']:.1f} blocks; "
          f"so even perfect verify reaches {work['verify_ceiling_vs_sha_limit'] * 100:.0f} % of that limit")

pv_ms = per_iter_ns("prove/inclusion_1m")
pl_ms = per_iter_ns("prove/inclusion_1m_from_log")
print(f"inclusion proof, 1M events:    {fmt(pv_ms / 1e6 if pv_ms else None, ' ms', 1)} from the node caches; {fmt(pl_ms / 1e6 if pl_ms else None, ' ms', 0)} at a size without a checkpoint (hashes the log)")

om = facts.get("open_memory")
if om:
    print(f"big ledger ({om['events']:,} events): append {om['append_events_per_s']:,.0f} events/s, "
          f"{om['bytes_per_event']:.1f} bytes/event, peak RSS {om['append_peak_rss_mib']:.1f} MiB")
    print(f"  re-open: clean {om['open_clean_s']:.3f} s, after a crash with a {om['tail_events']:,}-event tail "
          f"{om['open_tail_s']:.3f} s (goal < 1 s){goal(max(om['open_clean_s'], om['open_tail_s']) < 1.0)}")
    print(f"  verify: {om['verify_s']:.1f} s, {om['verify_mb_per_s']:.1f} MB/s, peak RSS {om['verify_peak_rss_mib']:.1f} MiB "
          f"(goal < 200 MiB){goal(max(om['append_peak_rss_mib'], om['verify_peak_rss_mib']) < 200)}")
else:
    print("10M ledger: not run (tools/bench.sh --big)")
print()
print("commands: cargo bench --bench append | cargo bench --bench read_verify | "
      "BI_LEDGER_BIG_BENCH=1 cargo bench --bench open_memory")
PY
