//! The library API end to end on the local backend.

use std::sync::Arc;

use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::BlobStore;
use bi_ledger::{ExpectedVersion, Ledger, LedgerError, LedgerOptions, LedgerReader, NewEvent};
use ed25519_dalek::SigningKey;
use serde_json::json;

fn store(dir: &std::path::Path) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::new(dir).unwrap().shared())
}

fn opts() -> LedgerOptions {
    LedgerOptions::new(SigningKey::from_bytes(&[42; 32]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_reopen_verify() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let ledger = Ledger::create(s.clone(), "main", opts()).await.unwrap();
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
    ledger.close().await.unwrap();

    let ledger = Ledger::open(s.clone(), "main", opts()).await.unwrap();
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
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.records, 3);
    assert_eq!(report.unsigned_tail, 0);

    let cps = reader.checkpoints(&verifier).await.unwrap();
    assert_eq!(
        cps.iter().map(|(_, c)| c.size).collect::<Vec<_>>(),
        vec![0, 2, 3]
    );
    // Snapshots are a cache: only the newest two are kept.
    let snaps: Vec<String> = s
        .list("main/snapshot-")
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert!(snaps[1].ends_with("00003"));
    let newest = &cps.last().unwrap().1;
    for seq in 0..3 {
        let p = reader.inclusion_proof(seq, newest.size).await.unwrap();
        p.verify(newest).unwrap();
    }
    let old = &cps[1].1;
    let c = reader
        .consistency_proof(old.size, newest.size)
        .await
        .unwrap();
    c.verify(old, newest).unwrap();
}
