//! The ledger on Azure when things go wrong underneath it: a writer whose
//! lease was broken and taken by another while it still believes it holds
//! the ledger, and (through the fault proxy) answers lost or refused. Against
//! Azurite, as `tests/azure_blob.rs`; see `support/azure.rs` for how the
//! tests find it.

use std::sync::Arc;
use std::time::Duration;

use bi_ledger::backend::azure::AzureOptions;
use bi_ledger::backend::{BlobStore, StoreError};
use bi_ledger::{Ledger, LedgerError, LedgerOptions, LedgerReader, NewEvent};
use ed25519_dalek::SigningKey;
use serde_json::json;
use tokio::sync::{mpsc, Mutex};

#[path = "support/azure.rs"]
mod azure_env;
#[path = "support/container.rs"]
mod container;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/wrap.rs"]
mod wrap;

use wrap::{Wrap, Wrapped};

use azure_env::account_or_skip;
use container::{proxied_with, Container};
use proxy::Fault;

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

/// Segments of three blocks (a header and two batches): a rollover every
/// second batch.
fn three_blocks() -> AzureOptions {
    AzureOptions {
        max_blocks: 3,
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
    let (a, b) = deposed(&c).await;
    let late = a.append_one(event("a", 1, 5000)).await;
    assert!(
        matches!(&late, Err(LedgerError::Poisoned(_))),
        "the deposed writer's rollover went through: {late:?}"
    );
    b_goes_on_and_the_next_writer_rolls_over(&c, a, b).await;
}

/// After a deposed writer A was refused its rollover: B goes on in segment 0,
/// undisturbed; the log holds A's first event and B's two; and a writer
/// that opens it again rolls over itself.
async fn b_goes_on_and_the_next_writer_rolls_over(c: &Container, a: Ledger, b: Ledger) {
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

/// Writer A has decided to roll over and checked its lease, and is held on
/// its way to create the next segment while B breaks the lease, opens the
/// ledger and appends to the segment A is about to seal; then A goes on.
/// Returns A, what its append that rolls over returned, and B.
async fn overtaken_rollover(
    c: &Container,
) -> (Ledger, bi_ledger::Result<bi_ledger::Receipt>, Ledger) {
    let (s, mut paused, resume) = Paused::new(c.dyn_store(), |op, name| {
        (op == "create" && name.ends_with("/0000000001.seg")).then_some(Stop::Before)
    });
    let a = Ledger::create(s, "l", rollover_opts()).await.unwrap();
    a.append_one(event("a", 0, 0)).await.unwrap();
    let late = tokio::spawn(async move {
        let r = a.append_one(event("a", 1, 5000)).await;
        (a, r)
    });
    paused.recv().await.unwrap();
    let b = take_over(c, "l").await;
    resume.send(()).await.unwrap();
    let (a, late) = late.await.unwrap();
    (a, late, b)
}

/// A proxied container whose client gives up on an answer after 300 ms, so
/// that a request the proxy holds times out (and is sent again) at once.
async fn impatient(
    account: &bi_ledger::backend::azure::ConnectionInfo,
    tag: &str,
) -> (Container, Arc<proxy::Faults>) {
    let opts = AzureOptions {
        read_timeout: Duration::from_millis(300),
        ..AzureOptions::default()
    };
    proxied_with(account, tag, opts).await
}

/// Writer A appends one event; then its lease is broken and B takes the
/// ledger over. Returns A, which does not know yet, and B.
async fn deposed(c: &Container) -> (Ledger, Ledger) {
    let a = Ledger::create(c.dyn_store(), "l", rollover_opts())
        .await
        .unwrap();
    a.append_one(event("a", 0, 0)).await.unwrap();
    let b = take_over(c, "l").await;
    (a, b)
}

/// Where [`Paused`] stops a call: before it reaches the store, or after.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    Before,
    After,
}

/// Which calls [`Paused`] stops, by operation and blob name, and where.
type When = dyn Fn(&str, &str) -> Option<Stop> + Send + Sync;

/// A store that stops the calls `when` picks (by operation and blob name)
/// until the test lets them go, having said which: what a writer does
/// between two steps can then be overtaken by another writer, or looked at
/// by readers, deterministically.
struct Paused {
    inner: Arc<dyn BlobStore>,
    when: Box<When>,
    paused: mpsc::Sender<String>,
    resume: Mutex<mpsc::Receiver<()>>,
}

impl std::fmt::Debug for Paused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paused")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Paused {
    /// The store, where it says what it paused at, and where the test
    /// lets it go on.
    fn new(
        inner: Arc<dyn BlobStore>,
        when: impl Fn(&str, &str) -> Option<Stop> + Send + Sync + 'static,
    ) -> (
        Arc<Wrapped<Paused>>,
        mpsc::Receiver<String>,
        mpsc::Sender<()>,
    ) {
        let (paused, paused_rx) = mpsc::channel(1);
        let (resume_tx, resume) = mpsc::channel(1);
        let store = Arc::new(Wrapped(Paused {
            inner,
            when: Box::new(when),
            paused,
            resume: Mutex::new(resume),
        }));
        (store, paused_rx, resume_tx)
    }

    async fn stop(&self, op: &str, name: &str, at: Stop) {
        if (self.when)(op, name) == Some(at) {
            self.paused
                .send(format!("{at:?} {op} {name}"))
                .await
                .unwrap();
            self.resume.lock().await.recv().await.unwrap();
        }
    }
}

