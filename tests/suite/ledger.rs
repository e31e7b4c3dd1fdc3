//! The ledger API end to end, written once and run against every blob
//! store: `tests/ledger_api.rs` (fs) and `tests/azure_blob.rs` (Azurite).

use std::sync::Arc;

use bi_ledger::backend::{BlobStore, StoreError};
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
        Err(LedgerError::Store(StoreError::Locked { what })) => assert_eq!(what, "main/writer"),
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
