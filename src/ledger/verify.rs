//! Full verification: every CRC, record, chain link, segment header,
//! checkpoint signature, Merkle root and snapshot, from the first byte.
//!
//! Per chunk of batches, decoding, leaf hashing, Merkle subtrees and stream
//! filters run in parallel (rayon); the chain walk, which is serial by
//! construction, costs one SHA-256 compression per record (see
//! `format::chain`). The two overlap: one rayon job hashes a chunk and walks
//! the chunk before, so the serial part hides behind the parallel one
//! instead of adding to it (see `walk_segment`).

use std::ops::Range;

use futures::StreamExt;
use rayon::prelude::*;
use tokio::sync::oneshot;

use super::layout::Meta;
use super::reader::LedgerReader;
use super::recover;
use super::scan::{Chunk, Scanner};
use super::signed::{Opened, ReadAhead, Signed};
use super::tip::{Linked, Tip};
use crate::error::{IntegrityError, IntegrityKind, LedgerError, Result};
use crate::format::checkpoint::{Checkpoint, Verifier};
use crate::format::nodes::{self, NodeCache};
use crate::format::segment::{is_unwritten_header, SegmentHeader, HEADER_LEN};
use crate::format::snapshot::Snapshot;
use crate::format::stream_index::{BatchFilter, StreamIndex};
use crate::format::{chain, merkle};
use crate::format::{hex, Hash};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub segments: u64,
    pub bytes: u64,
    pub checkpoints: u64,
    pub chain_head: Hash,
    pub root: Hash,
    /// Records after the newest checkpoint: intact, but not yet signed.
    pub unsigned_tail: u64,
    /// Caches (snapshots, stream indexes, node caches) of a size that no
    /// checkpoint has, by blob name. A checkpoint that a writer did not
    /// finish (a crash or a failed write after its caches were put) leaves
    /// them, and so does a deleted checkpoint: the log cannot tell which,
    /// so they are reported, not failed. The newest checkpoint's deletion
    /// shows only here. One of a size past the log's end is an integrity
    /// error instead (records were removed: caches are put only once their
    /// records are durable), unless the log grew while it was verified.
    /// `None` if the caches could not be listed (the log's verification
    /// stands; a warning says why).
    pub caches_without_checkpoint: Option<Vec<String>>,
    /// Stream indexes and node caches that a checkpoint should have and
    /// does not, by blob name. This library's writer puts them before the
    /// checkpoint and never deletes one that a checkpoint has, so in its
    /// ledgers a missing one was deleted (a writer that writes no caches,
    /// which the format allows, leaves all of them missing). The ledger is
    /// intact without them (stream reads scan, proofs hash the log), so
    /// they are reported, not failed.
    pub missing_caches: Vec<String>,
    /// Missing caches that [`VerifyOptions::restore_caches`] put back, by
    /// blob name (these are not in `missing_caches`).
    pub restored_caches: Vec<String>,
    /// Missing caches whose restoring failed in the store, by blob name,
    /// with the store's error (these are in `missing_caches` too). The
    /// log's verification stands; what was asked for was not done.
    pub failed_restores: Vec<(String, String)>,
}

/// What `verify` may do besides reading.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// Puts back each missing stream index and node cache (see
    /// `VerifyReport::missing_caches`), once the records it covers have
    /// checked out against their signed checkpoint: verify has then derived
    /// exactly the bytes the writer put. A cache that is there is never
    /// replaced (a wrong one stays an integrity error), and only a blob
    /// that does not exist is created, so a writer at work is not raced.
    pub restore_caches: bool,
}

