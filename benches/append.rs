//! Durable append on the local backend, 256-byte canonical JSON payloads.
//!
//! - `append/batched_1000`: one `Ledger::append` of 1,000 events (one
//!   batch, one fsync) per iteration; events/s.
//! - `disk/write_1MiB_fdatasync`: the disk's own durable sequential write
//!   bandwidth in the same directory (1 MiB `pwrite` at the end of a file,
//!   then `fdatasync`, from a blocking-pool thread); bytes/s. Compare with
//!   `append/batched_1000` × bytes per event (printed once as
//!   `FACT append/bytes_per_event`).
//! - `append/group_commit_64`: 64 tasks each appending single events in a
//!   loop through one `Ledger`; events/s, and p50/p99 of every append.
//! - `append/single_durable`: one event at a time, each awaited; events/s
//!   and p50/p99.
//! - `disk/write_300B_fdatasync`: 300-byte append + `fdatasync`, each on a
//!   blocking-pool thread of its own (as the fs store does for callers other
//!   than a ledger's writer); ops/s and p50/p99.
//!   `disk/write_300B_fdatasync_same_thread` issues them back to back from
//!   one thread, as the ledger's writer thread does: the floor under
//!   `single_durable`. Both are kept so the cost of the hand-off is visible.
//!
//! Latency percentiles go to stderr (`LATENCY ...` lines) and to
//! `target/criterion/bi-ledger-latency.json`; facts (bytes per event) to
//! `target/criterion/bi-ledger-facts.json`. `tools/bench.sh` collects all.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bi_ledger::Ledger;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use tokio::runtime::Runtime;

mod common;
use common::{Pool, PAYLOAD_BYTES};

const BATCH: usize = 1_000;
const TASKS: u64 = 64;
/// Appends per task per criterion iteration of `group_commit_64`.
const PER_TASK: u64 = 16;
/// Streams the workload spreads over.
const STREAMS: u64 = 1_000;

/// A ledger in its own directory, with a pool of ready events.
struct Fixture {
    dir: PathBuf,
    ledger: Ledger,
    pool: Arc<Pool>,
    next: u64,
    appended: u64,
    /// Blocks (= batches = fsyncs) in the segments after the warm-up.
    blocks_before: u64,
    latencies: Vec<Duration>,
}

impl Fixture {
    fn new(rt: &Runtime, parent: &Path, name: &str) -> Fixture {
        let dir = parent.join(name);
        let store = common::store(&dir);
        let ledger = rt
            .block_on(Ledger::create(store, "main", common::options()))
            .expect("create ledger");
        let pool = Arc::new(Pool::new(4_096, STREAMS));
        // Touch the path once so the first measured append is not the
        // ledger's first (file opened, side file created).
        rt.block_on(ledger.append(pool.batch(0, 8)))
            .expect("warm-up");
        let mut f = Fixture {
            dir,
            ledger,
            pool,
            next: 8,
            appended: 8,
            blocks_before: 0,
            latencies: Vec::new(),
        };
        f.blocks_before = f.blocks(rt);
        f
    }

    /// Appended blocks in all segments (each segment's header is a block).
    fn blocks(&self, rt: &Runtime) -> u64 {
        rt.block_on(self.ledger.store().list("main/"))
            .expect("list segments")
            .iter()
            .filter(|b| b.name.ends_with(".seg"))
            .map(|b| b.block_count.saturating_sub(1))
            .sum()
    }

    /// Events per block written by the benchmark: the group-commit batch
    /// size (one block = one write + one fsync).
    fn events_per_block(&self, rt: &Runtime) -> f64 {
        let blocks = self.blocks(rt) - self.blocks_before;
        (self.appended - 8) as f64 / blocks.max(1) as f64
    }

    fn close(self, rt: &Runtime) {
        rt.block_on(self.ledger.close()).expect("close ledger");
    }
}

/// A file appended to in the bench directory, for the disk's own figures.
struct DiskFile {
    path: PathBuf,
    rolls: u32,
    file: Arc<File>,
    len: u64,
    buf: Arc<Vec<u8>>,
    latencies: Vec<Duration>,
}

/// Which thread issues the disk bench's `pwrite` + `fdatasync`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Issuer {
    /// A tokio blocking-pool thread, handed each operation from a task:
    /// the way the fs store issues the ledger's appends.
    BlockingPool,
    /// The bench thread itself, back to back.
    SameThread,
}