#[async_trait::async_trait]
impl Wrap for Paused {
    fn inner(&self) -> &dyn BlobStore {
        &*self.inner
    }
    async fn create(&self, name: &str) -> Result<(), StoreError> {
        self.stop("create", name, Stop::Before).await;
        self.inner.create(name).await?;
        self.stop("create", name, Stop::After).await;
        Ok(())
    }
    async fn seal_at(&self, _: &dyn BlobStore, name: &str, len: u64) -> Result<(), StoreError> {
        self.stop("seal_at", name, Stop::Before).await;
        self.inner.seal_at(name, len).await?;
        self.stop("seal_at", name, Stop::After).await;
        Ok(())
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
    let (a, late, b) = overtaken_rollover(&c).await;
    assert!(
        matches!(&late, Err(LedgerError::Poisoned(_))),
        "the deposed writer's rollover went through: {late:?}"
    );
    let seg0 = c.store().info("l/0000000000.seg").await.unwrap();
    assert!(!seg0.sealed, "{seg0:?}");
    b_goes_on_and_the_next_writer_rolls_over(&c, a, b).await;
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
    let (a, b) = deposed(&c).await;
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

/// Life of an event, step 5, when every answer of the rollover is lost
/// after the service acted on it: the `create` of the next segment, the
/// conditional seal of the full one, and the next one's header. Each retry
/// finds its own earlier attempt landed (the create by its id, the seal by
/// the segment sealed at the length it was asked to seal at, the header by
/// reading it back), and the writer goes on: nothing is written twice and
/// the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollover_whose_answers_are_lost_goes_through() {
    let account = account_or_skip!();
    let opts = three_blocks();
    let (c, faults) = proxied_with(&account, "lostroll", opts).await;
    let s = c.dyn_store();
    let ledger = Ledger::create(s.clone(), "l", ledger_opts()).await.unwrap();
    for i in 0..2 {
        let r = ledger.append_one(event("s", i, 0)).await.unwrap();
        assert_eq!(r.segment, 0);
    }
    faults.add("x-ms-blob-type: AppendBlob", Fault::DropAfterForward, 1);
    faults.add("comp=seal", Fault::DropAfterForward, 1);
    faults.add(
        "/l/0000000001.seg?comp=appendblock",
        Fault::DropAfterForward,
        1,
    );
    let r = ledger.append_one(event("s", 2, 0)).await.unwrap();
    assert_eq!((r.seq, r.segment, r.offset), (2, 1, 84));
    assert_eq!(
        faults.injected.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    let r = ledger.append_one(event("s", 3, 0)).await.unwrap();
    assert_eq!((r.seq, r.segment), (3, 1));
    ledger.close().await.unwrap();
    let seg0 = s.info("l/0000000000.seg").await.unwrap();
    let seg1 = s.info("l/0000000001.seg").await.unwrap();
    assert!(seg0.sealed && !seg1.sealed, "{seg0:?} {seg1:?}");
    assert_eq!((seg0.block_count, seg1.block_count), (3, 3));
    assert_eq!(verified_log(s, "l").await.len(), 4);
}

/// Readers at work while a writer appends and rolls over every two
/// batches (and checkpoints every few events): every `open`, `read`,
/// `len` and `verify` sees a whole prefix of the log, never a torn tail, a
/// gap between segments or an integrity error, whichever rollover step it
/// meets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_during_appends_and_rollovers_see_whole_prefixes() {
    let account = account_or_skip!();
    let opts = three_blocks();
    let c = Container::new(&account, "liveread", opts).await;
    let mut o = ledger_opts();
    o.checkpoint_every_events = Some(5);
    let ledger = Ledger::create(c.dyn_store(), "l", o).await.unwrap();
    const EVENTS: usize = 60;
    let writer = tokio::spawn(async move {
        for i in 0..EVENTS {
            ledger.append_one(event("s", i, 100)).await.unwrap();
        }
        ledger.close().await.unwrap();
    });
    let (mut reads, mut last, mut midway) = (0, 0, 0);
    loop {
        let done = writer.is_finished();
        let reader = LedgerReader::open(c.dyn_store(), "l")
            .await
            .unwrap_or_else(|e| panic!("open after {reads} reads: {e}"));
        let all = reader
            .read(0, None)
            .await
            .unwrap_or_else(|e| panic!("read after {reads} reads: {e}"));
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, r)| r.seq == i as u64 && r.stream_version == i as u64));
        assert!(all.len() >= last, "{} then {}", last, all.len());
        last = all.len();
        if (1..EVENTS).contains(&last) {
            midway += 1;
        }
        let len = reader.len().await.unwrap();
        assert_eq!(len as usize, all.len());
        if reads % 3 == 0 {
            let report = reader
                .verify(reader.recorded_verifier(), &|_, _| {})
                .await
                .unwrap_or_else(|e| panic!("verify after {reads} reads: {e}"));
            assert!(report.records as usize >= all.len());
        }
        reads += 1;
        if done {
            break;
        }
    }
    writer.await.unwrap();
    assert_eq!(last, EVENTS);
    // Else the test proved nothing about readers beside a writer.
    assert!(
        midway > 0,
        "none of {reads} rounds of reads met the writer midway"
    );
}

