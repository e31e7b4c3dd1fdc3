//! The ledger on Azure when things go wrong underneath it: a writer whose
//! lease was broken and taken by another while it still believes it holds
//! the ledger, and (through the fault proxy) answers lost or refused. Against
//! Azurite, as `tests/azure_blob.rs`; see `support/azure.rs` for how the
//! tests find it.

use std::sync::Arc;
use std::time::Duration;

use bi_ledger::backend::azure::AzureOptions;
use bi_ledger::backend::{BlobInfo, BlobStore, StoreError, WriterLock};
use bi_ledger::{Ledger, LedgerError, LedgerOptions, LedgerReader, NewEvent};
use ed25519_dalek::SigningKey;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, Mutex};

#[path = "support/azure.rs"]
mod azure_env;
#[path = "support/container.rs"]
mod container;

use azure_env::account_or_skip;
use container::Container;

fn ledger_opts() -> LedgerOptions {
    let mut o = LedgerOptions::new(SigningKey::from_bytes(&[42; 32]));
    o.checkpoint_every_events = None;
    o.checkpoint_interval = None;
    o
}

/// A lease renewed rarely: a writer whose lease is broken goes on
/// believing it holds the ledger for the whole test (until its next
/// renewal, 20 s after it took the lease), as a writer does for up to a
/// renewal interval after an operator breaks its lease, or after a pause
/// (GC, a stalled VM) during which the lease expired and was taken.
fn slow_renewal() -> AzureOptions {
    AzureOptions {
        lease_duration: Duration::from_secs(60),
        lease_renew_interval: Duration::from_secs(20),
        ..AzureOptions::default()
    }
}

fn event(stream: &str, i: usize, pad: usize) -> NewEvent {
    NewEvent::json(stream, "E", &json!({ "i": i, "pad": "x".repeat(pad) }))
}

/// Every record as (stream, version), in log order, after the log verified.
async fn verified_log(s: Arc<dyn BlobStore>, name: &str) -> Vec<(String, u64)> {
    let reader = LedgerReader::open(s, name).await.unwrap();
    let report = reader
        .verify(reader.recorded_verifier(), &|_, _| {})
        .await
        .unwrap_or_else(|e| panic!("verify: {e}"));
    let all = reader.read(0, None).await.unwrap();
    assert_eq!(report.records, all.len() as u64);
    assert!(all.iter().enumerate().all(|(i, r)| r.seq == i as u64));
    all.into_iter()
        .map(|r| (r.stream, r.stream_version))
        .collect()
}

/// Breaks writer A's lease and opens the ledger as writer B, which then
/// appends one small event to stream "b".
async fn take_over(c: &Container, name: &str) -> Ledger {
    c.store()
        .break_lock(&format!("{name}/writer"))
        .await
        .unwrap();
    let b = Ledger::open(c.dyn_store(), name, rollover_opts())
        .await
        .unwrap();
    b.append_one(event("b", 0, 0)).await.unwrap();
    b
}

/// Segments of at most 4 KiB: a small event fits after a few others, a big
/// one does not.
fn rollover_opts() -> LedgerOptions {
    let mut o = ledger_opts();
    o.segment_max_bytes = 4096;
    o
}

/// Writer A's lease is broken and writer B takes the ledger over and
/// appends a small event to the segment both see as the current one. A,
/// not knowing yet, appends an event too big for what is left of that
/// segment, and so rolls over. It must not get through: its new segment
/// would start where the old one ended before B's event, and the ledger
/// would hold two records of that sequence number and never open again.
/// A's caller gets an error; B's events and A's earlier ones are there,
/// and the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_writer_cannot_roll_over_past_the_new_writers_appends() {
    let account = account_or_skip!();
    let c = Container::new(&account, "deposedroll", slow_renewal()).await;
    let a = Ledger::create(c.dyn_store(), "l", rollover_opts())
        .await
        .unwrap();
    a.append_one(event("a", 0, 0)).await.unwrap();

    let b = take_over(&c, "l").await;
    let late = a.append_one(event("a", 1, 5000)).await;
    assert!(
        matches!(&late, Err(LedgerError::Poisoned(_))),
        "the deposed writer's rollover went through: {late:?}"
    );
    // B goes on in segment 0, undisturbed.
    b.append_one(event("b", 1, 0)).await.unwrap();
    b.close().await.unwrap();
    drop(a);
    let log = verified_log(c.dyn_store(), "l").await;
    assert_eq!(
        log,
        [("a".into(), 0), ("b".into(), 0), ("b".into(), 1)],
        "{log:?}"
    );
    // And a writer opens it again and rolls over itself.
    let next = Ledger::open(c.dyn_store(), "l", rollover_opts())
        .await
        .unwrap();
    let r = next.append_one(event("a", 1, 5000)).await.unwrap();
    assert_eq!((r.seq, r.segment), (3, 1));
    next.close().await.unwrap();
    assert_eq!(verified_log(c.dyn_store(), "l").await.len(), 4);
}

/// A store that holds the first `create` of a blob whose name ends with
/// `pause_at` until the test lets it go, having said so: what a writer
/// does between checking its lease and reaching the service can then be
/// overtaken by another writer, deterministically.
#[derive(Debug)]
struct Paused {
    inner: Arc<dyn BlobStore>,
    pause_at: &'static str,
    gate: Mutex<Option<(mpsc::Sender<()>, oneshot::Receiver<()>)>>,
}

