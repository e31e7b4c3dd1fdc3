//! The library API end to end on the local backend; the same suite runs on
//! Azure in `tests/azure_blob.rs`.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::{BlobInfo, BlobStore, StoreError, WriterLock};

#[path = "support/dirs.rs"]
mod dirs;
#[path = "support/forge.rs"]
mod forge;
#[path = "suite/ledger.rs"]
mod ledger;
#[path = "support/names.rs"]
mod listing;
#[path = "support/wrap.rs"]
mod wrap;

use wrap::{Wrap, Wrapped};

fn store(dir: &std::path::Path) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::new(dir).unwrap().shared())
}

/// Ledger options with the signing key made of `seed` bytes.
fn options(seed: u8) -> bi_ledger::LedgerOptions {
    bi_ledger::LedgerOptions::new(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
}

/// `n` small events of `stream`, numbered.
fn counted(stream: &str, n: u64) -> Vec<bi_ledger::NewEvent> {
    (0..n)
        .map(|i| bi_ledger::NewEvent::json(stream, "Counted", &serde_json::json!({ "i": i })))
        .collect()
}

/// A new ledger in `dir` (key of `seed` bytes) that checkpoints only when
/// asked (and when closed).
async fn checkpointed_on_demand(dir: &std::path::Path, seed: u8) -> bi_ledger::Ledger {
    let mut opts = options(seed);
    opts.checkpoint_every_events = None;
    opts.checkpoint_interval = None;
    bi_ledger::Ledger::create(store(dir), "main", opts)
        .await
        .unwrap()
}

/// Cuts segment 0 back to `len` bytes, as damage or a recovery would.
fn cut_segment(dir: &std::path::Path, len: u64) {
    cut_segment_n(dir, 0, len, false);
}

/// Flips a byte of the batch at `offset` of segment 0, past its frame
/// header, and returns the segment's path.
fn damage_batch(dir: &std::path::Path, offset: u64) -> std::path::PathBuf {
    let seg = dir.join("main/0000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[offset as usize + 40] ^= 0x55;
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&seg, &bytes).unwrap();
    seg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_reopen_verify_prove() {
    let dir = tempfile::tempdir().unwrap();
    // Two handles on one directory, as two processes would have.
    ledger::append_read_reopen_verify_prove(store(dir.path()), store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_interrupted_before_header_and_before_seal() {
    for stop in [
        ledger::RolloverStop::BeforeHeader,
        ledger::RolloverStop::BeforeSeal,
    ] {
        let dir = tempfile::tempdir().unwrap();
        ledger::rollover_interrupted(store(dir.path()), stop).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_interrupted_after_its_caches() {
    let dir = tempfile::tempdir().unwrap();
    ledger::checkpoint_interrupted_after_its_caches(store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_interrupted_then_reopened() {
    let dir = tempfile::tempdir().unwrap();
    ledger::checkpoint_interrupted_then_reopened(store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_right_after_a_drop() {
    let dir = tempfile::tempdir().unwrap();
    ledger::reopen_right_after_a_drop(store(dir.path()), 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_last_frame_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    ledger::a_partial_last_frame(store(dir.path()), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeros_after_the_last_batch_are_written_over() {
    let dir = tempfile::tempdir().unwrap();
    ledger::zeros_after_the_last_batch(store(dir.path())).await;
}

/// A frame is at most one 4 MiB block, its 12-byte header included
/// (format §5.1): a body length of 4 MiB − 11 is out of range, before any
/// of it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_length_past_the_largest_frame_is_out_of_range() {
    use bi_ledger::{LedgerError, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let ledger = ledger::create_checkpointed_on_demand(s.clone(), 18).await;
    ledger.append(counted("a", 1)).await.unwrap();
    ledger.close().await.unwrap();
    let seg = "main/0000000000.seg";
    let size = s.info(seg).await.unwrap().size;
    for (len, out_of_range) in [(4_194_292u32, false), (4_194_293, true)] {
        let path = dir.path().join(seg);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(size as usize);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&(!len).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
        match ledger::verified(&reader).await {
            Err(LedgerError::Integrity(e)) => {
                assert_eq!(e.offset, size, "{e}");
                assert_eq!(
                    e.what.contains("out of range (20..=4194292)"),
                    out_of_range,
                    "body length {len}: {e}"
                );
            }
            other => panic!("body length {len}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reads_use_the_index() {
    let dir = tempfile::tempdir().unwrap();
    ledger::stream_reads_use_the_index(store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_through_node_caches() {
    let dir = tempfile::tempdir().unwrap();
    ledger::proofs_through_node_caches(store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_block_size_is_the_ledgers() {
    let dir = tempfile::tempdir().unwrap();
    let with_blocks = |max_block_size| -> Arc<dyn BlobStore> {
        let opts = bi_ledger::backend::fs::FsOptions {
            max_block_size,
            ..Default::default()
        };
        Arc::new(FsStore::with_options(dir.path(), opts).unwrap().shared())
    };
    ledger::the_block_size_is_the_ledgers(
        with_blocks(8 << 20),
        with_blocks(64 << 10),
        store(dir.path()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_indexes_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    ledger::stream_indexes_are_merged(store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_that_fails_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    ledger::a_merge_that_fails_is_tried_again(store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_node_caches_are_only_hints() {
    let dir = tempfile::tempdir().unwrap();
    ledger::orphan_node_caches_are_only_hints(store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_checkpoint_reads_the_one_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    ledger::signed_checkpoint_reads_the_one_asked_for(store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_lists_only_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    ledger::opening_lists_only_what_it_needs(store(dir.path())).await;
}

/// `read_stream` goes through the stream index once the indexes are large
/// enough to pay off: a damaged batch that cannot hold the stream is never
/// read (a full scan stops at it; `verify` reports it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_stream_skips_batches_the_index_rules_out() {
    use bi_ledger::{Ledger, LedgerReader, NewEvent};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let opts = options(9);
    let ledger = Ledger::create(store(dir.path()), "main", opts)
        .await
        .unwrap();
    let a = ledger.append(counted("bulk", 1000)).await.unwrap();
    ledger
        .append_one(NewEvent::json("needle", "Found", &json!({})))
        .await
        .unwrap();
    ledger.append(counted("bulk", 4000)).await.unwrap();
    ledger.close().await.unwrap();

    // Damage batch A (1,000 "bulk" events), after its frame header.
    damage_batch(dir.path(), a[0].offset);

    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let found = reader.read_stream("needle").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].seq, 1000);
    let err = reader.read_stream_scan("needle").await.unwrap_err();
    assert!(err.to_string().contains("0000000000.seg"), "{err}");
}

/// `verify` hashes one 8 MiB chunk on rayon while it walks the chain of the
/// chunk before: the damage it reports is still the first in log order,
/// whichever chunk holds it. The damage keeps each frame's CRC valid (as a
/// tamperer would), so only the chain walk can see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_the_first_damage_across_chunks() {
    use bi_ledger::{Ledger, LedgerError, LedgerReader, NewEvent};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let opts = options(3);
    let ledger = Ledger::create(store(dir.path()), "main", opts)
        .await
        .unwrap();
    // 40 batches of 1,000 events of about 300 bytes: two chunks and more.
    let pad = "x".repeat(256);
    let mut batches = Vec::new();
    for b in 0..40u64 {
        let events = (0..1000u64)
            .map(|i| {
                NewEvent::json(
                    format!("s-{}", i % 97),
                    "Padded",
                    &json!({"b": b, "pad": pad}),
                )
            })
            .collect();
        batches.push(ledger.append(events).await.unwrap()[0].clone());
    }
    ledger.close().await.unwrap();
    let seg = dir.path().join("main/0000000000.seg");
    assert!(std::fs::metadata(&seg).unwrap().len() > 10 << 20);

    // Bumps the first sequence number of the batch at `offset` and gives
    // the frame a CRC that matches.
    let bump = |bytes: &mut Vec<u8>, offset: usize| {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let body = offset + 12;
        bytes[body] = bytes[body].wrapping_add(1);
        let mut crc = crc32c::crc32c(&bytes[offset..offset + 4]);
        crc = crc32c::crc32c_append(crc, &bytes[body..body + len]);
        bytes[offset + 8..offset + 12].copy_from_slice(&crc.to_le_bytes());
    };
    let verify = || async {
        let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
        let verifier = reader.recorded_verifier().clone();
        match reader.verify(&verifier, &|_, _| {}).await {
            Err(LedgerError::Integrity(e)) => e,
            other => panic!("verify of a damaged ledger gave {other:?}"),
        }
    };
    let mut bytes = std::fs::read(&seg).unwrap();
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let late = &batches[37];
    assert!(late.offset > 9 << 20, "batch 37 lies past the first chunk");
    bump(&mut bytes, late.offset as usize);
    std::fs::write(&seg, &bytes).unwrap();
    let e = verify().await;
    assert_eq!(e.blob, "main/0000000000.seg", "{e}");
    assert_eq!(
        (e.offset, e.seq),
        (late.offset + 12, Some(late.seq + 1)),
        "{e}"
    );
    assert!(
        e.what.contains(&format!("where {} was due", late.seq)),
        "{e}"
    );

    let early = &batches[2];
    bump(&mut bytes, early.offset as usize);
    std::fs::write(&seg, &bytes).unwrap();
    let e = verify().await;
    assert_eq!(
        (e.offset, e.seq),
        (early.offset + 12, Some(early.seq + 1)),
        "{e}"
    );
}

/// A store that answers as real stores do when things go wrong around
/// them: a checkpoint put that lands but answers with an error (the
/// connection dropped after the request was sent), and listings a while
/// old, as a verifier's are while a live writer goes on (the newest
/// checkpoints missing from the first checkpoint listing, a segment listed
/// shorter than it is, as on the fs backend while the writer's `pwrite`
/// copies a block in).
#[derive(Debug, Default)]
struct Faulty {
    inner: Option<Arc<dyn BlobStore>>,
    /// The next checkpoint put lands, then fails.
    armed: std::sync::atomic::AtomicBool,
    /// How many of the newest checkpoints the first listing leaves out.
    hide_newest_checkpoints: std::sync::atomic::AtomicUsize,
    /// A segment and how many of its last bytes listings leave out.
    short: Option<(String, u64)>,
    /// Segment appends that still succeed; the ones after them fail,
    /// slowly and without writing (`u64::MAX` by default: none fails).
    appends_left: std::sync::atomic::AtomicU64,
    /// Every put fails without landing while this is set (a full disk).
    puts_fail: std::sync::atomic::AtomicBool,
    /// Puts tried, landed or not.
    puts: std::sync::atomic::AtomicU64,
    /// The next segment append lands, durably, then answers with an error
    /// (a crash, or a lost answer, between the write and the replies).
    landed_append_fails: std::sync::atomic::AtomicBool,
    /// The next segment append is refused, as a sealed blob refuses it:
    /// nothing written.
    refuse_append: std::sync::atomic::AtomicBool,
    /// The writer lock reports itself lost once this is set (a lease that
    /// expired or was broken).
    lock_lost: Arc<std::sync::atomic::AtomicBool>,
    /// Reads of checkpoints that fail (a passing outage), counted down.
    checkpoint_reads_fail: std::sync::atomic::AtomicU64,
    /// A segment that listings leave out, and how many more will (a
    /// listing made while the writer rolled over, which missed it).
    hide_segment: Option<(String, std::sync::atomic::AtomicU64)>,
    /// The LEDGER file is not found by the first look for it (a reader
    /// that looked while `Ledger::create` was under way).
    meta_not_yet: std::sync::atomic::AtomicBool,
}

/// A writer lock that can be lost on demand.
#[derive(Debug)]
struct LosableLock {
    _inner: Box<dyn WriterLock>,
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl WriterLock for LosableLock {
    fn check(&self) -> Result<(), StoreError> {
        if self.lost.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Io {
                op: "hold the writer lock on",
                name: "main".into(),
                source: std::io::Error::other("injected: lost"),
            });
        }
        Ok(())
    }
}

impl Faulty {
    fn over(inner: Arc<dyn BlobStore>) -> Faulty {
        Faulty {
            inner: Some(inner),
            appends_left: u64::MAX.into(),
            ..Faulty::default()
        }
    }
}

#[async_trait::async_trait]
impl Wrap for Faulty {
    fn inner(&self) -> &dyn BlobStore {
        self.inner.as_deref().expect("a store to wrap")
    }
    async fn append(&self, name: &str, at: u64, block: &[u8]) -> Result<u64, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if name.ends_with(".seg")
            && self
                .appends_left
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            // Slow to fail, as a device timing out is: callers of the
            // block before have their receipts meanwhile and queue again.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            return Err(StoreError::Io {
                op: "append to",
                name: name.to_owned(),
                source: std::io::Error::other("injected: device error"),
            });
        }
        if name.ends_with(".seg") && self.refuse_append.swap(false, SeqCst) {
            return Err(StoreError::Sealed {
                name: name.to_owned(),
            });
        }
        let end = self.inner().append(name, at, block).await?;
        if name.ends_with(".seg") && self.landed_append_fails.swap(false, SeqCst) {
            return Err(StoreError::Io {
                op: "append to",
                name: name.to_owned(),
                source: std::io::Error::other("injected: answer lost after the write"),
            });
        }
        Ok(end)
    }
    async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if name.contains("/checkpoint-")
            && self
                .checkpoint_reads_fail
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::Io {
                op: "read",
                name: name.to_owned(),
                source: std::io::Error::other("injected: service unavailable"),
            });
        }
        self.inner().read(name, offset, len).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StoreError> {
        let mut listed = self.inner().list(prefix).await?;
        if prefix.ends_with("/checkpoint-") {
            let hide = self
                .hide_newest_checkpoints
                .swap(0, std::sync::atomic::Ordering::SeqCst);
            listed.truncate(listed.len() - hide);
        }
        if let Some((name, cut)) = &self.short {
            for b in listed.iter_mut().filter(|b| &b.name == name) {
                b.size -= cut;
            }
        }
        if let Some((name, left)) = &self.hide_segment {
            use std::sync::atomic::Ordering::SeqCst;
            if listed.iter().any(|b| &b.name == name)
                && left
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                listed.retain(|b| &b.name != name);
            }
        }
        Ok(listed)
    }
    async fn info(&self, name: &str) -> Result<BlobInfo, StoreError> {
        if name.ends_with("/LEDGER")
            && self
                .meta_not_yet
                .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::NotFound {
                name: name.to_owned(),
            });
        }
        self.inner().info(name).await
    }
    async fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.puts.fetch_add(1, SeqCst);
        if self.puts_fail.load(SeqCst) {
            return Err(StoreError::Io {
                op: "put",
                name: name.to_owned(),
                source: std::io::Error::other("injected: no space left on device"),
            });
        }
        let checkpoint = name.contains("/checkpoint-");
        self.inner().put(name, data).await?;
        if checkpoint && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Io {
                op: "put",
                name: name.to_owned(),
                source: std::io::Error::other("connection reset after the request was sent"),
            });
        }
        Ok(())
    }
    async fn lock(&self, name: &str) -> Result<Box<dyn WriterLock>, StoreError> {
        Ok(Box::new(LosableLock {
            _inner: self.inner().lock(name).await?,
            lost: self.lock_lost.clone(),
        }))
    }
}

/// Life of an event, step 4: a batch durable in the log whose callers got
/// no receipt (the write's answer was lost). The callers get an error, not
/// a receipt; the batch is kept on reopening, whole and verified, like any
/// other; and a caller that retries with an exact expected version gets a
/// conflict instead of a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_batch_whose_answer_was_lost_is_kept_and_not_duplicated() {
    use bi_ledger::{ExpectedVersion, Ledger, LedgerError, LedgerReader, NewEvent};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(Wrapped(Faulty::over(store(dir.path()))));
    let ledger = ledger::create_checkpointed_on_demand(faulty.clone(), 15).await;
    ledger.append(counted("a", 5)).await.unwrap();
    let retry = || {
        vec![
            NewEvent::json("a", "Counted", &serde_json::json!({ "i": 5 }))
                .expect(ExpectedVersion::Exact(4)),
            NewEvent::json("b", "Opened", &serde_json::json!({})).expect(ExpectedVersion::NoStream),
        ]
    };
    faulty.landed_append_fails.store(true, SeqCst);
    let lost = ledger.append(retry()).await;
    assert!(
        matches!(
            lost,
            Err(LedgerError::OutcomeUnknown {
                first_seq: 5,
                last_seq: 6,
                ..
            })
        ),
        "{lost:?}"
    );
    // Later calls were never written, and say so.
    let later = ledger.append(counted("c", 1)).await;
    assert!(matches!(later, Err(LedgerError::Poisoned(_))), "{later:?}");
    drop(ledger);

    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let all = reader.read(0, None).await.unwrap();
    assert_eq!(all.len(), 7, "the unanswered batch is in the log");
    assert_eq!((all[5].stream.as_str(), all[5].stream_version), ("a", 5));
    assert_eq!((all[6].stream.as_str(), all[6].stream_version), ("b", 0));
    let report = ledger::verified(&reader).await.unwrap();
    assert_eq!((report.records, report.unsigned_tail), (7, 7));

    let ledger = Ledger::open(store(dir.path()), "main", options(15))
        .await
        .unwrap();
    match ledger.append(retry()).await {
        Err(LedgerError::VersionConflict {
            index: 0,
            current: Some(5),
            ..
        }) => {}
        other => panic!("a retry must conflict: {other:?}"),
    }
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    assert_eq!(
        reader.read(0, None).await.unwrap().len(),
        7,
        "nothing duplicated"
    );
}

/// A block the store refused (a condition, a limit; here a seal) was not
/// written, and its callers are told so: `Poisoned`, not `OutcomeUnknown`.
/// The reopened log ends before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_block_is_not_written_and_says_so() {
    use bi_ledger::{Ledger, LedgerError, LedgerReader};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(Wrapped(Faulty::over(store(dir.path()))));
    let ledger = Ledger::create(faulty.clone(), "main", options(9))
        .await
        .unwrap();
    ledger.append(counted("a", 3)).await.unwrap();
    faulty.refuse_append.store(true, SeqCst);
    match ledger.append(counted("a", 2)).await {
        Err(LedgerError::Poisoned(why)) => assert!(why.contains("is sealed"), "{why}"),
        other => panic!("a refused block: {other:?}"),
    }
    drop(ledger);
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    assert_eq!(reader.len().await.unwrap(), 3);
}

/// A store that takes fewer than two blocks per blob (a segment's header
/// and a batch) is refused by `create` and `open`, naming the limit;
/// `FsOptions::fill_ahead` past its bound is refused by the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_that_cannot_hold_a_ledger_are_refused() {
    use bi_ledger::backend::fs::{FsOptions, MAX_FILL_AHEAD};
    use bi_ledger::{Ledger, LedgerError};
    let dir = tempfile::tempdir().unwrap();
    Ledger::create(store(dir.path()), "main", options(3))
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    for max_blocks in [0, 1] {
        let opts = FsOptions {
            max_blocks,
            ..FsOptions::default()
        };
        let s: Arc<dyn BlobStore> =
            Arc::new(FsStore::with_options(dir.path(), opts).unwrap().shared());
        let want = format!("at most {max_blocks} blocks per blob, but a segment needs 2");
        match Ledger::create(s.clone(), "other", options(3)).await {
            Err(LedgerError::InvalidArgument(why)) => assert!(why.contains(&want), "{why}"),
            other => panic!("create on {max_blocks} blocks: {other:?}"),
        }
        match Ledger::open(s.clone(), "main", options(3)).await {
            Err(LedgerError::InvalidArgument(why)) => assert!(why.contains(&want), "{why}"),
            other => panic!("open on {max_blocks} blocks: {other:?}"),
        }
        assert!(
            s.list("other/").await.unwrap().is_empty(),
            "nothing created"
        );
    }
    for fill_ahead in [MAX_FILL_AHEAD + 1, u64::MAX] {
        let opts = FsOptions {
            fill_ahead,
            ..FsOptions::default()
        };
        match FsStore::with_options(dir.path(), opts) {
            Err(e) => assert!(e.to_string().contains("fill_ahead"), "{e}"),
            Ok(_) => panic!("fill_ahead {fill_ahead} was taken"),
        }
    }
}

/// A writer whose lock is lost writes nothing more: no block, and no
/// checkpoint or cache of one (on Azure another writer may hold the lease
/// by then, and a checkpoint replaces caches of its size). What it wrote
/// before stays, intact and unsigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_its_lock_puts_nothing_more() {
    use bi_ledger::{LedgerError, LedgerReader};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(Wrapped(Faulty::over(store(dir.path()))));
    let ledger = ledger::create_checkpointed_on_demand(faulty.clone(), 14).await;
    ledger.append(counted("a", 1500)).await.unwrap();
    let puts = faulty.puts.load(SeqCst);
    faulty.lock_lost.store(true, SeqCst);
    let lost = |r: &Result<_, LedgerError>| matches!(r, Err(LedgerError::Poisoned(why)) if why.contains("writer lock lost"));
    let cp = ledger.checkpoint().await;
    assert!(lost(&cp), "{cp:?}");
    let more = ledger.append(counted("a", 1)).await;
    assert!(matches!(more, Err(LedgerError::Poisoned(_))), "{more:?}");
    let close = ledger.close().await;
    assert!(lost(&close), "{close:?}");
    assert_eq!(
        faulty.puts.load(SeqCst),
        puts,
        "a put after the lock was lost"
    );
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let report = ledger::verified(&reader).await.unwrap();
    assert_eq!(
        (
            report.records,
            report.unsigned_tail,
            report.caches_without_checkpoint
        ),
        (1500, 1500, Some(vec![]))
    );
}

/// A block write that fails poisons the writer: the callers of that block
/// get `OutcomeUnknown` naming their sequence numbers, every later one
/// `Poisoned` (nobody waits for good), and a reopened ledger holds exactly
/// the acknowledged events, with a chain that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_block_write_poisons_the_writer_and_loses_no_receipt() {
    use bi_ledger::{Ledger, LedgerError, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(Wrapped(Faulty::over(store(dir.path()))));
    let opts = options(6);
    let ledger = Ledger::create(faulty.clone(), "main", opts.clone())
        .await
        .unwrap();
    // Batches large enough to be hashed in parallel, and small ones.
    ledger.append(counted("big", 600)).await.unwrap();
    faulty
        .appends_left
        .store(5, std::sync::atomic::Ordering::SeqCst);
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for k in 0..50u64 {
                    let n = if k % 7 == 0 { 300 } else { 1 };
                    match ledger.append(counted(&format!("s-{t}"), n)).await {
                        Ok(r) => acked.extend(r.into_iter().map(|r| r.seq)),
                        Err(LedgerError::OutcomeUnknown {
                            first_seq,
                            last_seq,
                            cause,
                        }) => {
                            assert!(cause.contains("injected: device error"), "{cause}");
                            assert_eq!(last_seq + 1 - first_seq, n, "the call's own numbers");
                            return (acked, Some(Some(first_seq)));
                        }
                        Err(LedgerError::Poisoned(why)) => {
                            assert!(why.contains("injected: device error"), "{why}");
                            return (acked, Some(None));
                        }
                        Err(e) => panic!("task {t}: {e}"),
                    }
                }
                (acked, None)
            })
        })
        .collect();
    let mut acked: Vec<u64> = (0..600).collect();
    let mut unknown = Vec::new();
    for t in tasks {
        let (seqs, failed) = tokio::time::timeout(std::time::Duration::from_secs(30), t)
            .await
            .expect("no caller waits for good")
            .unwrap();
        acked.extend(seqs);
        unknown.extend(failed.expect("every caller meets the failure"));
    }
    // The failed block's callers are told its outcome is unknown, at the
    // log's end; every later caller, that nothing was written.
    assert!(!unknown.is_empty(), "the failed block's callers are told");
    let end = acked.len() as u64;
    unknown.sort_unstable();
    assert_eq!(
        unknown[0], end,
        "the unknown outcome starts where receipts end"
    );
    assert!(matches!(
        ledger.append(counted("late", 1)).await,
        Err(LedgerError::Poisoned(_))
    ));
    // Closing a poisoned writer answers Poisoned once it has given up the
    // lock (a dropped handle lets the writer go in the background).
    assert!(matches!(
        ledger.close().await,
        Err(LedgerError::Poisoned(_))
    ));

    acked.sort_unstable();
    let n = acked.len() as u64;
    assert_eq!(acked, (0..n).collect::<Vec<_>>(), "receipts are contiguous");
    let ledger = Ledger::open(store(dir.path()), "main", opts).await.unwrap();
    let verifier = ledger.verifier().clone();
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    assert_eq!(
        reader.len().await.unwrap(),
        n,
        "exactly the acknowledged events"
    );
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.records, n);
}

/// A checkpoint put that landed but reported an error leaves the writer
/// able to checkpoint: the next attempt finds the same statement stored
/// and keeps it. A different checkpoint stored at that size is an
/// integrity error, never overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_whose_answer_was_lost_is_kept() {
    use bi_ledger::ledger::layout;
    use bi_ledger::{Ledger, LedgerError, LedgerReader, NewEvent};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let lossy = Arc::new(Wrapped(Faulty::over(store(dir.path()))));
    let opts = options(5);
    let ledger = Ledger::create(lossy.clone(), "main", opts.clone())
        .await
        .unwrap();
    let events = |n: u64| -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent::json("order-1", "Placed", &json!({ "i": i })))
            .collect()
    };
    ledger.append(events(10)).await.unwrap();
    lossy.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = ledger.checkpoint().await.unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");
    let blob = layout::checkpoint("main", 10);
    let landed = lossy.inner().read_all(&blob).await.unwrap();

    let info = ledger.checkpoint().await.unwrap();
    assert_eq!(info.checkpoint.size, 10);
    assert_eq!(info.blob, blob);
    assert_eq!(
        info.note.as_bytes(),
        landed,
        "the stored note is kept as it is"
    );

    // Someone else's checkpoint at the next size is refused, and stays.
    ledger.append(events(5)).await.unwrap();
    let other = layout::checkpoint("main", 15);
    lossy.inner().put(&other, &landed).await.unwrap();
    match ledger.checkpoint().await {
        Err(LedgerError::Integrity(e)) => {
            assert_eq!(e.blob, other, "{e}");
            assert!(e.what.contains("already stored"), "{e}");
        }
        r => panic!("a foreign checkpoint at size 15 gave {r:?}"),
    }
    assert_eq!(lossy.inner().read_all(&other).await.unwrap(), landed);
    drop(ledger);

    // Until it is removed, that checkpoint fails verification too.
    let reader = LedgerReader::open(store(dir.path()), "main").await;
    let verified = match reader {
        Ok(r) => r
            .verify(r.recorded_verifier(), &|_, _| {})
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        verified.is_err(),
        "a ledger with a foreign checkpoint verified"
    );
}

