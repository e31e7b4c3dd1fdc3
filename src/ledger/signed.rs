//! The checkpoints `verify` checks the log against, opened a few at a time
//! just ahead of the walk rather than all before it.
//!
//! Ten years of checkpoints at the default interval are about a million
//! (format §11). Holding them all opened cost verify about 200 bytes each
//! and a serial read and signature check each before the walk began; here
//! verify holds their sizes (8 bytes each), and the next [`AHEAD`] are read
//! and their signatures checked concurrently, on the runtime's threads,
//! while the walk hashes the records before them. Their stream indexes and
//! node caches are read with them, and the snapshots are listed once (only
//! the newest two are kept), so that a checkpoint reached costs the walk no
//! round trip to the store.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::layout::{self, Meta};
use super::recover;
use crate::backend::{BlobStore, StoreError};
use crate::error::{LedgerError, Result};
use crate::format::checkpoint::Checkpoint;

/// Checkpoints being opened ahead of the walk: enough to hide a store's
/// round trips and to keep both cores checking signatures.
const AHEAD: usize = 16;

pub struct Signed {
    store: Arc<dyn BlobStore>,
    /// The ledger's identity with the verifier's key.
    meta: Meta,
    /// Every checkpoint's size, ascending, as listed.
    sizes: Arc<[u64]>,
    /// `sizes[next]` is the next checkpoint to take.
    next: usize,
    /// Opening `sizes[next..next + opening.len()]`.
    opening: VecDeque<JoinHandle<Result<Opened>>>,
    /// The sizes of the snapshots, listed after the checkpoints.
    snapshots: Vec<u64>,
}

/// A cache blob read ahead: its bytes, or `None` if it did not exist.
pub type ReadAhead = std::result::Result<Option<Vec<u8>>, StoreError>;

/// A checkpoint taken: its blob, its statement, and its stream index and
/// node cache as read.
pub struct Opened {
    pub blob: String,
    pub checkpoint: Checkpoint,
    pub caches: Vec<(String, ReadAhead)>,
}

impl Signed {
    /// Lists the checkpoints; opens none yet.
    pub async fn list(store: Arc<dyn BlobStore>, meta: Meta) -> Result<Signed> {
        let sizes: Vec<u64> = recover::checkpoint_blobs(store.as_ref(), &meta.name)
            .await?
            .into_iter()
            .map(|(size, _)| size)
            .collect();
        // After the checkpoints: a snapshot is put before its checkpoint,
        // so every listed checkpoint's snapshot that still exists is here.
        let mut snapshots: Vec<u64> = store
            .list(&layout::snapshot_prefix(&meta.name))
            .await?
            .iter()
            .filter_map(|b| layout::snapshot_size(&meta.name, &b.name))
            .collect();
        snapshots.sort_unstable();
        Ok(Signed {
            store,
            meta,
            sizes: sizes.into(),
            next: 0,
            opening: VecDeque::new(),
            snapshots,
        })
    }

    /// Every checkpoint's size, ascending.
    pub fn sizes(&self) -> &Arc<[u64]> {
        &self.sizes
    }

    /// The size of the next checkpoint to take.
    pub fn peek(&self) -> Option<u64> {
        self.sizes.get(self.next).copied()
    }

    /// Checkpoints not taken yet.
    pub fn remaining(&self) -> usize {
        self.sizes.len() - self.next
    }

    pub fn blob(&self, size: u64) -> String {
        layout::checkpoint(&self.meta.name, size)
    }

    /// Whether the snapshot of `size` was there when listed.
    pub fn has_snapshot(&self, size: u64) -> bool {
        self.snapshots.binary_search(&size).is_ok()
    }

    /// The next checkpoint, its signature, origin and size checked: its
    /// blob and statement.
    pub async fn take(&mut self) -> Option<Result<Opened>> {
        self.peek()?;
        while self.opening.len() < AHEAD && self.next + self.opening.len() < self.sizes.len() {
            let at = self.sizes[self.next + self.opening.len()];
            let (store, meta) = (self.store.clone(), self.meta.clone());
            self.opening.push_back(tokio::spawn(async move {
                let blob = layout::checkpoint(&meta.name, at);
                let cache = |blob: String| {
                    let store = store.clone();
                    async move {
                        let read = match store.read_all(&blob).await {
                            Ok(b) => Ok(Some(b)),
                            Err(StoreError::NotFound { .. }) => Ok(None),
                            Err(e) => Err(e),
                        };
                        (blob, read)
                    }
                };
                let (checkpoint, index, nodes) = tokio::join!(
                    recover::open_checkpoint(store.as_ref(), &meta, at, &blob),
                    cache(layout::stream_index(&meta.name, at)),
                    cache(layout::nodes(&meta.name, at)),
                );
                Ok(Opened {
                    blob,
                    checkpoint: checkpoint?,
                    caches: vec![index, nodes],
                })
            }));
        }
        let opened = self.opening.pop_front()?.await;
        self.next += 1;
        let cp = match opened {
            Ok(r) => r,
            // As if it had been opened here.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only a runtime shutting down cancels it.
            Err(_) => Err(LedgerError::Closed {
                ledger: self.meta.name.clone(),
            }),
        };
        Some(cp)
    }
}

impl Drop for Signed {
    fn drop(&mut self) {
        // Verify stopped early: the reads ahead are of no use.
        for h in &self.opening {
            h.abort();
        }
    }
}
