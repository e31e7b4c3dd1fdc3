//! A listing helper shared by the blob conformance suite and the ledger
//! suite, which are compiled into different test crates.

use bi_ledger::backend::BlobStore;

/// The names of the blobs under `prefix`.
pub async fn names(s: &dyn BlobStore, prefix: &str) -> Vec<String> {
    s.list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect()
}
