//! Reading and verifying a 1,000,000-event ledger on the local backend
//! (256-byte canonical JSON payloads, 1,000 streams, batches of 1,000).
//!
//! The ledger is built once and cached under
//! `target/bench-data/ledger-<events>-f<format>-v<bench data version>/`;
//! a rerun reuses it after checking it with one untimed `verify` (and
//! rebuilds it if that fails). The timed runs read it from the page cache.
//!
//! - `read/sequential_1m`: `LedgerReader::scan(0, None, ..)` over every
//!   record; events/s.
//! - `verify/1m`: `LedgerReader::verify`; bytes of segment data per second.
//! - `verify/sha256_2core_limit`: SHA-256 over the same segment bytes, split
//!   in two halves hashed on two threads: the ceiling to compare with.
//! - `verify/sha256_1core`: the same on one thread.
//! - `prove/inclusion_1m`: `LedgerReader::inclusion_proof` of the middle
//!   record against the whole ledger's checkpoint: node caches and a few
//!   thousand records.
//! - `prove/inclusion_1m_from_log`: the same at a size no checkpoint has
//!   (one record less), which hashes every record up to that size.
//!
//! In criterion's quick test mode (`cargo bench -- --test`) the ledger has
//! 20,000 events instead, so CI stays fast.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bi_ledger::backend::BlobStore;
use bi_ledger::format::FORMAT_VERSION;
use bi_ledger::{Ledger, LedgerReader};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;

mod common;

/// Bump when the workload (payloads, streams, batching) changes, so a
/// cached ledger of the old shape is not reused.
const BENCH_DATA_VERSION: u32 = 4; // 2: node caches beside the checkpoints; 3: the fs store files them by window; 4: checkpoints sign their snapshot
const FULL_EVENTS: u64 = 1_000_000;
const QUICK_EVENTS: u64 = 20_000;
const BATCH: u64 = 1_000;
const STREAMS: u64 = 1_000;
const LEDGER: &str = "main";

struct BigLedger {
    root: PathBuf,
    reader: LedgerReader,
    records: u64,
    segment_bytes: u64,
    /// Every segment's bytes, concatenated; loaded on first use.
    raw: Option<Vec<u8>>,
}

