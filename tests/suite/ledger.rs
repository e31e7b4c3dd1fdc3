//! The ledger API end to end, written once and run against every blob
//! store: `tests/ledger_api.rs` (fs) and `tests/azure_blob.rs` (Azurite).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bi_ledger::backend::{BlobStore, LockExpiry, StoreError};
use bi_ledger::format::stream_index::{stream_hashes, StreamIndex};
use bi_ledger::{ExpectedVersion, Ledger, LedgerError, LedgerOptions, LedgerReader, NewEvent};
use ed25519_dalek::SigningKey;
use serde_json::json;

fn ledger_opts() -> LedgerOptions {
    LedgerOptions::new(SigningKey::from_bytes(&[42; 32]))
}

/// Create, append with expected versions, a second writer refused, close,
/// reopen through another handle (as another process would), append, read,
/// verify, checkpoints, snapshot pruning, proofs. `s` and `other` are two
/// independent handles on the same (empty) namespace.
/// `verify` against the key the ledger records (a test's own key).
pub async fn verified(
    reader: &LedgerReader,
) -> bi_ledger::Result<bi_ledger::ledger::verify::VerifyReport> {
    reader.verify(reader.recorded_verifier(), &|_, _| {}).await
}

/// Every record's sequence number, in log order, as `scan` reads them.
pub async fn seqs(reader: &LedgerReader) -> bi_ledger::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    reader
        .scan(0, None, |r, _| {
            seqs.push(r.seq);
            std::ops::ControlFlow::Continue(())
        })
        .await
        .map(|()| seqs)
}

pub async fn append_read_reopen_verify_prove(s: Arc<dyn BlobStore>, other: Arc<dyn BlobStore>) {
    let ledger = Ledger::create(s.clone(), "main", ledger_opts())
        .await
        .unwrap();
    let r = ledger
        .append(vec![
            NewEvent::json(
                "decision-1",
                "DecisionQueued",
                &json!({"title": "Expand to EU"}),
            )
            .expect(ExpectedVersion::NoStream),
            NewEvent::json(
                "decision-1",
                "VoteCast",
                &json!({"agent": "cfo", "vote": "approve"}),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        r.iter().map(|r| (r.seq, r.version)).collect::<Vec<_>>(),
        vec![(0, 0), (1, 1)]
    );
    let err = ledger
        .append_one(NewEvent::json("decision-1", "X", &json!({})).expect(ExpectedVersion::Exact(0)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::VersionConflict {
                current: Some(1),
                ..
            }
        ),
        "{err}"
    );
    // A second writer is refused while this one holds the lock.
    match Ledger::open(other.clone(), "main", ledger_opts()).await {
        Err(LedgerError::Store(StoreError::Locked { what, expiry })) => {
            assert_eq!(
                (what.as_str(), expiry),
                ("main/writer", LockExpiry::ThisProcess)
            )
        }
        r => panic!("second writer: wanted Locked, got {:?}", r.map(|_| ())),
    }
    ledger.close().await.unwrap();

    // Reopened through another handle, as another process would.
    let ledger = Ledger::open(other.clone(), "main", ledger_opts())
        .await
        .unwrap();
    let r = ledger
        .append_one(
            NewEvent::json(
                "decision-1",
                "DecisionCompleted",
                &json!({"outcome": "approved"}),
            )
            .expect(ExpectedVersion::Exact(1)),
        )
        .await
        .unwrap();
    assert_eq!((r.seq, r.version), (2, 2));
    let verifier = ledger.verifier().clone();
    ledger.close().await.unwrap();

    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    let all = reader.read(0, None).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].event_type, "DecisionCompleted");
    assert_eq!(reader.read_stream("decision-1").await.unwrap().len(), 3);
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.records, 3);
    assert_eq!(report.unsigned_tail, 0);
    assert_eq!(report.caches_without_checkpoint, Some(vec![]));
    assert_eq!(report.missing_caches, Vec::<String>::new());

    let cps = reader.checkpoints(&verifier).await.unwrap();
    assert_eq!(
        cps.iter().map(|(_, c)| c.size).collect::<Vec<_>>(),
        vec![0, 2, 3]
    );
    let snaps = s.list("main/snapshot-").await.unwrap();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let newest = &cps.last().unwrap().1;
    for seq in 0..3 {
        let p = reader.inclusion_proof(seq, newest.size).await.unwrap();
        p.verify(newest).unwrap();
    }
    let old = &cps[1].1;
    let c2 = reader
        .consistency_proof(old.size, newest.size)
        .await
        .unwrap();
    c2.verify(old, newest).unwrap();
    // Nothing of the lock is visible as a blob.
    assert!(s
        .list("")
        .await
        .unwrap()
        .iter()
        .all(|b| !b.name.contains("writer")));
}