#[async_trait::async_trait]
impl BlobStore for Paused {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn max_block_size(&self) -> usize {
        self.inner.max_block_size()
    }
    fn max_blocks(&self) -> u64 {
        self.inner.max_blocks()
    }
    async fn create(&self, name: &str) -> Result<(), StoreError> {
        if name.ends_with(self.pause_at) {
            if let Some((paused, resume)) = self.gate.lock().await.take() {
                paused.send(()).await.unwrap();
                resume.await.unwrap();
            }
        }
        self.inner.create(name).await
    }
    async fn append(&self, name: &str, at: u64, block: &[u8]) -> Result<u64, StoreError> {
        self.inner.append(name, at, block).await
    }
    async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.read(name, offset, len).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn info(&self, name: &str) -> Result<BlobInfo, StoreError> {
        self.inner.info(name).await
    }
    async fn seal(&self, name: &str) -> Result<(), StoreError> {
        self.inner.seal(name).await
    }
    async fn seal_at(&self, name: &str, len: u64) -> Result<(), StoreError> {
        self.inner.seal_at(name, len).await
    }
    async fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.inner.put(name, data).await
    }
    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        self.inner.truncate(name, len).await
    }
    async fn lock(&self, name: &str) -> Result<Box<dyn WriterLock>, StoreError> {
        self.inner.lock(name).await
    }
    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.inner.delete(name).await
    }
}

/// The same race, closer: writer A has decided to roll over and checked
/// its lease, and is on its way to create the next segment, when B breaks
/// the lease, opens the ledger and appends to the segment A is about to
/// seal. Whatever A checked before, the seal itself must refuse a segment
/// that grew since A last wrote it, before A writes the next one's header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollover_overtaken_after_its_lease_check_seals_nothing() {
    let account = account_or_skip!();
    let c = Container::new(&account, "overtaken", slow_renewal()).await;
    let (paused_tx, mut paused) = mpsc::channel(1);
    let (resume, resume_rx) = oneshot::channel();
    let s: Arc<dyn BlobStore> = Arc::new(Paused {
        inner: c.dyn_store(),
        pause_at: "/0000000001.seg",
        gate: Mutex::new(Some((paused_tx, resume_rx))),
    });
    let a = Ledger::create(s, "l", rollover_opts()).await.unwrap();
    a.append_one(event("a", 0, 0)).await.unwrap();
    let late = tokio::spawn(async move {
        let r = a.append_one(event("a", 1, 5000)).await;
        (a, r)
    });
    paused.recv().await.unwrap();
    let b = take_over(&c, "l").await;
    resume.send(()).unwrap();
    let (a, late) = late.await.unwrap();
    assert!(
        matches!(&late, Err(LedgerError::Poisoned(_))),
        "the deposed writer's rollover went through: {late:?}"
    );
    let seg0 = c.store().info("l/0000000000.seg").await.unwrap();
    assert!(!seg0.sealed, "{seg0:?}");
    b.append_one(event("b", 1, 0)).await.unwrap();
    b.close().await.unwrap();
    drop(a);
    let log = verified_log(c.dyn_store(), "l").await;
    assert_eq!(
        log,
        [("a".into(), 0), ("b".into(), 0), ("b".into(), 1)],
        "{log:?}"
    );
    let next = Ledger::open(c.dyn_store(), "l", rollover_opts())
        .await
        .unwrap();
    let r = next.append_one(event("a", 1, 5000)).await.unwrap();
    assert_eq!((r.seq, r.segment), (3, 1));
    next.close().await.unwrap();
    assert_eq!(verified_log(c.dyn_store(), "l").await.len(), 4);
}

/// Writer A's lease is broken and writer B takes over and appends; then A,
/// not knowing yet, is asked for a checkpoint (or closes, which writes
/// one). Its checkpoint must not land beside B's log: B's next checkpoint
/// puts a stream index and node cache that start at the checkpoint B found
/// when it opened, and one of A's in between would leave them covering
/// records a checkpoint before them already covers. A's caller gets an
/// error; B's checkpoints verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_writer_puts_no_checkpoint() {
    let account = account_or_skip!();
    let c = Container::new(&account, "deposedcp", slow_renewal()).await;
    let a = Ledger::create(c.dyn_store(), "l", rollover_opts())
        .await
        .unwrap();
    a.append_one(event("a", 0, 0)).await.unwrap();

    let b = take_over(&c, "l").await;
    let late = a.checkpoint().await;
    assert!(
        matches!(&late, Err(LedgerError::Poisoned(why)) if why.contains("lease")),
        "the deposed writer put a checkpoint: {late:?}"
    );
    assert!(matches!(a.close().await, Err(LedgerError::Poisoned(_))));
    let s = c.store();
    assert!(matches!(
        s.info("l/checkpoint-00000000000000000001").await,
        Err(StoreError::NotFound { .. })
    ));
    b.append_one(event("b", 1, 0)).await.unwrap();
    b.close().await.unwrap();
    let log = verified_log(c.dyn_store(), "l").await;
    assert_eq!(
        log,
        [("a".into(), 0), ("b".into(), 0), ("b".into(), 1)],
        "{log:?}"
    );
}