/// Readers between the steps of a rollover: the writer is held right after
/// it created the next segment, and right after it sealed the full one
/// (before the next one has its header). Each time, `open`, `read`, `len`
/// and `verify` see exactly the records acknowledged so far, and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_between_rollover_steps_see_the_log_whole() {
    let account = account_or_skip!();
    let opts = three_blocks();
    let c = Container::new(&account, "rollsteps", opts).await;
    let (s, mut paused, resume) = Paused::new(c.dyn_store(), |op, name| {
        let next_segment = name.ends_with(".seg") && !name.ends_with("/0000000000.seg");
        match op {
            "create" if next_segment => Some(Stop::After),
            "seal_at" => Some(Stop::After),
            _ => None,
        }
    });
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut o = ledger_opts();
    o.checkpoint_every_events = Some(3);
    let ledger = Ledger::create(s, "l", o).await.unwrap();
    const EVENTS: usize = 7;
    let writer = tokio::spawn({
        let acked = acked.clone();
        async move {
            for i in 0..EVENTS {
                ledger.append_one(event("s", i, 10)).await.unwrap();
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            ledger.close().await.unwrap();
        }
    });
    let mut stops = Vec::new();
    loop {
        // The store goes with the writer, and with it the channel.
        let Some(what) = paused.recv().await else {
            break;
        };
        let want = acked.load(std::sync::atomic::Ordering::SeqCst);
        let reader = LedgerReader::open(c.dyn_store(), "l")
            .await
            .unwrap_or_else(|e| panic!("{what}: open: {e}"));
        let all = reader
            .read(0, None)
            .await
            .unwrap_or_else(|e| panic!("{what}: read: {e}"));
        assert_eq!(all.len() as u64, want, "{what}");
        assert_eq!(reader.len().await.unwrap(), want, "{what}");
        let report = reader
            .verify(reader.recorded_verifier(), &|_, _| {})
            .await
            .unwrap_or_else(|e| panic!("{what}: verify: {e}"));
        assert_eq!(report.records, want, "{what}");
        assert_eq!(reader.read_stream("s").await.unwrap().len() as u64, want);
        stops.push(what);
        resume.send(()).await.unwrap();
    }
    writer.await.unwrap();
    // Segments of a header and two one-event batches: 7 events roll over
    // three times, each stopped twice.
    assert_eq!(stops.len(), 6, "{stops:?}");
    assert_eq!(verified_log(c.dyn_store(), "l").await.len(), EVENTS);
}

