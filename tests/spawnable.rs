//! Every public async method of `Ledger` and `LedgerReader` returns a
//! future that `tokio::spawn` takes (it is `Send + 'static` once its
//! arguments are owned), so a service can call it from a spawned task or
//! a request handler. A method whose future is not `Send` fails to
//! compile here; each call's result is checked as well.

use std::ops::ControlFlow;
use std::sync::Arc;

use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::BlobStore;
use bi_ledger::{ExpectedVersion, Ledger, LedgerOptions, LedgerReader, NewEvent};
use serde_json::json;

fn store(dir: &std::path::Path) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::new(dir).unwrap().shared())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_future_can_be_spawned() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let opts = LedgerOptions::new(key);
    let ledger = {
        let (root, opts) = (root.clone(), opts.clone());
        tokio::spawn(async move { Ledger::create(store(&root), "main", opts).await })
            .await
            .unwrap()
            .unwrap()
    };
    let l = ledger.clone();
    let receipts = tokio::spawn(async move {
        l.append(vec![
            NewEvent::json("order-1", "Placed", &json!({"n": 1})).expect(ExpectedVersion::NoStream),
            NewEvent::json("order-2", "Placed", &json!({"n": 2})),
        ])
        .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(receipts.len(), 2);
    let l = ledger.clone();
    let one = tokio::spawn(async move {
        l.append_one(NewEvent::json("order-1", "Shipped", &json!({})))
            .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!((one.seq, one.version), (2, 1));
    let l = ledger.clone();
    let cp = tokio::spawn(async move { l.checkpoint().await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.checkpoint.size, 3);
    let l = ledger.clone();
    let from_writer = tokio::spawn(async move { l.reader().await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from_writer.len().await.unwrap(), 3);
    let closed = tokio::spawn(async move { ledger.close().await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.checkpoint.size, 3);
    let l = {
        let (root, opts) = (root.clone(), opts.clone());
        tokio::spawn(async move { Ledger::open(store(&root), "main", opts).await })
            .await
            .unwrap()
            .unwrap()
    };
    l.close().await.unwrap();

    let r = {
        let root = root.clone();
        tokio::spawn(async move { LedgerReader::open(store(&root), "main").await })
            .await
            .unwrap()
            .unwrap()
    };
    let r = Arc::new(r);
    let verifier = r.recorded_verifier().clone();
    macro_rules! spawned {
        (|$r:ident| $body:expr) => {{
            let $r = r.clone();
            tokio::spawn(async move { $body }).await.unwrap().unwrap()
        }};
    }
    assert_eq!(spawned!(|r| r.len().await), 3);
    assert!(!spawned!(|r| r.is_empty().await));
    assert_eq!(spawned!(|r| r.read(1, None).await).len(), 2);
    assert_eq!(spawned!(|r| r.read_as_of(i64::MAX).await).len(), 3);
    assert_eq!(spawned!(|r| r.read_stream("order-1").await).len(), 2);
    assert_eq!(spawned!(|r| r.read_stream_scan("order-1").await).len(), 2);
    let indexed = spawned!(|r| r.read_stream_indexed("order-1").await);
    assert_eq!(indexed.map(|v| v.len()), Some(2));
    let mut seen = 0;
    let r2 = r.clone();
    tokio::spawn(async move {
        r2.read_stream_with("order-1", |_| {
            seen += 1;
            ControlFlow::Continue(())
        })
        .await
        .map(|()| seen)
    })
    .await
    .unwrap()
    .map(|n| assert_eq!(n, 2))
    .unwrap();
    let mut scanned = 0;
    let r2 = r.clone();
    let n = tokio::spawn(async move {
        r2.scan(0, None, |_, _| {
            scanned += 1;
            ControlFlow::Continue(())
        })
        .await
        .map(|()| scanned)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(n, 3);
    let v = verifier.clone();
    let report = spawned!(|r| r.verify(&v, &|_, _| {}).await);
    assert_eq!(report.records, 3);
    let v = verifier.clone();
    let cps = spawned!(|r| r.checkpoints(&v).await);
    assert!(cps.iter().any(|(_, cp)| cp.size == 3));
    let newest = spawned!(|r| r.signed_checkpoint(None).await).unwrap();
    assert_eq!(newest.1.size, 3);
    let p = spawned!(|r| r.inclusion_proof(1, 3).await);
    p.verify(&newest.1).unwrap();
    let old = spawned!(|r| r.signed_checkpoint(Some(0)).await).unwrap().1;
    let c = spawned!(|r| r.consistency_proof(0, 3).await);
    c.verify(&old, &newest.1).unwrap();
    let trusted = newest.1.clone();
    let m = spawned!(|r| r.check_trusted(&trusted, &report).await);
    assert_eq!(m, bi_ledger::ledger::trusted::TrustedMatch::Checkpoint);
}
