//! Many concurrent appenders through clones of one `Ledger` (group
//! commit): sequence numbers are unique and contiguous, stream versions are
//! granted exactly once, conflicts write nothing, and the result verifies.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::BlobStore;
use bi_ledger::{
    ExpectedVersion, Ledger, LedgerError, LedgerOptions, LedgerReader, NewEvent, Receipt,
};
use ed25519_dalek::SigningKey;
use serde_json::json;

const TASKS: usize = 64;

fn store(dir: &std::path::Path) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::new(dir).unwrap().shared())
}

fn opts() -> LedgerOptions {
    LedgerOptions::new(SigningKey::from_bytes(&[9; 32]))
}

fn expect_after(last: Option<u64>) -> ExpectedVersion {
    match last {
        None => ExpectedVersion::NoStream,
        Some(v) => ExpectedVersion::Exact(v),
    }
}

/// One append call as a task saw it.
struct Call {
    task: usize,
    /// (event number within the task, receipt)
    receipts: Vec<(u64, Receipt)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_streams_get_contiguous_unique_seqs() {
    own_streams(opts()).await;
}

/// The same with small batches (a group is split over several block
/// writes) and small segments (rollover while appenders race).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_streams_small_batches_and_segments() {
    let segments = own_streams(LedgerOptions {
        max_batch_bytes: 2048,
        segment_max_blocks: 8,
        ..opts()
    })
    .await;
    assert!(segments > 3, "{segments} segments");
}

