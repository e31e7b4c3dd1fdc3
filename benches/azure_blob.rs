//! The ledger on Azure append blobs, against Azurite (or the account that
//! `AZURE_STORAGE_CONNECTION_STRING` names), beside the same appends made
//! directly with Microsoft's `azure_storage_blob` client: the floor that
//! our layer (framing, hashing, the conditional append, lease, bookkeeping)
//! adds to.
//!
//! - `azure/ledger_batched/{1,100,10000}`: one `Ledger::append` of N events
//!   (one block) per iteration; events/s.
//! - `azure/sdk_append_block/{1,100,10000}`: one SDK `append_block` of the
//!   same number of bytes the ledger wrote for N events; events/s.
//! - `azure/ledger_single` and `azure/sdk_append_single`: one event at a
//!   time; p50/p99 go to stderr (`LATENCY` lines) and to
//!   `target/criterion/bi-ledger-latency.json`.
//!
//! `tools/bench.sh --azure` runs it on an Azurite of its own. By hand:
//! `tools/azurite.sh start && eval "$(tools/azurite.sh env)" && cargo bench --bench azure_blob`.
//! Without `AZURE_STORAGE_CONNECTION_STRING` it says so and exits 0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::http::RequestContent;
use azure_storage_blob::models::AppendBlobClientAppendBlockOptions;
use azure_storage_blob::BlobContainerClient;
use bi_ledger::backend::azure::{AzureBlobStore, AzureOptions, ConnectionInfo};
use bi_ledger::backend::BlobStore;
use bi_ledger::Ledger;
use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::json;
use tokio::runtime::Runtime;

mod common;
use common::Pool;

const SIZES: [usize; 3] = [1, 100, 10_000];
const STREAMS: u64 = 1_000;
/// A fresh SDK blob before the 50,000-block limit.
const SDK_BLOCKS_PER_BLOB: u64 = 40_000;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args()
}

fn main() {
    let info = match ConnectionInfo::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!(
                "azure_blob bench: {e}\nIt needs Azurite: tools/azurite.sh start && eval \"$(tools/azurite.sh env)\""
            );
            return;
        }
    };
    let rt = common::runtime();
    let container = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let store = rt
        .block_on(AzureBlobStore::from_connection_info(
            info.clone(),
            &container,
            AzureOptions::default(),
        ))
        .expect("open the Azure blob store");
    let sdk = Sdk {
        container: store.sdk_client(),
    };
    let mut c = config();
    let bytes_per_event = ledger_batched(&mut c, &rt, &store);
    sdk_batched(&mut c, &rt, &sdk, bytes_per_event);
    ledger_single(&mut c, &rt, &store);
    sdk_single(&mut c, &rt, &sdk, bytes_per_event);
    c.final_summary();
    // Not deleted: Azurite (3.37, in memory) takes minutes to delete a
    // container of this many blocks and answers nothing meanwhile.
    // `tools/bench.sh --azure` runs the benches on an Azurite of their own
    // and stops it afterwards.
    eprintln!("azure_blob bench: left container {container} in place (restart Azurite to drop it)");
}

fn ledger(rt: &Runtime, store: &AzureBlobStore, name: &str) -> Ledger {
    let store: Arc<dyn BlobStore> = Arc::new(store.clone());
    rt.block_on(Ledger::create(store, name, common::options()))
        .expect("create ledger")
}

/// Bytes of the ledger's segments.
fn ledger_bytes(rt: &Runtime, store: &AzureBlobStore, name: &str) -> u64 {
    rt.block_on(store.list(&format!("{name}/")))
        .expect("list segments")
        .iter()
        .filter(|b| b.name.ends_with(".seg"))
        .map(|b| b.size)
        .sum()
}