/// A delete whose first request is held up on its way (the client times
/// out and retries, the retry deletes) and reaches the service only after
/// a new blob of that name was put: it must not delete the new blob. The
/// writer does exactly this delete-then-put when it replaces a cache left
/// by an unfinished checkpoint (`put_cache`); the snapshot of the
/// checkpoint it then puts, deleted so, would leave a ledger that no longer
/// opens ("snapshot for checkpoint … is missing").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_delete_does_not_remove_a_blob_put_since() {
    let account = account_or_skip!();
    let (c, faults) = impatient(&account, "latedelete").await;
    let s = c.dyn_store();
    s.put("l/snapshot-1", b"orphan").await.unwrap();
    faults.add("DELETE /", Fault::Hold, 1);
    s.delete("l/snapshot-1").await.unwrap();
    assert_eq!(
        faults.injected.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    s.put("l/snapshot-1", b"the snapshot").await.unwrap();
    // The first delete reaches the service now.
    faults.release(1).await;
    assert_eq!(s.read_all("l/snapshot-1").await.unwrap(), b"the snapshot");
    // Deletes still delete, and say when there was nothing to.
    s.delete("l/snapshot-1").await.unwrap();
    assert!(matches!(
        s.delete("l/snapshot-1").await,
        Err(StoreError::NotFound { .. })
    ));
}

/// What the deposed writer of `a_rollover_overtaken_after_its_lease_check_seals_nothing`
/// leaves, an empty next segment, does not stop the writer that took over:
/// when its own segment fills, it rolls over into that empty segment (the
/// seal of the old one and the header, both conditional, decide) rather
/// than failing because the segment exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_writer_rolls_over_into_the_empty_segment_a_deposed_one_left() {
    let account = account_or_skip!();
    let c = Container::new(&account, "emptynext", slow_renewal()).await;
    let (a, late, b) = overtaken_rollover(&c).await;
    assert!(matches!(&late, Err(LedgerError::Poisoned(_))), "{late:?}");
    drop(a);
    let seg1 = c.store().info("l/0000000001.seg").await.unwrap();
    assert_eq!((seg1.size, seg1.sealed), (0, false));
    // B's next event does not fit segment 0.
    let r = b
        .append_one(event("b", 1, 5000))
        .await
        .unwrap_or_else(|e| panic!("the new writer's rollover: {e}"));
    assert_eq!((r.seq, r.segment, r.offset), (2, 1, 84));
    b.close().await.unwrap();
    let log = verified_log(c.dyn_store(), "l").await;
    assert_eq!(
        log,
        [("a".into(), 0), ("b".into(), 0), ("b".into(), 1)],
        "{log:?}"
    );
    assert!(c.store().info("l/0000000000.seg").await.unwrap().sealed);
}

/// A checkpoint whose every put times out, and whose first put reaches the
/// service only later, after the writer has checked that it is not there
/// and moved on to the next checkpoint. It must not land beside a next
/// checkpoint whose stream index starts at the checkpoint before it (verify
/// would then find that index covering records the late one covers too,
/// on an intact log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_put_that_lands_late_is_settled_before_the_next() {
    let account = account_or_skip!();
    let (c, faults) = impatient(&account, "latecp").await;
    let s = c.dyn_store();
    let ledger = Ledger::create(s.clone(), "l", ledger_opts()).await.unwrap();
    ledger.append_one(event("s", 0, 0)).await.unwrap();
    // Every attempt (the first and 6 retries) times out at the client,
    // held by the proxy until after the next checkpoint.
    let put = format!("PUT /devstoreaccount1/{}/l/checkpoint-", c.name);
    faults.add(&put, Fault::Hold, 7);
    let failed = ledger.checkpoint().await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(
        faults.injected.load(std::sync::atomic::Ordering::Relaxed),
        7
    );
    ledger.append_one(event("s", 1, 0)).await.unwrap();
    let cp = ledger.checkpoint().await.unwrap();
    assert_eq!(cp.checkpoint.size, 2);
    // The failed one was put again before it, and is there for certain.
    s.info("l/checkpoint-00000000000000000001").await.unwrap();
    // The held puts reach the service.
    faults.release(7).await;
    ledger.append_one(event("s", 2, 0)).await.unwrap();
    ledger.close().await.unwrap();
    assert_eq!(verified_log(s.clone(), "l").await.len(), 3);
}

