//! The library API end to end on the local backend; the same suite runs on
//! Azure in `tests/azure_blob.rs`.

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
