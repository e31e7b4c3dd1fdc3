//! The library API against a model: random runs of appends (alone and
//! concurrent, with expected versions right and wrong), checkpoints, clean
//! closes, crashes and torn tails, each answer checked against a plain
//! in-memory list of the events written, and the log read back every way
//! the reader offers after every step. At the end of each run `verify`,
//! every checkpoint, inclusion proofs and consistency proofs are checked
//! against the same list.
//!
//! The options are tiny (batches of a few events, segments of a few
//! batches, checkpoints every few events, stream indexes merged two or
//! three at a time), so that a few dozen events go through segment
//! rollovers, merges of stream indexes and several checkpoints: the paths
//! that a ledger of default options reaches only after millions of events.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::{BlobStore, StoreError};
use bi_ledger::format::checkpoint::{Checkpoint, Verifier};
use bi_ledger::format::segment::HEADER_LEN;
use bi_ledger::format::snapshot::Snapshot;
use bi_ledger::format::{chain, merkle, Hash};
use bi_ledger::ledger::{layout, BATCH_OVERHEAD};
use bi_ledger::model::Record;
use bi_ledger::{
    ExpectedVersion, Ledger, LedgerError, LedgerOptions, LedgerReader, NewEvent, Receipt,
};
use futures::future::join_all;
use proptest::prelude::*;

const NAME: &str = "main";
/// Few streams, so that expected versions often meet an existing stream;
/// names that share prefixes, and one that is not ASCII, because records
/// are stored relative to the one before them in their batch.
const STREAMS: [&str; 5] = ["a", "ab", "order-1", "order-10", "ünï-7"];
const TYPES: [&str; 3] = ["Created", "Updated", "C"];

fn store(dir: &std::path::Path) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::new(dir).unwrap().shared())
}

/// The options of one run. Each knob has values that make its mechanism
/// fire every few events, the smallest it takes (a segment or a checkpoint
/// per batch, a merge per checkpoint), and one that keeps it out of the
/// way, so that runs also see each mechanism alone.
#[derive(Clone, Debug)]
struct Knobs {
    max_batch_bytes: usize,
    segment_max_bytes: u64,
    segment_max_blocks: u64,
    checkpoint_every_events: Option<u64>,
    /// Timed checkpoints race the test's own steps; every check here
    /// holds whenever they land.
    checkpoint_interval_ms: Option<u64>,
    merge_index_count: usize,
    merge_index_records: u64,
}

impl Knobs {
    fn options(&self) -> LedgerOptions {
        LedgerOptions {
            max_batch_bytes: self.max_batch_bytes,
            segment_max_bytes: self.segment_max_bytes,
            segment_max_blocks: self.segment_max_blocks,
            checkpoint_every_events: self.checkpoint_every_events,
            checkpoint_interval: self.checkpoint_interval_ms.map(Duration::from_millis),
            merge_index_count: self.merge_index_count,
            merge_index_records: self.merge_index_records,
            ..LedgerOptions::new(ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
        }
    }
}

fn knobs() -> impl Strategy<Value = Knobs> {
    knobs_with(
        prop_oneof![Just(300usize), Just(700), Just(1500), Just(1 << 20)],
        prop_oneof![
            Just(None),
            Just(Some(1u64)),
            Just(Some(3)),
            Just(Some(7)),
            Just(Some(16))
        ],
        prop_oneof![4 => Just(None), 1 => Just(Some(20u64)), 1 => Just(Some(1))],
    )
}

fn knobs_with(
    batch: impl Strategy<Value = usize>,
    every: impl Strategy<Value = Option<u64>>,
    interval_ms: impl Strategy<Value = Option<u64>>,
) -> impl Strategy<Value = Knobs> {
    (
        batch,
        prop_oneof![Just(1u64), Just(1024), Just(3000), Just(1 << 30)],
        prop_oneof![Just(1u64), Just(2), Just(3), Just(50_000)],
        every,
        interval_ms,
        prop_oneof![Just(1usize), Just(2), Just(3), Just(256)],
        prop_oneof![Just(1u64), Just(6), Just(25), Just(262_144)],
    )
        .prop_map(
            |(batch, seg_bytes, seg_blocks, every, ms, count, records)| Knobs {
                max_batch_bytes: batch,
                segment_max_bytes: seg_bytes,
                segment_max_blocks: seg_blocks,
                checkpoint_every_events: every,
                checkpoint_interval_ms: ms,
                merge_index_count: count,
                merge_index_records: records,
            },
        )
}

/// An expected version, relative to the stream's version when the event
/// is checked (after the call's own earlier events), so that the generator
/// hits the right one often rather than by chance.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Any,
    NoStream,
    /// `NoStream` for a new stream, else `Exact` of its version.
    Right,
    /// An `Exact` that misses: above the version, or below it.
    Off(u8),
    Exact(u64),
}

