//! The caches beside the log (snapshots, stream indexes, merged stream
//! indexes, node caches) and the checkpoints they belong to, each damaged
//! or left behind by a crash, against every reader of them: opening for
//! writing and appending with expected versions, reading one stream,
//! reading from a sequence number or as of a time, proofs and `verify`.
//! The log is the only source of truth: each answer must be the one the
//! log gives, or an integrity error that names the damaged blob.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::{BlobStore, StoreError};
use bi_ledger::format::checkpoint::Checkpoint;
use bi_ledger::ledger::layout;
use bi_ledger::model::Record;
use bi_ledger::{ExpectedVersion, Ledger, LedgerError, LedgerOptions, LedgerReader, NewEvent};
use ed25519_dalek::SigningKey;

#[path = "support/dirs.rs"]
mod dirs;
#[allow(dead_code)] // this crate uses a few of the suite's helpers
#[path = "suite/ledger.rs"]
mod ledger;
#[path = "support/names.rs"]
mod listing;
#[path = "support/wrap.rs"]
mod wrap;

use wrap::{Wrap, Wrapped};

use dirs::copy_dir;

const NAME: &str = "main";
/// Events per append (one batch each) and appends per checkpoint.
const BATCH: u64 = 500;
const BATCHES_PER_CHECKPOINT: u64 = 3;
const CHECKPOINTS: u64 = 14;
/// Records after the newest checkpoint, not signed.
const TAIL: u64 = 600;
/// Streams whose records lie where few others' do: "rare" only in records
/// 3,000..4,500, "late" once early and then last among the records of the
/// newest checkpoint, "end" last among those of the newest merged stream
/// index, "tail" only after the newest checkpoint.
const STREAMS: [&str; 8] = ["a", "b", "c", "rare", "late", "end", "tail", "nobody"];

fn store(dir: &std::path::Path) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::new(dir).unwrap().shared())
}

/// Checkpoints on demand; segments of 17,500 records; the stream
/// indexes of four checkpoints merged.
fn options(seed: u8) -> LedgerOptions {
    LedgerOptions {
        checkpoint_every_events: None,
        checkpoint_interval: None,
        segment_max_blocks: 36,
        merge_index_count: 4,
        merge_index_records: u64::MAX,
        ..LedgerOptions::new(SigningKey::from_bytes(&[seed; 32]))
    }
}

/// The stream of record `i`.
fn stream_of(i: u64) -> &'static str {
    let signed = BATCH * BATCHES_PER_CHECKPOINT * CHECKPOINTS;
    let per_cp = BATCH * BATCHES_PER_CHECKPOINT;
    match i {
        _ if i >= signed && i % 50 == 7 => "tail",
        _ if i == signed - 3 || i == per_cp * 3 + 11 => "late",
        _ if i == 17_999 => "end",
        _ if (per_cp * 2..per_cp * 3).contains(&i) && i.is_multiple_of(97) => "rare",
        _ => ["a", "b", "c"][(i % 3) as usize],
    }
}

fn events(from: u64, n: u64) -> Vec<NewEvent> {
    (from..from + n)
        .map(|i| NewEvent::json(stream_of(i), "Counted", &serde_json::json!({ "i": i })))
        .collect()
}