/// Reading one stream goes through the stream index blobs written beside
/// each checkpoint, then the log after the newest: across segment
/// rollovers, several checkpoints and an unsigned tail it returns exactly
/// what a scan of the whole log returns. Without the index blobs (a ledger
/// from before them, or a lost cache) the answer is the same.
pub async fn stream_reads_use_the_index(s: Arc<dyn BlobStore>) {
    let opts = LedgerOptions {
        segment_max_blocks: 4,
        checkpoint_every_events: None,
        checkpoint_interval: None,
        ..ledger_opts()
    };
    let ledger = Ledger::create(s.clone(), "main", opts).await.unwrap();
    let streams = ["order-1", "order-2", "invoice-7", "agent-cfo", "rare"];
    let mut n = 0u64;
    for round in 0..5u64 {
        for batch in 0..3u64 {
            let events = (0..4u64)
                .filter_map(|k| {
                    let i = round * 12 + batch * 4 + k;
                    // "rare" appears only in rounds 1 and 4.
                    let stream = streams[(i % 5) as usize];
                    (stream != "rare" || round % 3 == 1)
                        .then(|| NewEvent::json(stream, "Happened", &json!({ "i": i })))
                })
                .collect::<Vec<_>>();
            n += events.len() as u64;
            ledger.append(events).await.unwrap();
        }
        if round < 4 {
            ledger.checkpoint().await.unwrap();
        }
    }
    // Round 4 is an unsigned tail; the writer is still open.
    let indexes = s.list("main/streams-").await.unwrap();
    assert_eq!(indexes.len(), 4, "{indexes:?}");
    // The filters of round 0's batches keep "rare" out; round 1's let it in.
    let rare = stream_hashes("rare");
    let index = |i: usize| {
        let s = s.clone();
        let name = indexes[i].name.clone();
        async move { StreamIndex::decode(&s.read_all(&name).await.unwrap()).unwrap() }
    };
    let (round0, round1) = (index(0).await, index(1).await);
    assert_eq!((round0.from, round0.to, round0.batches.len()), (0, 10, 3));
    assert!(round0.batches.iter().all(|b| !b.may_hold(rare)));
    assert!(round1.batches.iter().any(|b| b.may_hold(rare)));
    assert!(
        s.list("main/")
            .await
            .unwrap()
            .iter()
            .filter(|b| b.name.ends_with(".seg"))
            .count()
            > 3
    );
    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    let mut total = 0;
    for stream in streams.iter().chain(&["nobody"]) {
        let indexed = reader
            .read_stream_indexed(stream)
            .await
            .unwrap()
            .expect("the indexes answer");
        assert_eq!(indexed, reader.read_stream(stream).await.unwrap());
        let scanned = reader.read_stream_scan(stream).await.unwrap();
        assert_eq!(indexed, scanned, "{stream}");
        assert!(indexed
            .iter()
            .enumerate()
            .all(|(v, r)| r.stream_version == v as u64 && r.stream == *stream));
        total += indexed.len() as u64;
    }
    assert_eq!(total, n);
    let verifier = ledger.verifier().clone();
    ledger.close().await.unwrap();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.records, n);

    // Without the caches: the same answers.
    for b in s.list("main/streams-").await.unwrap() {
        s.delete(&b.name).await.unwrap();
    }
    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    for stream in streams {
        assert_eq!(reader.read_stream_indexed(stream).await.unwrap(), None);
        let got = reader.read_stream(stream).await.unwrap();
        assert_eq!(got, reader.read_stream_scan(stream).await.unwrap());
        assert!(!got.is_empty());
    }
    reader.verify(&verifier, &|_, _| {}).await.unwrap();
}

/// Proofs through the node caches beside the checkpoints equal the ones of
/// the whole tree in memory; a cache with a wrong node (its checksum made
/// to fit) does not make a wrong proof (the prover checks each one against
/// the signed root and falls back to the log) and `verify` names it; with
/// no cache at all the proofs are the same.
pub async fn proofs_through_node_caches(s: Arc<dyn BlobStore>) {
    use bi_ledger::format::merkle;
    use bi_ledger::format::nodes::NodeCache;
    let ledger = create_checkpointed_on_demand(s.clone(), 42).await;
    for batch in 0..5u64 {
        let events = (0..1000u64)
            .map(|i| {
                NewEvent::json(
                    format!("s-{}", i % 11),
                    "Counted",
                    &json!({ "i": batch * 1000 + i }),
                )
            })
            .collect();
        ledger.append(events).await.unwrap();
        if batch == 1 {
            ledger.checkpoint().await.unwrap();
        }
    }
    let verifier = ledger.verifier().clone();
    ledger.close().await.unwrap();
    let caches = names(s.as_ref(), "main/nodes-").await;
    assert_eq!(
        caches,
        [
            "main/nodes-00000000000000002000",
            "main/nodes-00000000000000005000"
        ]
    );

    let mut written = Vec::new();
    for b in &caches {
        written.push(s.read_all(b).await.unwrap());
    }
    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    let (leaves, cps) = tree(&reader, &verifier).await;
    assert_eq!(
        cps.iter().map(|c| c.size).collect::<Vec<_>>(),
        [0, 2000, 5000]
    );
    let check = async |reader: &LedgerReader| {
        for cp in &cps[1..] {
            for seq in [0, 1023, 1024, 1999, 2047, 3000, 4095, 4096, 4999]
                .into_iter()
                .filter(|&q| q < cp.size)
            {
                let p = reader.inclusion_proof(seq, cp.size).await.unwrap();
                let want = merkle::inclusion_proof(&leaves[..cp.size as usize], seq).unwrap();
                assert_eq!(p.proof, hexes(&want), "inclusion of {seq} in {}", cp.size);
                assert_eq!(p.verify(cp).unwrap().seq, seq);
            }
        }
        for old in &cps {
            let p = reader.consistency_proof(old.size, 5000).await.unwrap();
            let want = merkle::consistency_proof(&leaves, old.size).unwrap();
            assert_eq!(p.proof, hexes(&want), "consistency {} -> 5000", old.size);
            p.verify(old, &cps[2]).unwrap();
        }
    };
    check(&reader).await;

    let blob = "main/nodes-00000000000000005000";
    let mut cache = NodeCache::decode(&s.read_all(blob).await.unwrap()).unwrap();
    assert_eq!((cache.from, cache.to, cache.hashes.len()), (2000, 5000, 6));
    cache.hashes[5][31] ^= 0x80; // the root of records 0..4096
    s.delete(blob).await.unwrap();
    s.put(blob, &cache.encode()).await.unwrap();
    check(&reader).await;
    match reader.verify(&verifier, &|_, _| {}).await {
        Err(LedgerError::Integrity(e)) => {
            assert_eq!((e.blob.as_str(), e.seq), (blob, Some(5000)), "{e}");
            assert_eq!(e.offset, 44 + 5 * 32, "{e}");
        }
        r => panic!("verify: wanted the node cache named, got {r:?}"),
    }
    // A wrong cache is damage to report, never something to restore over.
    let restore = bi_ledger::ledger::verify::VerifyOptions {
        restore_caches: true,
    };
    match reader.verify_with(&verifier, restore, &|_, _| {}).await {
        Err(LedgerError::Integrity(e)) => assert_eq!(e.blob, blob, "{e}"),
        r => panic!("verify with restore: wanted the node cache named, got {r:?}"),
    }
    assert_eq!(s.read_all(blob).await.unwrap(), cache.encode());

    // Deleted caches: the log still checks out, verify names them, and
    // proofs hash the records instead.
    for b in &caches {
        s.delete(b).await.unwrap();
    }
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.missing_caches, caches);
    assert!(report.restored_caches.is_empty());
    check(&reader).await;

    // Restored from the verified log: the very bytes the writer put.
    let report = reader
        .verify_with(&verifier, restore, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.restored_caches, caches);
    assert!(report.missing_caches.is_empty(), "{report:?}");
    for (b, bytes) in caches.iter().zip(&written) {
        assert_eq!(&s.read_all(b).await.unwrap(), bytes, "{b}");
    }
    let report = reader
        .verify_with(&verifier, restore, &|_, _| {})
        .await
        .unwrap();
    assert!(report.restored_caches.is_empty() && report.missing_caches.is_empty());
    check(&reader).await;
}

