//! Full verification: every CRC, record, chain link, segment header,
//! checkpoint signature, Merkle root and snapshot, from the first byte.
//!
//! Per chunk of batches, decoding and leaf hashing run in parallel (rayon);
//! the chain walk, which is serial by construction, then costs one SHA-256
//! compression per record (see `format::chain`).

use rayon::prelude::*;

use super::reader::LedgerReader;
use super::recover;
use super::scan::Scanner;
use super::tip::Tip;
use crate::error::{IntegrityError, LedgerError, Result};
use crate::format::checkpoint::{Checkpoint, Verifier};
use crate::format::merkle;
use crate::format::segment::{SegmentHeader, HEADER_LEN};
use crate::format::snapshot::Snapshot;
use crate::format::stream_index::StreamIndex;
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
}

impl LedgerReader {
    /// Verifies the whole ledger against `verifier`. `progress` is called
    /// with (bytes done, bytes in all) as segments are read.
    pub async fn verify(
        &self,
        verifier: &Verifier,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<VerifyReport> {
        if verifier.key != self.recorded_verifier().key {
            tracing::warn!("the public key given differs from the one recorded in the ledger");
        }
        let checkpoints = self.checkpoints(verifier).await?;
        let meta = self.meta().clone();
        let store = self.store().clone();
        let segments = recover::list_segments(store.as_ref(), &meta.name).await?;
        let total: u64 = segments.iter().map(|(_, s)| s.size).sum();
        let mut done_before = 0u64;
        let mut tip = Tip::genesis(meta.id);
        let mut next_cp = checkpoints.iter().peekable();
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
                    Some(tip.size),
                    "segment header is incomplete",
                )
                .into());
            }
            let bytes = store.read(name, 0, HEADER_LEN as u64).await?;
            let h = SegmentHeader::decode(&bytes)
                .map_err(|e| IntegrityError::new(name, e.offset as u64, Some(tip.size), e.what))?;
            recover::check_header(name, &h, &meta, *index, &tip)?;
            tip.segment_index = *index;
            tip.segment_len = HEADER_LEN as u64;
            tip.segment_blocks = 1;
            if *index == 0 {
                // Checkpoint 0 signs the empty ledger.
                check_checkpoints(self, &mut next_cp, &mut tip).await?;
            }
            let mut scan = Scanner::new(
                store.as_ref(),
                name,
                HEADER_LEN as u64,
                info.size,
                self.max_body(),
            );
            while let Some(chunk) = scan.next_chunk().await? {
                // Parallel part: decode and hash every batch of the chunk.
                let decoded: Vec<_> = chunk
                    .frames
                    .par_iter()
                    .enumerate()
                    .map(|(i, range)| {
                        let offset = chunk.base + range.start as u64;
                        let body = chunk.frame(i);
                        let records = body.decode_all().map_err(|e| {
                            IntegrityError::new(
                                name,
                                offset + e.offset as u64,
                                Some(body.first_seq),
                                e.what,
                            )
                        })?;
                        let mut leaves = Vec::with_capacity(records.len());
                        let mids: Vec<_> = records
                            .iter()
                            .map(|r| {
                                let leaf = r.leaf_hash();
                                leaves.push(leaf);
                                crate::format::chain::midstate(&leaf)
                            })
                            .collect();
                        let subtrees = merkle::range_subtrees(body.first_seq, &leaves);
                        Ok::<_, IntegrityError>((
                            offset,
                            range.len() as u64,
                            body.first_seq,
                            records,
                            mids,
                            subtrees,
                        ))
                    })
                    .collect();
                // Serial part: walk the chain in order.
                for d in decoded {
                    let (offset, len, first_seq, records, mids, subtrees) = d?;
                    if first_seq != tip.size {
                        return Err(IntegrityError::new(
                            name,
                            offset + crate::format::batch::FRAME_HEADER_LEN as u64,
                            Some(first_seq),
                            format!(
                                "batch starts at sequence number {first_seq} where {} was due",
                                tip.size
                            ),
                        )
                        .into());
                    }
                    for (r, mid) in records.iter().zip(mids) {
                        tip.link(r, mid)
                            .map_err(|what| IntegrityError::new(name, offset, Some(r.seq), what))?;
                    }
                    tip.index_batch(
                        offset,
                        first_seq,
                        records.len(),
                        records.iter().map(|r| r.stream),
                    );
                    for (height, hash) in subtrees {
                        tip.frontier.append_subtree(height, hash).map_err(|e| {
                            IntegrityError::new(name, offset, Some(first_seq), e.to_string())
                        })?;
                    }
                    tip.segment_len = offset + len;
                    tip.segment_blocks += 1;
                    check_checkpoints(self, &mut next_cp, &mut tip).await?;
                }
                progress(done_before + chunk.base + chunk.data.len() as u64, total);
            }
            if let Some(bad) = scan.bad {
                let signed = checkpoints.last().map_or(0, |(_, c)| c.size);
                let what = if *index as usize == last && bad.reaches_end && tip.size >= signed {
                    format!("{} (a torn last batch, as a crash leaves; opening the ledger for writing truncates it)", bad.error.what)
                } else {
                    bad.error.what
                };
                return Err(IntegrityError::new(name, bad.offset, Some(tip.size), what).into());
            }
            done_before += info.size;
            progress(done_before, total);
        }
        if let Some((blob, cp)) = next_cp.next() {
            return Err(IntegrityError::new(
                blob,
                0,
                Some(tip.size),
                format!(
                    "checkpoint covers {} records but the log holds only {}",
                    cp.size, tip.size
                ),
            )
            .into());
        }
        let signed = checkpoints.last().map_or(0, |(_, c)| c.size);
        Ok(VerifyReport {
            records: tip.size,
            segments: segments.len() as u64,
            bytes: total,
            checkpoints: checkpoints.len() as u64,
            chain_head: tip.chain_head,
            root: tip.frontier.root(),
            unsigned_tail: tip.size - signed,
        })
    }
}

