//! The Azure table store against Azurite (or the account in
//! `AZURE_STORAGE_CONNECTION_STRING`), beside the same requests sent
//! directly on the store's own `azure_core` pipeline (same transport, same
//! Shared Key signing, no retry policy): the floor the store adds to.
//!
//! - `azure_table/batch_insert_100/store`: one `TableStore::batch` of 100
//!   inserts into a new partition per iteration; entities/s.
//! - `azure_table/batch_insert_100/raw`: the same `$batch` body, built with
//!   `format!`, POSTed and its 202 and 100 sub-responses checked.
//! - `azure_table/insert/store` and `.../raw`: one entity per request,
//!   each awaited; entities/s.
//!
//! Each of the four runs in a new table (Azurite slows as a table grows),
//! deleted at its end. Every entity has the same five properties (a 32-character String, an
//! Int64, a Double, a DateTime and a Boolean), so the payloads match.
//!
//! Without `AZURE_STORAGE_CONNECTION_STRING` it prints what it needs and
//! exits 0. Start Azurite with
//! `tools/azurite.sh start; eval "$(tools/azurite.sh env)"`.

use std::future::Future;
use std::time::{Duration, Instant};

use azure_core::http::{Context, Method, Pipeline, PipelineSendOptions, Request, Url};
use bi_ledger::backend::azure::{AzureTableOptions, AzureTableStore, CONNECTION_STRING_ENV};
use bi_ledger::backend::table::{format_datetime, BatchOp, Entity, Property, TableStore};
use chrono::Utc;
use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, Criterion, Throughput};
use tokio::runtime::Runtime;

const BATCH: usize = 100;

struct Fixture {
    rt: Runtime,
    store: AzureTableStore,
    table: String,
    /// Partitions (batches) and rows (single inserts) are never reused.
    next: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let store = AzureTableStore::from_env(AzureTableOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let table = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        rt.block_on(store.create_table(&table))
            .unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            rt,
            store,
            table,
            next: 0,
        }
    }

    fn next_key(&mut self) -> String {
        self.next += 1;
        format!("k{:010}", self.next)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.store.delete_table(&self.table));
    }
}

fn entity(pk: &str, rk: &str, n: i64) -> Entity {
    Entity::new(pk, rk)
        .with(
            "Name",
            Property::String("abcdefghijklmnopqrstuvwxyz012345".into()),
        )
        .with("Seq", Property::Int64(n))
        .with("Amount", Property::Double(n as f64 * 1.25))
        .with("At", Property::DateTime(Utc::now()))
        .with("Open", Property::Bool(n % 2 == 0))
}

/// The same entity as the store sends it, written by hand.
fn raw_json(pk: &str, rk: &str, n: i64) -> String {
    format!(
        concat!(
            r#"{{"PartitionKey":"{}","RowKey":"{}","#,
            r#""Amount@odata.type":"Edm.Double","Amount":{:?},"#,
            r#""At@odata.type":"Edm.DateTime","At":"{}","#,
            r#""Name":"abcdefghijklmnopqrstuvwxyz012345","Open":{},"#,
            r#""Seq@odata.type":"Edm.Int64","Seq":"{}"}}"#
        ),
        pk,
        rk,
        n as f64 * 1.25,
        format_datetime(&Utc::now()),
        n % 2 == 0,
        n
    )
}

fn raw_request(endpoint: &str, method: Method, path: &str) -> Request {
    let url = Url::parse(&format!("{endpoint}{path}")).expect("a valid URL");
    let mut r = Request::new(url, method);
    r.insert_header("x-ms-version", "2019-02-02");
    r.insert_header("accept", "application/json;odata=minimalmetadata");
    r.insert_header("dataserviceversion", "3.0");
    r.insert_header("maxdataserviceversion", "3.0;NetFx");
    r
}

/// Sends `r` and returns its status and body.
async fn send(p: &Pipeline, mut r: Request) -> (u16, Vec<u8>) {
    let opts = PipelineSendOptions {
        skip_checks: true,
        ..Default::default()
    };
    let resp = p
        .send(&Context::new(), &mut r, Some(opts))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (u16::from(resp.status()), resp.body().as_ref().to_vec())
}