/// Every record's leaf hash and every checkpoint, for proofs to be
/// compared with the tree in memory.
pub async fn tree(
    reader: &LedgerReader,
    verifier: &bi_ledger::format::checkpoint::Verifier,
) -> (
    Vec<bi_ledger::format::Hash>,
    Vec<bi_ledger::format::checkpoint::Checkpoint>,
) {
    let records = reader.read(0, None).await.unwrap();
    let cps = reader.checkpoints(verifier).await.unwrap();
    (
        records.iter().map(|r| r.leaf_hash()).collect(),
        cps.into_iter().map(|(_, c)| c).collect(),
    )
}

pub use crate::listing::names;
use crate::wrap::{Wrap, Wrapped};

/// Hashes as a proof object spells them.
pub fn hexes(v: &[bi_ledger::format::Hash]) -> Vec<String> {
    v.iter().map(|h| bi_ledger::format::hex(h)).collect()
}

/// A node cache without its checkpoint (a crash between the two puts)
/// is the first one a prover finds for the nodes it holds: right, it
/// serves them; wrong, the proofs still come out right (checked against
/// the signed root, then hashed from the log). `verify` goes by
/// checkpoints and does not read it.
pub async fn orphan_node_caches_are_only_hints(s: Arc<dyn BlobStore>) {
    use bi_ledger::format::merkle;
    use bi_ledger::format::nodes::{self, Node, NodeCache};
    let ledger = create_checkpointed_on_demand(s.clone(), 42).await;
    let events = |n: u64| {
        (0..n)
            .map(|i| NewEvent::json("s", "Counted", &json!({ "i": i })))
            .collect::<Vec<_>>()
    };
    ledger.append(events(2000)).await.unwrap();
    ledger.checkpoint().await.unwrap();
    ledger.append(events(3000)).await.unwrap();
    let verifier = ledger.verifier().clone();
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    let (leaves, cps) = tree(&reader, &verifier).await;
    let newest = cps.last().unwrap();
    assert_eq!(newest.size, 5000);

    // An orphan from 2000 to 3500: nodes (10, 1), (11, 0) and (10, 2).
    let orphan = "main/nodes-00000000000000003500";
    let root_of = |n: Node| merkle::root(&leaves[n.leaves().0 as usize..n.leaves().1 as usize]);
    let mut cache = NodeCache {
        ledger_id: reader.id(),
        from: 2000,
        to: 3500,
        hashes: nodes::completed(2000, 3500).map(root_of).collect(),
    };
    assert_eq!(cache.hashes.len(), 3);
    assert_eq!(NodeCache::decode(&cache.encode()).unwrap(), cache);
    for wrong in [false, true] {
        if wrong {
            cache.hashes[1][0] ^= 1; // node (11, 0): a sibling in proofs of 2048..4096
            s.delete(orphan).await.unwrap();
        }
        s.put(orphan, &cache.encode()).await.unwrap();
        for seq in [0, 2100, 3071, 3072, 4999] {
            let p = reader.inclusion_proof(seq, 5000).await.unwrap();
            let want = merkle::inclusion_proof(&leaves, seq).unwrap();
            assert_eq!(
                p.proof,
                hexes(&want),
                "inclusion of {seq}, orphan wrong: {wrong}"
            );
            p.verify(newest).unwrap();
        }
        reader.verify(&verifier, &|_, _| {}).await.unwrap();
    }
}

/// A ledger named `main` that checkpoints only when asked (and when
/// closed), signed with a key of `seed` bytes.
pub async fn create_checkpointed_on_demand(s: Arc<dyn BlobStore>, seed: u8) -> Ledger {
    let mut opts = LedgerOptions::new(SigningKey::from_bytes(&[seed; 32]));
    opts.checkpoint_every_events = None;
    Ledger::create(s, "main", opts).await.unwrap()
}

/// `signed_checkpoint` reads the one checkpoint asked for (or the newest),
/// checked: a checkpoint stored under another size's name is an integrity
/// error naming it.
pub async fn signed_checkpoint_reads_the_one_asked_for(s: Arc<dyn BlobStore>) {
    let ledger = create_checkpointed_on_demand(s.clone(), 12).await;
    ledger
        .append(vec![NewEvent::json("a", "X", &json!({}))])
        .await
        .unwrap();
    let one = ledger.checkpoint().await.unwrap();
    ledger
        .append(vec![NewEvent::json("a", "X", &json!({}))])
        .await
        .unwrap();
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    let (blob, cp, note) = reader.signed_checkpoint(None).await.unwrap().unwrap();
    assert_eq!(
        (blob.as_str(), cp.size),
        ("main/checkpoint-00000000000000000002", 2)
    );
    assert_eq!(note.as_bytes(), s.read_all(&blob).await.unwrap());
    let (_, cp, note) = reader.signed_checkpoint(Some(1)).await.unwrap().unwrap();
    assert_eq!((cp, note), (one.checkpoint, one.note.clone()));
    assert!(reader.signed_checkpoint(Some(3)).await.unwrap().is_none());
    s.put("main/checkpoint-00000000000000000007", one.note.as_bytes())
        .await
        .unwrap();
    match reader.signed_checkpoint(Some(7)).await {
        Err(LedgerError::Integrity(e)) => {
            assert_eq!(e.blob, "main/checkpoint-00000000000000000007", "{e}");
            assert!(e.what.contains("named for 7"), "{e}");
        }
        r => panic!("a misnamed checkpoint gave {r:?}"),
    }
}

/// Where `Interrupted` stops a rollover.
#[derive(Clone, Copy, Debug)]
pub enum RolloverStop {
    /// After `create` of the next segment and the seal of the full one:
    /// the next is empty (life of an event, step 5b).
    BeforeHeader,
    /// After `create` of the next segment: it is empty, the full one is
    /// not sealed (5a).
    BeforeSeal,
}