#[derive(Clone, Debug)]
struct Ev {
    stream: usize,
    ty: usize,
    expect: Expect,
    pad: usize,
    metadata: bool,
    json: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<Ev>),
    /// Calls on disjoint streams, so that each one's outcome is known
    /// whatever order the writer admits them in; optionally with a
    /// checkpoint (or a close, then an open) among them, and a reader
    /// opened while they are written.
    Concurrent {
        calls: Vec<Vec<Ev>>,
        checkpoint_at: Option<usize>,
        close: bool,
        read_meanwhile: bool,
    },
    Checkpoint,
    /// `close`, then `open`; through a fresh store handle, as the next
    /// process would, if `fresh`; with other options, if `knobs`.
    CloseReopen {
        fresh: bool,
        knobs: Option<Knobs>,
    },
    /// Every handle dropped without `close`, then `open` (with other
    /// options, if `knobs`). With `torn`, the last batch is first cut at a
    /// byte it selects, if no checkpoint covers it, as a crash in the
    /// middle of its write would leave it.
    Crash {
        torn: Option<u32>,
        knobs: Option<Knobs>,
    },
    /// A reader opened now, read again after later steps: it must keep
    /// seeing the log as it was when it opened.
    KeepReader,
    /// A second writer, refused while the first is open.
    SecondWriter,
    /// `verify` and the proofs beside the open writer.
    Verify,
    /// Up to this many records, in many concurrent calls on shared
    /// streams (group commit).
    Bulk(u64),
}

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        3 => Just(Expect::Any),
        1 => Just(Expect::NoStream),
        3 => Just(Expect::Right),
        1 => (0u8..4).prop_map(Expect::Off),
        1 => (0u64..4).prop_map(Expect::Exact),
    ]
}

fn ev() -> impl Strategy<Value = Ev> {
    (
        0..STREAMS.len(),
        0..TYPES.len(),
        expect(),
        prop_oneof![3 => 0usize..16, 1 => 16usize..120],
        prop::bool::weighted(0.2),
        any::<bool>(),
    )
        .prop_map(|(stream, ty, expect, pad, metadata, json)| Ev {
            stream,
            ty,
            expect,
            pad,
            metadata,
            json,
        })
}

/// Most calls expect only what holds (any version, or the right one), so
/// that the log grows; the rest mix in expectations that may fail.
fn call() -> impl Strategy<Value = Vec<Ev>> {
    (prop::collection::vec(ev(), 1..8), prop::bool::weighted(0.7)).prop_map(|(mut evs, honest)| {
        if honest {
            for ev in &mut evs {
                if !matches!(ev.expect, Expect::Any) {
                    ev.expect = Expect::Right;
                }
            }
        }
        evs
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => call().prop_map(Op::Append),
        3 => (
            prop::collection::vec(call(), 2..5),
            prop::option::of(0usize..5),
            prop::bool::weighted(0.3),
            any::<bool>(),
        )
            .prop_map(|(calls, checkpoint_at, close, read_meanwhile)| Op::Concurrent {
                calls,
                checkpoint_at,
                close: close && checkpoint_at.is_some(),
                read_meanwhile,
            }),
        3 => Just(Op::Checkpoint),
        2 => (any::<bool>(), prop::option::weighted(0.3, knobs()))
            .prop_map(|(fresh, knobs)| Op::CloseReopen { fresh, knobs }),
        3 => (prop::option::of(any::<u32>()), prop::option::weighted(0.3, knobs()))
            .prop_map(|(torn, knobs)| Op::Crash { torn, knobs }),
        1 => Just(Op::KeepReader),
        1 => Just(Op::SecondWriter),
        1 => Just(Op::Verify),
    ]
}

/// One written event as the model has it: the record a reader must give
/// back, its chain hash, and the batch (segment, offset) holding it.
struct Entry {
    record: Record,
    hash: Hash,
    at: (u64, u64),
}

/// What a call must come to, by the model.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The stream versions its events get.
    Written(Vec<u64>),
    /// The index of the first event whose expected version fails, and
    /// its stream's version then.
    /// The event refused, the stream's version in the ledger, and how many
    /// of the call's earlier events are on its stream.
    Conflict(usize, Option<u64>, usize),
    /// Over the batch limit: refused before the writer sees it.
    TooLarge,
    /// Sent after a close.
    Closed,
}

struct Model {
    id: [u8; 16],
    entries: Vec<Entry>,
    /// Makes every payload unique, so that a record read from the wrong
    /// place cannot pass for the right one.
    next_payload: u64,
    /// Checkpoints the writer answered with: each must stay stored and
    /// sign the model's prefix of its size.
    answered: Vec<(String, Checkpoint)>,
    /// Each stream's last version, kept beside `entries`.
    versions: HashMap<String, u64>,
}

impl Model {
    fn version(&self, stream: &str) -> Option<u64> {
        self.versions.get(stream).copied()
    }

    /// Forgets the records from `seq` on (a torn batch cut off).
    fn cut(&mut self, seq: u64) {
        self.entries.truncate(seq as usize);
        self.versions = self
            .entries
            .iter()
            .map(|e| (e.record.stream.clone(), e.record.stream_version))
            .collect();
    }

    fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    fn head(&self) -> Hash {
        self.entries
            .last()
            .map_or_else(|| chain::genesis(&self.id), |e| e.hash)
    }