/// A ledger of 1,500 records (checkpointed only on demand) whose checkpoint
/// at 1,500 landed but answered with an error.
async fn with_a_checkpoint_whose_answer_was_lost(
    dir: &std::path::Path,
) -> (Arc<Wrapped<Faulty>>, bi_ledger::Ledger) {
    let lossy = Arc::new(Wrapped(Faulty::over(store(dir))));
    let mut opts = options(10);
    opts.checkpoint_every_events = None;
    let ledger = bi_ledger::Ledger::create(lossy.clone(), "main", opts)
        .await
        .unwrap();
    ledger.append(counted("a", 1500)).await.unwrap();
    lossy.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    ledger.checkpoint().await.unwrap_err();
    (lossy, ledger)
}

/// A checkpoint put that landed but answered with an error, followed by
/// more appends before the next checkpoint: that checkpoint exists, so the
/// caches written beside the next one (stream index, node cache) must
/// start at it, as `verify` re-derives them; and the writer goes on from
/// it. (A retry at the same size is `checkpoint_whose_answer_was_lost_is_kept`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_after_a_checkpoint_whose_answer_was_lost() {
    use bi_ledger::format::nodes::NodeCache;
    use bi_ledger::format::stream_index::StreamIndex;
    use bi_ledger::LedgerReader;
    let dir = tempfile::tempdir().unwrap();
    let (lossy, ledger) = with_a_checkpoint_whose_answer_was_lost(dir.path()).await;
    ledger.append(counted("b", 1000)).await.unwrap();
    assert_eq!(ledger.checkpoint().await.unwrap().checkpoint.size, 2500);
    ledger.append(counted("c", 10)).await.unwrap();
    ledger.close().await.unwrap();

    let inner = lossy.inner();
    let idx = StreamIndex::decode(
        &inner
            .read_all("main/streams-00000000000000002500")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!((idx.from, idx.to), (1500, 2500));
    let nodes = NodeCache::decode(
        &inner
            .read_all("main/nodes-00000000000000002500")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!((nodes.from, nodes.to, nodes.hashes.len()), (1500, 2500, 2));
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let report = ledger::verified(&reader).await.unwrap();
    assert_eq!((report.records, report.checkpoints), (2510, 4));
    assert_eq!(report.caches_without_checkpoint, Some(vec![]));
}

/// As above, but the store cannot be read when the writer first looks at
/// the checkpoint whose answer was lost. The writer keeps it as unsettled
/// and settles it at the next checkpoint, so that one's caches still start
/// at it: before, it forgot it, put caches that started at the checkpoint
/// before, and verify failed the ledger on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_whose_answer_was_lost_and_that_cannot_be_read_at_once() {
    use bi_ledger::format::stream_index::StreamIndex;
    use bi_ledger::LedgerReader;
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (lossy, ledger) = with_a_checkpoint_whose_answer_was_lost(dir.path()).await;
    // The next checkpoint finds it stored but cannot read it: it fails,
    // and so does the one after, which settles it first (without the fix
    // that one went ahead with caches from the checkpoint before).
    lossy.checkpoint_reads_fail.store(1, SeqCst);
    let err = ledger.checkpoint().await.unwrap_err();
    assert!(err.to_string().contains("service unavailable"), "{err}");
    ledger.append(counted("b", 1000)).await.unwrap();
    lossy.checkpoint_reads_fail.store(1, SeqCst);
    let err = ledger.checkpoint().await.unwrap_err();
    assert!(err.to_string().contains("service unavailable"), "{err}");
    // Readable again: settled, and the new checkpoint's caches start at it.
    assert_eq!(ledger.checkpoint().await.unwrap().checkpoint.size, 2500);
    ledger.close().await.unwrap();
    let idx = StreamIndex::decode(
        &lossy
            .inner()
            .read_all("main/streams-00000000000000002500")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!((idx.from, idx.to), (1500, 2500));
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let report = ledger::verified(&reader).await.unwrap();
    assert_eq!((report.records, report.checkpoints), (2500, 3));
    assert_eq!(report.missing_caches, Vec::<String>::new());
}

/// A stream index whose checkpoint never landed (a crash between the two
/// puts) is not chained: the next checkpoint's index starts where it does,
/// and one stream's read still goes through the indexes, reading only the
/// batches that may hold it (a damaged batch of another stream there is
/// not read; a scan of the log from the orphan on would meet it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_stream_index_does_not_end_the_indexed_reads() {
    use bi_ledger::{Ledger, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(Wrapped(ledger::Interrupted::losing_a_checkpoint(store(
        dir.path(),
    ))));
    let ledger = ledger::create_checkpointed_on_demand(faulty.clone(), 11).await;
    ledger.append(counted("a", 5000)).await.unwrap();
    ledger.checkpoint().await.unwrap();
    ledger.append(counted("b", 5000)).await.unwrap();
    faulty
        .lose_checkpoint
        .store(true, std::sync::atomic::Ordering::SeqCst);
    ledger.checkpoint().await.unwrap_err();
    // One more record, so that the orphan is not at the log's end (there,
    // the next writer would complete its checkpoint as it opens).
    ledger
        .append_one(bi_ledger::NewEvent::bytes("z", "T", vec![1]))
        .await
        .unwrap();
    // The crash: a writer that went on would put that checkpoint again
    // before its next one; the next writer knows nothing of it.
    drop(ledger);
    let mut opts = options(11);
    opts.checkpoint_every_events = None;
    let ledger = Ledger::open(faulty.clone(), "main", opts).await.unwrap();
    let damaged = ledger.append(counted("c", 5000)).await.unwrap()[0].offset;
    ledger.append(counted("a", 10)).await.unwrap();
    assert_eq!(ledger.checkpoint().await.unwrap().checkpoint.size, 15_011);
    ledger.close().await.unwrap();
    let inner = &faulty.inner;
    assert!(inner
        .info("main/streams-00000000000000010000")
        .await
        .is_ok());
    assert!(inner
        .info("main/checkpoint-00000000000000010000")
        .await
        .is_err());

    damage_batch(dir.path(), damaged);
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let got = reader
        .read_stream_indexed("a")
        .await
        .unwrap()
        .expect("indexed");
    assert_eq!(got.len(), 5010);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, r)| r.stream_version == i as u64));
}