/// A store that stops the writer part-way, as a crash there would: the
/// first rollover (the next call fails and the writer is poisoned), or the
/// put of the next checkpoint (it fails without landing, after the caches).
/// It also records the prefix of every `list`.
#[derive(Debug)]
pub struct Interrupted {
    pub inner: Arc<dyn BlobStore>,
    stop: Option<RolloverStop>,
    pub lose_checkpoint: std::sync::atomic::AtomicBool,
    pub prefixes: std::sync::Mutex<Vec<String>>,
    /// The names of the blobs read, in order.
    pub reads: std::sync::Mutex<Vec<String>>,
    /// Fails the next put of a merged stream index.
    pub lose_merged: std::sync::atomic::AtomicBool,
    /// Makes the next put of a merged stream index land but fail.
    pub lose_merged_answer: std::sync::atomic::AtomicBool,
}

impl Interrupted {
    /// Stops nothing until `lose_checkpoint` is set.
    pub fn losing_a_checkpoint(inner: Arc<dyn BlobStore>) -> Interrupted {
        Interrupted {
            inner,
            stop: None,
            lose_checkpoint: false.into(),
            prefixes: Default::default(),
            reads: Default::default(),
            lose_merged: false.into(),
            lose_merged_answer: false.into(),
        }
    }
}

/// Whether a put of `name` (a blob of `kind`) is to fail: once, if `flag`.
fn taken(name: &str, kind: &str, flag: &std::sync::atomic::AtomicBool) -> bool {
    name.contains(kind) && flag.swap(false, std::sync::atomic::Ordering::SeqCst)
}

fn injected(name: &str, what: &str) -> StoreError {
    StoreError::Io {
        op: "put",
        name: name.to_owned(),
        source: std::io::Error::other(format!("injected: {what}")),
    }
}

#[async_trait::async_trait]
impl Wrap for Interrupted {
    fn inner(&self) -> &dyn BlobStore {
        &*self.inner
    }
    async fn append(&self, name: &str, at: u64, block: &[u8]) -> Result<u64, StoreError> {
        let header_of_next =
            at == 0 && name.ends_with(".seg") && !name.ends_with("/0000000000.seg");
        if header_of_next && matches!(self.stop, Some(RolloverStop::BeforeHeader)) {
            return Err(StoreError::Io {
                op: "append to",
                name: name.to_owned(),
                source: std::io::Error::other("injected: crashed before the header"),
            });
        }
        self.inner.append(name, at, block).await
    }
    async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.reads.lock().unwrap().push(name.to_owned());
        self.inner.read(name, offset, len).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<bi_ledger::backend::BlobInfo>, StoreError> {
        self.prefixes.lock().unwrap().push(prefix.to_owned());
        self.inner.list(prefix).await
    }
    async fn seal(&self, name: &str) -> Result<(), StoreError> {
        if matches!(self.stop, Some(RolloverStop::BeforeSeal)) {
            return Err(StoreError::Io {
                op: "seal",
                name: name.to_owned(),
                source: std::io::Error::other("injected: crashed before the seal"),
            });
        }
        self.inner.seal(name).await
    }
    async fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        if taken(name, "/streams-merged-", &self.lose_merged) {
            return Err(injected(name, "the merged index was not put"));
        }
        if taken(name, "/checkpoint-", &self.lose_checkpoint) {
            return Err(injected(name, "crashed before the checkpoint"));
        }
        let lose_answer = taken(name, "/streams-merged-", &self.lose_merged_answer);
        self.inner.put(name, data).await?;
        if lose_answer {
            return Err(injected(name, "the answer was lost"));
        }
        Ok(())
    }
}

/// Life of an event, step 5: a rollover cut short after `create` of the
/// next segment (5a) or after the seal of the full one (5b). The next
/// `open` writes the missing header, byte for byte the one the writer
/// would have written, seals the full segment if it is not, and appends
/// right after the header; nothing acknowledged is lost and the log
/// verifies.
pub async fn rollover_interrupted(s: Arc<dyn BlobStore>, stop: RolloverStop) {
    let opts = || {
        let mut o = ledger_opts();
        o.checkpoint_every_events = None;
        o.segment_max_blocks = 3; // the header and two batches
        o
    };
    let cut: Arc<dyn BlobStore> = Arc::new(Wrapped(Interrupted {
        inner: s.clone(),
        stop: Some(stop),
        lose_checkpoint: false.into(),
        prefixes: Default::default(),
        reads: Default::default(),
        lose_merged: false.into(),
        lose_merged_answer: false.into(),
    }));
    let ledger = Ledger::create(cut, "main", opts()).await.unwrap();
    for i in 0..2 {
        let r = ledger
            .append(vec![NewEvent::json("s", "T", &json!({ "i": i }))])
            .await
            .unwrap();
        assert_eq!(r[0].segment, 0);
    }
    let e = ledger
        .append(vec![NewEvent::json("s", "T", &json!({ "i": 2 }))])
        .await;
    assert!(
        matches!(e, Err(LedgerError::Poisoned(_))),
        "{stop:?}: {e:?}"
    );
    // A poisoned writer writes no checkpoint, but `close` still releases
    // the writer lock (on Azure, the lease) before it answers.
    let closed = ledger.close().await;
    assert!(
        matches!(closed, Err(LedgerError::Poisoned(_))),
        "{closed:?}"
    );
    let (seg0, seg1) = ("main/0000000000.seg", "main/0000000001.seg");
    let left = s.info(seg1).await.unwrap();
    let header_len = bi_ledger::format::segment::HEADER_LEN as u64;
    assert_eq!(left.size, 0, "{stop:?}: {left:?}");
    assert_eq!(
        s.info(seg0).await.unwrap().sealed,
        matches!(stop, RolloverStop::BeforeHeader),
        "{stop:?}"
    );

    let ledger = Ledger::open(s.clone(), "main", opts()).await.unwrap();
    assert!(
        s.info(seg0).await.unwrap().sealed,
        "{stop:?}: open seals the full segment"
    );
    let r = ledger
        .append(vec![NewEvent::json("s", "T", &json!({ "i": 2 }))])
        .await
        .unwrap();
    assert_eq!(
        (r[0].seq, r[0].segment, r[0].offset),
        (2, 1, header_len),
        "{stop:?}"
    );
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    let report = verified(&reader).await.unwrap();
    assert_eq!((report.records, report.segments), (3, 2), "{stop:?}");
    let versions: Vec<u64> = reader
        .read_stream("s")
        .await
        .unwrap()
        .iter()
        .map(|r| r.stream_version)
        .collect();
    assert_eq!(versions, [0, 1, 2]);
}

