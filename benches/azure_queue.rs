//! Queue throughput against Azurite (or the account that
//! `AZURE_STORAGE_CONNECTION_STRING` names), 256-byte messages, one call
//! at a time from one task (the latency-bound rate of one worker):
//!
//! - `azure_queue/send/ours`: `AzureQueueStore::send`; messages/s.
//! - `azure_queue/send/sdk`: the same Put Message through the
//!   `azure_storage_queue` client directly, on the same connection (HTTP
//!   client and Shared Key signing): the floor our layer adds to.
//! - `azure_queue/receive_delete/ours`: `receive` of up to 32 messages,
//!   then `delete` of each, as a projector worker does; messages/s.
//! - `azure_queue/receive_delete/sdk`: the same Get Messages and Delete
//!   Message calls through the SDK client directly.
//!
//! Without `AZURE_STORAGE_CONNECTION_STRING` it says that it needs Azurite
//! and exits 0. Run:
//! `tools/azurite.sh start; eval "$(tools/azurite.sh env)"; cargo bench --bench azure_queue`

use std::time::{Duration, Instant};

use azure_storage_queue::models::{
    QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions, QueueMessage,
};
use azure_storage_queue::QueueClient;
use bi_ledger::backend::azure::{AzureQueueStore, CONNECTION_STRING_ENV};
use bi_ledger::backend::queue::{QueueStore, SendOptions};
use criterion::{criterion_group, Criterion, Throughput};
use futures::StreamExt;
use tokio::runtime::Runtime;

mod common;
use common::PAYLOAD_BYTES;

/// Messages one receive asks for (the service's most).
const BATCH: u32 = 32;
/// Hidden this long once received; deleted long before.
const VISIBILITY: Duration = Duration::from_secs(300);

fn body() -> String {
    let b: String = (0..PAYLOAD_BYTES)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert_eq!(b.len(), PAYLOAD_BYTES);
    b
}

struct Fixture {
    rt: Runtime,
    store: AzureQueueStore,
    ours: String,
    sdk_queue: String,
    sdk: QueueClient,
    body: String,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = common::runtime();
        let store = AzureQueueStore::from_env(Default::default()).expect("queue store");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let ours = format!("bench-ours-{}", &id[..12]);
        let sdk_queue = format!("bench-sdk-{}", &id[..12]);
        rt.block_on(async {
            store.create_queue(&ours).await.expect("create queue");
            store.create_queue(&sdk_queue).await.expect("create queue");
        });
        let sdk = store.sdk_client(&sdk_queue).expect("SDK client");
        Fixture {
            rt,
            store,
            ours,
            sdk_queue,
            sdk,
            body: body(),
        }
    }

    fn sdk_send_options() -> QueueClientSendMessageOptions<'static> {
        // What `send` sends for `SendOptions::default()`.
        QueueClientSendMessageOptions {
            visibility_timeout: Some(0),
            message_time_to_live: Some(7 * 24 * 3600),
            ..Default::default()
        }
    }

    async fn sdk_send(&self) {
        let m = QueueMessage {
            message_text: Some(self.body.clone()),
        };
        self.sdk
            .send_message(
                m.try_into().expect("message XML"),
                Some(Self::sdk_send_options()),
            )
            .await
            .expect("SDK send");
    }

    /// Tops `queue` up to at least `n` visible messages, untimed and
    /// concurrently.
    fn fill(&self, queue: &str, n: u64) {
        self.rt.block_on(async {
            let have = self.store.approximate_len(queue).await.expect("count");
            let opts = SendOptions::default();
            futures::stream::iter(have..n)
                .for_each_concurrent(16, |_| async {
                    self.store
                        .send(queue, &self.body, &opts)
                        .await
                        .expect("fill");
                })
                .await;
        });
    }

    /// One receive of up to [`BATCH`] and a delete of each, through our
    /// store; the number of messages handled.
    async fn ours_receive_delete(&self) -> u64 {
        let got = self
            .store
            .receive(&self.ours, BATCH, VISIBILITY)
            .await
            .expect("receive");
        for m in &got {
            self.store
                .delete(&self.ours, &m.id, &m.pop_receipt)
                .await
                .expect("delete");
        }
        got.len() as u64
    }

    /// The same with the SDK client.
    async fn sdk_receive_delete(&self) -> u64 {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(BATCH as i32),
            visibility_timeout: Some(VISIBILITY.as_secs() as i32),
            ..Default::default()
        };
        let got = self
            .sdk
            .receive_messages(Some(options))
            .await
            .and_then(|r| r.into_model())
            .expect("SDK receive")
            .items
            .unwrap_or_default();
        for m in &got {
            let (Some(id), Some(receipt)) = (&m.message_id, &m.pop_receipt) else {
                panic!("a received message without id or pop receipt");
            };
            self.sdk
                .delete_message(id, receipt, None)
                .await
                .expect("SDK delete");
        }
        got.len() as u64
    }

    /// Empties both queues: Azurite scans a queue's messages on every
    /// call, so what the send benches left would slow the receives down
    /// by the queue's length rather than by our layer.
    fn clear(&self) {
        self.rt.block_on(async {
            for q in [&self.ours, &self.sdk_queue] {
                let client = self.store.sdk_client(q).expect("SDK client");
                client.clear(None).await.expect("clear");
            }
        });
    }

    fn cleanup(&self) {
        self.rt.block_on(async {
            for q in [&self.ours, &self.sdk_queue] {
                let _ = self.store.delete_queue(q).await;
            }
        });
    }
}

fn bench_queue(c: &mut Criterion) {
    let f = Fixture::new();
    // Untimed warm-up: on a freshly started Azurite the variant measured
    // first came out about 30% slower in two runs, and after these sends
    // the gap mostly went.
    f.rt.block_on(async {
        for _ in 0..500 {
            f.sdk_send().await;
        }
    });
    f.clear();
    let opts = SendOptions::default();
    let mut g = c.benchmark_group("azure_queue");
    g.throughput(Throughput::Elements(1));
    g.bench_function("send/ours", |b| {
        b.iter(|| {
            f.rt.block_on(f.store.send(&f.ours, &f.body, &opts))
                .expect("send")
        })
    });
    g.bench_function("send/sdk", |b| b.iter(|| f.rt.block_on(f.sdk_send())));

    // Every iteration must find a full batch, or the rate would count
    // messages that were not there.
    f.clear();
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("receive_delete/ours", |b| {
        b.iter_custom(|iters| {
            f.fill(&f.ours, iters * BATCH as u64);
            let start = Instant::now();
            for _ in 0..iters {
                let n = f.rt.block_on(f.ours_receive_delete());
                assert_eq!(n, BATCH as u64, "a short batch");
            }
            start.elapsed()
        })
    });
    g.bench_function("receive_delete/sdk", |b| {
        b.iter_custom(|iters| {
            f.fill(&f.sdk_queue, iters * BATCH as u64);
            let start = Instant::now();
            for _ in 0..iters {
                let n = f.rt.block_on(f.sdk_receive_delete());
                assert_eq!(n, BATCH as u64, "a short batch");
            }
            start.elapsed()
        })
    });
    g.finish();
    f.cleanup();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_queue
}

fn main() {
    if std::env::var_os(CONNECTION_STRING_ENV).is_none() {
        println!(
            "azure_queue bench skipped: it needs Azurite (or an account) and {CONNECTION_STRING_ENV} is unset. \
             Run `tools/azurite.sh start; eval \"$(tools/azurite.sh env)\"`, then `cargo bench --bench azure_queue`."
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