/// Checkpoints by event count keep coming under a load that never lets the
/// writer's queue run dry: the writer stops taking appends until everything
/// admitted is durable, checkpoints, and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_checkpoints_are_not_starved_by_load() {
    use bi_ledger::{Ledger, LedgerReader, NewEvent};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(6);
    opts.checkpoint_every_events = Some(200);
    opts.checkpoint_interval = None;
    let ledger = Ledger::create(store(dir.path()), "main", opts)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    let e = NewEvent::json(format!("s-{t}"), "Tick", &json!({ "i": i }));
                    ledger.append_one(e).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let sizes: Vec<u64> = reader
        .checkpoints(reader.recorded_verifier())
        .await
        .unwrap()
        .iter()
        .map(|(_, c)| c.size)
        .collect();
    // 3,200 events, one checkpoint at least every 200 plus what a batch
    // admitted before it adds: well over ten before close.
    assert!(sizes.len() > 10, "checkpoints at {sizes:?}");
    for w in sizes.windows(2) {
        assert!(
            w[1] - w[0] < 200 + 64,
            "a gap of {} events: {sizes:?}",
            w[1] - w[0]
        );
    }
    ledger.close().await.unwrap();
}

/// The writer hashes on threads of its own: appends complete while every
/// thread of rayon's global pool is busy (here, blocked until they do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_do_not_wait_for_the_global_rayon_pool() {
    use bi_ledger::{Ledger, NewEvent};
    use serde_json::json;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    let gate = Arc::new((Mutex::new((0usize, false)), Condvar::new()));
    let threads = rayon::current_num_threads();
    for _ in 0..threads {
        let gate = gate.clone();
        rayon::spawn(move || {
            let (lock, cv) = &*gate;
            let mut g = lock.lock().unwrap();
            g.0 += 1;
            cv.notify_all();
            // Held until the appends are done (or for a minute at most,
            // so that a failing run ends).
            drop(
                cv.wait_timeout_while(g, Duration::from_secs(60), |g| !g.1)
                    .unwrap(),
            );
        });
    }
    {
        let (lock, cv) = &*gate;
        let g = lock.lock().unwrap();
        drop(cv.wait_while(g, |g| g.0 < threads).unwrap());
    }

    let dir = tempfile::tempdir().unwrap();
    let opts = options(8);
    let appended = tokio::time::timeout(Duration::from_secs(20), async {
        let ledger = Ledger::create(store(dir.path()), "main", opts).await?;
        // Large enough to be hashed in parallel, then one on its own.
        let many = (0..1000)
            .map(|i| NewEvent::json("bulk", "Counted", &json!({ "i": i })))
            .collect();
        ledger.append(many).await?;
        ledger
            .append_one(NewEvent::json("one", "Counted", &json!({})))
            .await?;
        ledger.close().await
    })
    .await;
    {
        let (lock, cv) = &*gate;
        lock.lock().unwrap().1 = true;
        cv.notify_all();
    }
    let info = appended
        .expect("appends waited for rayon's global pool")
        .unwrap();
    assert_eq!(info.checkpoint.size, 1001);
}

/// Proofs from the log equal proofs from the whole tree in memory
/// (`merkle::inclusion_proof` over every leaf hash), for records at batch,
/// segment and chunk boundaries and for every pair of checkpoints: the
/// prover hashes chunks in parallel and merges ranges that straddle
/// batches, segments and chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_equal_the_in_memory_tree_across_batches_segments_and_chunks() {
    use bi_ledger::format::merkle;
    use bi_ledger::{Ledger, LedgerReader, NewEvent};
    use serde_json::json;
    // Small segments (many rollovers) with small batches, then one segment
    // larger than a scan chunk (8 MiB) in large batches.
    for (segment_max_bytes, batches) in [
        (64 * 1024, vec![1usize, 7, 1, 33, 2, 250, 5, 64, 1, 129, 3]),
        (1 << 30, vec![4000; 8]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(5);
        opts.segment_max_bytes = segment_max_bytes;
        opts.checkpoint_every_events = None;
        let ledger = Ledger::create(store(dir.path()), "main", opts)
            .await
            .unwrap();
        let pad = "x".repeat(256);
        let mut boundaries = vec![0u64];
        let mut n = 0u64;
        for round in 0..3 {
            for (b, &count) in batches.iter().enumerate() {
                let events = (0..count)
                    .map(|i| {
                        NewEvent::json(
                            format!("s-{}", (n + i as u64) % 13),
                            "Counted",
                            &json!({ "round": round, "batch": b, "i": i, "pad": pad }),
                        )
                    })
                    .collect();
                n += ledger.append(events).await.unwrap().len() as u64;
                boundaries.push(n);
            }
            ledger.checkpoint().await.unwrap();
        }
        let verifier = ledger.verifier().clone();
        ledger.close().await.unwrap();

        let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
        let (leaves, cps) = ledger::tree(&reader, &verifier).await;
        assert_eq!(leaves.len() as u64, n);
        assert_eq!(cps.len(), 4, "checkpoints 0, 3 rounds (close adds none)");
        if segment_max_bytes < 1 << 20 {
            assert!(
                reader.segments().len() > 5,
                "{} segments",
                reader.segments().len()
            );
        } else {
            assert!(reader.segments()[0].size > 8 << 20);
        }
        for cp in &cps[1..] {
            let size = cp.size;
            let mut seqs: Vec<u64> = boundaries
                .iter()
                .flat_map(|&b| [b.saturating_sub(1), b, b + 1])
                .chain([size / 2, size / 3 + 1])
                .filter(|&s| s < size)
                .collect();
            seqs.sort_unstable();
            seqs.dedup();
            if seqs.len() > 24 {
                let step = seqs.len() / 24;
                seqs = seqs.into_iter().step_by(step).collect();
            }
            seqs.push(size - 1);
            for seq in seqs {
                let p = reader.inclusion_proof(seq, size).await.unwrap();
                let want = merkle::inclusion_proof(&leaves[..size as usize], seq).unwrap();
                assert_eq!(
                    p.proof,
                    ledger::hexes(&want),
                    "inclusion of {seq} in {size}"
                );
                assert_eq!(p.verify(cp).unwrap().seq, seq);
            }
        }
        for (i, old) in cps.iter().enumerate() {
            for new in &cps[i..] {
                let p = reader.consistency_proof(old.size, new.size).await.unwrap();
                let want =
                    merkle::consistency_proof(&leaves[..new.size as usize], old.size).unwrap();
                assert_eq!(
                    p.proof,
                    ledger::hexes(&want),
                    "consistency {} -> {}",
                    old.size,
                    new.size
                );
                p.verify(old, new).unwrap();
            }
        }
    }
}

/// A proof needs every record up to its size: a damaged batch on the way
/// is an integrity error naming the segment and the batch's offset, never
/// a proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_over_a_damaged_batch_is_an_integrity_error() {
    use bi_ledger::{Ledger, LedgerError, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let opts = options(6);
    let ledger = Ledger::create(store(dir.path()), "main", opts)
        .await
        .unwrap();
    ledger.append(counted("s", 10)).await.unwrap();
    let damaged = ledger.append(counted("s", 10)).await.unwrap();
    ledger.append(counted("s", 10)).await.unwrap();
    ledger.close().await.unwrap();
    damage_batch(dir.path(), damaged[0].offset);

    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    for seq in [0, 15, 29] {
        match reader.inclusion_proof(seq, 30).await {
            Err(LedgerError::Integrity(e)) => {
                assert_eq!(e.blob, "main/0000000000.seg", "{e}");
                assert_eq!(e.offset, damaged[0].offset, "{e}");
            }
            r => panic!("proof of {seq}: wanted an integrity error, got {r:?}"),
        }
    }
}