    fn head_at(&self, size: u64) -> Hash {
        match size {
            0 => chain::genesis(&self.id),
            n => self.entries[n as usize - 1].hash,
        }
    }

    fn records(&self) -> Vec<Record> {
        self.entries.iter().map(|e| e.record.clone()).collect()
    }

    fn leaves(&self) -> Vec<Hash> {
        self.entries.iter().map(|e| e.record.leaf_hash()).collect()
    }

    /// The events of a call, their expected versions resolved against
    /// the model (and the call's own earlier events).
    fn build(&mut self, evs: &[Ev]) -> Vec<NewEvent> {
        let mut local: HashMap<&str, Option<u64>> = HashMap::new();
        evs.iter()
            .map(|ev| {
                let stream = STREAMS[ev.stream];
                let current = *local.entry(stream).or_insert_with(|| self.version(stream));
                let expected = match ev.expect {
                    Expect::Any => ExpectedVersion::Any,
                    Expect::NoStream => ExpectedVersion::NoStream,
                    Expect::Right => {
                        current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
                    }
                    Expect::Off(k) => match current {
                        None => ExpectedVersion::Exact(u64::from(k)),
                        Some(c) if k % 2 == 0 => ExpectedVersion::Exact(c + 1 + u64::from(k / 2)),
                        Some(c) => c
                            .checked_sub(1 + u64::from(k / 2))
                            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact),
                    },
                    Expect::Exact(n) => ExpectedVersion::Exact(n),
                };
                local.insert(stream, Some(current.map_or(0, |c| c + 1)));
                let id = self.next_payload;
                self.next_payload += 1;
                let pad = "x".repeat(ev.pad);
                let mut e = if ev.json {
                    NewEvent::json(
                        stream,
                        TYPES[ev.ty],
                        &serde_json::json!({ "id": id, "pad": pad }),
                    )
                } else {
                    NewEvent::bytes(stream, TYPES[ev.ty], format!("{id}:{pad}").into_bytes())
                };
                if ev.metadata {
                    e = e
                        .with_metadata("actor", "agent")
                        .with_metadata("id", id.to_string());
                }
                e.expect(expected)
            })
            .collect()
    }

    fn predict(&self, events: &[NewEvent], max_batch: usize) -> Outcome {
        let bytes: usize =
            BATCH_OVERHEAD + events.iter().map(NewEvent::stored_len_bound).sum::<usize>();
        if bytes > max_batch {
            return Outcome::TooLarge;
        }
        let mut local: HashMap<&str, Option<u64>> = HashMap::new();
        let mut versions = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let current = *local
                .entry(&e.stream)
                .or_insert_with(|| self.version(&e.stream));
            if !e.expected_version.admits(current) {
                let earlier = events[..i].iter().filter(|x| x.stream == e.stream).count();
                return Outcome::Conflict(i, self.version(&e.stream), earlier);
            }
            let v = current.map_or(0, |c| c + 1);
            local.insert(&e.stream, Some(v));
            versions.push(v);
        }
        Outcome::Written(versions)
    }

    /// Takes a written call's receipts, which must continue the log: the
    /// next sequence numbers, the predicted versions, one batch (a call is
    /// all-or-nothing, also across a crash), one timestamp no earlier than
    /// the log's last, and the chain hashes the model computes.
    fn take(&mut self, events: Vec<NewEvent>, versions: &[u64], receipts: &[Receipt]) {
        assert_eq!(receipts.len(), events.len(), "one receipt per event");
        let first = &receipts[0];
        let at = (first.segment, first.offset);
        if let Some(prev) = self.entries.last() {
            assert!(at >= prev.at, "batch {at:?} written before {:?}", prev.at);
            assert!(
                first.timestamp_us >= prev.record.timestamp_us,
                "timestamp went back"
            );
        }
        for ((e, &v), r) in events.into_iter().zip(versions).zip(receipts) {
            let seq = self.len();
            assert_eq!(
                (r.seq, r.stream.as_str(), r.version),
                (seq, e.stream.as_str(), v),
                "receipt"
            );
            assert_eq!(
                (r.segment, r.offset, r.timestamp_us),
                (first.segment, first.offset, first.timestamp_us),
                "one call, one batch"
            );
            let record = e.into_record(seq, r.timestamp_us, v);
            let hash = chain::link(&self.head(), &record.leaf_hash());
            assert_eq!(r.hash, hash, "chain hash of {seq}");
            self.versions.insert(record.stream.clone(), v);
            self.entries.push(Entry { record, hash, at });
        }
    }

    /// Where the last batch starts (its first sequence number) and lies.
    fn last_batch(&self) -> Option<(u64, (u64, u64))> {
        let at = self.entries.last()?.at;
        let first = self
            .entries
            .iter()
            .rposition(|e| e.at != at)
            .map_or(0, |i| i + 1);
        Some((first as u64, at))
    }
}