/// Returns the number of segments verified.
async fn own_streams(opts: LedgerOptions) -> u64 {
    const ROUNDS: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let ledger = Ledger::create(s.clone(), "main", opts).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let ledger = ledger.clone();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let stream = format!("task-{task}");
            let mut last: Option<u64> = None;
            let mut n = 0u64;
            let mut calls = Vec::new();
            for round in 0..ROUNDS {
                // Every fourth task sends some multi-event calls.
                let k = if task.is_multiple_of(4) && round % 3 == 1 {
                    1 + (round % 4)
                } else {
                    1
                };
                let mut events = Vec::new();
                for j in 0..k {
                    let e = NewEvent::json(
                        stream.clone(),
                        "Stepped",
                        &json!({"task": task, "n": n + j}),
                    )
                    .with_metadata("round", round.to_string())
                    // Event j of a call follows the j before it.
                    .expect(expect_after(match last {
                        Some(v) => Some(v + j),
                        None => j.checked_sub(1),
                    }));
                    events.push(e);
                }
                let receipts = ledger.append(events).await.unwrap();
                assert_eq!(receipts.len() as u64, k);
                let mut mine = Vec::new();
                for (j, r) in receipts.into_iter().enumerate() {
                    assert_eq!(r.stream, stream);
                    assert_eq!(r.version, last.map_or(0, |v| v + 1) + j as u64);
                    mine.push((n + j as u64, r));
                }
                last = Some(mine.last().unwrap().1.version);
                n += k;
                calls.push(Call {
                    task,
                    receipts: mine,
                });
            }
            calls
        }));
    }
    let mut calls = Vec::new();
    for h in handles {
        calls.extend(h.await.unwrap());
    }
    let receipts: Vec<&Receipt> = calls
        .iter()
        .flat_map(|c| c.receipts.iter().map(|(_, r)| r))
        .collect();
    let total = receipts.len() as u64;

    // Unique and exactly 0..N.
    let mut seqs: Vec<u64> = receipts.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..total).collect::<Vec<_>>());
    // One call's events are contiguous and share one batch.
    for c in &calls {
        let first = &c.receipts[0].1;
        for (j, (_, r)) in c.receipts.iter().enumerate() {
            assert_eq!(r.seq, first.seq + j as u64, "task {} call split", c.task);
            assert_eq!((r.segment, r.offset), (first.segment, first.offset));
        }
    }
    // Per stream: versions 0..k in seq order.
    let mut by_stream: BTreeMap<&str, Vec<&Receipt>> = BTreeMap::new();
    for r in &receipts {
        by_stream.entry(r.stream.as_str()).or_default().push(r);
    }
    assert_eq!(by_stream.len(), TASKS);
    for rs in by_stream.values_mut() {
        rs.sort_by_key(|r| r.seq);
        let versions: Vec<u64> = rs.iter().map(|r| r.version).collect();
        assert_eq!(versions, (0..rs.len() as u64).collect::<Vec<_>>());
    }
    let batches: HashSet<(u64, u64)> = receipts.iter().map(|r| (r.segment, r.offset)).collect();
    eprintln!(
        "{total} events from {} calls in {} batches",
        calls.len(),
        batches.len()
    );

    // Read back: every record where its receipt says, with its payload.
    let mut want: BTreeMap<u64, (usize, u64, &Receipt)> = BTreeMap::new();
    for c in &calls {
        for (n, r) in &c.receipts {
            want.insert(r.seq, (c.task, *n, r));
        }
    }
    let reader = ledger.reader().await.unwrap();
    let records = reader.read(0, None).await.unwrap();
    assert_eq!(records.len() as u64, total);
    let mut last_ts = i64::MIN;
    for rec in &records {
        let (task, n, r) = want[&rec.seq];
        assert_eq!(rec.stream, r.stream);
        assert_eq!(rec.stream_version, r.version);
        assert_eq!(rec.timestamp_us, r.timestamp_us);
        assert!(rec.timestamp_us >= last_ts, "timestamps decrease");
        last_ts = rec.timestamp_us;
        let payload: serde_json::Value = serde_json::from_slice(&rec.payload).unwrap();
        assert_eq!(payload, json!({"task": task, "n": n}));
    }
    let stream = reader.read_stream("task-0").await.unwrap();
    assert_eq!(
        stream.iter().map(|r| r.stream_version).collect::<Vec<_>>(),
        (0..stream.len() as u64).collect::<Vec<_>>()
    );
    assert!(
        stream.len() as u64 > ROUNDS,
        "task 0 sent multi-event calls"
    );

    let verifier = ledger.verifier().clone();
    let head = receipts.iter().max_by_key(|r| r.seq).unwrap().hash;
    let cp = ledger.close().await.unwrap();
    assert_eq!(cp.checkpoint.size, total);
    assert_eq!(cp.checkpoint.chain_head, head);
    let reader = LedgerReader::open(s, "main").await.unwrap();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.records, total);
    assert_eq!(report.chain_head, head);
    assert_eq!(report.unsigned_tail, 0);
    report.segments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_expected_versions_on_one_stream() {
    const WINS: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let ledger = Ledger::create(s.clone(), "main", opts()).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let ledger = ledger.clone();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut known: Option<u64> = None;
            let mut wins = Vec::new();
            let mut conflicts = 0u64;
            let mut attempt = 0u64;
            while (wins.len() as u64) < WINS {
                attempt += 1;
                // Some calls carry two events: both land or neither does.
                let two = task.is_multiple_of(5) && attempt.is_multiple_of(2);
                let mut events = vec![NewEvent::json(
                    "hot",
                    "Bumped",
                    &json!({"task": task, "attempt": attempt, "part": 0}),
                )
                .expect(expect_after(known))];
                if two {
                    events.push(
                        NewEvent::json(
                            "hot",
                            "Bumped",
                            &json!({"task": task, "attempt": attempt, "part": 1}),
                        )
                        .expect(ExpectedVersion::Exact(known.map_or(0, |v| v + 1))),
                    );
                }
                match ledger.append(events).await {
                    Ok(rs) => {
                        assert_eq!(rs.len(), if two { 2 } else { 1 });
                        assert_eq!(rs[0].version, known.map_or(0, |v| v + 1));
                        known = Some(rs.last().unwrap().version);
                        wins.push((attempt, rs));
                    }
                    Err(LedgerError::VersionConflict {
                        index,
                        stream,
                        expected,
                        current,
                        earlier,
                    }) => {
                        assert_eq!(
                            (index, earlier),
                            (0, 0),
                            "the first event is the one that is stale"
                        );
                        assert_eq!(stream, "hot");
                        assert_eq!(expected, expect_after(known));
                        assert_ne!(current, known, "a conflict must report the new version");
                        assert!(current.is_some());
                        known = current;
                        conflicts += 1;
                    }
                    Err(e) => panic!("task {task}: {e}"),
                }
            }
            (task, wins, conflicts)
        }));
    }
    let mut versions = Vec::new();
    let mut seqs = Vec::new();
    let mut conflicts = 0;
    let mut expected_payloads = BTreeMap::new();
    for h in handles {
        let (task, wins, c) = h.await.unwrap();
        conflicts += c;
        for (attempt, rs) in wins {
            for (part, r) in rs.iter().enumerate() {
                versions.push(r.version);
                seqs.push(r.seq);
                expected_payloads.insert(
                    r.version,
                    json!({"task": task, "attempt": attempt, "part": part}),
                );
            }
        }
    }
    let total = versions.len() as u64;
    assert!(total >= TASKS as u64 * WINS);
    versions.sort_unstable();
    let before = versions.len();
    versions.dedup();
    assert_eq!(versions.len(), before, "two events got the same version");
    assert_eq!(versions, (0..total).collect::<Vec<_>>());
    seqs.sort_unstable();
    assert_eq!(seqs, (0..total).collect::<Vec<_>>());
    // All 64 started with NoStream; only one of them can have won.
    assert!(conflicts >= TASKS as u64 - 1, "{conflicts} conflicts");
    eprintln!("{total} events, {conflicts} conflicts");

    // Conflicts wrote nothing: the log holds exactly the winners' events.
    let reader = ledger.reader().await.unwrap();
    assert_eq!(reader.len().await.unwrap(), total);
    let hot = reader.read_stream("hot").await.unwrap();
    assert_eq!(hot.len() as u64, total);
    for (i, r) in hot.iter().enumerate() {
        assert_eq!(r.stream_version, i as u64, "stream out of version order");
        assert_eq!(r.seq, i as u64);
        let payload: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(payload, expected_payloads[&r.stream_version]);
    }
    let verifier = ledger.verifier().clone();
    ledger.close().await.unwrap();
    let reader = LedgerReader::open(s, "main").await.unwrap();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.records, total);
}