/// Proofs come from the node caches beside the checkpoints and the few
/// records around the proven one and the tree's right edge: a damaged batch
/// elsewhere is not read. A cache with a wrong node (checksum intact) makes
/// the proof disagree with the signed root, and the prover falls back to
/// the whole log, which then meets the damage. (What holds on every store,
/// including `verify` naming the cache, is in `ledger::proofs_through_node_caches`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_read_the_node_caches_not_the_log() {
    use bi_ledger::format::merkle;
    use bi_ledger::format::nodes::NodeCache;
    use bi_ledger::{LedgerError, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger::create_checkpointed_on_demand(store(dir.path()), 8).await;
    let mut receipts = Vec::new();
    for _ in 0..4 {
        for _ in 0..10 {
            receipts.extend(ledger.append(counted("s", 1000)).await.unwrap());
        }
        ledger.checkpoint().await.unwrap();
    }
    let verifier = ledger.verifier().clone();
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let (leaves, cps) = ledger::tree(&reader, &verifier).await;
    let sizes: Vec<u64> = cps.iter().map(|c| c.size).collect();
    assert_eq!(sizes, [0, 10_000, 20_000, 30_000, 40_000]);

    let damaged = receipts[15_000].offset;
    damage_batch(dir.path(), damaged);
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    for (seq, cp) in [
        (39_500, &cps[4]),
        (0, &cps[4]),
        (20_001, &cps[3]),
        (100, &cps[2]),
    ] {
        let p = reader.inclusion_proof(seq, cp.size).await.unwrap();
        let want = merkle::inclusion_proof(&leaves[..cp.size as usize], seq).unwrap();
        assert_eq!(
            p.proof,
            ledger::hexes(&want),
            "inclusion of {seq} in {}",
            cp.size
        );
    }
    let p = reader.consistency_proof(20_000, 40_000).await.unwrap();
    let want = merkle::consistency_proof(&leaves, 20_000).unwrap();
    assert_eq!(p.proof, ledger::hexes(&want));

    // A wrong node, under a checksum that fits it.
    let blob = FsStore::file_path(dir.path(), "main/nodes-00000000000000040000");
    let mut cache = NodeCache::decode(&std::fs::read(&blob).unwrap()).unwrap();
    let last = cache.hashes.len() - 1;
    cache.hashes[last][0] ^= 1;
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, cache.encode()).unwrap();
    match reader.inclusion_proof(0, 40_000).await {
        Err(LedgerError::Integrity(e)) => {
            assert_eq!(
                (e.blob.as_str(), e.offset),
                ("main/0000000000.seg", damaged),
                "{e}"
            )
        }
        r => panic!("wanted the damaged batch, met by proving from the log; got {r:?}"),
    }
}

/// The record right after a cached subtree has a proof made only of cached
/// nodes: the prover reads that one record for its entry and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_of_only_cached_nodes_still_carries_the_entry() {
    use bi_ledger::format::merkle;
    use bi_ledger::LedgerReader;
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger::create_checkpointed_on_demand(store(dir.path()), 9).await;
    ledger.append(counted("s", 2048)).await.unwrap();
    ledger.append(counted("t", 1)).await.unwrap();
    let verifier = ledger.verifier().clone();
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let (leaves, cps) = ledger::tree(&reader, &verifier).await;
    assert_eq!(cps.last().unwrap().size, 2049);
    let p = reader.inclusion_proof(2048, 2049).await.unwrap();
    assert_eq!(
        p.proof,
        ledger::hexes(&merkle::inclusion_proof(&leaves, 2048).unwrap())
    );
    assert_eq!(p.verify(cps.last().unwrap()).unwrap().stream, "t");
}

/// A read from a sequence number starts at the batch that holds it, found
/// through the stream indexes, not at the start of its segment: a damaged
/// batch before it is not read (a read from 0 stops there). Without the
/// index, or with one that names the wrong batch, the read scans the
/// segment as before; it never returns other records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_a_sequence_number_seeks_through_the_index() {
    use bi_ledger::format::stream_index::StreamIndex;
    use bi_ledger::{LedgerError, LedgerReader, NewEvent};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger::create_checkpointed_on_demand(store(dir.path()), 8).await;
    let batch = |base: u64, n: u64| -> Vec<NewEvent> {
        (0..n)
            .map(|i| {
                NewEvent::json(
                    format!("s-{}", (base + i) % 7),
                    "Counted",
                    &json!({ "i": base + i }),
                )
            })
            .collect()
    };
    let mut receipts = Vec::new();
    for k in 0..36u64 {
        receipts.extend(ledger.append(batch(k * 1000, 1000)).await.unwrap());
        if k % 12 == 11 {
            ledger.checkpoint().await.unwrap();
        }
    }
    ledger.close().await.unwrap();
    let from = 30_500u64;
    let want: Vec<u64> = (from..36_000).collect();
    let seqs = |records: Vec<bi_ledger::format::record::Record>| -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    };
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    assert_eq!(reader.segments().len(), 1);
    assert_eq!(seqs(reader.read(from, None).await.unwrap()), want);

    // An index that names another batch (re-encoded, so it decodes) is
    // not followed.
    let blob = FsStore::file_path(dir.path(), "main/streams-00000000000000036000");
    let mut idx = StreamIndex::decode(&std::fs::read(&blob).unwrap()).unwrap();
    let original = idx.clone();
    let i = idx
        .batches
        .iter()
        .position(|b| b.first_seq == 30_000)
        .unwrap();
    idx.batches[i].position = idx.batches[i - 3].position;
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, idx.encode()).unwrap();
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    assert_eq!(seqs(reader.read(from, None).await.unwrap()), want);
    std::fs::write(&blob, original.encode()).unwrap();

    // Damage batch 20,000..21,000, after its frame header.
    damage_batch(dir.path(), receipts[20_000].offset);
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    assert_eq!(seqs(reader.read(from, None).await.unwrap()), want);
    // Counting starts at the newest checkpoint's last batch, too.
    assert_eq!(reader.len().await.unwrap(), 36_000);
    match reader.read(0, None).await {
        Err(LedgerError::Integrity(e)) => assert_eq!(e.offset, receipts[20_000].offset, "{e}"),
        r => panic!(
            "read from 0: wanted an integrity error, got {:?}",
            r.map(|v| v.len())
        ),
    }
    // The seek reads the header of the batch holding `from` only: damage
    // past it is met, and named, by the read that starts there.
    damage_batch(dir.path(), receipts[30_000].offset);
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    match reader.read(from, None).await {
        Err(LedgerError::Integrity(e)) => assert_eq!(e.offset, receipts[30_000].offset, "{e}"),
        r => panic!(
            "read of a damaged batch: wanted an integrity error, got {:?}",
            r.map(|v| v.len())
        ),
    }
    // Without the index the read scans the segment, and meets the damage.
    std::fs::remove_file(&blob).unwrap();
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    assert!(matches!(
        reader.read(from, None).await,
        Err(LedgerError::Integrity(_))
    ));
    assert!(matches!(reader.len().await, Err(LedgerError::Integrity(_))));
}

/// `verify` of a ledger that a writer is appending to and checkpointing:
/// a batch listed while it was being written is not a torn tail, and the
/// snapshot of a checkpoint that was newest when verify listed them, pruned
/// since by a newer checkpoint, is not missing. A tail that stays torn is
/// still an integrity error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_of_a_ledger_being_written() {
    use bi_ledger::{LedgerError, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 4).await;
    for _ in 0..3 {
        ledger.append(counted("order-1", 10)).await.unwrap();
        ledger.checkpoint().await.unwrap();
    }
    // The writer keeps the two newest snapshots: 20 and 30.
    ledger.append(counted("order-1", 10)).await.unwrap(); // not checkpointed
    let verifier = ledger.verifier().clone();
    drop(ledger);
    std::thread::sleep(std::time::Duration::from_millis(200)); // the writer's thread ends
    assert!(!FsStore::file_path(dir.path(), "main/snapshot-00000000000000000010").exists());

    let view = |hide: usize, short: Option<u64>| {
        Wrapped(Faulty {
            hide_newest_checkpoints: hide.into(),
            short: short.map(|n| ("main/0000000000.seg".to_owned(), n)),
            ..Faulty::over(store(dir.path()))
        })
    };
    // Verify's listing ends at the checkpoint of 10, whose snapshot two
    // later checkpoints have pruned since.
    let reader = LedgerReader::open(Arc::new(view(2, None)), "main")
        .await
        .unwrap();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!((report.records, report.checkpoints), (40, 2));

    // The last batch, listed 10 bytes short: the store shows it whole a
    // moment later, so verify stops before it without an error.
    let reader = LedgerReader::open(Arc::new(view(0, Some(10))), "main")
        .await
        .unwrap();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.records, 30);

    // Really cut 10 bytes short: a torn tail, reported. (The writer left
    // the zeros it wrote ahead of its appends: they go first.)
    let seg = dir.path().join("main/0000000000.seg");
    let bytes = std::fs::read(&seg).unwrap();
    let len = bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    match reader.verify(&verifier, &|_, _| {}).await {
        Err(LedgerError::Integrity(e)) => assert!(e.what.contains("torn"), "{e}"),
        r => panic!("a torn tail verified: {r:?}"),
    }
}

/// A reader sees the log as it was when opened: a proof against a
/// checkpoint signed after that says so, and a new reader proves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_proves_what_it_saw_when_opened() {
    use bi_ledger::{Ledger, LedgerError, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let opts = options(3);
    let ledger = Ledger::create(store(dir.path()), "main", opts)
        .await
        .unwrap();
    ledger.append(counted("s", 10)).await.unwrap();
    ledger.checkpoint().await.unwrap();
    let early = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    ledger.append(counted("s", 10)).await.unwrap();
    let newer = ledger.checkpoint().await.unwrap().checkpoint;
    assert_eq!(newer.size, 20);
    match early.inclusion_proof(15, 20).await {
        Err(LedgerError::InvalidArgument(why)) => {
            assert!(
                why.contains("sees 10 records") && why.contains("open a new one"),
                "{why}"
            )
        }
        r => panic!("a proof beyond the reader's view: {r:?}"),
    }
    let now = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let p = now.inclusion_proof(15, 20).await.unwrap();
    assert_eq!(p.verify(&newer).unwrap().seq, 15);
    ledger.close().await.unwrap();
}

mod expected_versions {
    use super::{options, store};
    use bi_ledger::model::ExpectedVersion;
    use bi_ledger::{Ledger, LedgerError, NewEvent};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn expected() -> impl Strategy<Value = ExpectedVersion> {
        prop_oneof![
            Just(ExpectedVersion::Any),
            Just(ExpectedVersion::NoStream),
            (0u64..3).prop_map(ExpectedVersion::Exact),
        ]
    }

    /// Calls of one to four events on three streams, each with an expected
    /// version.
    fn calls() -> impl Strategy<Value = Vec<Vec<(u8, ExpectedVersion)>>> {
        prop::collection::vec(prop::collection::vec((0u8..3, expected()), 1..5), 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Against a model: a call whose events all meet their expected
        /// versions (counting the call's own earlier events) is written
        /// whole; any other writes nothing and leaves every stream's
        /// version as it was, so the calls after it see the same head.
        #[test]
        fn a_conflict_writes_nothing_of_its_call(calls in calls()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let opts = options(3);
                let ledger = Ledger::create(store(dir.path()), "main", opts).await.unwrap();
                let mut model: HashMap<u8, u64> = HashMap::new();
                let mut size = 0u64;
                for call in &calls {
                    let mut local = model.clone();
                    let mut conflict = None;
                    let mut want = Vec::new();
                    for (i, (s, exp)) in call.iter().enumerate() {
                        let current = local.get(s).copied();
                        if !exp.admits(current) {
                            // The error gives the ledger's version, and how
                            // many of the call's events on the stream came first.
                            let earlier = call[..i].iter().filter(|(x, _)| x == s).count();
                            conflict = Some((i, model.get(s).copied(), earlier));
                            break;
                        }
                        let v = current.map_or(0, |c| c + 1);
                        local.insert(*s, v);
                        want.push((size + want.len() as u64, v));
                    }
                    let events = call
                        .iter()
                        .map(|(s, exp)| NewEvent::json(format!("s{s}"), "T", &serde_json::json!({})).expect(*exp))
                        .collect();
                    match (ledger.append(events).await, conflict) {
                        (Ok(receipts), None) => {
                            let got: Vec<_> = receipts.iter().map(|r| (r.seq, r.version)).collect();
                            prop_assert_eq!(got, want);
                            size += receipts.len() as u64;
                            model = local;
                        }
                        (Err(LedgerError::VersionConflict { index, current, earlier, .. }), Some((i, c, e))) => {
                            prop_assert_eq!((index, current, earlier), (i, c, e));
                        }
                        (r, c) => prop_assert!(false, "call {:?}: got {:?}, model says conflict {:?}", call, r.map(|v| v.len()), c),
                    }
                }
                ledger.close().await.unwrap();
                let reader = bi_ledger::LedgerReader::open(store(dir.path()), "main").await.unwrap();
                prop_assert_eq!(reader.read(0, None).await.unwrap().len() as u64, size);
                Ok(())
            })?;
        }
    }
}

/// A listing made while the writer rolls over may miss a segment created
/// just before one it shows. Open lists again before it calls such a gap
/// damage; one that three listings in a row show is reported, by name. A
/// LEDGER file missed by the first look is looked for again before its
/// segments make it a lost one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_missed_by_a_listing_is_listed_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(6);
    opts.segment_max_blocks = 2; // header and one batch a segment
    let ledger = bi_ledger::Ledger::create(store(dir.path()), "main", opts.clone())
        .await
        .unwrap();
    for stream in ["a", "b", "c"] {
        ledger.append(counted(stream, 2)).await.unwrap();
    }
    ledger.close().await.unwrap();
    let hidden = |listings: u64| {
        Arc::new(Wrapped(Faulty {
            hide_segment: Some(("main/0000000001.seg".into(), listings.into())),
            ..Faulty::over(store(dir.path()))
        }))
    };
    for listings in [1, 2] {
        let reader = bi_ledger::LedgerReader::open(hidden(listings), "main")
            .await
            .unwrap();
        let n = reader.read(0, None).await.unwrap().len();
        assert_eq!(n, 6, "missed by {listings} listing(s)");
        let ledger = bi_ledger::Ledger::open(hidden(listings), "main", opts.clone())
            .await
            .unwrap();
        ledger.close().await.unwrap();
    }
    // The LEDGER file put after a reader first looked for it, the segments
    // after it looked: not a lost identity file.
    let creating = Faulty {
        meta_not_yet: true.into(),
        ..Faulty::over(store(dir.path()))
    };
    let reader = bi_ledger::LedgerReader::open(Arc::new(Wrapped(creating)), "main")
        .await
        .unwrap();
    assert_eq!(reader.read(0, None).await.unwrap().len(), 6);
    let e = match bi_ledger::LedgerReader::open(hidden(3), "main").await {
        Err(bi_ledger::LedgerError::Integrity(e)) => e,
        other => panic!("expected an integrity error, got {:?}", other.map(|_| ())),
    };
    assert_eq!(e.blob, "main/0000000002.seg", "{e}");
    assert!(
        e.what.contains("segment 1 is missing before segment 2"),
        "{e}"
    );
}