impl LedgerReader {
    /// Verifies the whole ledger against `verifier`. `progress` is called
    /// with (bytes done, bytes in all) as segments are read.
    pub async fn verify(
        &self,
        verifier: &Verifier,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<VerifyReport> {
        self.verify_with(verifier, VerifyOptions::default(), progress)
            .await
    }

    /// [`Self::verify`], which may also restore missing caches.
    pub async fn verify_with(
        &self,
        verifier: &Verifier,
        opts: VerifyOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<VerifyReport> {
        let recorded = self.recorded_verifier();
        if verifier.key == recorded.key {
            return self.verify_walk(verifier, opts, progress).await;
        }
        tracing::warn!("the public key given differs from the one recorded in the ledger");
        // A checkpoint the given key did not sign fails either way; the
        // error says which of the two keys is in question, since an
        // application that logs no warnings sees only the error. (A note
        // that does not parse, or a bad signature by the given key, is not
        // about which key.)
        let recorded = hex(&recorded.key_id());
        match self.verify_walk(verifier, opts, progress).await {
            Err(LedgerError::Integrity(mut e)) if e.kind == IntegrityKind::NotSignedByKey => {
                e.what.push_str(&format!(
                    "; the key given is not the one the LEDGER file records (key id {recorded}): if the key given is the ledger's, the LEDGER file was replaced; if not, verify with the ledger's key"
                ));
                Err(e.into())
            }
            r => r,
        }
    }

    async fn verify_walk(
        &self,
        verifier: &Verifier,
        opts: VerifyOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<VerifyReport> {
        let meta = Meta {
            verifier: verifier.clone(),
            ..self.meta().clone()
        };
        let mut signed = Signed::list(self.store().clone(), meta).await?;
        let sizes = signed.sizes().clone();
        if sizes.is_empty() {
            return Err(recover::no_checkpoint(self.name()).into());
        }
        let meta = self.meta().clone();
        let store = self.store().clone();
        let segments = recover::list_every_segment(store.as_ref(), &meta.name).await?;
        // Opening the reader checked this too; the segments may have
        // gone since.
        if segments.is_empty() {
            let first = sizes[0];
            return Err(recover::segment_zero_missing(
                &meta.name,
                &signed.blob(first),
                first,
            ));
        }
        let total: u64 = segments.iter().map(|(_, s)| s.size).sum();
        let mut done_before = 0u64;
        let mut w = Walker {
            tip: Tip::genesis(meta.id),
            since: Since {
                segment: 0,
                offset: HEADER_LEN as u64,
                seq: 0,
            },
            caches: Caches {
                restore: opts.restore_caches,
                missing: Vec::new(),
                restored: Vec::new(),
                failed: Vec::new(),
                listed: None,
            },
            merged: Merged {
                ahead: merged_ahead(self, &sizes).await?,
                spans: Vec::new(),
                start: 0,
                checkpoints: sizes.clone(),
            },
        };
        let last = segments.len().saturating_sub(1);
        for (index, info) in &segments {
            let name = &info.name;
            if info.size < HEADER_LEN as u64 {
                if *index as usize == last && info.size == 0 {
                    continue; // a rollover that a crash interrupted
                }
                return Err(IntegrityError::new(
                    name,
                    info.size,
                    Some(w.tip.size),
                    "segment header is incomplete",
                )
                .into());
            }
            let bytes = store.read(name, 0, HEADER_LEN as u64).await?;
            if *index as usize == last && is_unwritten_header(info.size, &bytes) {
                // A torn tail, and so a failure (§12.3), but named as what
                // it is rather than as a bad magic number.
                return Err(IntegrityError::new(
                    name,
                    0,
                    Some(w.tip.size),
                    "segment header is 84 zero bytes: a rollover that a crash interrupted (the file system kept the length, not the data); opening the ledger for writing completes it",
                )
                .into());
            }
            let h = SegmentHeader::decode(&bytes)
                .map_err(|e| IntegrityError::decoding(name, 0, e, Some(w.tip.size)))?;
            recover::check_header(name, &h, &meta, *index, &w.tip)?;
            w.tip.segment_index = *index;
            w.tip.segment_len = HEADER_LEN as u64;
            w.tip.segment_blocks = 1;
            if *index == 0 {
                // Checkpoint 0 signs the empty ledger.
                check_checkpoints(self, &mut signed, &mut w).await?;
            }
            let mut scan = Scanner::new(
                store.as_ref(),
                name,
                HEADER_LEN as u64,
                info.size,
                self.max_body(),
            );
            let at = done_before;
            w = walk_segment(self, &mut scan, name, *index, w, &mut signed, &|end| {
                progress(at + end, total)
            })
            .await?;
            if let Some(bad) = scan.bad {
                let newest = sizes.last().copied().unwrap_or(0);
                let at_end = *index as usize == last && bad.reaches_end && w.tip.size >= newest;
                if at_end && bad.unwritten {
                    // Zeros an fs store wrote ahead of its appends (§12.2):
                    // where the log ends, not a torn batch.
                    done_before += info.size;
                    progress(done_before, total);
                    continue;
                }
                let present = info.size - bad.offset;
                if at_end
                    && changed_since(
                        store.as_ref(),
                        name,
                        info.size,
                        (bad.offset, present),
                        self.max_body(),
                    )
                    .await?
                {
                    // Not torn: a live writer's block, listed while it was
                    // being copied in (or a torn tail a new writer has cut
                    // since). What the listing held up to it is verified.
                    tracing::info!(
                        segment = %name,
                        offset = bad.offset,
                        records = w.tip.size,
                        "the last batch was being written while verified; verified up to it"
                    );
                    done_before += info.size;
                    progress(done_before, total);
                    continue;
                }
                let what = if at_end {
                    format!("{} (a torn last batch, as a crash leaves on a file system: no receipt was given for it, and opening the ledger for writing (any `bi-ledger append` or `checkpoint`) cuts it off and logs what it cut; then verify again; on Azure, where an append cannot tear, it is damage)", bad.error.what)
                } else {
                    bad.error.what
                };
                return Err(IntegrityError::new(name, bad.offset, Some(w.tip.size), what).into());
            }
            done_before += info.size;
            progress(done_before, total);
        }
        if let Some(opened) = signed.take().await {
            let Opened {
                blob,
                checkpoint: cp,
                ..
            } = opened?;
            return Err(IntegrityError::new(
                blob,
                0,
                Some(w.tip.size),
                format!(
                    "checkpoint covers {} records but the log holds only {}",
                    cp.size, w.tip.size
                ),
            )
            .into());
        }
        if let Some((index, info)) = segments.last().filter(|(_, i)| i.sealed) {
            self.check_sealed_last(*index, &info.name, w.tip.segment_len, w.tip.size)
                .await?;
        }
        let newest = sizes.last().copied().unwrap_or(0);
        // After the whole log checked out, a failed listing must not undo
        // that: it is reported as not known.
        let orphans = caches_without_checkpoint(self, &sizes)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "could not list the caches to look for ones without a checkpoint"))
            .ok();
        let beyond = orphans
            .iter()
            .flatten()
            .filter(|(size, _)| *size > w.tip.size)
            .max();
        if let (Some((size, blob)), Some((_, last_seg))) = (beyond, segments.last()) {
            // A live writer puts the caches of records appended since this
            // reader listed the log; a log that has not grown since says
            // records were removed.
            let now = recover::list_every_segment(store.as_ref(), &meta.name).await?;
            let grown = now.len() != segments.len()
                || now.last().map(|(_, i)| i.size) != Some(last_seg.size);
            if !grown {
                return Err(IntegrityError::new(
                    &last_seg.name,
                    w.tip.segment_len,
                    Some(w.tip.size),
                    format!(
                        "the log ends after {} records, but {}",
                        w.tip.size,
                        recover::removed(blob, *size)
                    ),
                )
                .into());
            }
        }
        let orphans: Option<Vec<String>> =
            orphans.map(|o| o.into_iter().map(|(_, blob)| blob).collect());
        if let Some(orphans) = orphans.as_ref().filter(|o| !o.is_empty()) {
            tracing::warn!(
                caches = ?orphans,
                "caches without a checkpoint of their size: left by a checkpoint a writer did not finish (a crash, a failed write) or is writing now, or by a deleted checkpoint"
            );
        }
        if w.tip.size > newest {
            tracing::warn!(
                records = w.tip.size - newest,
                first_seq = newest,
                "records after the newest checkpoint: their chain is intact, but no signature covers them, so whoever can write the store could have written them; a writer signs them at its next checkpoint (or `bi-ledger checkpoint`), and --trusted-checkpoint with a checkpoint kept elsewhere proves the records it covers"
            );
        }
        if !w.caches.missing.is_empty() {
            tracing::warn!(
                caches = ?w.caches.missing,
                "checkpoints without their stream index or node cache: this library's writer never deletes them, so these were deleted (or the ledger's writer writes none); stream reads and proofs over their records read the log instead"
            );
        }
        Ok(VerifyReport {
            records: w.tip.size,
            segments: segments.len() as u64,
            bytes: total,
            checkpoints: sizes.len() as u64,
            chain_head: w.tip.chain_head,
            root: w.tip.frontier.root(),
            unsigned_tail: w.tip.size - newest,
            caches_without_checkpoint: orphans,
            missing_caches: w.caches.missing,
            restored_caches: w.caches.restored,
            failed_restores: w.caches.failed,
        })
    }
}

/// The cache blobs whose size no checkpoint has: neither one of
/// `checkpoints` nor one that landed since (a live writer puts a
/// checkpoint's caches first, so they are listed before it here).
async fn caches_without_checkpoint(
    reader: &LedgerReader,
    checkpoints: &[u64],
) -> Result<Vec<(u64, String)>> {
    let (name, store) = (reader.name(), reader.store());
    let caches = list_caches(reader).await?;
    let since: Vec<u64> = recover::checkpoint_blobs(store.as_ref(), name)
        .await?
        .into_iter()
        .map(|(size, _)| size)
        .collect();
    // Both listings are sorted.
    let signed =
        |size: &u64| checkpoints.binary_search(size).is_ok() || since.binary_search(size).is_ok();
    let mut out: Vec<(u64, String)> = caches
        .into_iter()
        .filter(|(size, _)| !signed(size))
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Every cache blob (snapshot, stream index, node cache) and its size.
async fn list_caches(reader: &LedgerReader) -> Result<Vec<(u64, String)>> {
    use super::layout;
    type SizeOf = fn(&str, &str) -> Option<u64>;
    let name = reader.name();
    let kinds: [(String, SizeOf); 4] = [
        (layout::snapshot_prefix(name), layout::snapshot_size),
        (layout::stream_index_prefix(name), layout::stream_index_size),
        (
            layout::merged_stream_index_prefix(name),
            layout::merged_stream_index_size,
        ),
        (layout::nodes_prefix(name), layout::nodes_size),
    ];
    let mut caches = Vec::new();
    for (prefix, size_of) in kinds {
        for blob in reader.store().list(&prefix).await? {
            if let Some(size) = size_of(name, &blob.name) {
                caches.push((size, blob.name));
            }
        }
    }
    Ok(caches)
}

/// Where the records after the last checkpoint checked begin: a root that
/// does not match the next checkpoint means one of them was changed, and
/// this is the nearest place the log can name.
#[derive(Clone, Copy)]
struct Since {
    segment: u64,
    offset: u64,
    seq: u64,
}

/// The walk's state. It moves into each rayon job that advances the walk
/// and comes back with the job's answer.
struct Walker {
    tip: Tip,
    since: Since,
    caches: Caches,
    merged: Merged,
}

/// The merged stream indexes (format §11.3.1) not yet reached, and the
/// batches of the checkpoints since the last one checked: a merged index
/// must list exactly the batches of the checkpoints it spans.
struct Merged {
    /// By `to`: the blob and where it says it starts.
    ahead: std::collections::BTreeMap<u64, (String, u64)>,
    /// Each checkpoint's size and its stream index's batches, since the
    /// last merged index checked (kept only while one lies ahead).
    spans: Vec<(u64, Vec<BatchFilter>)>,
    /// The end of the last merged index checked: the next starts there or
    /// later.
    start: u64,
    /// The sizes of the checkpoints, ascending.
    checkpoints: std::sync::Arc<[u64]>,
}

/// Stream indexes and node caches found missing, and what became of them.
struct Caches {
    /// See `VerifyOptions::restore_caches`.
    restore: bool,
    /// See `VerifyReport::missing_caches`.
    missing: Vec<String>,
    /// See `VerifyReport::restored_caches`.
    restored: Vec<String>,
    /// See `VerifyReport::failed_restores`.
    failed: Vec<(String, String)>,
    /// The sizes of all caches, listed at the first restore.
    listed: Option<Vec<u64>>,
}

impl Caches {
    /// Whether the caches of the checkpoint of size `to` may be restored,
    /// `from` being the size of the checkpoint before it. Not where a cache
    /// of a size in between exists: a checkpoint there was deleted (and a
    /// writer's caches started at it) or never finished (and they started
    /// at `from`), and the log cannot tell which.
    async fn may_restore(&mut self, reader: &LedgerReader, from: u64, to: u64) -> bool {
        if self.listed.is_none() {
            match list_caches(reader).await {
                Ok(l) => self.listed = Some(l.into_iter().map(|(size, _)| size).collect()),
                Err(e) => {
                    tracing::warn!(error = %e, "could not list the caches; restoring none");
                    self.restore = false;
                    return false;
                }
            }
        }
        let listed = self.listed.as_deref().unwrap_or_default();
        match listed.iter().find(|&&s| from < s && s < to) {
            Some(between) => {
                tracing::warn!(
                    from,
                    to,
                    between,
                    "not restoring the caches of this checkpoint: a cache lies between it and the checkpoint before, left by a checkpoint that was deleted or never finished"
                );
                false
            }
            None => true,
        }
    }

    fn note(&mut self, absent: Option<Absent>) {
        match absent {
            Some(Absent::Missing(blob)) => self.missing.push(blob),
            Some(Absent::Restored(blob)) => self.restored.push(blob),
            None => {}
        }
    }
}

/// A cache that a checkpoint should have and did not.
enum Absent {
    Missing(String),
    Restored(String),
}

/// A hashed chunk, part-way through the walk: what the parallel stage
/// learnt of each batch, owned so it can cross from one job to the next.
struct Walking {
    data: Vec<u8>,
    /// Offset in the segment of the chunk's end.
    end: u64,
    batches: std::vec::IntoIter<std::result::Result<HashedBatch, IntegrityError>>,
}

/// What one job did: hashed the next chunk, walked the one before.
struct Step {
    hashed: Option<Walking>,
    walked: Option<(Walking, std::result::Result<bool, IntegrityError>)>,
    walker: Walker,
}

struct HashedBatch {
    /// Offset of the frame in the segment, and its length.
    offset: u64,
    len: u64,
    first_seq: u64,
    /// Each record, with its stream id as a range of `chunk.data`.
    records: Vec<(Linked, Range<usize>)>,
    subtrees: Vec<(u32, crate::format::Hash)>,
    filter: BatchFilter,
}

/// Verifies a segment's batches as a pipeline: one rayon job hashes chunk
/// k+1 and walks chunk k, while this task reads chunk k+2.
///
/// The walk runs inside the job rather than on this task: on 2 cores a
/// third busy thread is preempted by rayon's two, the serial walk falls
/// behind, and the pool it feeds runs dry (`perf` saw rayon's workers sleep
/// about twice per chunk, with 1.65 CPUs busy). Within one `rayon::join`,
/// the worker that finishes the walk steals hashing instead.
async fn walk_segment(
    reader: &LedgerReader,
    scan: &mut Scanner<'_>,
    name: &str,
    segment: u64,
    mut w: Walker,
    signed: &mut Signed,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Walker> {
    let mut read = scan.next_chunk().await;
    let mut hashed: Option<Walking> = None;
    loop {
        // A failed read is reported after the chunks before it are walked,
        // so the first damage reported is the first in the log.
        let (chunk, failed) = match read {
            Ok(chunk) => (chunk, None),
            Err(e) => (None, Some(e)),
        };
        if chunk.is_none() && hashed.is_none() {
            return match failed {
                Some(e) => Err(e.into()),
                None => Ok(w),
            };
        }
        let more = chunk.is_some();
        let stop = signed.peek();
        let job = spawn_step(chunk, hashed.take(), w, name.to_owned(), segment, stop);
        let reading = async {
            if more {
                scan.next_chunk().await
            } else {
                Ok(None)
            }
        };
        let (next_read, step) = tokio::join!(reading, job);
        let step = step.expect("the verify job answers");
        w = step.walker;
        if let Some((mut walking, reached)) = step.walked {
            let mut reached = reached?;
            while reached {
                check_checkpoints(reader, signed, &mut w).await?;
                let stop = signed.peek();
                reached = walk_until(name, &mut walking, &mut w, stop)?;
            }
            progress(walking.end);
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        hashed = step.hashed;
        read = next_read;
    }
}

fn spawn_step(
    chunk: Option<Chunk>,
    walking: Option<Walking>,
    mut w: Walker,
    name: String,
    segment: u64,
    stop: Option<u64>,
) -> oneshot::Receiver<Step> {
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        // The walk first: it is the serial path, and the hashing splits.
        let (walked, hashed) = rayon::join(
            || {
                walking.map(|mut k| {
                    let reached = walk_until(&name, &mut k, &mut w, stop);
                    (k, reached)
                })
            },
            || chunk.map(|c| hash_chunk(c, &name, segment)),
        );
        // The receiver is gone only if verify already failed.
        let _ = tx.send(Step {
            hashed,
            walked,
            walker: w,
        });
    });
    rx
}

/// Decodes and hashes every batch of `chunk`, in parallel: leaf hashes,
/// the chain's parallel half (see `format::chain`), the batch's Merkle
/// subtrees and its stream filter. Everything order-dependent is left to
/// `walk_until`.
fn hash_chunk(chunk: Chunk, name: &str, segment: u64) -> Walking {
    let base = chunk.data.as_ptr() as usize;
    let batches: Vec<_> = (0..chunk.frames.len())
        .into_par_iter()
        .map(|i| {
            let range = &chunk.frames[i];
            let offset = chunk.offset(i);
            let body = chunk.frame(i);
            let records = chunk.records(i, name)?;
            let leaves: Vec<_> = records.iter().map(|r| r.leaf_hash()).collect();
            let filter = BatchFilter::build(
                (segment, offset),
                body.first_seq,
                records.len() as u64,
                records.iter().map(|r| r.stream),
            );
            let linked = records
                .iter()
                .zip(&leaves)
                .map(|(r, leaf)| {
                    // Decoded fields borrow from the chunk's bytes.
                    let at = (r.stream.as_ptr() as usize)
                        .checked_sub(base)
                        .expect("a decoded stream id lies in its chunk");
                    let fields = Linked {
                        seq: r.seq,
                        timestamp_us: r.timestamp_us,
                        stream_version: r.stream_version,
                        mid: chain::midstate(leaf),
                    };
                    (fields, at..at + r.stream.len())
                })
                .collect();
            Ok(HashedBatch {
                offset,
                len: range.len() as u64,
                first_seq: body.first_seq,
                records: linked,
                subtrees: merkle::range_subtrees_capped(body.first_seq, &leaves, nodes::MIN_HEIGHT),
                filter,
            })
        })
        .collect();
    Walking {
        end: chunk.base + chunk.data.len() as u64,
        data: chunk.data,
        batches: batches.into_iter(),
    }
}

/// Whether segment `name` is no longer `seen` bytes long, looked at for up
/// to about 0.2 s, or 2 s where `present` bytes of the last frame show a
/// large block. On the fs backend a reader can list a segment while the
/// writer's `pwrite` is still copying a block in, so a batch in flight looks
/// like a torn one; a moment later the segment has grown, or, where the
/// block went into unwritten space, the frame at `offset` has become whole.
/// A torn tail left by a crash stays as it is. (Azure shows appended
/// blocks whole.)
async fn changed_since(
    store: &dyn crate::backend::BlobStore,
    name: &str,
    seen: u64,
    (offset, present): (u64, u64),
    max_body: usize,
) -> Result<bool> {
    // A writer starved of CPU (at nice 19 beside busy processes) was seen
    // more than 0.2 s into copying a 4 MiB block; a small block is copied
    // in one go. A torn tail is reported this much later.
    let waits: &[u64] = if present > 64 * 1024 {
        &[0, 5, 20, 50, 100, 250, 500, 1000]
    } else {
        &[0, 5, 20, 50, 100]
    };
    for &wait_ms in waits {
        tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
        let size = store.info(name).await?.size;
        if size != seen
            || super::scan::read_frame(store, name, offset, size, max_body)
                .await?
                .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The serial stage: walks a hashed chunk's batches in order, linking the
/// chain and checking sequence numbers, timestamps and stream versions. It
/// stops after the batch that brings the log to `stop` records (the next
/// checkpoint's size), so that the caller can check that checkpoint: true
/// if it stopped there, false at the end of the chunk.
fn walk_until(
    name: &str,
    k: &mut Walking,
    w: &mut Walker,
    stop: Option<u64>,
) -> std::result::Result<bool, IntegrityError> {
    let (tip, since, data) = (&mut w.tip, &mut w.since, &k.data);
    while stop.is_none_or(|s| tip.size < s) {
        let Some(b) = k.batches.next() else {
            return Ok(false);
        };
        let b = b?;
        if b.first_seq != tip.size {
            return Err(IntegrityError::new(
                name,
                b.offset + crate::format::batch::FRAME_HEADER_LEN as u64,
                Some(b.first_seq),
                format!(
                    "batch starts at sequence number {} where {} was due",
                    b.first_seq, tip.size
                ),
            ));
        }
        if b.first_seq == since.seq {
            // The first batch after the last checkpoint checked, wherever
            // it is (a new segment may have begun since).
            since.segment = tip.segment_index;
            since.offset = b.offset;
        }
        for (fields, stream) in b.records {
            let seq = fields.seq;
            let stream = std::str::from_utf8(&data[stream]).expect("decoding checked UTF-8");
            tip.link_fields(fields, stream)
                .map_err(|what| IntegrityError::new(name, b.offset, Some(seq), what))?;
        }
        tip.push_filter(b.filter);
        for (height, hash) in b.subtrees {
            tip.append_subtree(height, hash).map_err(|e| {
                IntegrityError::new(name, b.offset, Some(b.first_seq), e.to_string())
            })?;
        }
        tip.segment_len = b.offset + b.len;
        tip.segment_blocks += 1;
    }
    Ok(true)
}

/// Checks every checkpoint whose size the walk has just reached.
async fn check_checkpoints(
    reader: &LedgerReader,
    signed: &mut Signed,
    w: &mut Walker,
) -> Result<()> {
    let Walker {
        tip,
        since,
        caches,
        merged,
    } = w;
    while let Some(size) = signed.peek() {
        if size > tip.size {
            break;
        }
        let Some(opened) = signed.take().await else {
            break;
        };
        let Opened {
            blob,
            checkpoint: cp,
            caches: mut ahead,
        } = opened?;
        let (blob, cp) = (&blob, &cp);
        if cp.size < tip.size {
            return Err(IntegrityError::new(
                blob,
                0,
                Some(cp.size),
                "checkpoint size falls inside a batch; the writer never signs such a checkpoint",
            )
            .into());
        }
        let root = tip.frontier.root();
        let differs = if cp.root != root {
            Some(format!(
                "Merkle root {} where the log gives {}",
                hex(&cp.root),
                hex(&root)
            ))
        } else if cp.chain_head != tip.chain_head {
            Some(format!(
                "chain head {} where the log gives {}",
                hex(&cp.chain_head),
                hex(&tip.chain_head)
            ))
        } else {
            None
        };
        if let Some(differs) = differs {
            // The checkpoint's signature holds, so the log is what changed,
            // and the checkpoint before matched: the change lies in the
            // records between the two, which start here.
            let segment = super::layout::segment(reader.name(), since.segment);
            return Err(IntegrityError::new(
                &segment,
                since.offset,
                Some(since.seq),
                format!(
                    "records {}..{} (from this batch on) are not the ones signed by checkpoint {blob}: it has {differs}; a record among them was changed, added or removed",
                    since.seq, cp.size
                ),
            )
            .into());
        }
        let newest = signed.remaining() == 0;
        if newest || signed.has_snapshot(cp.size) {
            check_snapshot(reader, cp, tip, newest).await?;
        }
        let (index, nodes) = tip.take_caches();
        check_merged(reader, cp, &index, merged).await?;
        let absent = check_stream_index(reader, cp, index, caches, &mut ahead).await?;
        caches.note(absent);
        let absent = check_nodes(reader, cp, nodes, caches, &mut ahead).await?;
        caches.note(absent);
        // The walk fills in where the next batch is when it gets there.
        since.seq = tip.size;
    }
    Ok(())
}

/// A checkpoint's stream index, where there is one, must list exactly the
/// batches that hold each stream's records since the previous checkpoint.
/// It is a cache: a missing one only makes stream reads scan, and is
/// returned to be reported (or restored).
async fn check_stream_index(
    reader: &LedgerReader,
    cp: &Checkpoint,
    want: StreamIndex,
    caches: &mut Caches,
    ahead: &mut Ahead,
) -> Result<Option<Absent>> {
    if want.from == want.to {
        return Ok(None);
    }
    let blob = super::layout::stream_index(reader.name(), cp.size);
    let range = (want.from, want.to);
    let ready = take_ahead(ahead, &blob);
    let bytes =
        match read_or_restore(reader, &blob, ready, range, Some(caches), || want.encode()).await? {
            Ok(bytes) => bytes,
            Err(absent) => return Ok(Some(absent)),
        };
    let idx = StreamIndex::decode(&bytes)
        .map_err(|e| IntegrityError::decoding(&blob, 0, e, Some(cp.size)))?;
    if idx != want {
        return Err(
            IntegrityError::new(&blob, 0, Some(cp.size), index_differs(&idx, &want)).into(),
        );
    }
    Ok(None)
}

/// The merged stream indexes to check, each with the `from` its header
/// gives (so that the walk keeps the batches of only the checkpoints it
/// spans). One at a size no checkpoint has, at or below the newest, is an
/// integrity error: the writer puts one only after its checkpoint, and
/// readers would use it. One past the newest is from a writer at work since
/// the checkpoints were listed, and is left (reported without a checkpoint).
async fn merged_ahead(
    reader: &LedgerReader,
    checkpoints: &[u64],
) -> Result<std::collections::BTreeMap<u64, (String, u64)>> {
    use super::layout;
    let name = reader.name();
    let newest = checkpoints.last().copied().unwrap_or(0);
    let mut blobs = Vec::new();
    for to in super::merge::merged_sizes(reader.store().as_ref(), name).await? {
        let blob = layout::merged_stream_index(name, to);
        if to > newest {
            continue;
        }
        if checkpoints.binary_search(&to).is_err() {
            return Err(IntegrityError::new(
                &blob,
                0,
                Some(to),
                format!("merged stream index ends at {to}, where no checkpoint is; a writer puts one only after the checkpoint it ends at"),
            )
            .into());
        }
        blobs.push((to, blob));
    }
    // Bytes 28..36 hold `from` (format §11.3); a header that cannot be
    // read keeps every batch from the start, and fails the check later.
    let store = reader.store();
    let ahead = futures::stream::iter(blobs)
        .map(|(to, blob)| {
            let store = store.clone();
            async move {
                let from = match store.read(&blob, 28, 8).await {
                    Ok(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().expect("8 bytes")),
                    _ => 0,
                };
                (to, (blob, from))
            }
        })
        .buffered(16)
        .collect()
        .await;
    Ok(ahead)
}

/// A merged stream index that ends at checkpoint `cp` must list exactly the
/// batches of the checkpoints it spans, starting at one of them (or at 0),
/// and not before the end of the merged index before it.
async fn check_merged(
    reader: &LedgerReader,
    cp: &Checkpoint,
    index: &StreamIndex,
    m: &mut Merged,
) -> Result<()> {
    // Only the batches the next merged index spans are kept.
    match m.ahead.range(cp.size..).next() {
        Some((_, (_, from))) if *from < cp.size => m.spans.push((cp.size, index.batches.clone())),
        Some(_) => {}
        None => return Ok(()),
    }
    let Some((blob, _)) = m.ahead.remove(&cp.size) else {
        return Ok(());
    };
    let Some(bytes) = read_cache(reader, &blob).await? else {
        return Ok(()); // deleted since it was listed: a cache
    };
    let idx = StreamIndex::decode(&bytes)
        .map_err(|e| IntegrityError::decoding(&blob, 0, e, Some(cp.size)))?;
    let at_checkpoint = idx.from == 0 || m.checkpoints.binary_search(&idx.from).is_ok();
    if idx.from >= cp.size || idx.from < m.start || !at_checkpoint {
        return Err(IntegrityError::new(
            &blob,
            0,
            Some(cp.size),
            format!(
                "merged stream index covers records {}..{}, but {} is not a checkpoint after the merged index before it (which ends at {})",
                idx.from, idx.to, idx.from, m.start
            ),
        )
        .into());
    }
    let want = StreamIndex {
        ledger_id: index.ledger_id,
        from: idx.from,
        to: cp.size,
        batches: m
            .spans
            .iter()
            .filter(|(size, _)| *size > idx.from)
            .flat_map(|(_, b)| b.iter().cloned())
            .collect(),
    };
    if idx != want {
        return Err(
            IntegrityError::new(&blob, 0, Some(cp.size), index_differs(&idx, &want)).into(),
        );
    }
    m.spans.clear();
    m.start = cp.size;
    Ok(())
}

/// How a stream index read differs from the one the log gives.
fn index_differs(idx: &StreamIndex, want: &StreamIndex) -> String {
    let covers = |i: &StreamIndex| (i.ledger_id, i.from, i.to);
    if let Some(what) = coverage_differs("stream index", covers(idx), covers(want)) {
        what
    } else {
        match idx.batches.iter().zip(&want.batches).find(|(a, b)| a != b) {
                Some((a, b)) if a.position == b.position => format!(
                    "stream index differs from the log at the batch of sequence number {} (segment {} byte {}): its {} differs",
                    b.first_seq,
                    b.position.0,
                    b.position.1,
                    if a.first_seq != b.first_seq || a.count != b.count { "record count" } else { "stream filter" }
                ),
                Some((a, b)) => format!(
                    "stream index differs from the log at the batch of sequence number {} (it says segment {} byte {}, the log segment {} byte {})",
                    b.first_seq, a.position.0, a.position.1, b.position.0, b.position.1
                ),
                None => "stream index lists other batches than the log has".to_owned(),
            }
    }
}

/// How the records a cache says it covers differ from the ones the log
/// gives it, if they do. A cache beside a checkpoint starts where the
/// checkpoint before it was written. One that starts later than the
/// previous checkpoint verify found was written after a checkpoint that is
/// gone: say so, since that is the damage, not the cache.
fn coverage_differs(
    kind: &str,
    cache: ([u8; 16], u64, u64),
    log: ([u8; 16], u64, u64),
) -> Option<String> {
    let ((cache_id, cache_from, cache_to), (log_id, log_from, log_to)) = (cache, log);
    if cache == log {
        return None;
    }
    let missing = if cache_id == log_id && cache_to == log_to && cache_from > log_from {
        format!(
            "; it follows a checkpoint of size {cache_from}, which is missing (checkpoints are never deleted)"
        )
    } else {
        String::new()
    };
    Some(format!(
        "{kind} covers records {cache_from}..{cache_to} of ledger {}, the log says {log_from}..{log_to} of {}{missing}",
        hex(&cache_id),
        hex(&log_id),
    ))
}

/// A cache blob's bytes, or what became of it when it is missing: put back
/// as `encode` gives it, if `caches` says to restore, covering records
/// `range`. One that appears between the read and the put (another verify
/// restoring it) is read and checked. A put that fails leaves it missing:
/// the log's verification stands.
async fn read_or_restore(
    reader: &LedgerReader,
    blob: &str,
    mut ready: Option<ReadAhead>,
    (from, to): (u64, u64),
    mut caches: Option<&mut Caches>,
    encode: impl Fn() -> Vec<u8>,
) -> Result<std::result::Result<Vec<u8>, Absent>> {
    loop {
        let read = match ready.take() {
            Some(r) => r.map_err(LedgerError::Store)?,
            None => read_cache(reader, blob).await?,
        };
        if let Some(bytes) = read {
            return Ok(Ok(bytes));
        }
        let missing = Ok(Err(Absent::Missing(blob.to_owned())));
        let Some(c) = caches.as_deref_mut().filter(|c| c.restore) else {
            return missing;
        };
        if !c.may_restore(reader, from, to).await {
            return missing;
        }
        match reader.store().put(blob, &encode()).await {
            Ok(()) => {
                // At warn, shown by default: the store was written to, and
                // a verification that fails further on reports no list.
                tracing::warn!(cache = %blob, "restored a missing cache from the verified log");
                return Ok(Err(Absent::Restored(blob.to_owned())));
            }
            Err(crate::backend::StoreError::AlreadyExists { .. }) => caches = None,
            Err(e) => {
                tracing::warn!(cache = %blob, error = %e, "could not restore a missing cache");
                c.failed.push((blob.to_owned(), e.to_string()));
                return missing;
            }
        }
    }
}

/// Cache blobs read ahead of the walk (see `signed.rs`).
type Ahead = Vec<(String, ReadAhead)>;

fn take_ahead(ahead: &mut Ahead, blob: &str) -> Option<ReadAhead> {
    let at = ahead.iter().position(|(b, _)| b == blob)?;
    Some(ahead.swap_remove(at).1)
}

/// A cache blob beside a checkpoint, if there is one (missing ones only
/// make reads or proofs do more work).
async fn read_cache(reader: &LedgerReader, blob: &str) -> Result<Option<Vec<u8>>> {
    match reader.store().read_all(blob).await {
        Ok(b) => Ok(Some(b)),
        Err(crate::backend::StoreError::NotFound { .. }) => {
            tracing::debug!(blob, "no cache blob beside this checkpoint");
            Ok(None)
        }
        Err(e) => Err(LedgerError::Store(e)),
    }
}

/// A checkpoint's node cache, where there is one, must hold exactly the
/// Merkle nodes completed since the previous checkpoint. A missing one
/// only makes proofs hash more records, and is returned to be reported
/// (or restored).
async fn check_nodes(
    reader: &LedgerReader,
    cp: &Checkpoint,
    want: NodeCache,
    caches: &mut Caches,
    ahead: &mut Ahead,
) -> Result<Option<Absent>> {
    let blob = super::layout::nodes(reader.name(), cp.size);
    // Written only where a node was completed (see `Writer::checkpoint`).
    let due = !want.hashes.is_empty();
    let range = (want.from, want.to);
    let caches = due.then_some(caches);
    let ready = take_ahead(ahead, &blob);
    let bytes = match read_or_restore(reader, &blob, ready, range, caches, || want.encode()).await?
    {
        Ok(bytes) => bytes,
        Err(Absent::Missing(_)) if !due => return Ok(None),
        Err(absent) => return Ok(Some(absent)),
    };
    let got = NodeCache::decode(&bytes)
        .map_err(|e| IntegrityError::decoding(&blob, 0, e, Some(cp.size)))?;
    let covers = |c: &NodeCache| (c.ledger_id, c.from, c.to);
    if let Some(what) = coverage_differs("node cache", covers(&got), covers(&want)) {
        return Err(IntegrityError::new(&blob, 0, Some(cp.size), what).into());
    }
    let nodes = nodes::completed(want.from, want.to);
    if let Some((i, (node, (a, b)))) = nodes
        .zip(got.hashes.iter().zip(&want.hashes))
        .enumerate()
        .find(|(_, (_, (a, b)))| a != b)
    {
        let (first, end) = node.leaves();
        let what = format!(
            "node cache entry {i} (the root of records {first}..{end}) is {}, the log gives {}",
            hex(a),
            hex(b)
        );
        let offset = (nodes::HEADER_LEN + 32 * i) as u64;
        return Err(IntegrityError::new(&blob, offset, Some(cp.size), what).into());
    }
    Ok(None)
}

/// Whether `blob` holds byte for byte the snapshot of `tip`, read a chunk
/// at a time: what a writer of this library puts, so the usual case. It
/// never holds a second copy of a table of millions of streams (76 MB at
/// four million) beside the walk's own. `false` for anything else, even a
/// snapshot that cannot be read, which [`check_snapshot`] then decodes whole
/// and judges.
async fn is_the_snapshot_of(reader: &LedgerReader, blob: &str, tip: &mut Tip) -> bool {
    let store = reader.store();
    let Ok(info) = store.info(blob).await else {
        return false;
    };
    let want = tip.snapshot();
    let (head, entries, digest) = want.encoded_parts();
    if info.size != (head.len() + entries.len() + digest.len()) as u64 {
        return false;
    }
    let mut offset = 0u64;
    for part in [&head[..], entries, &digest[..]] {
        for piece in part.chunks(super::scan::CHUNK as usize) {
            match store.read(blob, offset, piece.len() as u64).await {
                Ok(stored) if stored == piece => offset += piece.len() as u64,
                _ => return false,
            }
        }
    }
    true
}

/// A snapshot must be exactly the state the log implies at its checkpoint.
/// Only the newest checkpoint's snapshot must exist: the writer prunes older
/// ones (they are a cache, not evidence).
async fn check_snapshot(
    reader: &LedgerReader,
    cp: &Checkpoint,
    tip: &mut Tip,
    required: bool,
) -> Result<()> {
    let blob = super::layout::snapshot(reader.name(), cp.size);
    if is_the_snapshot_of(reader, &blob, tip).await {
        return Ok(());
    }
    // Decoded whole, to name what differs (or to find the one difference
    // that is allowed, below).
    let bytes = match reader.store().read_all(&blob).await {
        Ok(b) => b,
        Err(crate::backend::StoreError::NotFound { .. }) if !required => return Ok(()),
        Err(crate::backend::StoreError::NotFound { .. })
            if recover::newest_checkpoint_near(reader.store().as_ref(), reader.name())
                .await?
                .is_some_and(|newest| newest > cp.size) =>
        {
            // Newest when verify listed the checkpoints; a live writer has
            // checkpointed since and pruned this snapshot.
            return Ok(());
        }
        Err(crate::backend::StoreError::NotFound { .. }) => {
            return Err(IntegrityError::new(
                &blob,
                0,
                Some(cp.size),
                "snapshot for this checkpoint is missing",
            )
            .into())
        }
        Err(e) => return Err(LedgerError::Store(e)),
    };
    let digest = recover::snapshot_digest(&bytes);
    let snap = Snapshot::decode_owned(bytes)
        .map_err(|e| IntegrityError::decoding(&blob, 0, e, Some(cp.size)))?;
    // The streams are compared entry by entry, so that the first that
    // differs is named; the rest of the state as a whole.
    if let Some((stream, log, snapshot)) = tip.streams.first_difference(&snap.streams) {
        let said = |v: Option<u64>| v.map_or("none".to_owned(), |v| format!("version {v}"));
        return Err(IntegrityError::new(
            &blob,
            0,
            Some(cp.size),
            format!(
                "stream versions differ from the log: for stream {stream:?} the snapshot has {}, the log {}",
                said(snapshot),
                said(log)
            ),
        )
        .into());
    }
    let mut want = tip.snapshot_with(snap.streams.clone());
    // A writer that recovered an interrupted rollover and checkpointed
    // before its next append stands at the start of the new segment, where
    // the walk has not arrived yet: the same state, positioned for the next
    // batch. The walk checks that segment's header when it gets there.
    if snap.segment_index == want.segment_index + 1
        && snap.segment_len == HEADER_LEN as u64
        && snap.segment_blocks == 1
        && reader
            .segments()
            .iter()
            .any(|s| s.index == snap.segment_index)
    {
        (want.segment_index, want.segment_len, want.segment_blocks) =
            (snap.segment_index, snap.segment_len, 1);
    }
    if snap.last_timestamp_us != want.last_timestamp_us {
        let what = format!(
            "last timestamp differs from the log: the snapshot has {} µs, the log {} µs",
            snap.last_timestamp_us, want.last_timestamp_us
        );
        return Err(IntegrityError::new(&blob, 68, Some(cp.size), what).into());
    }
    if snap != want {
        let what = format!(
            "position differs from the log (segment {} byte {} blocks {}, log has {} {} {})",
            snap.segment_index,
            snap.segment_len,
            snap.segment_blocks,
            want.segment_index,
            want.segment_len,
            want.segment_blocks
        );
        return Err(IntegrityError::new(&blob, 0, Some(cp.size), what).into());
    }
    // Equal to the log field by field (which names what differs, above),
    // and so byte for byte; the checkpoint signs those bytes.
    let cp_blob = super::layout::checkpoint(reader.name(), cp.size);
    recover::check_signed_snapshot(&blob, digest, &cp_blob, cp)
}