/// Checks every checkpoint whose size the walk has just reached.
async fn check_checkpoints<'a, I>(
    reader: &LedgerReader,
    next: &mut std::iter::Peekable<I>,
    tip: &mut Tip,
) -> Result<()>
where
    I: ExactSizeIterator<Item = &'a (String, Checkpoint)>,
{
    while let Some((blob, cp)) = next.peek() {
        if cp.size > tip.size {
            break;
        }
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
        if cp.root != root {
            return Err(IntegrityError::new(
                blob,
                0,
                Some(cp.size),
                format!(
                    "Merkle root {} does not match the log's {}",
                    hex(&cp.root),
                    hex(&root)
                ),
            )
            .into());
        }
        if cp.chain_head != tip.chain_head {
            return Err(IntegrityError::new(
                blob,
                0,
                Some(cp.size),
                format!(
                    "chain head {} does not match the log's {}",
                    hex(&cp.chain_head),
                    hex(&tip.chain_head)
                ),
            )
            .into());
        }
        check_snapshot(reader, cp, tip, next.len() == 1).await?;
        check_stream_index(reader, cp, tip.take_index()).await?;
        next.next();
    }
    Ok(())
}

/// A checkpoint's stream index, where there is one, must list exactly the
/// batches that hold each stream's records since the previous checkpoint.
/// It is a cache: a missing one only makes stream reads scan.
async fn check_stream_index(
    reader: &LedgerReader,
    cp: &Checkpoint,
    want: StreamIndex,
) -> Result<()> {
    if want.from == want.to {
        return Ok(());
    }
    let blob = super::layout::stream_index(reader.name(), cp.size);
    let bytes = match reader.store().read_all(&blob).await {
        Ok(b) => b,
        Err(crate::backend::StoreError::NotFound { .. }) => {
            tracing::debug!(checkpoint = cp.size, "no stream index for this checkpoint");
            return Ok(());
        }
        Err(e) => return Err(LedgerError::Store(e)),
    };
    let idx = StreamIndex::decode(&bytes)
        .map_err(|e| IntegrityError::new(&blob, e.offset as u64, Some(cp.size), e.what))?;
    if idx != want {
        let what = if (idx.from, idx.to) != (want.from, want.to) || idx.ledger_id != want.ledger_id
        {
            format!(
                "stream index covers records {}..{} of ledger {}, the log says {}..{} of {}",
                idx.from,
                idx.to,
                hex(&idx.ledger_id),
                want.from,
                want.to,
                hex(&want.ledger_id)
            )
        } else {
            match idx.batches.iter().zip(&want.batches).find(|(a, b)| a != b) {
                Some((a, b)) => format!(
                    "stream index differs from the log at the batch of sequence number {} (it says segment {} byte {}, the log segment {} byte {})",
                    b.first_seq, a.position.0, a.position.1, b.position.0, b.position.1
                ),
                None => "stream index lists other batches than the log has".to_owned(),
            }
        };
        return Err(IntegrityError::new(&blob, 0, Some(cp.size), what).into());
    }
    Ok(())
}

/// A snapshot must be exactly the state the log implies at its checkpoint.
/// Only the newest checkpoint's snapshot must exist: the writer prunes older
/// ones (they are a cache, not evidence).
async fn check_snapshot(
    reader: &LedgerReader,
    cp: &Checkpoint,
    tip: &Tip,
    required: bool,
) -> Result<()> {
    let blob = super::layout::snapshot(reader.name(), cp.size);
    let bytes = match reader.store().read_all(&blob).await {
        Ok(b) => b,
        Err(crate::backend::StoreError::NotFound { .. }) if !required => return Ok(()),
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
    let snap = Snapshot::decode(&bytes)
        .map_err(|e| IntegrityError::new(&blob, e.offset as u64, Some(cp.size), e.what))?;
    let mut want = tip.snapshot();
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
    if snap != want {
        let what = if snap.streams != want.streams {
            "stream versions differ from the log".to_owned()
        } else {
            format!(
                "position differs from the log (segment {} byte {} blocks {}, log has {} {} {})",
                snap.segment_index,
                snap.segment_len,
                snap.segment_blocks,
                want.segment_index,
                want.segment_len,
                want.segment_blocks
            )
        };
        return Err(IntegrityError::new(&blob, 0, Some(cp.size), what).into());
    }
    Ok(())
}