/// The same for a merged stream index: every attempt of its put times
/// out, and the first reaches the service only after the writer, at its
/// next checkpoint, looked for it, did not find it and merged the run
/// again. The two merged indexes must not overlap: verify checks them, and
/// a stream read through them must give each record once. (They do not:
/// the run is merged again into a blob of the same name, which the late
/// put then cannot replace.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_index_put_that_lands_late_does_not_overlap_the_next() {
    let account = account_or_skip!();
    let (c, faults) = impatient(&account, "latemerge").await;
    let s = c.dyn_store();
    let mut o = ledger_opts();
    o.merge_index_count = 2;
    let ledger = Ledger::create(s.clone(), "l", o).await.unwrap();
    let put = format!("PUT /devstoreaccount1/{}/l/streams-merged-", c.name);
    for round in 0..4 {
        ledger.append_one(event("a", round, 0)).await.unwrap();
        if round == 1 {
            faults.add(&put, Fault::Hold, 7);
        }
        ledger.checkpoint().await.unwrap();
        if round == 1 {
            assert_eq!(
                faults.injected.load(std::sync::atomic::Ordering::Relaxed),
                7
            );
        }
    }
    // The held puts reach the service.
    faults.release(7).await;
    ledger.close().await.unwrap();
    // Merged again under the same name: the late put was refused.
    let merged: Vec<String> = s
        .list("l/streams-merged-")
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(
        merged,
        [
            "l/streams-merged-00000000000000000002",
            "l/streams-merged-00000000000000000004"
        ]
    );
    let reader = LedgerReader::open(s.clone(), "l").await.unwrap();
    let a = reader.read_stream_indexed("a").await.unwrap().unwrap();
    assert_eq!(a.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(verified_log(s, "l").await.len(), 4);
}

/// An append whose every attempt times out at the client and reaches the
/// service only later (the case the README leaves open): the read-back
/// finds nothing yet, so the caller gets an error and the writer stops;
/// the block then lands, once (the other attempts meet the append-position
/// condition). A new writer finds it as an ordinary batch, right after the
/// acknowledged ones: no gap, no duplicate, and the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_lands_after_it_was_reported_failed_is_there_once() {
    let account = account_or_skip!();
    let (c, faults) = impatient(&account, "lateappend").await;
    let s = c.dyn_store();
    let ledger = Ledger::create(s.clone(), "l", ledger_opts()).await.unwrap();
    ledger.append_one(event("s", 0, 0)).await.unwrap();
    faults.add("comp=appendblock", Fault::Hold, 7);
    let failed = ledger.append_one(event("s", 1, 0)).await;
    assert!(
        matches!(
            failed,
            Err(LedgerError::OutcomeUnknown {
                first_seq: 1,
                last_seq: 1,
                ..
            })
        ),
        "{failed:?}"
    );
    assert!(matches!(
        ledger.append_one(event("s", 1, 0)).await,
        Err(LedgerError::Poisoned(_))
    ));
    assert!(ledger.close().await.is_err());
    // The held attempts reach the service: the first lands, the others
    // meet the append-position condition.
    faults.release(7).await;
    let next = Ledger::open(s.clone(), "l", ledger_opts()).await.unwrap();
    let r = next.append_one(event("s", 2, 0)).await.unwrap();
    assert_eq!((r.seq, r.version), (2, 2));
    next.close().await.unwrap();
    assert_eq!(
        verified_log(s, "l").await,
        [("s".into(), 0), ("s".into(), 1), ("s".into(), 2)]
    );
}

/// Answers whose body breaks off half-way, to a read, a listing and a
/// whole-blob read: retried (they change nothing), never taken for a
/// shorter blob or listing, and never a torn batch to a reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_cut_short_are_read_again() {
    let account = account_or_skip!();
    let (c, faults) = proxied_with(&account, "cutshort", AzureOptions::default()).await;
    let s = c.dyn_store();
    let ledger = Ledger::create(s.clone(), "l", ledger_opts()).await.unwrap();
    for i in 0..20 {
        ledger.append_one(event("s", i, 200)).await.unwrap();
    }
    ledger.close().await.unwrap();
    let want = verified_log(s.clone(), "l").await;
    assert_eq!(want.len(), 20);
    let injected = || faults.injected.load(std::sync::atomic::Ordering::Relaxed);
    faults.add("GET /", Fault::CutAnswer, 1);
    let all = s.read_all("l/0000000000.seg").await.unwrap();
    assert_eq!(
        all.len() as u64,
        s.info("l/0000000000.seg").await.unwrap().size
    );
    assert_eq!(injected(), 1);
    faults.add("comp=list", Fault::CutAnswer, 1);
    let listed = s.list("l/").await.map(|l| l.len());
    assert_eq!(injected(), 2);
    assert!(matches!(listed, Ok(n) if n >= 4), "{listed:?}");
    // Each kind of request the reader makes, cut once.
    for (i, pattern) in ["comp=list", "GET /"].into_iter().enumerate() {
        faults.add(pattern, Fault::CutAnswer, 1);
        let got = verified_log(s.clone(), "l").await;
        assert_eq!(got, want, "{pattern}");
        assert_eq!(injected(), 3 + i);
    }
}

