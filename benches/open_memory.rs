//! The 10-million-event ledger: append time, bytes per event, peak memory,
//! time to re-open for writing, and verify time and memory. Not criterion:
//! one pass, run on demand, because it writes ~3.5 GB and takes minutes.
//!
//! ```text
//! BI_LEDGER_BIG_BENCH=1 cargo bench --bench open_memory
//! ```
//!
//! Without `BI_LEDGER_BIG_BENCH=1` it returns at once, so `cargo bench` and
//! CI stay fast. Knobs: `BI_LEDGER_BIG_EVENTS` (default 10,000,000),
//! `BI_LEDGER_BIG_TAIL` (events appended after the re-open and left
//! uncheckpointed by a simulated crash; default: the largest tail the
//! default `checkpoint_every_events` allows, 999,000), `BI_LEDGER_BIG_KEEP=1`
//! (keep the ledger directory instead of deleting it).
//!
//! Goals (issue 2): re-open < 1 s (open reads only the tail after the
//! newest checkpoint); appending and verifying stay under 200 MiB resident.
//! Peak RSS is `VmHWM` from `/proc/self/status`, reset between phases by
//! writing 5 to `/proc/self/clear_refs`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bi_ledger::backend::BlobStore;
use bi_ledger::{Ledger, LedgerError, LedgerOptions, LedgerReader};
use serde_json::json;

mod common;

const BATCH: u64 = 1_000;
const STREAMS: u64 = 1_000;
const LEDGER: &str = "main";

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// (VmHWM, VmRSS) in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets VmHWM to the current RSS, so each phase reports its own peak.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn peak_mib() -> f64 {
    memory_kib().0 as f64 / 1024.0
}

/// Free space (bytes) of the file system holding `dir`, from `df`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().nth(1)?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kib * 1024)
}

/// Appends `n` events from `start` in batches of 1,000 and reports progress.
async fn append_range(ledger: &Ledger, pool: &common::Pool, start: u64, n: u64, what: &str) {
    let t = Instant::now();
    let mut i = start;
    let end = start + n;
    while i < end {
        let k = BATCH.min(end - i);
        ledger
            .append(pool.batch(i, k as usize))
            .await
            .expect("append");
        i += k;
        if (i - start).is_multiple_of(1_000_000) {
            let s = t.elapsed().as_secs_f64();
            eprintln!(
                "  {what}: {:>9} events, {:6.1} s, {:>9.0} events/s, peak RSS {:.1} MiB",
                i - start,
                s,
                (i - start) as f64 / s,
                peak_mib()
            );
        }
    }
}