/// A record changed with its CRC mended (the careful forger) leaves every
/// frame whole; only the checkpoint's root disagrees. Verify names the
/// first batch after the previous checkpoint, here at the start of the
/// segment the writer rolled over to, and the records in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_is_placed_between_two_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(6);
    opts.segment_max_blocks = 3; // header and two batches a segment
    let ledger = bi_ledger::Ledger::create(store(dir.path()), "main", opts.clone())
        .await
        .unwrap();
    ledger.append(counted("a", 3)).await.unwrap();
    ledger.append(counted("b", 3)).await.unwrap();
    ledger.checkpoint().await.unwrap(); // size 6, the end of segment 0
    let r = ledger.append(counted("c", 4)).await.unwrap();
    ledger.close().await.unwrap(); // size 10
    assert_eq!(r[0].segment, 1, "the third batch opens segment 1");
    let seg = dir.path().join("main/0000000001.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    forge::forge_in_frame(&mut bytes, r[0].offset as usize, br#""i":3"#, br#""i":9"#);
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&seg, &bytes).unwrap();

    let reader = bi_ledger::LedgerReader::open(store(dir.path()), "main")
        .await
        .unwrap();
    let verifier = reader.recorded_verifier().clone();
    let e = match reader.verify(&verifier, &|_, _| {}).await {
        Err(bi_ledger::LedgerError::Integrity(e)) => e,
        other => panic!("expected an integrity error, got {other:?}"),
    };
    assert_eq!(
        (e.blob.as_str(), e.offset, e.seq),
        ("main/0000000001.seg", r[0].offset, Some(6)),
        "{e}"
    );
    assert!(e.what.contains("records 6..10"), "{e}");

    // Nor is a proof handed out: the node caches do not give the signed
    // root (they hold none here), and neither does the log.
    match reader.inclusion_proof(6, 10).await {
        Err(bi_ledger::LedgerError::Integrity(e)) => assert_eq!(
            (e.blob.as_str(), e.seq),
            ("main/checkpoint-00000000000000000010", Some(6)),
            "{e}"
        ),
        other => panic!("an inclusion proof against a forged log: {other:?}"),
    }
    match reader.consistency_proof(6, 10).await {
        Err(bi_ledger::LedgerError::Integrity(e)) => {
            assert_eq!(e.blob, "main/checkpoint-00000000000000000010", "{e}")
        }
        other => panic!("a consistency proof against a forged log: {other:?}"),
    }
    // What the forgery did not touch is still proven.
    assert!(reader.inclusion_proof(2, 6).await.is_ok());
}

/// A record that does not decode (forged under a mended CRC) is named by
/// its own sequence number, not by its batch's first: the number in the
/// error is the one an operator looks up.
#[tokio::test]
async fn a_record_that_does_not_decode_is_named_by_its_own_number() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = bi_ledger::Ledger::create(store(dir.path()), "main", options(9))
        .await
        .unwrap();
    ledger.append(counted("first", 2)).await.unwrap();
    let events = (0..5)
        .map(|i| bi_ledger::NewEvent::json(format!("entity-{i}"), "Named", &serde_json::json!({})))
        .collect();
    let r = ledger.append(events).await.unwrap();
    ledger.close().await.unwrap();
    let seg = dir.path().join("main/0000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    forge::forge_in_frame(
        &mut bytes,
        r[0].offset as usize,
        b"entity-3",
        b"entity\xff3",
    );
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&seg, &bytes).unwrap();

    let reader = bi_ledger::LedgerReader::open(store(dir.path()), "main")
        .await
        .unwrap();
    let named = |e: &bi_ledger::IntegrityError| {
        assert_eq!(
            (e.blob.as_str(), e.seq),
            ("main/0000000000.seg", Some(r[3].seq)),
            "{e}"
        );
        assert!(e.offset > r[0].offset, "{e}");
        assert!(e.what.contains("stream is not UTF-8"), "{e}");
    };
    let verifier = reader.recorded_verifier().clone();
    match reader.verify(&verifier, &|_, _| {}).await {
        Err(bi_ledger::LedgerError::Integrity(e)) => named(&e),
        other => panic!("verify of a forged record gave {other:?}"),
    }
    match reader.read(0, None).await {
        Err(bi_ledger::LedgerError::Integrity(e)) => named(&e),
        other => panic!("a read over a forged record gave {other:?}"),
    }
    // Streaming reads pass on none of the batch, not even the records
    // before the one at fault: the batch is damage as a whole.
    let mut passed = Vec::new();
    let scanned = reader
        .scan(0, None, |rec, _| {
            passed.push(rec.seq);
            std::ops::ControlFlow::Continue(())
        })
        .await;
    assert!(matches!(scanned, Err(bi_ledger::LedgerError::Integrity(_))));
    assert_eq!(
        passed,
        vec![0, 1],
        "records of the forged batch were passed"
    );
    let mut passed = Vec::new();
    let streamed = reader
        .read_stream_with("entity-1", |rec| {
            passed.push(rec.seq);
            std::ops::ControlFlow::Continue(())
        })
        .await;
    assert!(matches!(
        streamed,
        Err(bi_ledger::LedgerError::Integrity(_))
    ));
    assert_eq!(
        passed,
        Vec::<u64>::new(),
        "a record of the forged batch was passed"
    );
}

/// `batches` batches of 2 records (stream `s{i}` for the `i`th), each
/// segment holding `per_segment` of them; the receipt of each batch's first
/// record.
async fn batches_in_small_segments(
    dir: &std::path::Path,
    batches: usize,
    per_segment: u64,
) -> Vec<bi_ledger::Receipt> {
    let mut opts = options(8);
    opts.segment_max_blocks = per_segment + 1; // and the header
    let ledger = bi_ledger::Ledger::create(store(dir), "main", opts)
        .await
        .unwrap();
    let mut firsts = Vec::new();
    for i in 0..batches {
        firsts.push(ledger.append(counted(&format!("s{i}"), 2)).await.unwrap()[0].clone());
    }
    ledger.close().await.unwrap();
    firsts
}

/// Cuts segment `index` to `len` bytes, leaving it writable (unsealed) or
/// read-only as asked.
fn cut_segment_n(dir: &std::path::Path, index: u64, len: u64, sealed: bool) {
    let seg = dir.join(format!("main/{index:010}.seg"));
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len)
        .unwrap();
    if sealed {
        std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
}

/// Readers do not rely on sealing (format §4.2): a segment before the last
/// that lost its batches at a frame boundary is a gap whether or not the
/// store shows it sealed (a restore that drops file modes, a crash between
/// a rollover and its seal), never a shorter log. Found in a review: reads
/// returned records 0, 1, 4..8 and stream `s1` empty, without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_after_an_unsealed_segment_is_an_integrity_error() {
    let dir = tempfile::tempdir().unwrap();
    let firsts = batches_in_small_segments(dir.path(), 4, 1).await;
    assert_eq!(
        firsts.iter().map(|r| r.segment).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    cut_segment_n(
        dir.path(),
        1,
        bi_ledger::format::segment::HEADER_LEN as u64,
        false,
    );
    let reader = bi_ledger::LedgerReader::open(store(dir.path()), "main")
        .await
        .unwrap();
    match reader.read(0, None).await {
        Err(bi_ledger::LedgerError::Integrity(e)) => {
            assert_eq!(
                (e.blob.as_str(), e.seq),
                ("main/0000000002.seg", Some(2)),
                "{e}"
            )
        }
        other => panic!("records 2 and 3 are gone: {other:?}"),
    }
    match reader.read_stream("s1").await {
        Err(bi_ledger::LedgerError::Integrity(_)) => {}
        other => panic!("stream s1 lost its events: {other:?}"),
    }
    match reader.inclusion_proof(5, 8).await {
        Err(bi_ledger::LedgerError::Integrity(_)) => {}
        other => panic!("a proof across the gap: {other:?}"),
    }
}

/// Only the last segment may be shorter than a header (a rollover in
/// progress, format §12.3); one before it lost its header, and is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middle_segment_without_its_header_is_named() {
    let dir = tempfile::tempdir().unwrap();
    batches_in_small_segments(dir.path(), 4, 1).await;
    for sealed in [true, false] {
        cut_segment_n(dir.path(), 1, 40, sealed);
        match bi_ledger::LedgerReader::open(store(dir.path()), "main").await {
            Err(bi_ledger::LedgerError::Integrity(e)) => assert_eq!(
                (e.blob.as_str(), e.offset),
                ("main/0000000001.seg", 40),
                "{e}"
            ),
            other => panic!(
                "a middle segment without its header: {:?}",
                other.map(|_| ())
            ),
        }
    }
}

/// While checkpoints cannot be written (a full disk, a store outage),
/// appends go on and are answered: a due checkpoint is retried with a
/// growing pause, not in a loop that admits nothing. Once the store
/// recovers, the next checkpoint lands and covers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_go_on_while_checkpoints_fail() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(Wrapped(Faulty::over(store(dir.path()))));
    let mut opts = options(7);
    opts.checkpoint_every_events = Some(10);
    let ledger = bi_ledger::Ledger::create(faulty.clone(), "main", opts)
        .await
        .unwrap();
    faulty.puts_fail.store(true, SeqCst);
    let puts_before = faulty.puts.load(SeqCst);
    for i in 0..20 {
        let appended = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            ledger.append(counted(&format!("s{i}"), 5)),
        )
        .await
        .expect("an append is answered while checkpoints fail");
        appended.unwrap();
    }
    // A checkpoint was due after the second append; a loop without a
    // pause would have tried it thousands of times by now.
    let tries = faulty.puts.load(SeqCst) - puts_before;
    assert!((1..=5).contains(&tries), "{tries} puts while failing");
    let e = ledger.checkpoint().await.unwrap_err();
    assert!(e.to_string().contains("no space left"), "{e}");

    faulty.puts_fail.store(false, SeqCst);
    let cp = ledger.close().await.unwrap();
    assert_eq!(cp.checkpoint.size, 100);
    let reader = bi_ledger::LedgerReader::open(store(dir.path()), "main")
        .await
        .unwrap();
    let verifier = reader.recorded_verifier().clone();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!((report.records, report.unsigned_tail), (100, 0));
}

/// Batches cut out of the log at frame boundaries leave every remaining
/// frame whole; a read must still refuse the gap rather than return a
/// shorter log. Here a middle batch is spliced out of segment 1, and the
/// last batch of (sealed) segment 0 is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_refuse_batches_cut_out_at_frame_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let firsts = batches_in_small_segments(dir.path(), 6, 3).await;
    assert_eq!((firsts[2].segment, firsts[3].segment), (0, 1));
    let read_all = || async {
        let reader = bi_ledger::LedgerReader::open(store(dir.path()), "main")
            .await
            .unwrap();
        ledger::seqs(&reader).await
    };
    assert_eq!(read_all().await.unwrap(), (0..12).collect::<Vec<_>>());

    let writable = |p: &std::path::Path| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap()
    };
    let seg1 = dir.path().join("main/0000000001.seg");
    let original = std::fs::read(&seg1).unwrap();
    let mut bytes = original.clone();
    let (a, b) = (firsts[4].offset as usize, firsts[5].offset as usize);
    bytes.drain(a..b);
    writable(&seg1);
    std::fs::write(&seg1, &bytes).unwrap();
    let e = read_all().await.unwrap_err().to_string();
    assert!(
        e.contains("main/0000000001.seg")
            && e.contains(&format!("at byte {a}"))
            && e.contains("batch starts at sequence number 10 where 8 was due"),
        "{e}"
    );

    std::fs::write(&seg1, &original).unwrap();
    let seg0 = dir.path().join("main/0000000000.seg");
    writable(&seg0);
    let f = std::fs::OpenOptions::new().write(true).open(&seg0).unwrap();
    f.set_len(firsts[2].offset).unwrap();
    // Sealed again (read-only, on this store), as the writer left it.
    std::fs::set_permissions(&seg0, std::fs::Permissions::from_mode(0o444)).unwrap();
    let e = read_all().await.unwrap_err().to_string();
    assert!(
        e.contains("main/0000000001.seg")
            && e.contains("segment starts at sequence number 6 but the one before it ends at 4"),
        "{e}"
    );
}

/// One directory has one location, however it is named: an `open` in this
/// process finds a stopping writer of the same ledger by it.
#[test]
fn one_directory_has_one_location() {
    let dir = tempfile::tempdir().unwrap();
    let plain = FsStore::new(dir.path()).unwrap().shared().location();
    let dotted = FsStore::new(dir.path().join("."))
        .unwrap()
        .shared()
        .location();
    let link = dir.path().with_extension("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let linked = FsStore::new(&link).unwrap().shared().location();
    std::fs::remove_file(&link).unwrap();
    assert_eq!(dotted, plain);
    assert_eq!(linked, plain);
    assert!(plain.starts_with("file:///"), "{plain}");
}

/// A reader finds the newest checkpoint through the snapshots beside it
/// (the writer keeps two or three) rather than by listing every
/// checkpoint, and holds the log to it: a snapshot whose checkpoint is not
/// there is passed over, and a log cut at a batch boundary before the
/// checkpoint's size fails the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_hold_the_log_to_the_newest_checkpoint() {
    use bi_ledger::{LedgerError, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 5).await;
    let mut last = Vec::new();
    for _ in 0..3 {
        last = ledger.append(counted("order-1", 10)).await.unwrap();
        ledger.checkpoint().await.unwrap();
    }
    ledger.close().await.unwrap();
    // A snapshot a crash left without its checkpoint.
    std::fs::copy(
        FsStore::file_path(dir.path(), "main/snapshot-00000000000000000030"),
        FsStore::file_path(dir.path(), "main/snapshot-00000000000000000100"),
    )
    .unwrap();
    cut_segment(dir.path(), last[0].offset);
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    assert_eq!(reader.signed_at_open(), 30);
    for r in [
        reader.read(0, None).await.map(|r| r.len() as u64),
        reader.read_as_of(i64::MAX).await.map(|r| r.len() as u64),
        reader.len().await,
    ] {
        match r {
            Err(LedgerError::Integrity(e)) => {
                assert_eq!((e.seq, e.offset), (Some(20), last[0].offset), "{e}");
                assert!(e.what.contains("a checkpoint covers 30 records"), "{e}");
            }
            r => panic!("wanted an integrity error, got {r:?}"),
        }
    }
    // What the log still holds reads as before.
    assert_eq!(reader.read(0, Some(20)).await.unwrap().len(), 20);
}