impl DiskFile {
    /// Start over in a fresh file once this one is this large.
    const ROLL: u64 = 1 << 30;

    fn new(dir: &Path, name: &str) -> DiskFile {
        let path = dir.join(name);
        // Incompressible bytes, in case the virtual disk compresses.
        let buf: Vec<u8> = (0..(1u64 << 20) / 8)
            .flat_map(|i| common::mix(i).to_le_bytes())
            .collect();
        DiskFile {
            file: Arc::new(Self::create(&path)),
            path,
            rolls: 0,
            len: 0,
            buf: Arc::new(buf),
            latencies: Vec::new(),
        }
    }

    fn create(path: &Path) -> File {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("create disk bench file");
        f.sync_all().expect("fsync");
        f
    }

    /// Appends `n` bytes at the end and waits for `fdatasync`; like the fs
    /// store's append, the file grows, so its size is part of what syncs.
    /// A full file is left in place (deleting it mid-run would make the
    /// file system discard its blocks while later benchmarks fsync).
    /// The time is that of the two system calls only.
    fn append_sync(&mut self, rt: &Runtime, how: Issuer, n: usize) -> Duration {
        if self.len + n as u64 > Self::ROLL {
            self.rolls += 1;
            let next = self.path.with_extension(format!("{}", self.rolls));
            self.file = Arc::new(Self::create(&next));
            self.len = 0;
        }
        let (file, buf, at) = (self.file.clone(), self.buf.clone(), self.len);
        let op = move || {
            let t = Instant::now();
            file.write_all_at(&buf[..n], at).expect("write");
            file.sync_data().expect("fdatasync");
            t.elapsed()
        };
        let d = match how {
            Issuer::SameThread => op(),
            Issuer::BlockingPool => rt
                .block_on(async { tokio::task::spawn_blocking(op).await })
                .expect("blocking task"),
        };
        self.len += n as u64;
        d
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

fn benches(c: &mut Criterion) {
    let rt = common::runtime();
    let dir = common::tempdir();
    eprintln!(
        "bench directory: {} (payload {PAYLOAD_BYTES} bytes of canonical JSON)",
        dir.path().display()
    );
    // Nothing is deleted until the end: on a file system mounted with
    // `discard`, deleting gigabytes mid-run slows the next fsyncs.
    batched(c, &rt, dir.path());
    disk_bandwidth(c, &rt, dir.path());
    fsync_latency(c, &rt, dir.path(), Issuer::BlockingPool);
    fsync_latency(c, &rt, dir.path(), Issuer::SameThread);
    single_durable(c, &rt, dir.path());
    group_commit(c, &rt, dir.path());
    eprintln!("removing {} ...", dir.path().display());
}

fn batched(c: &mut Criterion, rt: &Runtime, dir: &Path) {
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut fx: Option<Fixture> = None;
    g.bench_function("batched_1000", |b| {
        let f = fx.get_or_insert_with(|| Fixture::new(rt, dir, "batched"));
        b.iter_custom(|iters| {
            let (ledger, pool, start) = (f.ledger.clone(), f.pool.clone(), f.next);
            let took = rt
                .block_on(rt.spawn(async move {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let batch = pool.batch(start + i * BATCH as u64, BATCH);
                        let t = Instant::now();
                        ledger.append(batch).await.expect("append");
                        total += t.elapsed();
                    }
                    total
                }))
                .expect("bench task");
            f.next += iters * BATCH as u64;
            f.appended += iters * BATCH as u64;
            took
        })
    });
    g.finish();
    if let Some(f) = fx {
        let seg = common::segment_bytes(&f.dir);
        common::report_fact(
            "append/bytes_per_event",
            json!({
                "bytes_per_event": seg as f64 / f.appended as f64,
                "segment_bytes": seg,
                "events": f.appended,
                "payload_bytes": PAYLOAD_BYTES,
            }),
        );
        common::report_fact(
            "append/batched_1000/events_per_block",
            json!({"events_per_block": f.events_per_block(rt)}),
        );
        f.close(rt);
    }
}

fn disk_bandwidth(c: &mut Criterion, rt: &Runtime, dir: &Path) {
    let mut g = c.benchmark_group("disk");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut file: Option<DiskFile> = None;
    g.bench_function("write_1MiB_fdatasync", |b| {
        let f = file.get_or_insert_with(|| DiskFile::new(dir, "disk-bandwidth.dat"));
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| f.append_sync(rt, Issuer::BlockingPool, 1 << 20))
                .sum()
        })
    });
    g.finish();
}