impl BigLedger {
    fn get(rt: &Runtime) -> BigLedger {
        let events = if common::quick_mode() {
            QUICK_EVENTS
        } else {
            FULL_EVENTS
        };
        let dir = common::data_dir().join(format!(
            "ledger-{events}-f{FORMAT_VERSION}-v{BENCH_DATA_VERSION}"
        ));
        let marker = dir.join("COMPLETE");
        let root = dir.join("store");
        if marker.exists() {
            match Self::check(rt, &root, events) {
                Ok(l) => {
                    eprintln!("reusing the cached ledger in {}", dir.display());
                    return l;
                }
                Err(e) => eprintln!(
                    "cached ledger in {} failed its check ({e}); rebuilding",
                    dir.display()
                ),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&root).expect("create bench ledger dir");
        eprintln!("building a {events}-event ledger in {} ...", dir.display());
        let t = Instant::now();
        rt.block_on(build(&root, events));
        eprintln!("built in {:.1} s", t.elapsed().as_secs_f64());
        let l = Self::check(rt, &root, events).expect("the freshly built ledger verifies");
        std::fs::write(&marker, format!("{events}\n")).expect("write marker");
        l
    }

    /// Opens and fully verifies the ledger (untimed; also warms the page
    /// cache the timed runs read from).
    fn check(rt: &Runtime, root: &Path, events: u64) -> Result<BigLedger, String> {
        let store: Arc<dyn BlobStore> = common::store(root);
        let reader = rt
            .block_on(LedgerReader::open(store, LEDGER))
            .map_err(|e| e.to_string())?;
        let verifier = reader.recorded_verifier().clone();
        let report = rt
            .block_on(reader.verify(&verifier, &|_, _| {}))
            .map_err(|e| e.to_string())?;
        if report.records != events {
            return Err(format!(
                "{} records where {events} were expected",
                report.records
            ));
        }
        let segment_bytes = common::segment_bytes(root);
        let work = rt.block_on(hash_work(&reader, segment_bytes, events));
        common::report_fact("read_verify/hash_work", work);
        common::report_fact(
            "read_verify/ledger",
            json!({
                "events": events,
                "segment_bytes": segment_bytes,
                "segments": report.segments,
                "bytes_per_event": segment_bytes as f64 / events as f64,
                "checkpoints": report.checkpoints,
            }),
        );
        Ok(BigLedger {
            root: root.to_owned(),
            reader,
            records: events,
            segment_bytes,
            raw: None,
        })
    }

    fn raw(&mut self) -> &[u8] {
        let root = &self.root;
        self.raw.get_or_insert_with(|| {
            let mut segs: Vec<PathBuf> = std::fs::read_dir(root.join(LEDGER))
                .expect("list ledger dir")
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect();
            segs.sort();
            let mut all = Vec::new();
            for s in segs {
                all.extend(std::fs::read(s).expect("read segment"));
            }
            all
        })
    }
}

/// SHA-256 compressions verify needs per record, against what hashing the
/// stored segment bytes costs: a record's leaf hash covers its canonical
/// entry (`0x00 || entry`, larger than the stored form), the chain adds
/// two compressions (midstate + link), the Merkle tree one node hash
/// (`0x01 || l || r`, two compressions) per leaf. Measured on the first
/// 10,000 records.
async fn hash_work(reader: &LedgerReader, segment_bytes: u64, events: u64) -> serde_json::Value {
    let blocks = |n: u64| (n + 9).div_ceil(64);
    let (mut n, mut entry_bytes, mut leaf_blocks) = (0u64, 0u64, 0u64);
    let mut buf = Vec::new();
    reader
        .scan(0, Some(10_000), |r, _| {
            buf.clear();
            r.write_entry(&mut buf);
            n += 1;
            entry_bytes += buf.len() as u64;
            leaf_blocks += blocks(1 + buf.len() as u64);
            ControlFlow::Continue(())
        })
        .await
        .expect("scan");
    let n = n.max(1) as f64;
    let verify_blocks = leaf_blocks as f64 / n + 2.0 + 2.0;
    let stored_blocks = segment_bytes as f64 / events as f64 / 64.0;
    json!({
        "entry_bytes_per_record": entry_bytes as f64 / n,
        "stored_bytes_per_record": segment_bytes as f64 / events as f64,
        "verify_sha_blocks_per_record": verify_blocks,
        "segment_sha_blocks_per_record": stored_blocks,
        "verify_ceiling_vs_sha_limit": stored_blocks / verify_blocks,
    })
}

/// Batched appends of pseudo-random business events, then a clean close.
async fn build(root: &Path, events: u64) {
    let ledger = Ledger::create(common::store(root), LEDGER, common::options())
        .await
        .expect("create ledger");
    let mut i = 0;
    while i < events {
        let n = BATCH.min(events - i);
        let batch = (i..i + n).map(|k| common::event(k, STREAMS)).collect();
        ledger.append(batch).await.expect("append");
        i += n;
    }
    ledger.close().await.expect("close");
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

fn benches(c: &mut Criterion) {
    let rt = common::runtime();
    let mut fx: Option<BigLedger> = None;
    let events = if common::quick_mode() {
        QUICK_EVENTS
    } else {
        FULL_EVENTS
    };

    let mut g = c.benchmark_group("read");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(events));
    g.bench_function("sequential_1m", |b| {
        let l = fx.get_or_insert_with(|| BigLedger::get(&rt));
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let (mut n, mut payload) = (0u64, 0usize);
                    l.reader
                        .scan(0, None, |r, _| {
                            n += 1;
                            payload += r.payload.len();
                            ControlFlow::Continue(())
                        })
                        .await
                        .expect("scan");
                    assert_eq!(n, l.records);
                    std::hint::black_box(payload);
                }
                t.elapsed()
            })
        })
    });
    g.finish();

    // Throughput in bytes needs the ledger's size before the group runs
    // (but `--list` must not build a ledger).
    let listing = std::env::args().any(|a| a == "--list");
    let seg_bytes = if listing {
        1
    } else {
        fx.get_or_insert_with(|| BigLedger::get(&rt)).segment_bytes
    };
    let mut g = c.benchmark_group("verify");
    g.sampling_mode(SamplingMode::Flat);
    // Ten whole verifies (~0.5-1 s each) must fit without a warning.
    g.measurement_time(Duration::from_secs(12));
    g.throughput(Throughput::Bytes(seg_bytes));
    g.bench_function("1m", |b| {
        let l = fx.as_ref().expect("ledger");
        let verifier = l.reader.recorded_verifier().clone();
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let report = l
                        .reader
                        .verify(&verifier, &|_, _| {})
                        .await
                        .expect("verify");
                    assert_eq!(report.records, l.records);
                }
                t.elapsed()
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("verify");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(seg_bytes));
    g.bench_function("sha256_2core_limit", |b| {
        let raw = fx.as_mut().expect("ledger").raw();
        let (a, z) = raw.split_at(raw.len() / 2);
        b.iter(|| {
            std::thread::scope(|s| {
                let h = s.spawn(|| Sha256::digest(z));
                let first = Sha256::digest(a);
                (first, h.join().expect("hash thread"))
            })
        })
    });
    g.bench_function("sha256_1core", |b| {
        let raw = fx.as_mut().expect("ledger").raw();
        b.iter(|| Sha256::digest(raw))
    });
    g.finish();

    let mut g = c.benchmark_group("prove");
    g.sampling_mode(SamplingMode::Flat);
    g.measurement_time(Duration::from_secs(8));
    for (id, less) in [("inclusion_1m", 0), ("inclusion_1m_from_log", 1)] {
        g.bench_function(id, |b| {
            let l = fx.as_ref().expect("ledger");
            let size = l.records - less;
            let nodes = bi_ledger::format::merkle::inclusion_proof_ranges(size / 2, size)
                .expect("proof shape")
                .len();
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..iters {
                        let p = l
                            .reader
                            .inclusion_proof(size / 2, size)
                            .await
                            .expect("prove");
                        assert_eq!(p.proof.len(), nodes);
                    }
                    t.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = read_verify;
    config = config();
    targets = benches
}
criterion_main!(read_verify);
