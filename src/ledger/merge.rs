//! Merged stream indexes (format §11.3.1): the stream indexes of many
//! consecutive checkpoints in one blob. A ledger checkpointed every few
//! minutes collects a small index per checkpoint, a million in ten years;
//! a reader of one stream would fetch them one request each, or give up
//! and scan the whole log. Once the indexes since the newest merged one
//! cover `merge_index_records` records, or `merge_index_count` checkpoints
//! with an index went by since the writer opened, the writer puts them
//! again, `merge_index_count` at a time, as one blob each, and a reader
//! fetches those instead.
//!
//! The writer keeps only where the run of unmerged indexes starts: it finds
//! that by listing the merged indexes at its first checkpoint, and the run's
//! indexes by listing their windows when it merges, then reads them back
//! (they are immutable). A merge that fails is only a cache not written:
//! logged, and tried again at the next checkpoint.

use futures::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use super::layout::{self, Meta};
use crate::backend::{BlobStore, StoreError, WriterLock};
use crate::error::Result;
use crate::format::stream_index::StreamIndex;

/// How many index reads a merge keeps in flight.
const CONCURRENT_READS: usize = 16;

/// Where the indexes not merged yet start.
#[derive(Debug, Default)]
pub struct Run {
    /// Where the newest merged index ends (0 if there is none).
    pub from: u64,
    /// Indexes of the run known not to be merged: those counted since the
    /// writer opened, or those left by the last merge.
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

/// Why a merge stopped.
enum Failed {
    /// The store failed, or the writer lost its lock: try again with the
    /// next checkpoint.
    Store(crate::error::LedgerError),
    /// The put of the merged index of this `to` failed: it may have landed.
    Put(u64, crate::error::LedgerError),
}

/// At most this many merges of `max_count` indexes after one checkpoint:
/// a backlog (a writer that opens for each append merges by records only,
/// and then a whole run at once) is caught up over the next checkpoints
/// rather than in one long pause of the appends.
const MERGES_PER_CHECKPOINT: usize = 8;

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

/// Merges the stream indexes beside checkpoints `sizes` (the first of a
/// run, in order) and puts the result: the longest stretch of them that
/// reads and continues from one to the next, from where its first starts.
/// Returns where the next run starts: after the merged index, or after the
/// first index where no stretch of two or more could be merged.
async fn merge(
    store: &dyn BlobStore,
    meta: &Meta,
    lock: &dyn WriterLock,
    start: u64,
    sizes: &[u64],
) -> std::result::Result<u64, Failed> {
    let names: Vec<String> = sizes
        .iter()
        .map(|&s| layout::stream_index(&meta.name, s))
        .collect();
    let blobs: Vec<Option<Vec<u8>>> = futures::stream::iter(names.iter())
        .map(|name| async move {
            match store.read_all(name).await {
                Ok(b) => Ok(Some(b)),
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(Failed::Store(e.into())),
            }
        })
        .buffered(CONCURRENT_READS)
        .try_collect()
        .await?;
    let mut merged: Option<StreamIndex> = None;
    let mut count = 0;
    // Where the stretch ended: the first index not in it.
    let mut broke_at = sizes.len();
    for (i, ((name, bytes), &size)) in names.iter().zip(&blobs).zip(sizes).enumerate() {
        let idx = bytes
            .as_deref()
            .map(StreamIndex::decode)
            .and_then(|r| r.ok())
            .filter(|idx| idx.ledger_id == meta.id && idx.to == size);
        match (idx, merged.as_mut()) {
            (Some(idx), None) if idx.from >= start => {
                merged = Some(idx);
                count = 1;
            }
            (Some(idx), Some(m)) if idx.from == m.to => {
                m.batches.extend(idx.batches);
                m.to = idx.to;
                count += 1;
            }
            _ => {
                warn!(index = %name, "stream index missing, unreadable or out of line; merging up to it");
                broke_at = i;
                break;
            }
        }
    }
    let Some(merged) = merged.filter(|_| count >= 2) else {
        // Nothing to merge here: go on after the index that broke the
        // stretch (and a lone index before it, which stays as it is).
        return Ok(sizes[broke_at.min(sizes.len() - 1)]);
    };
    let (from, end) = (merged.from, merged.to);
    let blob = layout::merged_stream_index(&meta.name, end);
    let bytes = merged.encode();
    let locked = || lock.check().map_err(|e| Failed::Store(e.into()));
    // One of this name is there if an earlier put of it landed but its
    // answer was lost; one that differs is replaced (a cache, written from
    // the immutable indexes).
    locked()?;
    let put = match store.put(&blob, &bytes).await {
        Err(StoreError::AlreadyExists { .. }) => match store.read_all(&blob).await {
            Ok(old) if old == bytes => Ok(()),
            Ok(_) => {
                locked()?;
                match store.delete(&blob).await {
                    Ok(()) => store.put(&blob, &bytes).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        },
        other => other,
    };
    put.map_err(|e| Failed::Put(end, e.into()))?;
    info!(index = %blob, from, to = end, indexes = count, "merged stream indexes");
    Ok(end)
}

/// What the writer does after a checkpoint of size `to` whose stream index,
/// if `indexed`, was put: count it, and merge the run when it is due.
pub async fn after_checkpoint(
    store: &dyn BlobStore,
    meta: &Meta,
    lock: &dyn WriterLock,
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
    let sizes = match run_sizes(store, &meta.name, r.from, to).await {
        Ok(sizes) => sizes,
        Err(e) => {
            warn!(error = %e, "could not list the stream indexes to merge; trying again at the next checkpoint");
            return;
        }
    };
    let max_count = max_count.max(2);
    let mut rest = &sizes[..];
    for _ in 0..MERGES_PER_CHECKPOINT {
        // A whole run is merged (by the records, its indexes may number far
        // more than one merge takes), but not a short tail of it.
        if rest.len() < 2
            || (rest.len() < max_count && to - r.from < max_records && r.since_open < max_count)
        {
            break;
        }
        let chunk = &rest[..rest.len().min(max_count)];
        match merge(store, meta, lock, r.from, chunk).await {
            Ok(next) => {
                r.from = next;
                r.since_open = 0;
                rest = &rest[rest.partition_point(|&s| s <= next)..];
            }
            Err(Failed::Store(e)) => {
                warn!(error = %e, "could not merge stream indexes; trying again at the next checkpoint");
                r.since_open = rest.len();
                return;
            }
            Err(Failed::Put(end, e)) => {
                warn!(error = %e, "could not put a merged stream index; looking for it at the next checkpoint");
                r.unanswered = Some(end);
                r.since_open = rest.len();
                return;
            }
        }
    }
    if rest.is_empty() {
        r.from = to;
    }
    // What is left of the run is known now: it counts toward the next merge.
    r.since_open = rest.len();
}