/// Matches an append's answer with the model's prediction; the receipts of
/// a written call, for the caller to take in log order.
fn settle(
    want: Outcome,
    events: &[NewEvent],
    got: bi_ledger::Result<Vec<Receipt>>,
) -> Option<(Vec<u64>, Vec<Receipt>)> {
    match (want, got) {
        (Outcome::Written(v), Ok(r)) => Some((v, r)),
        (
            Outcome::Conflict(i, cur, before),
            Err(LedgerError::VersionConflict {
                index,
                stream,
                expected,
                current,
                earlier,
            }),
        ) => {
            assert_eq!(
                (index, stream.as_str(), expected, current, earlier),
                (
                    i,
                    events[i].stream.as_str(),
                    events[i].expected_version,
                    cur,
                    before
                ),
                "conflict"
            );
            None
        }
        (
            Outcome::TooLarge,
            Err(
                LedgerError::BatchTooLarge { .. }
                | LedgerError::InvalidEvent {
                    field: "payload", ..
                },
            ),
        ) => None,
        (Outcome::Closed, Err(LedgerError::Closed { .. })) => None,
        (want, got) => panic!("model says {want:?}, ledger answered {got:?}"),
    }
}

struct Kept {
    reader: LedgerReader,
    /// The records it must still see: those when it opened, fewer if a
    /// torn tail was cut off since.
    len: usize,
    /// A torn tail it listed was cut off, and the next writer may have
    /// written other records where it was: the reader reads those too,
    /// as far as it listed the segment.
    cut: bool,
}

struct Run {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Arc<dyn BlobStore>,
    opts: LedgerOptions,
    ledger: Option<Ledger>,
    verifier: Verifier,
    model: Model,
    /// Readers kept from earlier steps, each with the records it saw and
    /// whether a tail it saw was cut off since.
    kept: Vec<Kept>,
}