/// A `$batch` of 100 inserts into partition `pk`, as the store builds it.
fn raw_batch(endpoint: &str, table: &str, pk: &str) -> (String, String) {
    let (b, c) = ("batch_bench", "changeset_bench");
    let mut body = format!("--{b}\r\nContent-Type: multipart/mixed; boundary={c}\r\n\r\n");
    for i in 0..BATCH {
        let json = raw_json(pk, &format!("r{i:03}"), i as i64);
        body.push_str(&format!(
            "--{c}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
             POST {endpoint}{table} HTTP/1.1\r\nContent-ID: {}\r\n\
             Accept: application/json;odata=minimalmetadata\r\nDataServiceVersion: 3.0\r\n\
             Content-Type: application/json\r\nPrefer: return-no-content\r\n\
             Content-Length: {}\r\n\r\n{json}\r\n",
            i + 1,
            json.len()
        ));
    }
    body.push_str(&format!("--{c}--\r\n--{b}--\r\n"));
    (format!("multipart/mixed; boundary={b}"), body)
}

/// One criterion benchmark in a new table: `one(store, table, key)` per
/// iteration, each with a key never used before, timed together.
fn bench<F, Fut>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, one: F)
where
    F: Fn(AzureTableStore, String, String) -> Fut,
    Fut: Future<Output = ()>,
{
    // A table each, so no side runs against another's entities (Azurite
    // slows as a table grows).
    let mut f = Fixture::new();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let keys: Vec<String> = (0..iters).map(|_| f.next_key()).collect();
            let (store, table) = (f.store.clone(), f.table.clone());
            f.rt.block_on(async {
                let start = Instant::now();
                for key in keys {
                    one(store.clone(), table.clone(), key).await;
                }
                start.elapsed()
            })
        })
    });
}

fn batch_insert(c: &mut Criterion) {
    let mut g = c.benchmark_group("azure_table/batch_insert_100");
    g.throughput(Throughput::Elements(BATCH as u64));
    bench(&mut g, "store", |store, table, pk| async move {
        let ops: Vec<BatchOp> = (0..BATCH)
            .map(|i| BatchOp::Insert(entity(&pk, &format!("r{i:03}"), i as i64)))
            .collect();
        let tags = store.batch(&table, &ops).await.unwrap();
        assert_eq!(tags.len(), BATCH);
    });
    bench(&mut g, "raw", |store, table, pk| async move {
        let endpoint = store.endpoint();
        let (content_type, body) = raw_batch(endpoint, &table, &pk);
        let mut r = raw_request(endpoint, Method::Post, "$batch");
        r.insert_header("content-type", content_type);
        r.set_body(body.into_bytes());
        let (status, answer) = send(store.pipeline(), r).await;
        assert_eq!(status, 202);
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(text.matches("HTTP/1.1 204").count(), BATCH);
    });
    g.finish();
}

fn single_insert(c: &mut Criterion) {
    let mut g = c.benchmark_group("azure_table/insert");
    g.throughput(Throughput::Elements(1));
    bench(&mut g, "store", |store, table, rk| async move {
        store
            .insert(&table, &entity("single", &rk, 7))
            .await
            .unwrap();
    });
    bench(&mut g, "raw", |store, table, rk| async move {
        let mut r = raw_request(store.endpoint(), Method::Post, &table);
        r.insert_header("content-type", "application/json");
        r.insert_header("prefer", "return-no-content");
        r.set_body(raw_json("single", &rk, 7).into_bytes());
        let (status, _) = send(store.pipeline(), r).await;
        assert_eq!(status, 204);
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = batch_insert, single_insert
}

fn main() {
    if std::env::var_os(CONNECTION_STRING_ENV).is_none() {
        eprintln!(
            "azure_table bench: {CONNECTION_STRING_ENV} is not set, so there is nothing to measure. \
             It needs Azurite (or an account): tools/azurite.sh start; eval \"$(tools/azurite.sh env)\""
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