/// `Ledger::open`, waiting for a dropped writer's lock to be released (the
/// wait is not part of the time reported).
async fn open_timed(store: Arc<dyn BlobStore>, opts: LedgerOptions) -> (Ledger, Duration) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = Instant::now();
        match Ledger::open(store.clone(), LEDGER, opts.clone()).await {
            Ok(l) => return (l, t.elapsed()),
            Err(LedgerError::Store(bi_ledger::backend::StoreError::Locked { .. }))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

fn main() {
    if std::env::var("BI_LEDGER_BIG_BENCH").as_deref() != Ok("1") {
        eprintln!(
            "open_memory: skipped; run with BI_LEDGER_BIG_BENCH=1 (writes ~3.5 GB, takes minutes)"
        );
        return;
    }
    let events = env_u64("BI_LEDGER_BIG_EVENTS", 10_000_000);
    // The largest tail the default options leave uncheckpointed.
    let default_tail = common::options()
        .checkpoint_every_events
        .map_or(999_000, |n| n.saturating_sub(BATCH));
    let tail = env_u64("BI_LEDGER_BIG_TAIL", default_tail);
    let data = common::data_dir();
    // ~330 bytes per event on disk, plus slack.
    let need = (events + tail) * 400;
    match free_bytes(&data) {
        Some(free) if free < need + (2 << 30) => {
            eprintln!(
                "open_memory: skipped; {} has {:.1} GiB free, needs about {:.1} GiB",
                data.display(),
                free as f64 / (1u64 << 30) as f64,
                need as f64 / (1u64 << 30) as f64
            );
            return;
        }
        Some(free) => eprintln!(
            "{} has {:.1} GiB free; this run needs about {:.1} GiB",
            data.display(),
            free as f64 / (1u64 << 30) as f64,
            need as f64 / (1u64 << 30) as f64
        ),
        None => eprintln!("could not tell free space of {}", data.display()),
    }
    let dir = common::tempdir();
    eprintln!(
        "open_memory: {events} events, {STREAMS} streams, batches of {BATCH}, in {}",
        dir.path().display()
    );
    let rt = common::runtime();
    let store = common::store(dir.path());
    let pool = common::Pool::new(8_192, STREAMS);
    let can_reset = reset_peak();
    if !can_reset {
        eprintln!("note: cannot reset VmHWM; peaks are cumulative");
    }
    let (_, rss_start) = memory_kib();

    // 1. Build: batched appends, then a clean close (final checkpoint).
    let t = Instant::now();
    let ledger = rt
        .block_on(Ledger::create(store.clone(), LEDGER, common::options()))
        .expect("create");
    rt.block_on(append_range(&ledger, &pool, 0, events, "append"));
    let append_s = t.elapsed().as_secs_f64();
    let append_peak = peak_mib();
    let t = Instant::now();
    rt.block_on(ledger.close()).expect("close");
    let close_s = t.elapsed().as_secs_f64();
    let seg_bytes = common::segment_bytes(dir.path());
    let bytes_per_event = seg_bytes as f64 / events as f64;
    eprintln!(
        "APPEND {events} events: {append_s:.1} s, {:.0} events/s, {:.1} MB/s, {bytes_per_event:.1} bytes/event, peak RSS {append_peak:.1} MiB (start {:.1} MiB); close {close_s:.2} s",
        events as f64 / append_s,
        seg_bytes as f64 / append_s / 1e6,
        rss_start as f64 / 1024.0,
    );

    // 2. Re-open for writing after a clean close: no tail to read.
    reset_peak();
    let (ledger, open_clean) = rt.block_on(open_timed(store.clone(), common::options()));
    let open_clean_peak = peak_mib();
    eprintln!(
        "OPEN clean ({events} events, empty tail): {:.3} s (goal < 1 s), peak RSS {open_clean_peak:.1} MiB",
        open_clean.as_secs_f64()
    );

    // 3. Append a tail no checkpoint covers, drop the writer without close
    //    (as a crash would), and re-open: the open reads that whole tail.
    let mut tail_opts = common::options();
    tail_opts.checkpoint_interval = None;
    drop(ledger);
    let (ledger, _) = rt.block_on(open_timed(store.clone(), tail_opts));
    rt.block_on(append_range(&ledger, &pool, events, tail, "tail"));
    drop(ledger);
    reset_peak();
    let (ledger, open_tail) = rt.block_on(open_timed(store.clone(), common::options()));
    let open_tail_peak = peak_mib();
    let total = events + tail;
    eprintln!(
        "OPEN after crash ({total} events, {tail}-event tail): {:.3} s (goal < 1 s), peak RSS {open_tail_peak:.1} MiB",
        open_tail.as_secs_f64()
    );
    rt.block_on(ledger.close()).expect("close");

    // 4. Verify everything.
    reset_peak();
    let t = Instant::now();
    let report = rt.block_on(async {
        let reader = LedgerReader::open(store.clone(), LEDGER)
            .await
            .expect("reader");
        let verifier = reader.recorded_verifier().clone();
        reader.verify(&verifier, &|_, _| {}).await.expect("verify")
    });
    let verify_s = t.elapsed().as_secs_f64();
    let verify_peak = peak_mib();
    assert_eq!(report.records, total);
    eprintln!(
        "VERIFY {} events, {} segments, {} checkpoints: {verify_s:.1} s, {:.0} events/s, {:.1} MB/s, peak RSS {verify_peak:.1} MiB",
        report.records,
        report.segments,
        report.checkpoints,
        report.records as f64 / verify_s,
        report.bytes as f64 / verify_s / 1e6,
    );
    let peak = append_peak.max(verify_peak);
    eprintln!(
        "MEMORY peak RSS append {append_peak:.1} MiB, verify {verify_peak:.1} MiB (goal < 200 MiB: {})",
        if peak < 200.0 { "met" } else { "NOT met" }
    );
    common::report_fact(
        "open_memory",
        json!({
            "events": events,
            "tail_events": tail,
            "append_s": append_s,
            "append_events_per_s": events as f64 / append_s,
            "segment_bytes": seg_bytes,
            "bytes_per_event": bytes_per_event,
            "append_peak_rss_mib": append_peak,
            "open_clean_s": open_clean.as_secs_f64(),
            "open_tail_s": open_tail.as_secs_f64(),
            "open_peak_rss_mib": open_clean_peak.max(open_tail_peak),
            "verify_s": verify_s,
            "verify_mb_per_s": report.bytes as f64 / verify_s / 1e6,
            "verify_peak_rss_mib": verify_peak,
            "peak_rss_reset_per_phase": can_reset,
        }),
    );
    if std::env::var("BI_LEDGER_BIG_KEEP").as_deref() == Ok("1") {
        let kept = dir.keep();
        eprintln!("kept the ledger in {}", kept.display());
    }
}
