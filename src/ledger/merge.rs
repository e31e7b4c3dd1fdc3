//! Merged stream indexes (format §11.3.1): the stream indexes of many
//! consecutive checkpoints in one blob. A ledger checkpointed every few
//! minutes collects a small index per checkpoint, a million in ten years;
//! a reader of one stream would fetch them one request each, or give up
//! and scan the whole log. Once the indexes since the newest merged one
//! cover `merge_index_records` records, or `merge_index_count` checkpoints
//! with an index went by since the writer opened, the writer puts the
//! first `merge_index_count` of them again as one blob, and a reader
//! fetches that instead.
//!
//! The writer keeps only where the run of unmerged indexes starts: it finds
//! that by listing the merged indexes at its first checkpoint, and the run's
//! indexes by listing their windows when it merges, then reads them back
//! (they are immutable). A merge that fails is only a cache not written:
//! logged, and tried again at the next checkpoint.

use futures::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use super::layout::{self, Meta};
use crate::backend::{BlobStore, StoreError};
use crate::error::Result;
use crate::format::stream_index::StreamIndex;

/// How many index reads a merge keeps in flight.
const CONCURRENT_READS: usize = 16;

/// Where the indexes not merged yet start.
#[derive(Debug, Default)]
pub struct Run {
    /// Where the newest merged index ends (0 if there is none).
    pub from: u64,
    /// Checkpoints with a stream index since the writer opened (or merged).
    pub since_open: usize,
    /// A merged index whose put failed: it may have landed all the same,
    /// and is looked for before the next merge, which would otherwise
    /// overlap it.
    pub unanswered: Option<u64>,
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
enum Failed {
    /// The store failed: try again with the next checkpoint.
    Store(crate::error::LedgerError),
    /// The put of the merged index of this `to` failed: it may have landed.
    Put(u64, crate::error::LedgerError),
    /// An index of the run is unreadable or out of line: the run is not
    /// merged, now or later.
    Broken(String),
}

/// The sizes of the checkpoints in `from + 1 ..= to` that have a stream
/// index, listed by window (an index without its checkpoint is an orphan
/// of a crash, §10.4).
async fn run_sizes(store: &dyn BlobStore, ledger: &str, from: u64, to: u64) -> Result<Vec<u64>> {
    let mut checkpoints = std::collections::HashSet::new();
    let mut indexes = Vec::new();
    for w in from / layout::WINDOW..=to / layout::WINDOW {
        let cp_prefix = layout::in_window(&layout::checkpoint_prefix(ledger), w);
        for b in store.list(&cp_prefix).await? {
            checkpoints.extend(layout::checkpoint_size(ledger, &b.name));
        }
        let idx_prefix = layout::in_window(&layout::stream_index_prefix(ledger), w);
        for b in store.list(&idx_prefix).await? {
            indexes.extend(layout::stream_index_size(ledger, &b.name));
        }
    }
    let mut sizes: Vec<u64> = indexes
        .into_iter()
        .filter(|s| *s > from && *s <= to && checkpoints.contains(s))
        .collect();
    sizes.sort_unstable();
    Ok(sizes)
}

/// Merges the first (at most `max_count`) indexes of the run from
/// `run.from` up to checkpoint `to`, and puts the result. Returns where the
/// merged index ends, or `None` when there was nothing to merge (one index
/// alone, which serves as it is).
async fn merge(
    store: &dyn BlobStore,
    meta: &Meta,
    from: u64,
    to: u64,
    max_count: usize,
) -> std::result::Result<Option<u64>, Failed> {
    let mut sizes = run_sizes(store, &meta.name, from, to)
        .await
        .map_err(Failed::Store)?;
    sizes.truncate(max_count.max(2));
    if sizes.len() < 2 {
        return Ok(None);
    }
    let names: Vec<String> = sizes
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
    let mut merged = StreamIndex::new(meta.id, from);
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
    let end = merged.to;
    let blob = layout::merged_stream_index(&meta.name, end);
    let bytes = merged.encode();
    // One of this name is there if an earlier put of it landed but its
    // answer was lost; one that differs is replaced (a cache, written from
    // the immutable indexes).
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
    put.map_err(|e| Failed::Put(end, e.into()))?;
    info!(index = %blob, from, to = end, indexes = sizes.len(), "merged stream indexes");
    Ok(Some(end))
}

/// What the writer does after a checkpoint of size `to` whose stream index,
/// if `indexed`, was put: count it, and merge the run when it is due.
pub async fn after_checkpoint(
    store: &dyn BlobStore,
    meta: &Meta,
    run: &mut Option<Run>,
    to: u64,
    indexed: bool,
    (max_records, max_count): (u64, usize),
) {
    if run.is_none() {
        match merged_sizes(store, &meta.name).await {
            Ok(sizes) => {
                *run = Some(Run {
                    from: sizes.into_iter().filter(|&s| s <= to).max().unwrap_or(0),
                    ..Run::default()
                })
            }
            Err(e) => {
                warn!(error = %e, "could not list the merged stream indexes; trying again at the next checkpoint");
                return;
            }
        }
    }
    let r = run.as_mut().expect("found");
    r.since_open += usize::from(indexed);
    if let Some(end) = r.unanswered {
        match store
            .info(&layout::merged_stream_index(&meta.name, end))
            .await
        {
            Ok(_) => {
                r.from = r.from.max(end);
                r.unanswered = None;
            }
            Err(StoreError::NotFound { .. }) => r.unanswered = None,
            Err(e) => {
                warn!(error = %e, "could not look for a merged stream index whose put failed; trying again at the next checkpoint");
                return;
            }
        }
    }
    if to <= r.from || (to - r.from < max_records && r.since_open < max_count) {
        return;
    }
    match merge(store, meta, r.from, to, max_count).await {
        Ok(end) => {
            // Nothing to merge (one index alone covers the run) starts the
            // next run after it.
            r.from = end.unwrap_or(to);
            r.since_open = 0;
        }
        Err(Failed::Store(e)) => {
            warn!(error = %e, "could not merge stream indexes; trying again at the next checkpoint")
        }
        Err(Failed::Put(end, e)) => {
            warn!(error = %e, "could not put a merged stream index; looking for it at the next checkpoint");
            r.unanswered = Some(end);
        }
        Err(Failed::Broken(why)) => {
            warn!(%why, "stream indexes cannot be merged; starting a new run after them");
            r.from = to;
            r.since_open = 0;
        }
    }
}
