//! The library API end to end on the local backend; the same suite runs on
//! Azure in `tests/azure_blob.rs`.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::BlobStore;

#[path = "suite/ledger.rs"]
mod ledger;

fn store(dir: &std::path::Path) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::new(dir).unwrap().shared())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_reopen_verify_prove() {
    let dir = tempfile::tempdir().unwrap();
    // Two handles on one directory, as two processes would have.
    ledger::append_read_reopen_verify_prove(store(dir.path()), store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reads_use_the_index() {
    let dir = tempfile::tempdir().unwrap();
    ledger::stream_reads_use_the_index(store(dir.path())).await;
}

/// `read_stream` goes through the stream index once the indexes are large
/// enough to pay off: a damaged batch that cannot hold the stream is never
/// read (a full scan stops at it; `verify` reports it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_stream_skips_batches_the_index_rules_out() {
    use bi_ledger::{Ledger, LedgerOptions, LedgerReader, NewEvent};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let opts = LedgerOptions::new(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
    let ledger = Ledger::create(store(dir.path()), "main", opts)
        .await
        .unwrap();
    let bulk = |n: u64| -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent::json("bulk", "Counted", &json!({ "i": i })))
            .collect()
    };
    let a = ledger.append(bulk(1000)).await.unwrap();
    ledger
        .append_one(NewEvent::json("needle", "Found", &json!({})))
        .await
        .unwrap();
    ledger.append(bulk(4000)).await.unwrap();
    ledger.close().await.unwrap();

    // Damage batch A (1,000 "bulk" events), after its frame header.
    let seg = dir.path().join("main/0000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[a[0].offset as usize + 40] ^= 0x55;
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&seg, &bytes).unwrap();

    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let found = reader.read_stream("needle").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].seq, 1000);
    let err = reader.read_stream_scan("needle").await.unwrap_err();
    assert!(err.to_string().contains("0000000000.seg"), "{err}");
}