/// The caches of `size` a cut-short checkpoint left (node cache, snapshot,
/// stream index) and their bytes, checked to be what `verify` names as
/// without a checkpoint; and its report.
async fn caches_left_at(
    s: &Arc<dyn BlobStore>,
    size: u64,
) -> (
    Vec<String>,
    Vec<Vec<u8>>,
    bi_ledger::ledger::verify::VerifyReport,
) {
    let orphans: Vec<String> = ["nodes", "snapshot", "streams"]
        .iter()
        .map(|k| format!("main/{k}-{size:020}"))
        .collect();
    let mut kept = Vec::new();
    for blob in &orphans {
        kept.push(s.read_all(blob).await.unwrap());
    }
    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    let report = verified(&reader).await.unwrap();
    assert_eq!(report.caches_without_checkpoint, Some(orphans.clone()));
    (orphans, kept, report)
}

/// The caches [`caches_left_at`] found, with the bytes they had then, and
/// now beside a checkpoint of their `size`, which is the whole log.
async fn caches_kept_and_signed(
    s: &Arc<dyn BlobStore>,
    orphans: &[String],
    kept: &[Vec<u8>],
    size: u64,
) {
    for (blob, bytes) in orphans.iter().zip(kept) {
        assert_eq!(
            &s.read_all(blob).await.unwrap(),
            bytes,
            "{blob} kept as it was"
        );
    }
    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    let report = verified(&reader).await.unwrap();
    assert_eq!(
        (
            report.records,
            report.unsigned_tail,
            report.caches_without_checkpoint
        ),
        (size, 0, Some(vec![]))
    );
}

/// Life of an event, step 6: a checkpoint cut short after its caches (its
/// own put failed without landing). The caches are left without a
/// checkpoint, and `verify` names them; the next checkpoint of that size
/// (here, the one `close` writes) finds them with the same bytes and keeps
/// them, and then nothing is left over.
pub async fn checkpoint_interrupted_after_its_caches(s: Arc<dyn BlobStore>) {
    let cut = Arc::new(Wrapped(Interrupted::losing_a_checkpoint(s.clone())));
    let ledger = create_checkpointed_on_demand(cut.clone(), 16).await;
    let events: Vec<NewEvent> = (0..1100)
        .map(|i| NewEvent::json(format!("s{}", i % 7), "T", &json!({ "i": i })))
        .collect();
    ledger.append(events).await.unwrap();
    cut.lose_checkpoint
        .store(true, std::sync::atomic::Ordering::SeqCst);
    ledger.checkpoint().await.unwrap_err();
    let (orphans, kept, _) = caches_left_at(&s, 1100).await;

    let info = ledger.close().await.unwrap();
    assert_eq!(info.checkpoint.size, 1100);
    caches_kept_and_signed(&s, &orphans, &kept, 1100).await;
}

/// The same cut, with the writer gone before another checkpoint (a crash
/// during the checkpoint `close` writes, as a killed `bi-ledger append`
/// leaves): the next writer completes it as it opens, reusing the caches,
/// so none is left without a checkpoint (no later checkpoint would have
/// their size).
pub async fn checkpoint_interrupted_then_reopened(s: Arc<dyn BlobStore>) {
    let ledger = create_checkpointed_on_demand(s.clone(), 24).await;
    let events: Vec<NewEvent> = (0..1100)
        .map(|i| NewEvent::json(format!("s{}", i % 7), "T", &json!({ "i": i })))
        .collect();
    ledger.append(events).await.unwrap();
    ledger.close().await.unwrap();
    // What the crash leaves: the caches of 1100, not its checkpoint.
    let cp = "main/checkpoint-00000000000000001100";
    s.delete(cp).await.unwrap();
    let (orphans, kept, report) = caches_left_at(&s, 1100).await;
    assert_eq!(report.unsigned_tail, 1100);

    let mut opts = LedgerOptions::new(SigningKey::from_bytes(&[24; 32]));
    opts.checkpoint_every_events = None;
    let ledger = Ledger::open(s.clone(), "main", opts).await.unwrap();
    assert!(
        s.info(cp).await.is_ok(),
        "checkpoint 1100 completed on open"
    );
    ledger.close().await.unwrap();
    caches_kept_and_signed(&s, &orphans, &kept, 1100).await;
}