/// Runs the batched ledger benches; returns the bytes each event cost in
/// the 100-event ledger (segment header included, so a little above the
/// format's figure).
fn ledger_batched(c: &mut Criterion, rt: &Runtime, store: &AzureBlobStore) -> f64 {
    let pool = Pool::new(20_000, STREAMS);
    let mut g = c.benchmark_group("azure/ledger_batched");
    let mut per_event = 0.0;
    for n in SIZES {
        g.throughput(Throughput::Elements(n as u64));
        let name = format!("batched-{n}");
        let l = ledger(rt, store, &name);
        let before = ledger_bytes(rt, store, &name);
        let mut next = 0u64;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                rt.block_on(l.append(pool.batch(next, n))).expect("append");
                next += n as u64;
            })
        });
        let bytes = ledger_bytes(rt, store, &name) - before;
        if next > 0 {
            let b = bytes as f64 / next as f64;
            common::report_fact(
                &format!("azure/ledger_batched/{n}/bytes_per_event"),
                json!({ "bytes_per_event": b, "events": next }),
            );
            if n == 100 {
                per_event = b;
            }
        }
        rt.block_on(l.close()).expect("close");
    }
    g.finish();
    if per_event == 0.0 {
        // Quick mode appends too little to measure; use the format's size.
        per_event = 290.0;
    }
    per_event
}

fn ledger_single(c: &mut Criterion, rt: &Runtime, store: &AzureBlobStore) {
    let pool = Arc::new(Pool::new(4_096, STREAMS));
    let l = ledger(rt, store, "single");
    let mut next = 0u64;
    single(c, "ledger_single", || {
        let e = pool.get(next);
        next += 1;
        let t = Instant::now();
        rt.block_on(l.append_one(e)).expect("append");
        t.elapsed()
    });
    rt.block_on(l.close()).expect("close");
}

/// The SDK's append blob client on the same container and connection (the
/// same HTTP client and Shared Key or SAS signing: the SDK's clients take
/// only Entra ID tokens), without our layer.
struct Sdk<'a> {
    container: &'a BlobContainerClient,
}

impl Sdk<'_> {
    /// Appends `block` to blob `prefix-k`, starting a new blob every
    /// [`SDK_BLOCKS_PER_BLOB`] blocks.
    async fn append(&self, prefix: &str, appended: u64, block: &azure_core::Bytes) {
        let blob = format!("{prefix}-{}", appended / SDK_BLOCKS_PER_BLOB);
        let client = self.container.blob_client(&blob).append_blob_client();
        if appended.is_multiple_of(SDK_BLOCKS_PER_BLOB) {
            client.create(None).await.expect("SDK create append blob");
        }
        client
            .append_block(
                <RequestContent<_, _> as From<azure_core::Bytes>>::from(block.clone()),
                block.len() as u64,
                Some(AppendBlobClientAppendBlockOptions::default()),
            )
            .await
            .expect("SDK append block");
    }
}

fn sdk_batched(c: &mut Criterion, rt: &Runtime, sdk: &Sdk<'_>, bytes_per_event: f64) {
    let mut g = c.benchmark_group("azure/sdk_append_block");
    for n in SIZES {
        g.throughput(Throughput::Elements(n as u64));
        let size = (bytes_per_event * n as f64).ceil() as usize;
        let block = azure_core::Bytes::from(vec![0x5a; size]);
        let prefix = format!("sdk-batched-{n}");
        let mut appended = 0u64;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                rt.block_on(sdk.append(&prefix, appended, &block));
                appended += 1;
            })
        });
    }
    g.finish();
}

fn sdk_single(c: &mut Criterion, rt: &Runtime, sdk: &Sdk<'_>, bytes_per_event: f64) {
    let block = azure_core::Bytes::from(vec![0x5a; bytes_per_event.ceil() as usize]);
    let mut appended = 0u64;
    single(c, "sdk_append_single", || {
        let t = Instant::now();
        rt.block_on(sdk.append("sdk-single", appended, &block));
        appended += 1;
        t.elapsed()
    });
}

/// One event at a time: `op` appends one and says how long it took. Every
/// sample goes into the p50/p99 report.
fn single(c: &mut Criterion, name: &str, mut op: impl FnMut() -> Duration) {
    let mut lats = Vec::new();
    let mut g = c.benchmark_group("azure");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let d = op();
                    lats.push(d);
                    d
                })
                .sum()
        })
    });
    g.finish();
    common::report_latency(&format!("azure/{name}"), &mut lats, json!({}));
}