/// A stream read resumes its scan after the indexed part at the last batch
/// an index lists; where that frame is not there (a wrong index), it reads
/// the log instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_index_naming_the_wrong_last_batch_is_passed_over() {
    use bi_ledger::format::stream_index::StreamIndex;
    use bi_ledger::LedgerReader;
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 6).await;
    // The last indexed batch holds another stream, so the read does not
    // look into it by the index, only resumes its scan there.
    let mut offsets = Vec::new();
    for stream in ["s", "s", "other"] {
        offsets.push(ledger.append(counted(stream, 5)).await.unwrap()[0].offset);
    }
    ledger.close().await.unwrap(); // its checkpoint indexes all 15
    let blob = "main/streams-00000000000000000015";
    let s = store(dir.path());
    let mut idx = StreamIndex::decode(&s.read_all(blob).await.unwrap()).unwrap();
    assert_eq!(idx.batches.last().unwrap().position.1, offsets[2]);
    // Still in order (an index out of order is not read at all), but no
    // frame starts there.
    idx.batches.last_mut().unwrap().position.1 = offsets[2] + 1;
    s.delete(blob).await.unwrap();
    s.put(blob, &idx.encode()).await.unwrap();
    let reader = LedgerReader::open(s, "main").await.unwrap();
    assert!(reader.read_stream_indexed("s").await.unwrap().is_none());
    let events = reader.read_stream("s").await.unwrap();
    let versions: Vec<u64> = events.iter().map(|r| r.stream_version).collect();
    assert_eq!(versions, (0..10).collect::<Vec<_>>());
}

/// A reader that listed a segment before a recovering writer cut its torn
/// tail off reads up to the new end, as if it had listed it then; records
/// a checkpoint signs are still held to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_cut_while_a_reader_reads_ends_the_read_there() {
    use bi_ledger::{LedgerError, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 7).await;
    let first = ledger.append(counted("s", 10)).await.unwrap();
    ledger.checkpoint().await.unwrap();
    let unsigned = ledger.append(counted("s", 10)).await.unwrap();
    drop(ledger);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let cut = |len: u64| cut_segment(dir.path(), len);
    // As recovery would cut a torn last batch: the unsigned one goes.
    cut(unsigned[0].offset + 7);
    let read = reader.read(0, None).await.unwrap();
    assert_eq!(read.len(), 10);
    assert_eq!(reader.len().await.unwrap(), 10);
    // A cut into what the checkpoint signs is still damage.
    cut(first[0].offset);
    match reader.read(0, None).await {
        Err(LedgerError::Integrity(e)) => assert_eq!(e.seq, Some(0), "{e}"),
        r => panic!("wanted an integrity error, got {:?}", r.map(|r| r.len())),
    }
}

/// More streams than the writer keeps as changed strings (65,536) fold
/// into its stream table mid-run, at checkpoints and on reopen: every
/// version and every expected-version check comes out as if all were in
/// one map, a refused call leaves no version advanced, and the snapshot
/// `verify` re-derives (through the same folds) matches the writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_versions_hold_across_folds_checkpoints_and_reopen() {
    use bi_ledger::{ExpectedVersion as X, Ledger, LedgerError, LedgerReader, NewEvent};
    const STREAMS: u64 = 70_000;
    let ev = |s: &str, x: X| NewEvent::json(s, "T", &serde_json::json!({})).expect(x);
    let version_of = |r: Result<Vec<bi_ledger::Receipt>, LedgerError>| match r {
        Ok(r) => Ok(r.iter().map(|r| r.version).collect::<Vec<_>>()),
        Err(LedgerError::VersionConflict { index, current, .. }) => Err((index, current)),
        Err(e) => panic!("{e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 21).await;
    for chunk in 0..STREAMS / 10_000 {
        let events = (chunk * 10_000..(chunk + 1) * 10_000)
            .map(|i| ev(&format!("s{i}"), X::NoStream))
            .collect();
        ledger.append(events).await.unwrap();
    }
    // s1 and s69999 were folded into the table (or not) at different times.
    for s in ["s1", "s69999"] {
        assert_eq!(
            version_of(ledger.append(vec![ev(s, X::Exact(0))]).await),
            Ok(vec![1])
        );
        assert_eq!(
            version_of(ledger.append(vec![ev(s, X::NoStream)]).await),
            Err((0, Some(1)))
        );
    }
    let refused = vec![
        ev("s2", X::Exact(0)),
        ev("s3", X::Any),
        ev("fresh", X::NoStream),
        ev("s4", X::Exact(7)),
    ];
    assert_eq!(version_of(ledger.append(refused).await), Err((3, Some(0))));
    ledger.checkpoint().await.unwrap();
    let taken = vec![
        ev("s2", X::Exact(0)),
        ev("s2", X::Exact(1)),
        ev("fresh", X::NoStream),
    ];
    assert_eq!(version_of(ledger.append(taken).await), Ok(vec![1, 2, 0]));
    let verifier = ledger.verifier().clone();
    ledger.close().await.unwrap();

    let ledger = Ledger::open(store(dir.path()), "main", options(21))
        .await
        .unwrap();
    assert_eq!(
        version_of(ledger.append(vec![ev("s3", X::Exact(0))]).await),
        Ok(vec![1])
    );
    assert_eq!(
        version_of(ledger.append(vec![ev("s2", X::Exact(2))]).await),
        Ok(vec![3])
    );
    assert_eq!(
        version_of(ledger.append(vec![ev("s1", X::Exact(0))]).await),
        Err((0, Some(1)))
    );
    assert_eq!(
        version_of(ledger.append(vec![ev("s70000", X::Exact(0))]).await),
        Err((0, None))
    );
    assert_eq!(
        version_of(ledger.append(vec![ev("s70000", X::NoStream)]).await),
        Ok(vec![0])
    );
    ledger.close().await.unwrap();

    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.records, STREAMS + 2 + 3 + 3);
    let s2: Vec<u64> = reader
        .read_stream("s2")
        .await
        .unwrap()
        .iter()
        .map(|r| r.stream_version)
        .collect();
    assert_eq!(s2, vec![0, 1, 2, 3]);
}

/// A snapshot that disagrees with the log about one stream (re-sealed, so
/// only the comparison with the log can tell) fails `verify`, which names
/// the first such stream and both versions: off by one, missing, or extra.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_stream_a_snapshot_has_wrong() {
    use bi_ledger::format::snapshot::Snapshot;
    use bi_ledger::format::stream_table::StreamTable;
    use bi_ledger::{LedgerError, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 22).await;
    for s in ["a", "b", "c"] {
        ledger.append(counted(s, 3)).await.unwrap();
    }
    ledger.close().await.unwrap();
    let path = FsStore::file_path(dir.path(), "main/snapshot-00000000000000000009");
    let good = std::fs::read(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cases: [(&[(&str, u64)], &str); 3] = [
        (
            &[("a", 2), ("b", 5), ("c", 2)],
            r#"for stream "b" the snapshot has version 5, the log version 2"#,
        ),
        (
            &[("a", 2), ("c", 2)],
            r#"for stream "b" the snapshot has none, the log version 2"#,
        ),
        (
            &[("a", 2), ("b", 2), ("bb", 0), ("c", 2)],
            r#"for stream "bb" the snapshot has version 0, the log none"#,
        ),
    ];
    for (streams, said) in cases {
        let mut snap = Snapshot::decode(&good).unwrap();
        snap.streams = Arc::new(StreamTable::from_sorted(streams.iter().copied()));
        std::fs::write(&path, snap.encode()).unwrap();
        let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
        let verifier = reader.recorded_verifier().clone();
        match reader.verify(&verifier, &|_, _| {}).await {
            Err(LedgerError::Integrity(e)) => {
                assert_eq!(e.blob, "main/snapshot-00000000000000000009", "{e}");
                assert!(e.to_string().contains(said), "{e}");
            }
            other => panic!("verify of a wrong snapshot gave {other:?}"),
        }
    }
    std::fs::write(&path, &good).unwrap();
    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let verifier = reader.recorded_verifier().clone();
    assert_eq!(
        reader.verify(&verifier, &|_, _| {}).await.unwrap().records,
        9
    );
}

/// The checkpoint signs its snapshot's digest: a snapshot re-sealed with
/// other stream versions or a later last timestamp (which would set the
/// versions and times of every event appended after it) stops a writer
/// from opening, naming the snapshot; the one it signed opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_refuses_a_snapshot_its_checkpoint_did_not_sign() {
    use bi_ledger::format::snapshot::Snapshot;
    use bi_ledger::format::stream_table::StreamTable;
    use bi_ledger::LedgerError;
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 23).await;
    ledger.append(counted("a", 3)).await.unwrap();
    ledger.close().await.unwrap();
    let blob = "main/snapshot-00000000000000000003";
    let path = FsStore::file_path(dir.path(), blob);
    let good = std::fs::read(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let forged_versions = {
        let mut snap = Snapshot::decode(&good).unwrap();
        snap.streams = Arc::new(StreamTable::from_sorted([("a", 0)]));
        snap.encode()
    };
    let forged_time = {
        let mut snap = Snapshot::decode(&good).unwrap();
        snap.last_timestamp_us = 4_102_444_800_000_000; // 2100-01-01
        snap.encode()
    };
    for forged in [forged_versions, forged_time] {
        assert!(
            Snapshot::decode(&forged).is_ok(),
            "sealed as a writer seals"
        );
        std::fs::write(&path, &forged).unwrap();
        match bi_ledger::Ledger::open(store(dir.path()), "main", options(23)).await {
            Err(LedgerError::Integrity(e)) => {
                assert_eq!(e.blob, blob, "{e}");
                assert!(e.what.contains("not the one checkpoint"), "{e}");
            }
            other => panic!(
                "a writer opened with a forged snapshot: {:?}",
                other.map(|_| ())
            ),
        }
    }
    std::fs::write(&path, &good).unwrap();
    let ledger = bi_ledger::Ledger::open(store(dir.path()), "main", options(23))
        .await
        .unwrap();
    let r = ledger
        .append_one(bi_ledger::NewEvent::bytes("a", "T", vec![1]))
        .await
        .unwrap();
    assert_eq!((r.seq, r.version), (3, 3));
    ledger.close().await.unwrap();
}