/// A last frame that runs, incomplete, to the end of the last segment.
/// On a file system that is what a crash leaves (`truncates`): `open` cuts
/// it and goes on. On Azure an Append Block cannot tear, so it is damage:
/// `open` refuses with an integrity error naming the segment and offset,
/// and cuts nothing. `verify` names it either way. So with zeros after the
/// last batch (unwritten space, which only a file system leaves): `verify`
/// passes, and on Azure `open` names them, as it cannot cut them.
pub async fn a_partial_last_frame(s: Arc<dyn BlobStore>, truncates: bool) {
    assert_eq!(s.truncates(), truncates);
    let ledger = create_checkpointed_on_demand(s.clone(), 17).await;
    let mut offsets = Vec::new();
    for i in 0..2 {
        let r = ledger
            .append(vec![NewEvent::json("s", "T", &json!({ "i": i }))])
            .await
            .unwrap();
        offsets.push(r[0].offset);
    }
    ledger.close().await.unwrap();
    let seg = "main/0000000000.seg";
    let size = s.info(seg).await.unwrap().size;
    let frame = s
        .read(seg, offsets[0], offsets[1] - offsets[0])
        .await
        .unwrap();
    s.append(seg, size, &frame[..frame.len() / 2])
        .await
        .unwrap();
    let torn = size + (frame.len() / 2) as u64;

    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    match verified(&reader).await {
        Err(LedgerError::Integrity(e)) => {
            assert_eq!((e.blob.as_str(), e.offset), (seg, size), "{e}");
            assert!(e.what.contains("torn last batch"), "{e}");
        }
        other => panic!("verify of a torn tail gave {other:?}"),
    }
    // A read stops at a tear where one can be; on Azure it is damage.
    match (reader.read(0, None).await, truncates) {
        (Ok(records), true) => assert_eq!(records.len(), 2),
        (Err(LedgerError::Integrity(e)), false) => {
            assert_eq!((e.blob.as_str(), e.offset), (seg, size), "{e}");
            assert!(e.what.contains("cannot tear"), "{e}");
        }
        (other, _) => panic!("a read over a torn-looking tail gave {other:?}"),
    }
    let opts = LedgerOptions::new(SigningKey::from_bytes(&[17; 32]));
    let opened = Ledger::open(s.clone(), "main", opts).await;
    if truncates {
        let ledger = opened.unwrap();
        assert_eq!(s.info(seg).await.unwrap().size, size, "cut back");
        let r = ledger
            .append(vec![NewEvent::json("s", "T", &json!({ "i": 2 }))])
            .await
            .unwrap();
        assert_eq!((r[0].seq, r[0].offset), (2, size));
        ledger.close().await.unwrap();
        let report = verified(&reader).await.unwrap();
        assert_eq!(report.records, 3);
    } else {
        match opened {
            Err(LedgerError::Integrity(e)) => {
                assert_eq!((e.blob.as_str(), e.offset, e.seq), (seg, size, Some(2)));
                assert!(e.what.contains("cannot tear"), "{e}");
            }
            other => panic!("open over a torn-looking tail gave {other:?}"),
        }
        assert_eq!(s.info(seg).await.unwrap().size, torn, "nothing cut");
    }
}

/// Zeros after the last batch of the last segment: unwritten space, which
/// a file-system store leaves after a crash and cuts off on open. A store
/// that cannot cut (Azure) did not write them: `open` names them, rather
/// than failing on the cut; `verify` passes either way (nothing is lost).
pub async fn zeros_after_the_last_batch(s: Arc<dyn BlobStore>) {
    let ledger = create_checkpointed_on_demand(s.clone(), 18).await;
    ledger
        .append(vec![NewEvent::json("s", "T", &json!({ "i": 0 }))])
        .await
        .unwrap();
    ledger.close().await.unwrap();
    let seg = "main/0000000000.seg";
    let size = s.info(seg).await.unwrap().size;
    s.append(seg, size, &[0; 100]).await.unwrap();

    let reader = LedgerReader::open(s.clone(), "main").await.unwrap();
    assert_eq!(verified(&reader).await.unwrap().records, 1);
    let opts = LedgerOptions::new(SigningKey::from_bytes(&[18; 32]));
    match (Ledger::open(s.clone(), "main", opts).await, s.truncates()) {
        (Ok(ledger), true) => {
            let r = ledger
                .append(vec![NewEvent::json("s", "T", &json!({ "i": 1 }))])
                .await
                .unwrap();
            assert_eq!((r[0].seq, r[0].offset), (1, size), "over the zeros");
            ledger.close().await.unwrap();
        }
        (Err(LedgerError::Integrity(e)), false) => {
            assert_eq!((e.blob.as_str(), e.offset), (seg, size), "{e}");
            assert!(e.what.contains("100 zero bytes"), "{e}");
        }
        (other, truncates) => panic!(
            "open over zeros (store truncates: {truncates}) gave {:?}",
            other.err()
        ),
    }
}

