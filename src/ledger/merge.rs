//! Merged stream indexes (format §11.3.1): the stream indexes of many
//! consecutive checkpoints in one blob. A ledger checkpointed every few
//! minutes collects a small index per checkpoint, a million in ten years;
//! a reader of one stream would fetch them one request each, or give up
//! and scan the whole log. After every `merge_index_count` indexes, or
//! `merge_index_records` records, the writer puts one blob with all their
//! batches, and a reader fetches that instead.
//!
//! The writer reads the indexes back to merge them (they are immutable),
//! so it keeps nothing but their sizes between checkpoints. A merge that
//! fails is only a cache not written: logged, and tried again at the next
//! checkpoint with a longer run.

use futures::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use super::layout::{self, Meta};
use crate::backend::{BlobStore, StoreError};
use crate::error::Result;
use crate::format::stream_index::StreamIndex;

/// How many index reads a merge keeps in flight.
const CONCURRENT_READS: usize = 16;

/// The indexes since the newest merged one.
#[derive(Debug, Default)]
pub struct Run {
    /// Where the newest merged index ends (0 if there is none): the run
    /// starts here.
    pub from: u64,
    /// The sizes of the checkpoints since `from` that have a stream index,
    /// in order.
    pub sizes: Vec<u64>,
}

impl Run {
    /// The run as the store holds it, for a writer that opened with `newest`
    /// its newest checkpoint: the newest merged index at or below it, and
    /// the indexes beside checkpoints after that. A run that reaches back
    /// more than a few windows (merges that failed for long) is given up:
    /// it starts afresh at `newest`, leaving those indexes unmerged.
    pub async fn restore(store: &dyn BlobStore, ledger: &str, newest: u64) -> Result<Run> {
        let from = merged_sizes(store, ledger)
            .await?
            .into_iter()
            .filter(|&to| to <= newest)
            .max()
            .unwrap_or(0);
        if newest / layout::WINDOW > from / layout::WINDOW + 3 {
            return Ok(Run {
                from: newest,
                sizes: Vec::new(),
            });
        }
        let mut checkpoints = std::collections::HashSet::new();
        let mut indexes = Vec::new();
        for w in from / layout::WINDOW..=newest / layout::WINDOW {
            let cp_prefix = layout::in_window(&layout::checkpoint_prefix(ledger), w);
            for b in store.list(&cp_prefix).await? {
                checkpoints.extend(layout::checkpoint_size(ledger, &b.name));
            }
            let idx_prefix = layout::in_window(&layout::stream_index_prefix(ledger), w);
            for b in store.list(&idx_prefix).await? {
                indexes.extend(layout::stream_index_size(ledger, &b.name));
            }
        }
        // An index without its checkpoint is an orphan of a crash (§10.4).
        let mut sizes: Vec<u64> = indexes
            .into_iter()
            .filter(|s| *s > from && *s <= newest && checkpoints.contains(s))
            .collect();
        sizes.sort_unstable();
        Ok(Run { from, sizes })
    }

    /// Whether the run is long enough to merge.
    pub fn due(&self, to: u64, max_records: u64, max_count: usize) -> bool {
        self.sizes.len() >= 2 && (self.sizes.len() >= max_count || to - self.from >= max_records)
    }
}

/// The `to` of every merged stream index in the store.
pub async fn merged_sizes(store: &dyn BlobStore, ledger: &str) -> Result<Vec<u64>> {
    let prefix = layout::merged_stream_index_prefix(ledger);
    Ok(store
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|b| layout::merged_stream_index_size(ledger, &b.name))
        .collect())
}

/// Why a run could not be merged.
pub enum Failed {
    /// The store failed: try again with the next checkpoint.
    Store(crate::error::LedgerError),
    /// An index of the run is missing, unreadable or out of line: the run
    /// cannot be merged, now or later.
    Broken(String),
}

/// Merges the indexes of `run` (which ends at checkpoint `to`) and puts the
/// result. Returns the merged index's blob name.
pub async fn merge(store: &dyn BlobStore, meta: &Meta, run: &Run) -> Result<String, Failed> {
    let to = *run.sizes.last().expect("a due run has indexes");
    let names: Vec<String> = run
        .sizes
        .iter()
        .map(|&s| layout::stream_index(&meta.name, s))
        .collect();
    let blobs: Vec<Vec<u8>> = futures::stream::iter(names.iter())
        .map(|name| async move {
            match store.read_all(name).await {
                Ok(b) => Ok(b),
                Err(StoreError::NotFound { .. }) => {
                    Err(Failed::Broken(format!("{name} is missing")))
                }
                Err(e) => Err(Failed::Store(e.into())),
            }
        })
        .buffered(CONCURRENT_READS)
        .try_collect()
        .await?;
    let mut merged = StreamIndex::new(meta.id, run.from);
    for (name, bytes) in names.iter().zip(&blobs) {
        let idx = StreamIndex::decode(bytes)
            .map_err(|e| Failed::Broken(format!("{name} is unreadable: {e}")))?;
        if idx.ledger_id != meta.id || idx.from != merged.to {
            return Err(Failed::Broken(format!(
                "{name} covers {}..{}, not from {}",
                idx.from, idx.to, merged.to
            )));
        }
        merged.batches.extend(idx.batches);
        merged.to = idx.to;
    }
    debug_assert_eq!(merged.to, to);
    let blob = layout::merged_stream_index(&meta.name, to);
    let bytes = merged.encode();
    // A merged index of this name is there if an earlier put landed but
    // its answer was lost; one that differs is replaced (a cache, written
    // from the immutable indexes).
    let put = match store.put(&blob, &bytes).await {
        Err(StoreError::AlreadyExists { .. }) => match store.read_all(&blob).await {
            Ok(old) if old == bytes => Ok(()),
            Ok(_) => match store.delete(&blob).await {
                Ok(()) => store.put(&blob, &bytes).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        other => other,
    };
    put.map_err(|e| Failed::Store(e.into()))?;
    info!(
        index = %blob,
        from = run.from,
        to,
        indexes = run.sizes.len(),
        "merged stream indexes"
    );
    Ok(blob)
}

/// What the writer does after a checkpoint of size `to` whose stream index,
/// if `indexed`, was put: extend the run, and merge it when it is due.
pub async fn after_checkpoint(
    store: &dyn BlobStore,
    meta: &Meta,
    run: &mut Option<Run>,
    to: u64,
    indexed: bool,
    (max_records, max_count): (u64, usize),
) {
    if run.is_none() {
        match Run::restore(store, &meta.name, to).await {
            Ok(r) => *run = Some(r),
            Err(e) => {
                warn!(error = %e, "could not list the stream indexes to merge; trying again at the next checkpoint");
                return;
            }
        }
    }
    let r = run.as_mut().expect("restored");
    if indexed && r.sizes.last() != Some(&to) && to > r.from {
        r.sizes.push(to);
    }
    if !r.due(to, max_records, max_count) {
        return;
    }
    match merge(store, meta, r).await {
        Ok(_) => {
            *r = Run {
                from: to,
                sizes: Vec::new(),
            }
        }
        Err(Failed::Store(e)) => {
            warn!(error = %e, "could not merge stream indexes; trying again at the next checkpoint")
        }
        Err(Failed::Broken(why)) => {
            warn!(%why, "stream indexes cannot be merged; starting a new run after them");
            *r = Run {
                from: to,
                sizes: Vec::new(),
            };
        }
    }
}