/// A stream read passes records as it finds them. Where an index misses a
/// batch of the stream (its filter says the stream is not there), the
/// records found after it come too early; the read then scans the log for
/// the rest, and every version is passed once, in order. A reader that
/// stops early gets the first versions only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_index_that_misses_a_batch_passes_each_version_once() {
    use bi_ledger::format::stream_index::StreamIndex;
    use bi_ledger::LedgerReader;
    use std::ops::ControlFlow;
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 7).await;
    // 5,000 records in one index: enough for a read to go through it.
    for stream in ["s", "other", "s", "other", "s"] {
        ledger.append(counted(stream, 1000)).await.unwrap();
    }
    ledger.close().await.unwrap(); // its checkpoint indexes all 5,000
    let blob = "main/streams-00000000000000005000";
    let s = store(dir.path());
    let mut idx = StreamIndex::decode(&s.read_all(blob).await.unwrap()).unwrap();
    assert_eq!(idx.batches.len(), 5);
    idx.batches[2].filter.fill(0);
    s.delete(blob).await.unwrap();
    s.put(blob, &idx.encode()).await.unwrap();
    let reader = LedgerReader::open(s, "main").await.unwrap();
    assert!(reader.read_stream_indexed("s").await.unwrap().is_none());
    let mut passed = Vec::new();
    reader
        .read_stream_with("s", |r| {
            passed.push((r.stream_version, r.seq));
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    let want: Vec<(u64, u64)> = (0..3000).map(|v| (v, v / 1000 * 2000 + v % 1000)).collect();
    assert_eq!(passed, want);
    let mut first = Vec::new();
    reader
        .read_stream_with("s", |r| {
            first.push(r.stream_version);
            if first.len() == 1500 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await
        .unwrap();
    assert_eq!(first, (0..1500).collect::<Vec<_>>());
}

/// A reader holds frames to the block size the LEDGER file records, not to
/// its store's: a ledger whose file says 64 KiB blocks and holds a 100 KiB
/// frame is damaged (here the file was changed; §3.4 says why checkpoints
/// cannot tell). And no ledger is created on a store whose blocks cannot
/// hold a segment header: nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_held_to_the_recorded_block_size() {
    use bi_ledger::{LedgerError, LedgerReader, NewEvent};
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 8).await;
    let big = NewEvent::json("s", "T", &serde_json::json!("x".repeat(100 << 10)));
    let r = ledger.append_one(big).await.unwrap();
    ledger.close().await.unwrap();
    let s = store(dir.path());
    let text = String::from_utf8(s.read_all("main/LEDGER").await.unwrap()).unwrap();
    s.delete("main/LEDGER").await.unwrap();
    s.put("main/LEDGER", format!("{text}block 65536\n").as_bytes())
        .await
        .unwrap();
    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    match reader.read(0, None).await {
        Err(LedgerError::Integrity(e)) => {
            assert_eq!((e.seq, e.offset), (Some(0), r.offset), "{e}");
            assert!(e.what.contains("out of range (20..=65524)"), "{e}");
        }
        other => panic!("a frame larger than the recorded block size read as {other:?}"),
    }

    let tiny = tempfile::tempdir().unwrap();
    let opts = bi_ledger::backend::fs::FsOptions {
        max_block_size: 83,
        ..Default::default()
    };
    let s: Arc<dyn BlobStore> =
        Arc::new(FsStore::with_options(tiny.path(), opts).unwrap().shared());
    match bi_ledger::Ledger::create(s.clone(), "main", options(8)).await {
        Err(LedgerError::InvalidArgument(why)) => {
            assert!(why.contains("83 is outside 84..=4294967295"), "{why}")
        }
        other => panic!("a ledger on a store of 83-byte blocks: {other:?}"),
    }
    assert!(matches!(
        s.info("main/LEDGER").await,
        Err(bi_ledger::backend::StoreError::NotFound { .. })
    ));
}

/// The names of the merged stream indexes, and the (from, to) each holds.
async fn merged_ranges(s: &Arc<dyn BlobStore>) -> Vec<(u64, u64)> {
    use bi_ledger::format::stream_index::StreamIndex;
    let mut out = Vec::new();
    for b in s.list("main/streams-merged-").await.unwrap() {
        let idx = StreamIndex::decode(&s.read_all(&b.name).await.unwrap()).unwrap();
        out.push((idx.from, idx.to));
    }
    out.sort();
    out
}

/// Writers that open for one append each (as the CLI does) never see many
/// checkpoints: they merge by records, and then the whole run, a few
/// merges at a time. The merged indexes cover the log from 0 without gaps
/// or overlaps, and the ledger verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_that_open_per_append_merge_by_records() {
    use bi_ledger::{Ledger, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(9);
    opts.checkpoint_every_events = None;
    opts.checkpoint_interval = None;
    opts.merge_index_count = 4;
    opts.merge_index_records = 20;
    Ledger::create(store(dir.path()), "main", opts.clone())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    for i in 0..60u64 {
        let ledger = Ledger::open(store(dir.path()), "main", opts.clone())
            .await
            .unwrap();
        ledger
            .append(counted(["a", "b", "c"][i as usize % 3], 1))
            .await
            .unwrap();
        ledger.close().await.unwrap();
    }
    let s = store(dir.path());
    let ranges = merged_ranges(&s).await;
    let want: Vec<(u64, u64)> = (0..15).map(|k| (4 * k, 4 * k + 4)).collect();
    assert_eq!(ranges, want);
    let reader = LedgerReader::open(s, "main").await.unwrap();
    reader
        .verify(reader.recorded_verifier(), &|_, _| {})
        .await
        .unwrap();
    let a = reader.read_stream_indexed("a").await.unwrap().unwrap();
    assert_eq!(a.len(), 20);
}

/// A stream index missing from a run (deleted) does not stop the merging:
/// the merged indexes start after it, and the ledger verifies (reporting
/// the missing index); a stream read cannot bridge the gap, and scans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_index_is_merged_around() {
    use bi_ledger::{Ledger, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(10);
    opts.checkpoint_every_events = None;
    opts.checkpoint_interval = None;
    opts.merge_index_count = 1000;
    let ledger = Ledger::create(store(dir.path()), "main", opts.clone())
        .await
        .unwrap();
    let step = |ledger: Ledger| async move {
        ledger.append(counted("a", 1)).await.unwrap();
        ledger.checkpoint().await.unwrap();
        ledger
    };
    let mut ledger = ledger;
    for _ in 0..10 {
        ledger = step(ledger).await;
    }
    ledger.close().await.unwrap();
    let s = store(dir.path());
    assert!(merged_ranges(&s).await.is_empty());
    s.delete("main/streams-00000000000000000001").await.unwrap();
    opts.merge_index_count = 4;
    let mut ledger = Ledger::open(s.clone(), "main", opts).await.unwrap();
    for _ in 0..8 {
        ledger = step(ledger).await;
    }
    ledger.close().await.unwrap();
    // At checkpoint 14 the run 2..14 (1 is missing) is merged four at a
    // time from where index 2 starts; 14 is left, and merged with 15..17.
    assert_eq!(merged_ranges(&s).await, [(1, 5), (5, 9), (9, 13), (13, 17)]);
    let reader = LedgerReader::open(s, "main").await.unwrap();
    let report = reader
        .verify(reader.recorded_verifier(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.missing_caches, ["main/streams-00000000000000000001"]);
    assert_eq!(reader.read_stream_indexed("a").await.unwrap(), None);
    assert_eq!(reader.read_stream("a").await.unwrap().len(), 18);
}

/// Merging by count only (`merge_index_records` at its largest) works
/// across a reopen: the records bound is never added to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merging_by_count_only() {
    use bi_ledger::Ledger;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(11);
    opts.checkpoint_every_events = None;
    opts.checkpoint_interval = None;
    opts.merge_index_count = 4;
    opts.merge_index_records = u64::MAX;
    let mut ledger = Ledger::create(store(dir.path()), "main", opts.clone())
        .await
        .unwrap();
    for round in 0..11 {
        if round == 3 || round == 7 {
            ledger.close().await.unwrap();
            ledger = Ledger::open(store(dir.path()), "main", opts.clone())
                .await
                .unwrap();
        }
        ledger.append(counted("a", 1)).await.unwrap();
        ledger.checkpoint().await.unwrap();
    }
    ledger.close().await.unwrap();
    // Checkpoints 1..11. The writer opened at round 3 counts four at 7
    // and merges 1..4 (three are left); the one opened at round 7 counts
    // four at 11 and merges 5..8, leaving 9..11 for later.
    assert_eq!(merged_ranges(&store(dir.path())).await, [(0, 4), (4, 8)]);
}

/// Verify opens checkpoints a few at a time ahead of the walk, not all
/// before it: every one is still checked, and one forged far past the
/// first few is named when the walk reaches it, after the records before it
/// checked out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_checkpoint_of_many_is_checked_as_the_walk_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = bi_ledger::Ledger::create(store(dir.path()), "main", options(9))
        .await
        .unwrap();
    for i in 0..40 {
        ledger.append(counted(&format!("s{i}"), 2)).await.unwrap();
        ledger.checkpoint().await.unwrap();
    }
    ledger.close().await.unwrap();
    let reader = bi_ledger::LedgerReader::open(store(dir.path()), "main")
        .await
        .unwrap();
    let verifier = reader.recorded_verifier().clone();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!((report.records, report.checkpoints), (80, 41));

    // Checkpoint 31 of 41 signed by another key, under its name.
    let blob = "main/checkpoint-00000000000000000062";
    let path = FsStore::file_path(dir.path(), blob);
    let note = std::fs::read_to_string(&path).unwrap();
    let cp = bi_ledger::format::checkpoint::Checkpoint::open(&note, &verifier).unwrap();
    let other = ed25519_dalek::SigningKey::from_bytes(&[10; 32]);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, cp.sign(&verifier.name, &other)).unwrap();
    match reader.verify(&verifier, &|_, _| {}).await {
        Err(bi_ledger::LedgerError::Integrity(e)) => {
            assert_eq!(e.blob, blob, "{e}");
            assert_eq!(e.kind, bi_ledger::IntegrityKind::NotSignedByKey, "{e}");
        }
        Err(e) => assert!(e.to_string().contains(blob), "{e}"),
        Ok(r) => panic!("a checkpoint signed by another key verified: {r:?}"),
    }
}

/// What a checkpoint kept outside the ledger tells that the ledger's own
/// cannot: records cut off with every checkpoint that signed them, and a
/// history written again under the same key. Ledger A crashes at 5 records
/// with its last checkpoint at 3; a copy of it (B) signs the 5 (`t5`), and
/// A goes on to 7. C and D are copies of A at 3: C writes other records
/// after them, D nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_checkpoint_finds_records_removed_or_rewritten() {
    use bi_ledger::ledger::trusted::TrustedMatch;
    let root = tempfile::tempdir().unwrap();
    let [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map(|n| root.path().join(n));
    let ledger = checkpointed_on_demand(&a, 7).await;
    let verifier = ledger.verifier().clone();
    ledger.append(counted("s", 3)).await.unwrap();
    let t3 = ledger.checkpoint().await.unwrap().checkpoint;
    // Where segment 0 ends at 3 records.
    let seg_at_3 = ledger.append(counted("s", 2)).await.unwrap()[0].offset;
    drop(ledger);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    dirs::copy_dir(&a, &b);
    let ledger = bi_ledger::Ledger::open(store(&b), "main", options(7))
        .await
        .unwrap();
    let t5 = ledger.checkpoint().await.unwrap().checkpoint;
    ledger.close().await.unwrap();
    let ledger = bi_ledger::Ledger::open(store(&a), "main", options(7))
        .await
        .unwrap();
    ledger.append(counted("s", 2)).await.unwrap();
    let t7 = ledger.close().await.unwrap().checkpoint;
    assert_eq!((t3.size, t5.size, t7.size), (3, 5, 7));

    let check = |dir: std::path::PathBuf, cps: Vec<bi_ledger::format::checkpoint::Checkpoint>| {
        let verifier = verifier.clone();
        async move {
            let reader = bi_ledger::LedgerReader::open(store(&dir), "main")
                .await
                .unwrap();
            let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
            let mut out = Vec::new();
            for cp in &cps {
                out.push(reader.check_trusted(cp, &report).await);
            }
            out
        }
    };
    let matched: Vec<_> = check(a.clone(), vec![t3.clone(), t5.clone(), t7.clone()])
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        matched,
        [
            TrustedMatch::Checkpoint,
            TrustedMatch::Log, // A never stored a checkpoint of 5
            TrustedMatch::Checkpoint,
        ]
    );

    // C and D: A as it was at 3 records, its later segment bytes cut off.
    for dir in [&c, &d] {
        dirs::copy_dir(&a, dir);
        cut_segment_n(dir, 0, seg_at_3, false);
        let cps = dir.join("main/.checkpoint-00000000000000");
        std::fs::set_permissions(&cps, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_file(cps.join("000007")).unwrap();
        for cache in [
            ".streams-00000000000000",
            ".nodes-00000000000000",
            ".snapshot-00000000000000",
        ] {
            let _ = std::fs::remove_file(dir.join("main").join(cache).join("000007"));
        }
    }
    let ledger = bi_ledger::Ledger::open(store(&c), "main", options(7))
        .await
        .unwrap();
    ledger.append(counted("other", 4)).await.unwrap();
    assert_eq!(ledger.close().await.unwrap().checkpoint.size, 7);
    for (dir, cp, blob, seq, says) in [
        (
            &c,
            &t5,
            "main/LEDGER",
            None,
            "records before 5 were changed",
        ),
        (
            &c,
            &t7,
            "main/checkpoint-00000000000000000007",
            None,
            "records before 7 were changed",
        ),
        (
            &d,
            &t5,
            "main/0000000000.seg",
            Some(3),
            "records 3 to 4 were removed",
        ),
    ] {
        let got = check(dir.clone(), vec![cp.clone()]).await.pop().unwrap();
        match got {
            Err(bi_ledger::LedgerError::Integrity(e)) => {
                assert_eq!((e.blob.as_str(), e.seq), (blob, seq), "{e}");
                assert!(e.what.contains(says), "{e}");
            }
            other => panic!("{} against {}: {other:?}", dir.display(), cp.size),
        }
    }

    // Another ledger under the same key is not this one.
    checkpointed_on_demand(&e, 7).await.close().await.unwrap();
    match check(e.clone(), vec![t3]).await.pop().unwrap() {
        Err(bi_ledger::LedgerError::Integrity(err)) => {
            assert_eq!(err.blob, "main/LEDGER");
            assert!(err.what.contains("another ledger"), "{err}");
        }
        other => panic!("{other:?}"),
    }
}

/// `--restore-caches` where the store refuses the put (a full disk, a
/// read-only mount): the log's verification stands, the cache stays
/// missing, and the report names the put that failed and why, so that the
/// CLI can say it did not do what it was asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_the_store_refuses_is_reported() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 7).await;
    ledger.append(counted("a", 10)).await.unwrap();
    ledger.close().await.unwrap();
    let blob = bi_ledger::ledger::layout::stream_index("main", 10);
    let s = store(dir.path());
    s.delete(&blob).await.unwrap();

    let faulty = Arc::new(Wrapped(Faulty::over(s.clone())));
    faulty.puts_fail.store(true, SeqCst);
    let reader = bi_ledger::LedgerReader::open(faulty.clone(), "main")
        .await
        .unwrap();
    let restore = bi_ledger::ledger::verify::VerifyOptions {
        restore_caches: true,
    };
    let verifier = reader.recorded_verifier().clone();
    let report = reader
        .verify_with(&verifier, restore, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.records, 10);
    assert_eq!(report.missing_caches, std::slice::from_ref(&blob));
    assert!(report.restored_caches.is_empty(), "{report:?}");
    let [(failed, why)] = &report.failed_restores[..] else {
        panic!("one failed restore wanted: {report:?}");
    };
    assert_eq!(failed, &blob);
    assert!(why.contains("injected"), "{why}");
    assert!(s.read_all(&blob).await.is_err(), "nothing was put");

    // Once the store takes it, the same call restores it.
    faulty.puts_fail.store(false, SeqCst);
    let report = reader
        .verify_with(&verifier, restore, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(
        (report.restored_caches, report.failed_restores),
        (vec![blob], vec![])
    );
}