/// Waits until a dropped writer has let go of the lock, as a crash would.
async fn released(s: &Arc<dyn BlobStore>) {
    for _ in 0..5000 {
        if s.lock(&layout::lock(NAME)).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("the dropped writer never released its lock");
}

/// Builds the ledger every case starts from in `dir`: a checkpoint every
/// 1,500 records up to 21,000 (the stream indexes merged four at a time,
/// up to 18,000), then 600 records more whose checkpoint a crash cut short
/// after its caches, and the writer dropped as in a crash.
async fn build(dir: &std::path::Path, seed: u8) {
    let s = store(dir);
    let crashing = CrashAt::new(s.clone(), u64::MAX, Fails::Crash);
    let ledger = Ledger::create(crashing.clone(), NAME, options(seed))
        .await
        .unwrap();
    let mut n = 0;
    for _ in 0..CHECKPOINTS {
        for _ in 0..BATCHES_PER_CHECKPOINT {
            ledger.append(events(n, BATCH)).await.unwrap();
            n += BATCH;
        }
        ledger.checkpoint().await.unwrap();
    }
    ledger.append(events(n, TAIL)).await.unwrap();
    // The stream index, node cache and snapshot are put, the checkpoint not.
    let at = crashing.changes.load(Ordering::SeqCst);
    crashing.limit.store(at + 3, Ordering::SeqCst);
    let r = ledger.checkpoint().await;
    assert!(r.is_err(), "the checkpoint was put: {r:?}");
    drop(ledger);
    released(&s).await;
}

/// What the log says, read whole: the records, the checkpoints and the
/// proofs the readers are asked for, computed from the records.
struct Truth {
    records: Vec<Record>,
    checkpoints: Vec<Checkpoint>,
    inclusion: Vec<((u64, u64), Vec<String>)>,
    consistency: Vec<((u64, u64), Vec<String>)>,
}

async fn truth(dir: &std::path::Path) -> Truth {
    let reader = LedgerReader::open(store(dir), NAME).await.unwrap();
    let (leaves, checkpoints) = ledger::tree(&reader, reader.recorded_verifier()).await;
    let n = leaves.len() as u64;
    // The first checkpoint with records, one in the middle, the newest,
    // and the log's size (which no checkpoint may have).
    let signed: Vec<u64> = checkpoints.iter().map(|c| c.size).collect();
    let mut sizes = vec![signed[signed.len().min(2) - 1], signed[signed.len() / 2]];
    sizes.extend([signed[signed.len() - 1], n]);
    sizes.dedup();
    let mut inclusion = Vec::new();
    let mut consistency = Vec::new();
    for &size in &sizes {
        for seq in [0, size / 3, size.saturating_sub(1)] {
            if seq < size {
                let p = bi_ledger::format::merkle::inclusion_proof(&leaves[..size as usize], seq);
                inclusion.push(((seq, size), ledger::hexes(&p.unwrap())));
            }
        }
        for old in [sizes[0], sizes[sizes.len() / 2], size] {
            if old <= size {
                let p = bi_ledger::format::merkle::consistency_proof(&leaves[..size as usize], old);
                consistency.push(((old, size), ledger::hexes(&p.unwrap())));
            }
        }
    }
    inclusion.dedup();
    consistency.dedup();
    Truth {
        records: reader.read(0, None).await.unwrap(),
        checkpoints,
        inclusion,
        consistency,
    }
}

/// How one reader of the caches answered.
#[derive(Debug)]
#[allow(dead_code)] // `Wrong` is read through `Debug`, in failure messages
enum Answer {
    Right,
    /// An integrity error naming this blob.
    Refused(String),
    /// Anything else: a wrong answer, another error, a panic.
    Wrong(String),
}

fn judge<T>(r: bi_ledger::Result<T>, right: impl FnOnce(&T) -> Option<String>) -> Answer {
    match r {
        Ok(v) => match right(&v) {
            None => Answer::Right,
            Some(why) => Answer::Wrong(why),
        },
        Err(LedgerError::Integrity(e)) => Answer::Refused(e.blob),
        Err(e) => Answer::Wrong(format!("error {e}")),
    }
}

fn same<T: PartialEq + std::fmt::Debug>(got: &T, want: &T, what: &str) -> Option<String> {
    (got != want).then(|| {
        let g = format!("{got:?}");
        let w = format!("{want:?}");
        format!(
            "{what}: got {}, want {}",
            &g[..g.len().min(300)],
            &w[..w.len().min(300)]
        )
    })
}

fn seqs(v: &[Record]) -> Vec<u64> {
    v.iter().map(|r| r.seq).collect()
}

/// Every reader's answers on the ledger in `dir`, by what was asked.
async fn answers(dir: &std::path::Path, t: &Truth) -> Vec<(String, Answer)> {
    let mut out = Vec::new();
    let reader = match LedgerReader::open(store(dir), NAME).await {
        Ok(r) => r,
        Err(e) => {
            out.push(("reader open".into(), judge(Err::<(), _>(e), |_| None)));
            return out;
        }
    };
    for stream in STREAMS {
        let want: Vec<u64> = t
            .records
            .iter()
            .filter(|r| r.stream == stream)
            .map(|r| r.seq)
            .collect();
        let got = reader.read_stream(stream).await;
        out.push((
            format!("read_stream({stream})"),
            judge(got, |g| same(&seqs(g), &want, "seqs")),
        ));
        let got = reader.read_stream_indexed(stream).await;
        out.push((
            format!("read_stream_indexed({stream})"),
            judge(got, |g| match g {
                None => None,
                Some(g) => same(&seqs(g), &want, "seqs"),
            }),
        ));
    }
    let n = t.records.len() as u64;
    let signed = t.checkpoints.last().map_or(0, |c| c.size);
    let mut froms = vec![
        0,
        n / 3,
        n / 2,
        16_500,
        17_000,
        signed.saturating_sub(1),
        signed,
    ];
    froms.extend([n.saturating_sub(1), n]);
    froms.retain(|&f| f <= n);
    for from in froms {
        let want: Vec<u64> = (from..n).collect();
        let got = reader.read(from, None).await;
        out.push((
            format!("read({from})"),
            judge(got, |g| same(&seqs(g), &want, "seqs")),
        ));
    }
    let want_len = t.records.len() as u64;
    out.push((
        "len".into(),
        judge(reader.len().await, |n| same(n, &want_len, "len")),
    ));
    for at in [n / 2, n.saturating_sub(1)]
        .into_iter()
        .filter(|&at| at < n)
    {
        let at = at as usize;
        let ts = t.records[at].timestamp_us;
        let want: Vec<u64> = t
            .records
            .iter()
            .filter(|r| r.timestamp_us <= ts)
            .map(|r| r.seq)
            .collect();
        let got = reader.read_as_of(ts).await;
        out.push((
            format!("read_as_of(ts of {at})"),
            judge(got, |g| same(&seqs(g), &want, "seqs")),
        ));
    }
    for ((seq, size), want) in &t.inclusion {
        let got = reader.inclusion_proof(*seq, *size).await;
        out.push((
            format!("inclusion_proof({seq}, {size})"),
            judge(got, |p| same(&p.proof, want, "proof")),
        ));
    }
    for ((old, new), want) in &t.consistency {
        let got = reader.consistency_proof(*old, *new).await;
        out.push((
            format!("consistency_proof({old}, {new})"),
            judge(got, |p| same(&p.proof, want, "proof")),
        ));
    }
    let newest = t.checkpoints.last().unwrap().clone();
    let got = reader.signed_checkpoint(None).await;
    out.push((
        "signed_checkpoint(None)".into(),
        judge(got, |c| {
            same(
                &c.as_ref().map(|(_, c, _)| c.clone()),
                &Some(newest),
                "newest",
            )
        }),
    ));
    let got = ledger::verified(&reader).await;
    out.push((
        "verify".into(),
        judge(got, |r| same(&r.records, &want_len, "records")),
    ));
    out.push(("write".into(), write(dir, t).await));
    // What the writer left: the log read whole is the truth now.
    if let Ok(reader) = LedgerReader::open(store(dir), NAME).await {
        if let Ok(all) = reader.read(0, None).await {
            for stream in STREAMS {
                let want: Vec<u64> = all
                    .iter()
                    .filter(|r| r.stream == stream)
                    .map(|r| r.seq)
                    .collect();
                let got = reader.read_stream(stream).await;
                out.push((
                    format!("after writing, read_stream({stream})"),
                    judge(got, |g| same(&seqs(g), &want, "seqs")),
                ));
            }
            let n = all.len() as u64;
            let got = ledger::verified(&reader).await;
            out.push((
                "after writing, verify".into(),
                judge(got, |r| same(&r.records, &n, "records")),
            ));
        }
    }
    out
}

/// Opens the ledger for writing and appends with expected versions: the
/// versions must be the log's.
async fn write(dir: &std::path::Path, t: &Truth) -> Answer {
    // First a checkpoint of the log as it is, at the size of any caches a
    // crash left without their checkpoint.
    match Ledger::open(store(dir), NAME, options(1)).await {
        Ok(l) => {
            if let Err(e) = l.close().await {
                return Answer::Wrong(format!("close: {e}"));
            }
        }
        Err(e) => return judge(Err::<(), _>(e), |_| None),
    }
    let ledger = match Ledger::open(store(dir), NAME, options(1)).await {
        Ok(l) => l,
        Err(e) => return judge(Err::<(), _>(e), |_| None),
    };
    let last = |stream: &str| {
        t.records
            .iter()
            .rev()
            .find(|r| r.stream == stream)
            .map(|r| r.stream_version)
    };
    let mut wrong = Vec::new();
    for stream in ["a", "rare", "late", "tail"] {
        let Some(v) = last(stream) else {
            continue;
        };
        // Behind, ahead and "no stream" are conflicts; the version is not.
        for expect in [
            ExpectedVersion::Exact(v.wrapping_sub(1)),
            ExpectedVersion::Exact(v + 1),
            ExpectedVersion::NoStream,
        ] {
            let e = NewEvent::json(stream, "Late", &serde_json::json!({})).expect(expect);
            match ledger.append(vec![e]).await {
                Err(LedgerError::VersionConflict { current, .. }) if current == Some(v) => {}
                r => wrong.push(format!("{stream} expecting {expect}: {r:?}")),
            }
        }
        let e = NewEvent::json(stream, "Late", &serde_json::json!({}))
            .expect(ExpectedVersion::Exact(v));
        match ledger.append(vec![e]).await {
            Ok(r) if r[0].version == v + 1 => {}
            r => wrong.push(format!("{stream} expecting version {v}: {r:?}")),
        }
    }
    let new = format!("new-{}", t.records.len());
    let e = NewEvent::json(new.clone(), "First", &serde_json::json!({}))
        .expect(ExpectedVersion::NoStream);
    match ledger.append(vec![e]).await {
        Ok(r) if r[0].version == 0 => {}
        r => wrong.push(format!("{new} expecting no stream: {r:?}")),
    }
    if let Err(e) = ledger.close().await {
        wrong.push(format!("close: {e}"));
    }
    if wrong.is_empty() {
        Answer::Right
    } else {
        Answer::Wrong(wrong.join("; "))
    }
}

fn cp_name(kind: &str, size: u64) -> String {
    format!("{NAME}/{kind}-{size:020}")
}

/// What is done to a blob.
#[derive(Clone, Copy, Debug)]
enum Damage {
    Delete,
    /// Cut to nothing.
    Empty,
    /// Cut to half its length.
    Truncate,
    /// One bit of its middle byte flipped.
    Flip,
    /// The same-named blob of another ledger (same key, same records).
    OtherLedger,
    /// The blob of this kind at another size, under this one's name.
    OtherSize(u64),
}

/// What `verify`, or opening for writing, must answer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Must {
    Pass,
    /// Fail naming the damaged blob.
    Refuse,
    /// Fail naming this blob.
    RefuseNaming(&'static str),
}

/// Damages the blob `blob` of the ledger in `dir` (`other`: another
/// ledger's directory).
async fn damage(dir: &std::path::Path, other: &std::path::Path, blob: &str, damage: Damage) {
    let s = store(dir);
    let bytes = s.read_all(blob).await.unwrap();
    let replace = match damage {
        Damage::Delete => None,
        Damage::Empty => Some(Vec::new()),
        Damage::Truncate => Some(bytes[..bytes.len() / 2].to_vec()),
        Damage::Flip => {
            let mut b = bytes.clone();
            let at = b.len() / 2;
            b[at] ^= 0x10;
            Some(b)
        }
        Damage::OtherLedger => Some(store(other).read_all(blob).await.unwrap()),
        Damage::OtherSize(size) => {
            let (kind, _) = blob.rsplit_once('-').unwrap();
            Some(s.read_all(&format!("{kind}-{size:020}")).await.unwrap())
        }
    };
    s.delete(blob).await.unwrap();
    if let Some(b) = replace {
        s.put(blob, &b).await.unwrap();
    }
}

/// Each cache kind (and the checkpoint), beside the newest checkpoint, an
/// older one, and left by a crash without its checkpoint (21,600), each
/// damaged in some way, against every reader. Readers other than `verify`
/// and the writer must answer as the log does, whatever the cache holds
/// (only a damaged checkpoint may be refused, naming it); the writer may
/// refuse only the newest checkpoint and its snapshot (format §11.1,
/// §12.3); `verify` must fail, naming it, on a damaged cache beside a
/// checkpoint and pass over a deleted one or one without a checkpoint
/// (§12.5). After the writer's checkpoint at 21,600 (which replaces the
/// caches a crash left there) and its appends, the same holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_caches() {
    use Damage::*;
    use Must::*;
    let base = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    build(base.path(), 1).await;
    build(other.path(), 1).await;
    let t = truth(base.path()).await;
    assert_eq!(t.records.len(), 21_600);
    let mut merged = listing::names(store(base.path()).as_ref(), "main/streams-merged-").await;
    merged.sort();
    assert_eq!(
        merged,
        [6_000, 12_000, 18_000].map(|s| cp_name("streams-merged", s))
    );
    for kind in ["snapshot", "streams", "nodes"] {
        let orphan = cp_name(kind, 21_600);
        assert!(store(base.path()).info(&orphan).await.is_ok(), "{orphan}");
    }
    let streams_21000 = "main/streams-00000000000000021000";
    // (blob, damage, verify, writer)
    let cases: [(&str, u64, Damage, Must, Must); 20] = [
        ("snapshot", 21_000, Delete, Refuse, Refuse),
        ("snapshot", 21_000, Flip, Refuse, Refuse),
        ("snapshot", 21_000, OtherSize(19_500), Refuse, Refuse),
        ("snapshot", 19_500, OtherLedger, Refuse, Pass),
        ("snapshot", 21_600, Truncate, Pass, Pass),
        ("streams", 21_000, Delete, Pass, Pass),
        ("streams", 21_000, OtherSize(19_500), Refuse, Pass),
        ("streams", 19_500, Flip, Refuse, Pass),
        ("streams", 6_000, Empty, Refuse, Pass),
        ("streams", 21_600, OtherLedger, Pass, Pass),
        ("streams-merged", 18_000, Delete, Pass, Pass),
        ("streams-merged", 18_000, OtherSize(12_000), Refuse, Pass),
        ("streams-merged", 6_000, Truncate, Refuse, Pass),
        ("nodes", 21_000, Flip, Refuse, Pass),
        ("nodes", 21_000, OtherLedger, Refuse, Pass),
        ("nodes", 3_000, Delete, Pass, Pass),
        ("nodes", 21_600, OtherSize(21_000), Pass, Pass),
        ("checkpoint", 21_000, Delete, Pass, Pass),
        ("checkpoint", 21_000, OtherLedger, Refuse, Refuse),
        (
            "checkpoint",
            19_500,
            Delete,
            RefuseNaming(streams_21000),
            Pass,
        ),
    ];
    let mut wrong = Vec::new();
    for (kind, size, how, verify, writer) in cases {
        let blob = cp_name(kind, size);
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        damage(dir.path(), other.path(), &blob, how).await;
        // A checkpoint deleted is evidence gone: the log as it stands
        // then signs less.
        let deleted_checkpoint = kind == "checkpoint" && matches!(how, Delete);
        let t = if deleted_checkpoint {
            &truth(dir.path()).await
        } else {
            &t
        };
        let must = |m: Must| match m {
            Pass => None,
            Refuse => Some(blob.clone()),
            RefuseNaming(b) => Some(b.to_owned()),
        };
        for (what, answer) in answers(dir.path(), t).await {
            if what.starts_with("after writing") && writer != Pass {
                continue; // the writer did not get that far
            }
            let want = if what == "after writing, verify" && kind == "snapshot" {
                None // the writer has pruned the older snapshots
            } else if what.ends_with("verify") {
                must(verify)
            } else if what == "write" {
                must(writer)
            } else {
                None
            };
            let ok = match (&answer, &want) {
                (Answer::Right, None) => true,
                (Answer::Refused(b), Some(w)) => b == w,
                // A damaged checkpoint may be refused by what reads it.
                (Answer::Refused(b), None) => kind == "checkpoint" && *b == blob,
                _ => false,
            };
            if !ok {
                wrong.push(format!("{blob} {how:?}: {what}: {answer:?}, want {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A store that stops, as a crash would, before its `limit`th change
/// (put, delete, append, create, seal, truncate): that one and every
/// later one fail without happening. Or, by `fails`, one that only fails
/// that change, with or without making it.
#[derive(Debug)]
struct CrashAt {
    inner: Arc<dyn BlobStore>,
    changes: AtomicU64,
    limit: AtomicU64,
    fails: Fails,
}

/// How a [`CrashAt`] store fails at its `limit`th change.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fails {
    /// That change and every later one fail without happening.
    Crash,
    /// That change fails without happening; later ones succeed.
    Once,
    /// That change happens but fails (its answer lost); later ones
    /// succeed.
    LosingTheAnswer,
}

impl CrashAt {
    fn change(&self, name: &str) -> Result<(), StoreError> {
        let n = self.changes.fetch_add(1, Ordering::SeqCst);
        let limit = self.limit.load(Ordering::SeqCst);
        let fail = match self.fails {
            Fails::Crash => n >= limit,
            Fails::Once => n == limit,
            Fails::LosingTheAnswer => false,
        };
        if fail {
            return Err(injected(name));
        }
        Ok(())
    }

    /// After the change: whether its answer is lost.
    fn answer(&self, name: &str) -> Result<(), StoreError> {
        let n = self.changes.load(Ordering::SeqCst) - 1;
        if self.fails == Fails::LosingTheAnswer && n == self.limit.load(Ordering::SeqCst) {
            return Err(injected(name));
        }
        Ok(())
    }
}

fn injected(name: &str) -> StoreError {
    StoreError::Io {
        op: "change",
        name: name.to_owned(),
        source: std::io::Error::other("injected failure"),
    }
}

#[async_trait::async_trait]
impl Wrap for CrashAt {
    fn inner(&self) -> &dyn BlobStore {
        &*self.inner
    }
    async fn create(&self, name: &str) -> Result<(), StoreError> {
        self.change(name)?;
        self.inner.create(name).await?;
        self.answer(name)
    }
    async fn append(&self, name: &str, at: u64, block: &[u8]) -> Result<u64, StoreError> {
        self.change(name)?;
        let end = self.inner.append(name, at, block).await?;
        self.answer(name).map(|()| end)
    }
    async fn seal(&self, name: &str) -> Result<(), StoreError> {
        self.change(name)?;
        self.inner.seal(name).await?;
        self.answer(name)
    }
    async fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.change(name)?;
        self.inner.put(name, data).await?;
        self.answer(name)
    }
    async fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<(), StoreError> {
        self.change(name)?;
        self.inner.put_parts(name, parts).await?;
        self.answer(name)
    }
    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        self.change(name)?;
        self.inner.truncate(name, len).await?;
        self.answer(name)
    }
    async fn trim(&self, name: &str, len: u64) -> Result<(), StoreError> {
        self.change(name)?;
        self.inner.trim(name, len).await?;
        self.answer(name)
    }
    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.change(name)?;
        self.inner.delete(name).await?;
        self.answer(name)
    }
}

/// Small options: batches of 300, three to a segment, stream indexes
/// merged two at a time.
fn small(seed: u8) -> LedgerOptions {
    LedgerOptions {
        segment_max_blocks: 4,
        merge_index_count: 2,
        ..options(seed)
    }
}

impl CrashAt {
    fn new(inner: Arc<dyn BlobStore>, limit: u64, fails: Fails) -> Arc<Wrapped<CrashAt>> {
        Arc::new(Wrapped(CrashAt {
            inner,
            changes: 0.into(),
            limit: limit.into(),
            fails,
        }))
    }

    /// Whether its `limit`th change came.
    fn crashed(&self) -> bool {
        self.changes.load(Ordering::SeqCst) > self.limit.load(Ordering::SeqCst)
    }
}

/// Opens the ledger in `dir` (or creates it) on a store that crashes at
/// change `limit` (as `fails` says), and appends 300 events `steps`
/// times, from event `from`, with a checkpoint after every other append
/// (and others every `auto` events); then drops the writer. Returns
/// whether the store failed.
async fn run_crashing_at(
    dir: &std::path::Path,
    (limit, fails, auto): (u64, Fails, Option<u64>),
    from: u64,
    steps: u64,
) -> bool {
    let s = store(dir);
    let crashing = CrashAt::new(s.clone(), limit, fails);
    let store: Arc<dyn BlobStore> = crashing.clone();
    let opts = LedgerOptions {
        checkpoint_every_events: auto,
        ..small(1)
    };
    let opened = match Ledger::open(store.clone(), NAME, opts.clone()).await {
        Err(LedgerError::NotFound(_)) => Ledger::create(store, NAME, opts).await,
        other => other,
    };
    if let Ok(ledger) = opened {
        let mut n = from;
        for step in 0..steps {
            if ledger.append(events(n, 300)).await.is_err() {
                break;
            }
            n += 300;
            if step % 2 == 1 && ledger.checkpoint().await.is_err() {
                break;
            }
        }
        drop(ledger);
    }
    released(&s).await;
    crashing.crashed()
}

/// Every answer right, and no checkpoint without its caches (a crash
/// never leaves one): what a ledger left by crashes must give.
async fn all_right(dir: &std::path::Path, what: &str) {
    let t = truth(dir).await;
    let wrong: Vec<String> = answers(dir, &t)
        .await
        .into_iter()
        .filter(|(_, a)| !matches!(a, Answer::Right))
        .map(|(q, a)| format!("{what}: {q}: {a:?}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let reader = LedgerReader::open(store(dir), NAME).await.unwrap();
    let report = ledger::verified(&reader).await.unwrap();
    assert_eq!(report.missing_caches, Vec::<String>::new(), "{what}");
}

/// A crash at each change a writer makes to the store, from `create` on:
/// segment creations, headers, appends, seals, every put of a
/// checkpoint's caches and of the checkpoint, the deletions that prune
/// snapshots and the puts of merged stream indexes. A second writer then
/// goes on and crashes at the same change of its own, and a third
/// completes whatever is left. The log and every cache must then read as
/// the log says, and no checkpoint may lack its caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_change() {
    changes_failing(Fails::Crash, None).await;
}

/// [`a_crash_at_any_change`] with failures that are not crashes (the
/// writer goes on after them), and with checkpoints falling due among the
/// appends. Slow: `cargo test --test caches -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "every kind of failure at every change, three ways (about 3-4.5 minutes)"]
async fn a_failure_at_any_change() {
    for fails in [Fails::Crash, Fails::Once, Fails::LosingTheAnswer] {
        for auto in [None, Some(250), Some(450)] {
            changes_failing(fails, auto).await;
            merges_failing(fails).await;
        }
    }
}

async fn changes_failing(fails: Fails, auto: Option<u64>) {
    for limit in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let crashed = run_crashing_at(dir.path(), (limit, fails, auto), 0, 8).await;
        let n = match LedgerReader::open(store(dir.path()), NAME).await {
            Ok(r) => r.len().await.unwrap(),
            Err(_) => 0,
        };
        run_crashing_at(dir.path(), (limit, fails, auto), n, 4).await;
        // A creation cut short is completed.
        run_crashing_at(dir.path(), (u64::MAX, fails, auto), 0, 0).await;
        let what = format!("{fails:?} at change {limit}, checkpoints every {auto:?}");
        all_right(dir.path(), &what).await;
        if !crashed {
            break;
        }
    }
}

/// A crash between the merges one checkpoint makes (a backlog of thirteen
/// stream indexes, merged three at a time), or before any: the next
/// writer merges on from the last merged index put, without overlaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_merges() {
    merges_failing(Fails::Crash).await;
}

async fn merges_failing(fails: Fails) {
    let base = tempfile::tempdir().unwrap();
    {
        let s = store(base.path());
        let opts = LedgerOptions {
            merge_index_count: 100,
            ..small(1)
        };
        let ledger = Ledger::create(s.clone(), NAME, opts).await.unwrap();
        for i in 0..13 {
            ledger.append(events(i * 300, 300)).await.unwrap();
            ledger.checkpoint().await.unwrap();
        }
        ledger.append(events(13 * 300, 300)).await.unwrap();
        drop(ledger);
        released(&s).await;
    }
    let opts = LedgerOptions {
        merge_index_count: 3,
        merge_index_records: 1,
        ..small(1)
    };
    for limit in 0.. {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let s = store(dir.path());
        let crashing = CrashAt::new(s.clone(), limit, fails);
        let ledger = Ledger::open(crashing.clone(), NAME, opts.clone())
            .await
            .unwrap();
        ledger.checkpoint().await.ok();
        drop(ledger);
        released(&s).await;
        let ledger = Ledger::open(s.clone(), NAME, opts.clone()).await.unwrap();
        ledger.append(events(14 * 300, 300)).await.unwrap();
        ledger.close().await.unwrap();
        all_right(dir.path(), &format!("{fails:?} at change {limit}")).await;
        if !crashing.crashed() {
            break;
        }
    }
}