/// A store through which writer A opens the ledger: right after A has
/// listed the segments, A's lease is broken and writer B opens, appends
/// and closes (its checkpoint now covers records A's listing does not show).
#[derive(Debug)]
struct DeposedWhileOpening {
    inner: Arc<dyn BlobStore>,
    c_store: bi_ledger::backend::azure::AzureBlobStore,
    done: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Wrap for DeposedWhileOpening {
    fn inner(&self) -> &dyn BlobStore {
        &*self.inner
    }
    async fn list(&self, prefix: &str) -> Result<Vec<bi_ledger::backend::BlobInfo>, StoreError> {
        let listed = self.inner.list(prefix).await?;
        if prefix == "l/0" && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.c_store.break_lock("l/writer").await.unwrap();
            let b = Ledger::open(Arc::new(self.c_store.clone()), "l", ledger_opts())
                .await
                .unwrap();
            for i in 0..3 {
                b.append_one(event("b", i, 0)).await.unwrap();
            }
            b.close().await.unwrap();
        }
        Ok(listed)
    }
}

/// A writer deposed while it opens (its lease broken, or expired while it
/// was stopped) may read the new writer's work half seen: a checkpoint
/// past the end of the segments it listed looks like records removed. It
/// says it lost the lock, not that the ledger is damaged (which it is not:
/// it verifies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_deposed_while_opening_reports_the_lost_lock() {
    let account = account_or_skip!();
    let c = Container::new(&account, "deposedopen", slow_renewal()).await;
    let first = Ledger::create(c.dyn_store(), "l", ledger_opts())
        .await
        .unwrap();
    first.append_one(event("a", 0, 0)).await.unwrap();
    first.close().await.unwrap();
    let a_store = Arc::new(Wrapped(DeposedWhileOpening {
        inner: c.dyn_store(),
        c_store: c.store(),
        done: false.into(),
    }));
    let Err(err) = Ledger::open(a_store.clone(), "l", ledger_opts()).await else {
        panic!("a writer deposed while opening opened the ledger");
    };
    assert!(a_store.0.done.load(std::sync::atomic::Ordering::SeqCst));
    assert!(!err.is_integrity(), "{err}");
    // What the service's code means, not only the code.
    assert!(err.to_string().contains("was broken"), "{err}");
    let log = verified_log(c.dyn_store(), "l").await;
    assert_eq!(log.len(), 4, "{log:?}");
}

/// An acquire of the writer lease whose every answer is lost, though the
/// service took it: the open fails, and releases the lease it may hold,
/// so the next writer opens at once rather than after the lease ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_acquire_leaves_no_lease_behind() {
    let account = account_or_skip!();
    let (c, faults) = proxied_with(&account, "lostacquire", AzureOptions::default()).await;
    let first = Ledger::create(c.dyn_store(), "l", ledger_opts())
        .await
        .unwrap();
    first.close().await.unwrap();
    faults.add("x-ms-lease-action: acquire", Fault::DropAfterForward, 100);
    let failed = Ledger::open(c.dyn_store(), "l", ledger_opts()).await;
    assert!(failed.is_err(), "an open whose acquire never answered");
    let injected = faults.injected.load(std::sync::atomic::Ordering::Relaxed);
    assert!(injected >= 1, "no acquire was dropped");
    faults.rules.lock().unwrap().clear();
    let next = Ledger::open(c.dyn_store(), "l", ledger_opts())
        .await
        .unwrap();
    next.append_one(event("s", 0, 0)).await.unwrap();
    next.close().await.unwrap();
}