/// A blob under a checkpoint's name past the log's end that is not a
/// checkpoint of that size (junk, or another checkpoint copied there):
/// readers and the writer name that blob, rather than report records
/// removed from the log, which holds every record it should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_checkpoint_past_the_log_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 7).await;
    ledger.append(counted("a", 3)).await.unwrap();
    ledger.close().await.unwrap();
    let s = store(dir.path());
    let real = s
        .read_all(&bi_ledger::ledger::layout::checkpoint("main", 3))
        .await
        .unwrap();
    let blob = bi_ledger::ledger::layout::checkpoint("main", 100);
    for (what, bytes, says) in [
        ("junk", b"junk\n".to_vec(), "checkpoint rejected"),
        ("a copy", real, "named for 100"),
    ] {
        let _ = s.delete(&blob).await;
        s.put(&blob, &bytes).await.unwrap();
        let reader = bi_ledger::LedgerReader::open(s.clone(), "main")
            .await
            .unwrap();
        let read = reader.read(0, None).await;
        let opened = bi_ledger::Ledger::open(s.clone(), "main", options(7)).await;
        for e in [read.err(), opened.err()] {
            match e {
                Some(bi_ledger::LedgerError::Integrity(e)) => {
                    assert_eq!(e.blob, blob, "{what}: {e}");
                    assert!(e.what.contains(says), "{what}: {e}");
                }
                other => panic!("{what}: wanted {blob} named, got {other:?}"),
            }
        }
    }
}

/// A segment far past a gap (a stray file, index 10^9 or more, under a
/// leading digit that readers look under only once the ones before are
/// full): the writer finds it, as `verify` does, and does not extend a log
/// that `verify` refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_segment_past_a_gap_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = checkpointed_on_demand(dir.path(), 7).await;
    ledger.append(counted("a", 3)).await.unwrap();
    ledger.close().await.unwrap();
    let s = store(dir.path());
    let stray = bi_ledger::ledger::layout::segment("main", 9_999_999_999);
    s.create(&stray).await.unwrap();
    match bi_ledger::Ledger::open(s.clone(), "main", options(7)).await {
        Err(bi_ledger::LedgerError::Integrity(e)) => {
            assert_eq!(e.blob, stray, "{e}");
            assert!(e.what.contains("segment 1 is missing"), "{e}");
        }
        Err(e) => panic!("wanted the stray segment named, got {e}"),
        Ok(_) => panic!("the writer opened a ledger with a gap among its segments"),
    }
}

/// A node cache of the size of a checkpoint that has none of its own (too
/// few records to complete a node of 1,024 leaves), left by a history a
/// crash rewrote: the writer deletes it before the checkpoint, so that the
/// ledger it writes verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_cache_of_a_checkpoint_without_one_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let ledger = checkpointed_on_demand(dir.path(), 7).await;
    let orphan = bi_ledger::ledger::layout::nodes("main", 3);
    s.put(&orphan, b"from another history").await.unwrap();
    ledger.append(counted("a", 3)).await.unwrap();
    ledger.close().await.unwrap();
    assert!(
        matches!(s.info(&orphan).await, Err(StoreError::NotFound { .. })),
        "the orphan is gone"
    );
    let reader = bi_ledger::LedgerReader::open(s.clone(), "main")
        .await
        .unwrap();
    let verifier = reader.recorded_verifier().clone();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!((report.records, report.unsigned_tail), (3, 0));
}

/// A conflict at an event whose stream the call's earlier events also
/// name gives the version the ledger has (the call wrote nothing) and how
/// many of those events came first, so that a caller can retry from it.
#[tokio::test]
async fn a_conflict_after_the_calls_own_events_gives_the_ledgers_version() {
    use bi_ledger::{ExpectedVersion::*, LedgerError, NewEvent};
    let dir = tempfile::tempdir().unwrap();
    let ledger = bi_ledger::Ledger::create(store(dir.path()), "main", options(3))
        .await
        .unwrap();
    ledger.append(counted("a", 3)).await.unwrap(); // versions 0..=2
    let ev = |s: &str, v| NewEvent::json(s, "E", &serde_json::json!({})).expect(v);
    let err = ledger
        .append(vec![ev("a", Exact(2)), ev("b", Any), ev("a", Exact(5))])
        .await
        .unwrap_err();
    match &err {
        LedgerError::VersionConflict {
            index: 2,
            current: Some(2),
            earlier: 1,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("the call's 1 earlier event on it would bring it to version 3 (its current version is 2;"),
        "{err}"
    );
    let err = ledger
        .append(vec![ev("new", NoStream), ev("new", NoStream)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::VersionConflict {
                index: 1,
                current: None,
                earlier: 1,
                ..
            }
        ),
        "{err:?}"
    );
    // Retried from the version given, the call goes through.
    let r = ledger
        .append(vec![ev("a", Exact(2)), ev("a", Exact(3))])
        .await
        .unwrap();
    assert_eq!((r[0].version, r[1].version), (3, 4));
    ledger.close().await.unwrap();
}

/// A read up to a batch boundary ends there: damage in the batch after it
/// is outside the range asked for (and a read across it fails).
#[tokio::test]
async fn a_read_up_to_a_batch_boundary_does_not_reach_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = bi_ledger::Ledger::create(store(dir.path()), "main", options(4))
        .await
        .unwrap();
    ledger.append(counted("a", 2)).await.unwrap();
    let second = ledger.append(counted("b", 2)).await.unwrap();
    ledger.close().await.unwrap();
    damage_batch(dir.path(), second[0].offset);
    let reader = bi_ledger::LedgerReader::open(store(dir.path()), "main")
        .await
        .unwrap();
    let first = reader.read(0, Some(2)).await.unwrap();
    assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1]);
    match reader.read(0, Some(3)).await {
        Err(bi_ledger::LedgerError::Integrity(e)) => assert_eq!(e.offset, second[0].offset, "{e}"),
        other => panic!("a read across a damaged batch gave {other:?}"),
    }
}

/// An event that fits no batch is named, with its field; a call too large
/// only as a whole is an invalid argument, in the plural. Neither writes.
#[tokio::test]
async fn an_event_too_large_for_any_batch_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = bi_ledger::Ledger::create(store(dir.path()), "main", options(5))
        .await
        .unwrap();
    let max = ledger.max_batch_bytes();
    let huge = bi_ledger::NewEvent::bytes("s", "Big", vec![b'x'; max]);
    let small = || bi_ledger::NewEvent::bytes("s", "Small", vec![b'x'; max / 3]);
    match ledger.append(vec![small(), huge]).await {
        Err(bi_ledger::LedgerError::InvalidEvent {
            index: 1,
            field: "payload",
            reason,
        }) => assert!(reason.contains("batch limit"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Metadata that holds most of it is named instead.
    let mut wide = bi_ledger::NewEvent::bytes("s", "Wide", vec![b'x'; 2]);
    for k in 0..256 {
        wide = wide.with_metadata(format!("k{k:03}"), "v".repeat(64 * 1024));
    }
    match ledger.append(vec![wide]).await {
        Err(bi_ledger::LedgerError::InvalidEvent {
            index: 0,
            field: "metadata",
            reason,
        }) => assert!(reason.contains("in 256 entries"), "{reason}"),
        other => panic!("{other:?}"),
    }
    match ledger
        .append(vec![small(), small(), small(), small()])
        .await
    {
        Err(e @ bi_ledger::LedgerError::BatchTooLarge { events: 4, .. }) => {
            assert!(e.to_string().contains("4 events encode to about"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ledger.append(vec![small()]).await.unwrap()[0].seq, 0);
    ledger.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_limit_below_one_event_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let min = bi_ledger::LedgerOptions::min_batch_bytes();
    let mut opts = options(6);
    opts.max_batch_bytes = min - 1;
    match bi_ledger::Ledger::create(store(dir.path()), "main", opts.clone()).await {
        Err(
            e @ bi_ledger::LedgerError::InvalidOption {
                field: "max_batch_bytes",
                ..
            },
        ) => assert!(e.to_string().contains(&(min - 1).to_string()), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a refused create wrote something"
    );

    // The smallest limit takes the smallest event, alone.
    opts.max_batch_bytes = min;
    let ledger = bi_ledger::Ledger::create(store(dir.path()), "main", opts.clone())
        .await
        .unwrap();
    let mut tiny = bi_ledger::NewEvent::bytes("s", "T", Vec::new());
    tiny.content_type = "x".into();
    assert_eq!(ledger.append(vec![tiny.clone()]).await.unwrap()[0].seq, 0);
    // An event of ordinary names is too large for it: the limit is named,
    // not the empty payload.
    match ledger
        .append(vec![bi_ledger::NewEvent::bytes(
            "s",
            "Ordinary",
            Vec::new(),
        )])
        .await
    {
        Err(bi_ledger::LedgerError::InvalidEvent {
            field: "event",
            reason,
            ..
        }) => assert!(reason.contains("raise max_batch_bytes"), "{reason}"),
        other => panic!("{other:?}"),
    }
    ledger.close().await.unwrap();
    let before = std::fs::read(dir.path().join("main/0000000000.seg")).unwrap();

    opts.max_batch_bytes = 0;
    match bi_ledger::Ledger::open(store(dir.path()), "main", opts).await {
        Err(bi_ledger::LedgerError::InvalidOption {
            field: "max_batch_bytes",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read(dir.path().join("main/0000000000.seg")).unwrap(),
        before
    );
}

/// A read of a stream no event can have (an empty id, say: a missing
/// field in the caller) is refused, not answered with no events.
#[tokio::test]
async fn a_read_of_a_stream_no_event_can_have_is_refused() {
    let (_dir, ledger) = with_one_event("main").await;
    let reader = ledger.reader().await.unwrap();
    for (stream, says) in [
        ("", "must not be empty"),
        ("a\nb", "control characters"),
        (&"x".repeat(1025), "1025 bytes"),
    ] {
        match reader.read_stream(stream).await {
            Err(e @ bi_ledger::LedgerError::InvalidArgument(_)) => {
                assert!(e.to_string().contains(says), "{e}")
            }
            other => panic!("{stream:?}: {other:?}"),
        }
    }
    assert_eq!(reader.read_stream("s").await.unwrap().len(), 1);
    ledger.close().await.unwrap();
}

/// Verify against a key other than the one the ledger records fails, and
/// its error says that the key differs, not only that a checkpoint was
/// rejected: an application that logs no warnings sees only the error.
#[tokio::test]
async fn verify_with_another_key_says_the_key_differs() {
    let (dir, ledger) = with_one_event("main").await;
    ledger.close().await.unwrap();
    let reader = bi_ledger::LedgerReader::open(store(dir.path()), "main")
        .await
        .unwrap();
    let mut other = reader.recorded_verifier().clone();
    other.key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    match reader.verify(&other, &|_, _| {}).await {
        Err(bi_ledger::LedgerError::Integrity(e)) => {
            assert_eq!(e.kind, bi_ledger::IntegrityKind::NotSignedByKey, "{e}");
            assert!(e.what.contains("no signature by key"), "{e}");
            assert!(
                e.what.contains("not the one the LEDGER file records"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    let recorded = reader.recorded_verifier().clone();
    assert!(reader.verify(&recorded, &|_, _| {}).await.unwrap().records == 1);
}

/// An application tells a broken checkpoint signature from damaged records
/// by the error's kind, not its text; neither is blamed on the key.
#[tokio::test]
async fn integrity_errors_say_their_kind() {
    let (dir, ledger) = with_one_event("main").await;
    ledger.close().await.unwrap();
    let reader = bi_ledger::LedgerReader::open(store(dir.path()), "main")
        .await
        .unwrap();
    let recorded = reader.recorded_verifier().clone();
    let mut other = recorded.clone();
    other.key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    let verify_err = |verifier: bi_ledger::format::checkpoint::Verifier| {
        let reader = &reader;
        async move {
            match reader.verify(&verifier, &|_, _| {}).await {
                Err(bi_ledger::LedgerError::Integrity(e)) => e,
                other => panic!("{other:?}"),
            }
        }
    };

    // One character of the signature changed: signed by the ledger's key
    // name and key id, but not a valid signature.
    let path = FsStore::file_path(dir.path(), "main/checkpoint-00000000000000000001");
    let note = std::fs::read_to_string(&path).unwrap();
    let line = note.rfind("\n\u{2014} ").unwrap() + 1;
    let at = note.len() - 20;
    assert!(at > line + 30, "{note}");
    let mut changed = note.clone().into_bytes();
    changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, &changed).unwrap();
    for verifier in [recorded.clone(), other.clone()] {
        let e = verify_err(verifier.clone()).await;
        let expected = if verifier == recorded {
            bi_ledger::IntegrityKind::BadCheckpoint
        } else {
            bi_ledger::IntegrityKind::NotSignedByKey
        };
        assert_eq!(e.kind, expected, "{e}");
        if verifier == recorded {
            assert_eq!(e.blob, "main/checkpoint-00000000000000000001", "{e}");
        }
        assert_eq!(
            e.what.contains("not the one the LEDGER file records"),
            verifier == other,
            "{e}"
        );
    }
    std::fs::write(&path, note).unwrap();

    // A payload byte changed: damage, whichever key is given.
    let seg = dir.path().join("main/0000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&seg, &bytes).unwrap();
    let e = verify_err(recorded).await;
    assert_eq!(e.kind, bi_ledger::IntegrityKind::Damage, "{e}");
    assert_eq!(e.blob, "main/0000000000.seg", "{e}");
}

/// Once one handle closes the ledger, its clones are told so, with the
/// ledger's name (an application may hold several).
#[tokio::test]
async fn a_clone_of_a_closed_ledger_names_it() {
    let (_dir, ledger) = with_one_event("orders").await;
    let clone = ledger.clone();
    ledger.close().await.unwrap();
    match clone
        .append_one(bi_ledger::NewEvent::bytes("s", "T", vec![1]))
        .await
    {
        Err(e @ bi_ledger::LedgerError::Closed { .. }) => {
            assert!(e.to_string().contains("\"orders\""), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        clone.checkpoint().await,
        Err(bi_ledger::LedgerError::Closed { ledger }) if ledger == "orders"
    ));
}

/// A new ledger `name` in a directory of its own, holding one event of
/// stream "s".
async fn with_one_event(name: &str) -> (tempfile::TempDir, bi_ledger::Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = bi_ledger::Ledger::create(store(dir.path()), name, options(5))
        .await
        .unwrap();
    ledger
        .append_one(bi_ledger::NewEvent::bytes("s", "T", vec![1]))
        .await
        .unwrap();
    (dir, ledger)
}
