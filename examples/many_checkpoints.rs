//! Makes a ledger of N events with a checkpoint after each, the extreme of
//! "many checkpoints" (ten years at the default five-minute interval are
//! about a million), to measure what `verify` costs per checkpoint:
//!
//! ```text
//! cargo run --release --example many_checkpoints -- DIR N
//! cargo run --release --example many_checkpoints -- azure:CONTAINER N   # AZURE_STORAGE_CONNECTION_STRING
//! /usr/bin/time -f "%e s %M KB" target/release/bi-ledger --data DIR verify
//! ```
//!
//! The ledger is `main`, signed by a new key that is not kept (`verify`
//! then uses the key recorded in the ledger).

use std::sync::Arc;

use bi_ledger::backend::azure::{AzureBlobStore, ConnectionInfo};
use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::BlobStore;
use bi_ledger::{Ledger, LedgerOptions, NewEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(place), Some(n)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: many_checkpoints DIR|azure:CONTAINER EVENTS");
    };
    let n: u64 = n.parse()?;
    let store: Arc<dyn BlobStore> = match place.strip_prefix("azure:") {
        Some(container) => Arc::new(
            AzureBlobStore::from_connection_info(
                ConnectionInfo::from_env()?,
                container,
                Default::default(),
            )
            .await?,
        ),
        None => Arc::new(FsStore::new(place)?.shared()),
    };
    let opts = LedgerOptions::new(bi_ledger::keys::generate()?);
    let ledger = Ledger::create(store, "main", opts).await?;
    for i in 0..n {
        let event = NewEvent::json(
            format!("s-{}", i % 100),
            "T",
            &serde_json::json!({ "i": i }),
        );
        ledger.append_one(event).await?;
        ledger.checkpoint().await?;
    }
    ledger.close().await?;
    Ok(())
}