fn group_commit(c: &mut Criterion, rt: &Runtime, dir: &Path) {
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(TASKS * PER_TASK));
    let mut fx: Option<Fixture> = None;
    g.bench_function("group_commit_64", |b| {
        let f = fx.get_or_insert_with(|| Fixture::new(rt, dir, "group"));
        b.iter_custom(|iters| {
            let per_task = PER_TASK * iters;
            let (took, lats) = rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|t| {
                        let (ledger, pool) = (f.ledger.clone(), f.pool.clone());
                        let base = f.next + t * per_task;
                        tokio::spawn(async move {
                            let mut lat = Vec::with_capacity(per_task as usize);
                            for k in 0..per_task {
                                let e = pool.get(base + k);
                                let t0 = Instant::now();
                                ledger.append_one(e).await.expect("append");
                                lat.push(t0.elapsed());
                            }
                            lat
                        })
                    })
                    .collect();
                let mut lats = Vec::with_capacity(tasks.len());
                for t in tasks {
                    lats.push(t.await.expect("appender task"));
                }
                (start.elapsed(), lats)
            });
            for l in lats {
                f.latencies.extend(l);
            }
            f.next += TASKS * per_task;
            f.appended += TASKS * per_task;
            took
        })
    });
    g.finish();
    if let Some(mut f) = fx {
        let per_block = f.events_per_block(rt);
        common::report_latency(
            "append/group_commit_64",
            &mut f.latencies,
            json!({
                "tasks": TASKS,
                "events_per_block": per_block,
                "note": "every append of the run, warm-up included",
            }),
        );
        f.close(rt);
    }
}

fn single_durable(c: &mut Criterion, rt: &Runtime, dir: &Path) {
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(1));
    let mut fx: Option<Fixture> = None;
    g.bench_function("single_durable", |b| {
        let f = fx.get_or_insert_with(|| Fixture::new(rt, dir, "single"));
        b.iter_custom(|iters| {
            let (ledger, pool, start) = (f.ledger.clone(), f.pool.clone(), f.next);
            let (took, lats) = rt
                .block_on(rt.spawn(async move {
                    let mut lats = Vec::with_capacity(iters as usize);
                    for i in 0..iters {
                        let e = pool.get(start + i);
                        let t = Instant::now();
                        ledger.append_one(e).await.expect("append");
                        lats.push(t.elapsed());
                    }
                    (lats.iter().sum::<Duration>(), lats)
                }))
                .expect("bench task");
            f.latencies.extend(lats);
            f.next += iters;
            f.appended += iters;
            took
        })
    });
    g.finish();
    if let Some(mut f) = fx {
        let per_block = f.events_per_block(rt);
        common::report_latency(
            "append/single_durable",
            &mut f.latencies,
            json!({
                "events_per_block": per_block,
                "note": "every append of the run, warm-up included",
            }),
        );
        f.close(rt);
    }
}

fn fsync_latency(c: &mut Criterion, rt: &Runtime, dir: &Path, how: Issuer) {
    let (name, file_name, note) = match how {
        Issuer::BlockingPool => (
            "write_300B_fdatasync",
            "fsync-latency.dat",
            "issued from a tokio blocking-pool thread, as the fs store does",
        ),
        Issuer::SameThread => (
            "write_300B_fdatasync_same_thread",
            "fsync-latency-same-thread.dat",
            "issued back to back from one thread",
        ),
    };
    let mut g = c.benchmark_group("disk");
    g.throughput(Throughput::Elements(1));
    if how == Issuer::SameThread {
        g.measurement_time(Duration::from_secs(3));
    }
    let mut file: Option<DiskFile> = None;
    g.bench_function(name, |b| {
        let f = file.get_or_insert_with(|| DiskFile::new(dir, file_name));
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let d = f.append_sync(rt, how, 300);
                    f.latencies.push(d);
                    d
                })
                .sum()
        })
    });
    g.finish();
    if let Some(mut f) = file {
        common::report_latency(
            &format!("disk/{name}"),
            &mut f.latencies,
            json!({"bytes": 300, "note": note}),
        );
    }
}

criterion_group! {
    name = append;
    config = config();
    targets = benches
}
criterion_main!(append);