impl Run {
    async fn new(knobs: &Knobs) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let store = store(&path);
        let opts = knobs.options();
        let ledger = Ledger::create(store.clone(), NAME, opts.clone())
            .await
            .unwrap();
        Run {
            model: Model {
                id: ledger.id(),
                entries: Vec::new(),
                next_payload: 0,
                answered: Vec::new(),
                versions: HashMap::new(),
            },
            verifier: ledger.verifier().clone(),
            ledger: Some(ledger),
            _dir: dir,
            path,
            store,
            opts,
            kept: Vec::new(),
        }
    }

    fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().expect("open")
    }

    /// Options are the writer's, not the ledger's: each open may bring
    /// others (the key aside).
    fn reknob(&mut self, knobs: &Option<Knobs>) {
        if let Some(knobs) = knobs {
            self.opts = knobs.options();
        }
    }

    async fn reopen(&mut self) {
        let ledger = Ledger::open(self.store.clone(), NAME, self.opts.clone())
            .await
            .unwrap_or_else(|e| panic!("reopen: {e}"));
        self.ledger = Some(ledger);
    }

    async fn step(&mut self, op: &Op, probe: u32) {
        match op {
            Op::Append(evs) => {
                let events = self.model.build(evs);
                let want = self.model.predict(&events, self.ledger().max_batch_bytes());
                let got = self.ledger().append(events.clone()).await;
                if let Some((versions, receipts)) = settle(want, &events, got) {
                    self.model.take(events, &versions, &receipts);
                }
            }
            Op::Concurrent {
                calls,
                checkpoint_at,
                close,
                read_meanwhile,
            } => {
                self.concurrent(calls, *checkpoint_at, *close, *read_meanwhile)
                    .await
            }
            Op::Checkpoint => {
                let cp = self.ledger().checkpoint().await.unwrap();
                assert_eq!(cp.checkpoint.size, self.model.len(), "checkpoint size");
                self.model.answered.push((cp.blob, cp.checkpoint));
            }
            Op::CloseReopen { fresh, knobs } => {
                let cp = self.ledger.take().unwrap().close().await.unwrap();
                assert_eq!(cp.checkpoint.size, self.model.len(), "final checkpoint");
                self.model.answered.push((cp.blob, cp.checkpoint));
                if *fresh {
                    self.store = store(&self.path);
                }
                self.reknob(knobs);
                self.reopen().await;
            }
            Op::Crash { torn, knobs } => {
                drop(self.ledger.take());
                let cut = match torn {
                    Some(torn) => self.tear(*torn).await,
                    None => None,
                };
                // Before the next writer repairs anything, readers already
                // see the log as the model has it: a torn batch or an
                // unfinished segment header at its end is not there yet.
                if torn.is_some() {
                    self.check_reads(probe).await;
                }
                self.reknob(knobs);
                self.reopen().await;
                if let Some((name, offset)) = cut {
                    assert_eq!(
                        self.store.info(&name).await.unwrap().size,
                        offset,
                        "open cuts a torn batch back to its start"
                    );
                }
            }
            Op::KeepReader => {
                let reader = LedgerReader::open(self.store.clone(), NAME).await.unwrap();
                self.kept.push(Kept {
                    reader,
                    len: self.model.entries.len(),
                    cut: false,
                });
                if self.kept.len() > 2 {
                    self.kept.remove(0);
                }
            }
            Op::SecondWriter => {
                match Ledger::open(store(&self.path), NAME, self.opts.clone()).await {
                    Err(LedgerError::Store(StoreError::Locked { .. })) => {}
                    other => panic!("a second writer beside an open one: {other:?}"),
                }
            }
            Op::Verify => self.check_signed(0, true).await,
            Op::Bulk(target) => self.bulk(*target).await,
        }
    }

    async fn bulk(&mut self, target: u64) {
        let base = self.model.len();
        if base >= target {
            return;
        }
        let max_batch = self.ledger().max_batch_bytes();
        let ev = |i: usize| Ev {
            stream: i % STREAMS.len(),
            ty: 0,
            expect: Expect::Any,
            pad: 0,
            metadata: false,
            json: false,
        };
        // As many events to a call as fit one batch, up to 64.
        let mut calls: Vec<Vec<NewEvent>> = vec![Vec::new()];
        let mut bytes = BATCH_OVERHEAD;
        for i in 0..(target - base) as usize {
            let e = self.model.build(&[ev(i)]).remove(0);
            let call = calls.last_mut().unwrap();
            if call.len() == 64 || bytes + e.stored_len_bound() > max_batch {
                bytes = BATCH_OVERHEAD;
                calls.push(Vec::new());
            }
            bytes += e.stored_len_bound();
            calls.last_mut().unwrap().push(e);
        }
        let ledger = self.ledger().clone();
        let got = join_all(calls.iter().map(|c| ledger.append(c.clone()))).await;
        let mut written: Vec<(Vec<NewEvent>, Vec<Receipt>)> = calls
            .into_iter()
            .zip(got)
            .map(|(events, r)| (events, r.unwrap()))
            .collect();
        // Versions follow the order the writer admitted the calls in.
        written.sort_by_key(|(_, r)| r[0].seq);
        for (events, receipts) in written {
            let Outcome::Written(versions) = self.model.predict(&events, max_batch) else {
                unreachable!("events of any version that fit a batch");
            };
            self.model.take(events, &versions, &receipts);
        }
        assert_eq!(self.model.len(), target);
    }

    async fn concurrent(
        &mut self,
        calls: &[Vec<Ev>],
        checkpoint_at: Option<usize>,
        close: bool,
        read: bool,
    ) {
        let k = calls.len();
        let base = self.model.len();
        // Call j gets the streams whose index is j modulo k.
        let calls: Vec<Vec<NewEvent>> = calls
            .iter()
            .enumerate()
            .map(|(j, evs)| {
                let mine: Vec<usize> = (0..STREAMS.len()).filter(|s| s % k == j).collect();
                let evs: Vec<Ev> = evs
                    .iter()
                    .map(|ev| Ev {
                        stream: mine[ev.stream % mine.len()],
                        ..ev.clone()
                    })
                    .collect();
                self.model.build(&evs)
            })
            .collect();
        let max_batch = self.ledger().max_batch_bytes();
        let split = checkpoint_at.unwrap_or(k).min(k);
        // Calls are sent in order, so those after a close reach the writer
        // after it, and are never admitted.
        let wants: Vec<Outcome> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| match self.model.predict(c, max_batch) {
                Outcome::TooLarge => Outcome::TooLarge,
                _ if close && i >= split => Outcome::Closed,
                want => want,
            })
            .collect();
        let ledger = self.ledger().clone();
        let appends = |range: std::ops::Range<usize>| {
            join_all(calls[range].iter().map(|c| ledger.append(c.clone())))
        };
        let checkpoint = async {
            match checkpoint_at {
                Some(_) if close => Some(ledger.clone().close().await.unwrap()),
                Some(_) => Some(ledger.checkpoint().await.unwrap()),
                None => None,
            }
        };
        let reader = async {
            if !read {
                return None;
            }
            let r = LedgerReader::open(self.store.clone(), NAME).await.unwrap();
            let records = r.read(0, None).await.unwrap();
            let len = r.len().await.unwrap();
            Some((records, len))
        };
        let (before, cp, after, seen) =
            tokio::join!(appends(0..split), checkpoint, appends(split..k), reader);
        let mut written: Vec<(Vec<NewEvent>, Vec<u64>, Vec<Receipt>)> = Vec::new();
        for ((events, want), got) in calls
            .into_iter()
            .zip(wants)
            .zip(before.into_iter().chain(after))
        {
            if let Some((versions, receipts)) = settle(want, &events, got) {
                written.push((events, versions, receipts));
            }
        }
        // In log order; `take` checks that they follow each other
        // without a gap or an overlap.
        written.sort_by_key(|(_, _, r)| r[0].seq);
        let mut ends = vec![base];
        for (events, versions, receipts) in written {
            self.model.take(events, &versions, &receipts);
            ends.push(self.model.len());
        }
        if let Some(cp) = cp {
            // A checkpoint is a barrier: it signs the calls admitted
            // before it, whole.
            assert!(
                ends.contains(&cp.checkpoint.size),
                "checkpoint of {} amid calls ending at {ends:?}",
                cp.checkpoint.size
            );
            if close {
                assert_eq!(
                    cp.checkpoint.size,
                    self.model.len(),
                    "nothing after a close"
                );
            }
            self.model.answered.push((cp.blob, cp.checkpoint));
        }
        if close {
            drop(self.ledger.take());
            self.reopen().await;
        }
        if let Some((records, len)) = seen {
            let n = records.len();
            assert!(n as u64 >= base, "a reader saw {n} records of {base}");
            assert_eq!(records, self.model.records()[..n], "read while writing");
            assert_eq!(len, n as u64, "len while writing");
            // A reader stops at a batch still being written, never inside.
            if let (Some(prev), Some(next)) = (
                n.checked_sub(1).map(|i| &self.model.entries[i]),
                self.model.entries.get(n),
            ) {
                assert_ne!(prev.at, next.at, "a reader stopped inside a batch");
            }
        }
    }

    /// Cuts the last batch at a byte `torn` selects, once the writer has
    /// stopped, if it lies after the newest checkpoint: what a crash in
    /// the middle of its write leaves. The model forgets its events.
    /// Returns the segment cut and where its last whole batch ends.
    async fn tear(&mut self, torn: u32) -> Option<(String, u64)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.store.lock(&layout::lock(NAME)).await {
                Ok(lock) => {
                    lock.release().await;
                    break;
                }
                Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Err(e) => panic!("waiting for the writer to stop: {e}"),
            }
        }
        let (first, (segment, offset)) = self.model.last_batch()?;
        let signed = LedgerReader::open(self.store.clone(), NAME)
            .await
            .unwrap()
            .signed_at_open();
        if first < signed {
            return None;
        }
        // A segment after the batch's (one an earlier open completed after
        // a rollover cut short) was started after the batch was durable.
        if self
            .store
            .info(&layout::segment(NAME, segment + 1))
            .await
            .is_ok()
        {
            return None;
        }
        let name = layout::segment(NAME, segment);
        let size = self.store.info(&name).await.unwrap().size;
        assert!(size > offset, "the last batch lies past its segment's end");
        let header = HEADER_LEN as u64;
        let snapshot = self
            .store
            .read_all(&layout::snapshot(NAME, signed))
            .await
            .unwrap();
        let signed_segment = Snapshot::decode(&snapshot).unwrap().segment_index;
        if torn.is_multiple_of(4) && offset == header && segment > signed_segment {
            // The batch began its segment, and the newest checkpoint lies
            // before that: a crash in the rollover, before the new
            // segment's header was durable, leaves its header cut short
            // or, in length but not yet in content, zeros. The writer seals
            // the segment before it first; it is left unsealed here, as a
            // crash before that seal leaves it (with no header at all),
            // which recovery must handle alike.
            let kept = u64::from(torn >> 2) % (header + 1);
            if kept < header {
                self.store.truncate(&name, kept).await.unwrap();
            } else {
                self.store.truncate(&name, 0).await.unwrap();
                self.store.append(&name, 0, &[0; HEADER_LEN]).await.unwrap();
            }
            let before = FsStore::file_path(&self.path, &layout::segment(NAME, segment - 1));
            std::fs::set_permissions(&before, std::fs::Permissions::from_mode(0o644)).unwrap();
            // They saw a batch that, in this crash, was never written.
            self.kept.clear();
        } else {
            let cut = offset + u64::from(torn >> 2) % (size - offset);
            self.store.truncate(&name, cut).await.unwrap();
            for kept in &mut self.kept {
                kept.cut |= kept.len > first as usize;
                kept.len = kept.len.min(first as usize);
            }
        }
        self.model.cut(first);
        Some((name, offset))
    }

    /// Every read the reader offers, against the model.
    async fn check_reads(&self, probe: u32) {
        let reader = LedgerReader::open(self.store.clone(), NAME).await.unwrap();
        let want = self.model.records();
        let n = want.len() as u64;
        let probe = u64::from(probe);
        assert!(
            want.windows(2)
                .all(|w| w[0].timestamp_us <= w[1].timestamp_us),
            "timestamps never decrease along the log"
        );
        assert_eq!(reader.len().await.unwrap(), n, "len");
        let newest_answered = self.model.answered.iter().map(|(_, c)| c.size).max();
        assert!(reader.signed_at_open() <= n);
        assert!(Some(reader.signed_at_open()) >= newest_answered);

        let mut scanned = Vec::new();
        reader
            .scan(0, None, |r, loc| {
                scanned.push((r.to_owned(), (loc.segment, loc.offset)));
                ControlFlow::Continue(())
            })
            .await
            .unwrap();
        let placed: Vec<(Record, (u64, u64))> = self
            .model
            .entries
            .iter()
            .map(|e| (e.record.clone(), e.at))
            .collect();
        assert_eq!(scanned, placed, "scan, with each record's batch");

        let from = probe % (n + 2);
        let to = (probe & 1 == 0).then(|| from + (probe >> 4) % (n + 3 - from));
        let (a, b) = (
            from.min(n) as usize,
            to.unwrap_or(n).min(n).max(from.min(n)) as usize,
        );
        assert_eq!(
            reader.read(from, to).await.unwrap(),
            want[a..b],
            "read({from}, {to:?})"
        );

        for stream in STREAMS.iter().chain(&["nobody"]) {
            let of: Vec<Record> = want
                .iter()
                .filter(|r| r.stream == *stream)
                .cloned()
                .collect();
            assert_eq!(
                reader.read_stream(stream).await.unwrap(),
                of,
                "read_stream({stream})"
            );
            assert_eq!(
                reader.read_stream_scan(stream).await.unwrap(),
                of,
                "read_stream_scan({stream})"
            );
            // The indexes cover nothing before the first checkpoint after
            // checkpoint 0; from then on they must answer whole.
            match reader.read_stream_indexed(stream).await.unwrap() {
                Some(got) => assert_eq!(got, of, "read_stream_indexed({stream})"),
                None => assert_eq!(
                    reader.signed_at_open(),
                    0,
                    "read_stream_indexed({stream}) gave up"
                ),
            }
        }

        let mut times = vec![i64::MIN, i64::MAX];
        if n > 0 {
            let t = want[(probe % n) as usize].timestamp_us;
            times.extend([t - 1, t, t + 1]);
        }
        for t in times {
            let before: Vec<Record> = want
                .iter()
                .take_while(|r| r.timestamp_us <= t)
                .cloned()
                .collect();
            assert_eq!(
                reader.read_as_of(t).await.unwrap(),
                before,
                "read_as_of({t})"
            );
        }

        for kept in &self.kept {
            let (old, len) = (&kept.reader, kept.len);
            let read = old.read(0, None).await.unwrap();
            let seen = read.len();
            if kept.cut {
                assert!(
                    seen >= len && read[..] == want[..seen],
                    "a reader that saw a tail cut off reads {seen} records, {len} as they are"
                );
            } else {
                assert_eq!(read, want[..len], "a kept reader");
            }
            assert_eq!(old.len().await.unwrap(), seen as u64, "a kept reader's len");
            for stream in STREAMS {
                let of: Vec<Record> = want[..seen]
                    .iter()
                    .filter(|r| r.stream == stream)
                    .cloned()
                    .collect();
                match old.read_stream_indexed(stream).await.unwrap() {
                    Some(got) => {
                        assert_eq!(got, of, "a kept reader's read_stream_indexed({stream})")
                    }
                    None => assert_eq!(old.signed_at_open(), 0, "a kept reader gave up"),
                }
            }
        }
    }

    /// `verify`, every checkpoint, and proofs against them. Beside a
    /// `live` writer, a checkpoint may land while `verify` runs (one falls
    /// due after an append was answered): `verify` then counts the ones it
    /// listed first, and may list the caches of one being written.
    async fn check_signed(&self, probe: u32, live: bool) {
        let reader = LedgerReader::open(self.store.clone(), NAME).await.unwrap();
        let n = self.model.len();
        let leaves = self.model.leaves();
        let report = reader.verify(&self.verifier, &|_, _| {}).await.unwrap();
        let cps: Vec<(String, Checkpoint)> = reader.checkpoints(&self.verifier).await.unwrap();
        let sizes: Vec<u64> = cps.iter().map(|(_, c)| c.size).collect();
        assert_eq!(sizes.first(), Some(&0), "checkpoint 0");
        assert!(sizes.windows(2).all(|w| w[0] < w[1]), "sizes {sizes:?}");
        let listed = report.checkpoints as usize;
        assert!(
            listed >= 1 && listed <= sizes.len(),
            "verify listed {listed} of {sizes:?}"
        );
        if !live {
            assert_eq!(listed, sizes.len(), "verify counts every checkpoint");
        }
        let newest = sizes[listed - 1];
        assert_eq!(report.records, n, "verify counts every record");
        assert_eq!(report.unsigned_tail, n - newest);
        assert_eq!(report.chain_head, self.model.head());
        assert_eq!(report.root, merkle::root(&leaves));
        assert_eq!(report.missing_caches, Vec::<String>::new());
        let orphans = report.caches_without_checkpoint.expect("caches listed");
        for blob in &orphans {
            let size = [
                layout::snapshot_size,
                layout::stream_index_size,
                layout::nodes_size,
            ]
            .iter()
            .find_map(|size_of| size_of(NAME, blob));
            assert!(
                live && size.is_some_and(|s| s > newest && s <= n),
                "{blob} without a checkpoint, beside checkpoints up to {newest} of {n} records"
            );
        }
        assert!(sizes[..listed].contains(&reader.signed_at_open()));
        assert!(reader.signed_at_open() <= newest);

        for (blob, answered) in &self.model.answered {
            let stored = cps.iter().find(|(b, _)| b == blob).map(|(_, c)| c);
            assert_eq!(stored, Some(answered), "checkpoint {blob} as answered");
        }
        for (blob, cp) in &cps {
            assert!(cp.size <= n, "{blob} signs past the log");
            assert_eq!(
                cp.root,
                merkle::root(&leaves[..cp.size as usize]),
                "{blob} root"
            );
            assert_eq!(
                cp.chain_head,
                self.model.head_at(cp.size),
                "{blob} chain head"
            );
        }
        // The newest, found without listing every checkpoint; beside a live
        // writer, one newer than those listed may have landed since.
        let (blob, cp, _) = reader.signed_checkpoint(None).await.unwrap().unwrap();
        let (newest_blob, newest_cp) = cps.last().unwrap();
        if live {
            assert!(cp.size >= newest_cp.size && cp.size <= n, "newest {blob}");
            assert_eq!(
                cp.root,
                merkle::root(&leaves[..cp.size as usize]),
                "{blob} root"
            );
        } else {
            assert_eq!((&blob, &cp), (newest_blob, newest_cp));
        }
        // Proofs against at most 16 of them, the first and last among them.
        let m = cps.len();
        let step = m.div_ceil(16).max(1);
        let cps: Vec<(String, Checkpoint)> = cps
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i == m - 1)
            .map(|(_, c)| c.clone())
            .collect();
        for (blob, cp) in &cps {
            if cp.size == 0 {
                continue;
            }
            for seq in [u64::from(probe) % cp.size, cp.size - 1] {
                let proof = reader.inclusion_proof(seq, cp.size).await.unwrap();
                let record = proof.verify(cp).unwrap();
                assert_eq!(
                    record, self.model.entries[seq as usize].record,
                    "proof of {seq} in {blob}"
                );
            }
        }
        // Each checkpoint with the next, and a few pairs further apart.
        let mut pairs: Vec<(usize, usize)> = (1..cps.len()).map(|i| (i - 1, i)).collect();
        let m = cps.len();
        for j in 0..3u32 {
            let a = (probe.rotate_left(j * 7) as usize) % m;
            let b = (probe.rotate_left(j * 7 + 3) as usize) % m;
            pairs.push((a.min(b), a.max(b)));
        }
        for (i, j) in pairs {
            let (old, new) = (&cps[i].1, &cps[j].1);
            let proof = reader.consistency_proof(old.size, new.size).await.unwrap();
            proof
                .verify(old, new)
                .unwrap_or_else(|e| panic!("consistency {} -> {}: {e}", old.size, new.size));
        }
    }

    async fn finish(mut self, probe: u32) {
        if let Some(ledger) = self.ledger.take() {
            let cp = ledger.close().await.unwrap();
            assert_eq!(cp.checkpoint.size, self.model.len(), "final checkpoint");
            self.model.answered.push((cp.blob, cp.checkpoint));
        }
        self.check_reads(probe).await;
        self.check_signed(probe, false).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Each step, then the checks of every read after it; at the end a close
/// and every check there is.
fn run(knobs: &Knobs, steps: &[(Op, u32)], last: u32) {
    runtime().block_on(async {
        let mut run = Run::new(knobs).await;
        for (op, probe) in steps {
            run.step(op, *probe).await;
            run.check_reads(*probe).await;
        }
        run.finish(last).await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any run of operations leaves a ledger whose every read, verify and
    /// proof agrees with the model, after every step and at the end.
    #[test]
    fn the_ledger_behaves_as_its_model(
        knobs in knobs(),
        steps in prop::collection::vec((op(), any::<u32>()), 1..40),
        last in any::<u32>(),
    ) {
        run(&knobs, &steps, last);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4))]

    /// The same past 1,024 records, where proofs take Merkle subtrees from
    /// the node caches beside the checkpoints. Fewer runs, and fewer
    /// checkpoints in them: each step reads a thousand records back.
    #[test]
    fn past_the_first_node_cache(
        knobs in knobs_with(
            prop_oneof![Just(700usize), Just(1500), Just(1 << 20)],
            prop_oneof![Just(None), Just(Some(16u64)), Just(Some(64))],
            prop_oneof![Just(None), Just(Some(20u64))],
        ),
        before in prop::collection::vec((op(), any::<u32>()), 0..6),
        bulk in any::<u32>(),
        after in prop::collection::vec((op(), any::<u32>()), 0..10),
        last in any::<u32>(),
    ) {
        let steps: Vec<(Op, u32)> = before.into_iter().chain([(Op::Bulk(1100), bulk)]).chain(after).collect();
        run(&knobs, &steps, last);
    }
}

fn knobs_at_scale() -> impl Strategy<Value = Knobs> {
    (
        prop_oneof![Just(None), Just(Some(5000u64))],
        prop_oneof![Just(2usize), Just(256)],
    )
        .prop_map(|(every, count)| Knobs {
            max_batch_bytes: 1 << 20,
            segment_max_bytes: 1 << 30,
            segment_max_blocks: 50_000,
            checkpoint_every_events: every,
            checkpoint_interval_ms: None,
            merge_index_count: count,
            merge_index_records: 262_144,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2))]

    /// The same past 16,384 records in a segment, where a read from a
    /// sequence number seeks to its batch through the stream indexes
    /// rather than scanning its segment from the start, and past 4,096
    /// records per stream index, where a read of one stream goes through
    /// them rather than scanning the log.
    #[test]
    fn at_scale(
        knobs in knobs_at_scale(),
        before in prop::collection::vec((op(), any::<u32>()), 0..3),
        bulk in any::<u32>(),
        after in prop::collection::vec((op(), any::<u32>()), 0..4),
        last in any::<u32>(),
    ) {
        let steps: Vec<(Op, u32)> = before.into_iter().chain([(Op::Bulk(18_000), bulk)]).chain(after).collect();
        run(&knobs, &steps, last);
    }
}