/// A ledger whose handles are all dropped, without `close`, reopens at once
/// in the same process: `open` waits for the stopping writer to let go of
/// the lock (on Azure, to release its lease) instead of being refused. A
/// handle still in use is refused at once. Each round drops the ledger right
/// after an append was acknowledged, while its writer is still running; an
/// open without the wait loses that race in about one round of a hundred
/// on the fs store.
pub async fn reopen_right_after_a_drop(s: Arc<dyn BlobStore>, rounds: u64) {
    let mut ledger = create_checkpointed_on_demand(s.clone(), 42).await;
    for round in 0..rounds {
        let events = (0..10)
            .map(|i| NewEvent::json("s", "E", &json!({ "round": round, "i": i })))
            .collect();
        ledger.append(events).await.unwrap();
        let t = Instant::now();
        match Ledger::open(s.clone(), "main", ledger_opts()).await {
            Err(LedgerError::Store(StoreError::Locked { .. })) => {}
            Err(e) => panic!("round {round}: open beside a live writer: {e}"),
            Ok(_) => panic!("round {round}: opened beside a live writer"),
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        drop(ledger);
        let t = Instant::now();
        ledger = Ledger::open(s.clone(), "main", ledger_opts())
            .await
            .unwrap_or_else(|e| panic!("round {round}: reopen after a drop: {e}"));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(s, "main").await.unwrap();
    assert_eq!(
        seqs(&reader).await.unwrap(),
        (0..rounds * 10).collect::<Vec<_>>()
    );
    // The caches of the checkpoint at close cover records that every
    // reopen read back from the tail: none is missing.
    let report = verified(&reader).await.unwrap();
    assert_eq!(report.missing_caches, Vec::<String>::new());
}

/// Opening for writing or reading, and finding the newest checkpoint, list
/// only prefixes that leave the checkpoints and caches of other times out:
/// the snapshots (two or three), the segments by leading digit, and
/// checkpoints in the million-record windows near the log's end; and a
/// checkpoint lists nothing. Ten years at the default interval leave about
/// a million checkpoints, which a listing of `main/` or `main/checkpoint-`
/// would return whole, on every open.
pub async fn opening_lists_only_what_it_needs(s: Arc<dyn BlobStore>) {
    let ledger = create_checkpointed_on_demand(s.clone(), 13).await;
    for i in 0..5 {
        ledger
            .append(vec![NewEvent::json("a", "X", &json!({ "i": i }))])
            .await
            .unwrap();
        ledger.checkpoint().await.unwrap();
    }
    ledger.close().await.unwrap();
    let listed = Arc::new(Wrapped(Interrupted::losing_a_checkpoint(s.clone())));
    let narrow = |what: &str| {
        let prefixes = std::mem::take(&mut *listed.prefixes.lock().unwrap());
        assert!(!prefixes.is_empty(), "{what} listed nothing");
        for p in &prefixes {
            let window = p
                .strip_prefix("main/checkpoint-")
                .is_some_and(|d| d.len() == 14 && d.bytes().all(|b| b.is_ascii_digit()));
            // The segments, by leading digit (the writer looks under all ten).
            let segments = p
                .strip_prefix("main/")
                .is_some_and(|d| d.len() == 1 && d.bytes().all(|b| b.is_ascii_digit()));
            assert!(
                p == "main/snapshot-" || segments || window,
                "{what} listed {p:?} (all it listed: {prefixes:?})"
            );
        }
    };
    let mut opts = LedgerOptions::new(SigningKey::from_bytes(&[13; 32]));
    opts.checkpoint_every_events = None;
    let ledger = Ledger::open(listed.clone(), "main", opts).await.unwrap();
    narrow("Ledger::open");
    let r = ledger
        .append(vec![NewEvent::json("a", "X", &json!({ "i": 5 }))])
        .await
        .unwrap();
    assert_eq!((r[0].seq, r[0].version), (5, 5));
    // A checkpoint prunes the snapshots it knows of without listing them.
    // The first one lists the merged stream indexes and, in the windows
    // since the newest of them, the checkpoints and stream indexes not
    // merged yet (`merge::Run::restore`); later ones list nothing.
    assert_eq!(ledger.checkpoint().await.unwrap().checkpoint.size, 6);
    let prefixes = std::mem::take(&mut *listed.prefixes.lock().unwrap());
    for p in &prefixes {
        let window = ["main/checkpoint-", "main/streams-"].iter().any(|k| {
            p.strip_prefix(k)
                .is_some_and(|d| d.len() == 14 && d.bytes().all(|b| b.is_ascii_digit()))
        });
        assert!(
            p == "main/streams-merged-" || window,
            "the first checkpoint listed {p:?} (all it listed: {prefixes:?})"
        );
    }
    ledger
        .append(vec![NewEvent::json("a", "X", &json!({ "i": 6 }))])
        .await
        .unwrap();
    assert_eq!(ledger.checkpoint().await.unwrap().checkpoint.size, 7);
    ledger.close().await.unwrap();
    let prefixes = std::mem::take(&mut *listed.prefixes.lock().unwrap());
    assert_eq!(
        prefixes,
        Vec::<String>::new(),
        "the writer listed after its first checkpoint"
    );
    let snapshots = names(s.as_ref(), "main/snapshot-").await;
    assert_eq!(
        snapshots,
        [
            "main/snapshot-00000000000000000006",
            "main/snapshot-00000000000000000007"
        ]
    );
    let reader = LedgerReader::open(listed.clone(), "main").await.unwrap();
    assert_eq!(reader.signed_at_open(), 7);
    assert_eq!(reader.len().await.unwrap(), 7);
    let (blob, cp, _) = reader.signed_checkpoint(None).await.unwrap().unwrap();
    assert_eq!(
        (blob.as_str(), cp.size),
        ("main/checkpoint-00000000000000000007", 7)
    );
    narrow("LedgerReader::open, len and signed_checkpoint(None)");
}

/// The block size is the ledger's, recorded at creation (format §3.4), not
/// the store handle's: `large` holds one store of 8 MiB blocks, `small` one
/// of 64 KiB, and `default` one of the default 4 MiB, all on the same
/// namespace. A ledger created through `large` has a 5 MiB block that a
/// reader and a recovering writer through `default` take as it is; one
/// created through `small` stays in blocks of 64 KiB when written through
/// `default`.
pub async fn the_block_size_is_the_ledgers(
    large: Arc<dyn BlobStore>,
    small: Arc<dyn BlobStore>,
    default: Arc<dyn BlobStore>,
) {
    let mut opts = ledger_opts();
    opts.max_batch_bytes = 8 << 20;
    let ledger = Ledger::create(large, "large", opts).await.unwrap();
    let data = "x".repeat(1 << 20);
    let events = (0..5)
        .map(|i| NewEvent::json("big", "Blob", &json!({"i": i, "data": data})))
        .collect();
    let receipts = ledger.append(events).await.unwrap();
    assert!(receipts.iter().all(|r| r.offset == receipts[0].offset));
    // No close: the reopen recovers the tail after checkpoint 0, the 5 MiB
    // block included.
    drop(ledger);
    let ledger = Ledger::open(default.clone(), "large", ledger_opts())
        .await
        .unwrap();
    assert_eq!(ledger.max_batch_bytes(), 4 << 20);
    ledger
        .append_one(NewEvent::json("small", "T", &json!(5)))
        .await
        .unwrap();
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(default.clone(), "large").await.unwrap();
    assert_eq!(seqs(&reader).await.unwrap(), vec![0, 1, 2, 3, 4, 5]);
    verified(&reader).await.unwrap();

    let ledger = Ledger::create(small, "small", ledger_opts()).await.unwrap();
    assert_eq!(ledger.max_batch_bytes(), 64 << 10);
    ledger.close().await.unwrap();
    let ledger = Ledger::open(default.clone(), "small", ledger_opts())
        .await
        .unwrap();
    assert_eq!(ledger.max_batch_bytes(), 64 << 10);
    let big = NewEvent::json("s", "T", &json!("y".repeat(100 << 10)));
    match ledger.append_one(big).await {
        Err(LedgerError::InvalidEvent {
            index: 0,
            field: "payload",
            reason,
        }) => assert!(reason.contains("65536"), "{reason}"),
        other => panic!("a 100 KiB event in a ledger of 64 KiB blocks: {other:?}"),
    }
    ledger
        .append_one(NewEvent::json("s", "T", &json!(0)))
        .await
        .unwrap();
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(default, "small").await.unwrap();
    assert_eq!(seqs(&reader).await.unwrap(), vec![0]);
    verified(&reader).await.unwrap();
}

/// Stream indexes merged (format §11.3.1): with `merge_index_count` 4, the
/// indexes of every four checkpoints are put again as one blob, also across
/// a reopen (the run is listed back from the store). A read of one stream
/// goes through the merged blobs and the indexes after them, never the
/// merged ones' parts, and gives what a scan gives; `verify` checks the
/// merged blobs against the log and names one that differs.
pub async fn stream_indexes_are_merged(s: Arc<dyn BlobStore>) {
    let mut opts = ledger_opts();
    opts.checkpoint_every_events = None;
    opts.checkpoint_interval = None;
    opts.merge_index_count = 4;
    let mut ledger = Ledger::create(s.clone(), "main", opts.clone())
        .await
        .unwrap();
    for round in 0..10u64 {
        if round == 6 {
            ledger.close().await.unwrap();
            ledger = Ledger::open(s.clone(), "main", opts.clone()).await.unwrap();
        }
        let events = ["a", "b", ["c", "d", "e"][round as usize % 3]]
            .iter()
            .map(|stream| NewEvent::json(*stream, "E", &json!({ "round": round })))
            .collect();
        ledger.append(events).await.unwrap();
        assert_eq!(
            ledger.checkpoint().await.unwrap().checkpoint.size,
            3 * (round + 1)
        );
    }
    ledger.close().await.unwrap();
    assert_eq!(
        names(s.as_ref(), "main/streams-merged-").await,
        [
            "main/streams-merged-00000000000000000012",
            "main/streams-merged-00000000000000000024"
        ]
    );

    let counted = Arc::new(Wrapped(Interrupted::losing_a_checkpoint(s.clone())));
    let reader = LedgerReader::open(counted.clone(), "main").await.unwrap();
    let scanned = reader.read_stream_scan("a").await.unwrap();
    assert_eq!(scanned.len(), 10);
    for stream in ["a", "c", "d", "e", "none"] {
        counted.reads.lock().unwrap().clear();
        let through = reader.read_stream_indexed(stream).await.unwrap();
        let want = reader.read_stream_scan(stream).await.unwrap();
        assert_eq!(through.as_ref(), Some(&want), "{stream}");
        let reads = std::mem::take(&mut *counted.reads.lock().unwrap());
        // Read a few at a time: in any order.
        let mut indexes: Vec<&String> = reads.iter().filter(|n| n.contains("/streams-")).collect();
        indexes.sort();
        assert_eq!(
            indexes,
            [
                "main/streams-00000000000000000027",
                "main/streams-00000000000000000030",
                "main/streams-merged-00000000000000000012",
                "main/streams-merged-00000000000000000024",
            ],
            "{stream}"
        );
    }
    verified(&reader).await.unwrap();

    // A merged index that lists other batches than its checkpoints' is
    // named by verify. As a cache it is not trusted further than the
    // versions it gives: one whose filters hide stream "a" in 12..24 makes
    // the indexed read give up (a later version comes too early), and
    // the read falls back to a scan.
    let blob = "main/streams-merged-00000000000000000024";
    let mut idx = StreamIndex::decode(&s.read_all(blob).await.unwrap()).unwrap();
    for b in &mut idx.batches {
        b.filter.fill(0);
    }
    s.delete(blob).await.unwrap();
    s.put(blob, &idx.encode()).await.unwrap();
    match verified(&reader).await {
        Err(LedgerError::Integrity(e)) => {
            assert_eq!(e.blob, blob, "{e}");
            assert!(e.what.ends_with("its stream filter differs"), "{e}");
        }
        other => panic!("verify of a changed merged index: {other:?}"),
    }
    assert_eq!(reader.read_stream_indexed("a").await.unwrap(), None);
    let mut passed = Vec::new();
    reader
        .read_stream_with("a", |r| {
            passed.push(r.stream_version);
            std::ops::ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(passed, (0..10).collect::<Vec<_>>());

    // A merged index at a size no checkpoint has is not the writer's:
    // verify fails it.
    let orphan = "main/streams-merged-00000000000000000020";
    s.put(orphan, &idx.encode()).await.unwrap();
    match verified(&reader).await {
        Err(LedgerError::Integrity(e)) => {
            assert_eq!((e.blob.as_str(), e.seq), (orphan, Some(20)), "{e}");
            assert!(e.what.contains("where no checkpoint is"), "{e}");
        }
        other => panic!("verify of a merged index without its checkpoint: {other:?}"),
    }
}

/// A merged stream index whose put fails costs nothing but the merge: the
/// checkpoint stands, and the next checkpoint merges the run. A put that
/// landed although it failed (its answer lost) is found there and not
/// merged again: merged indexes never overlap, and the ledger verifies.
pub async fn a_merge_that_fails_is_tried_again(s: Arc<dyn BlobStore>) {
    use std::sync::atomic::Ordering::SeqCst;
    let failing = Arc::new(Wrapped(Interrupted::losing_a_checkpoint(s.clone())));
    let mut opts = ledger_opts();
    opts.merge_index_count = 2;
    let ledger = Ledger::create(failing.clone(), "main", opts).await.unwrap();
    let mut merged_after = Vec::new();
    for round in 0..8u64 {
        // The first merge (at checkpoint 2) is not put; the one after it
        // (checkpoint 3, the same run) is put but its answer lost.
        match round {
            1 => failing.lose_merged.store(true, SeqCst),
            2 => failing.lose_merged_answer.store(true, SeqCst),
            _ => {}
        }
        ledger
            .append(vec![NewEvent::json("a", "E", &json!(round))])
            .await
            .unwrap();
        let cp = ledger.checkpoint().await.unwrap();
        assert_eq!(cp.checkpoint.size, round + 1);
        merged_after.push(names(s.as_ref(), "main/streams-merged-").await.len());
    }
    assert!(!failing.lose_merged.load(SeqCst) && !failing.lose_merged_answer.load(SeqCst));
    // Checkpoints 1..8; merges at 2 (not put), 3 (of 1..2, put, answer
    // lost), 4 (of 3..4, after the one of 1..2 was found), 6 and 8.
    assert_eq!(merged_after, [0, 0, 1, 2, 2, 3, 3, 4]);
    assert_eq!(
        names(s.as_ref(), "main/streams-merged-").await,
        [
            "main/streams-merged-00000000000000000002",
            "main/streams-merged-00000000000000000004",
            "main/streams-merged-00000000000000000006",
            "main/streams-merged-00000000000000000008",
        ]
    );
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(s, "main").await.unwrap();
    verified(&reader).await.unwrap();
    let a = reader.read_stream_indexed("a").await.unwrap().unwrap();
    assert_eq!(
        a.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
}
