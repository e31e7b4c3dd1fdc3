//! Inclusion and consistency proofs (RFC 9162) against signed checkpoints.
//!
//! Proof nodes are roots of leaf ranges; the prover computes them in one
//! streaming pass over the log, so proving never holds all leaf hashes.
//! That pass hashes every record up to the proven size, in parallel.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::node_cache::NodeLookup;
use super::reader::LedgerReader;
use super::scan::{pipelined, Chunk, Scanner};
use super::{layout, recover};
use crate::backend::StoreError;
use crate::error::{LedgerError, Result};
use crate::format::checkpoint::Checkpoint;
use crate::format::merkle::{self, Frontier};
use crate::format::nodes;
use crate::format::record::{decode_entry, Record};
use crate::format::segment::HEADER_LEN;
use crate::format::{hex, parse_hash_hex, Hash};

/// Proof that one record is in the ledger of `size` records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub seq: u64,
    pub size: u64,
    /// The record's canonical entry (hex): the verifier hashes it itself.
    pub entry: String,
    pub proof: Vec<String>,
}

/// Proof that the ledger of `old_size` records is a prefix of the one of
/// `new_size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub old_size: u64,
    pub new_size: u64,
    pub proof: Vec<String>,
}

/// Records needed by a proof that lie closer than this share one scan;
/// farther apart, each group is found by a seek (see `streams.rs`).
const MIN_GAP_TO_SCAN_APART: u64 = 16_384;

fn cache_disagrees(size: u64) {
    tracing::warn!(
        size,
        "a proof built from the node caches does not match the signed checkpoint; proving from the log instead (run verify: a node cache or the log is damaged)"
    );
}

fn hashes(v: &[String]) -> Result<Vec<Hash>> {
    v.iter()
        .enumerate()
        .map(|(i, h)| {
            parse_hash_hex(h).ok_or_else(|| {
                LedgerError::InvalidArgument(format!("proof node {i} is not 64 hex digits"))
            })
        })
        .collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(LedgerError::InvalidArgument(
            "entry is not lower-case hex".into(),
        ));
    }
    if !s.len().is_multiple_of(2) {
        return Err(LedgerError::InvalidArgument(
            "entry has an odd number of hex digits".into(),
        ));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .map_err(|_| LedgerError::InvalidArgument(format!("entry is not hex at digit {i}")))
        })
        .collect()
}

impl InclusionProof {
    /// Checks the proof against a checkpoint whose signature the caller
    /// has already checked (`Checkpoint::open`).
    /// Returns the proven record, decoded from the entry.
    pub fn verify(&self, cp: &Checkpoint) -> Result<Record> {
        if cp.size != self.size {
            return Err(LedgerError::InvalidArgument(format!(
                "proof is for size {}, checkpoint is size {}",
                self.size, cp.size
            )));
        }
        let entry = unhex(&self.entry)?;
        let record = decode_entry(&entry)
            .map_err(|e| LedgerError::InvalidArgument(format!("entry: {e}")))?;
        // The entry's own sequence number must be the one proven.
        if record.seq != self.seq {
            return Err(LedgerError::InvalidArgument(format!(
                "entry carries sequence number {}, the proof is for {}",
                record.seq, self.seq
            )));
        }
        let leaf = merkle::leaf_hash(&entry);
        merkle::verify_inclusion(&leaf, self.seq, self.size, &hashes(&self.proof)?, &cp.root)?;
        Ok(record)
    }
}

impl ConsistencyProof {
    pub fn verify(&self, old: &Checkpoint, new: &Checkpoint) -> Result<()> {
        if old.origin != new.origin {
            return Err(LedgerError::InvalidArgument(format!(
                "checkpoints are of different ledgers: {:?} and {:?}",
                old.origin, new.origin
            )));
        }
        if old.size != self.old_size || new.size != self.new_size {
            return Err(LedgerError::InvalidArgument(format!(
                "proof is for sizes {} → {}, checkpoints are {} → {}",
                self.old_size, self.new_size, old.size, new.size
            )));
        }
        merkle::verify_consistency(
            self.old_size,
            self.new_size,
            &old.root,
            &new.root,
            &hashes(&self.proof)?,
        )?;
        Ok(())
    }
}

impl LedgerReader {
    pub async fn inclusion_proof(&self, seq: u64, size: u64) -> Result<InclusionProof> {
        let ranges = merkle::inclusion_proof_ranges(seq, size)?;
        let (roots, entry) = match self.signed_root(size).await? {
            Some(root) => match self.cached_roots(&ranges, Some(seq)).await? {
                (roots, Some(entry))
                    if merkle::verify_inclusion(
                        &merkle::leaf_hash(&entry),
                        seq,
                        size,
                        &roots,
                        &root,
                    )
                    .is_ok() =>
                {
                    (roots, Some(entry))
                }
                _ => {
                    cache_disagrees(size);
                    self.logged_roots(&ranges, Some(seq), size).await?
                }
            },
            None => self.logged_roots(&ranges, Some(seq), size).await?,
        };
        let entry = entry.ok_or_else(|| {
            LedgerError::InvalidArgument(format!("record {seq} is not in the log"))
        })?;
        Ok(InclusionProof {
            seq,
            size,
            entry: hex(&entry),
            proof: roots.iter().map(|h| hex(h)).collect(),
        })
    }

    pub async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof> {
        let ranges = merkle::consistency_proof_ranges(old_size, new_size)?;
        let signed = match self.signed_root(old_size).await? {
            Some(old) => self.signed_root(new_size).await?.map(|new| (old, new)),
            None => None,
        };
        let roots = match signed {
            Some((old, new)) => {
                let (roots, _) = self.cached_roots(&ranges, None).await?;
                if merkle::verify_consistency(old_size, new_size, &old, &new, &roots).is_ok() {
                    roots
                } else {
                    cache_disagrees(new_size);
                    self.logged_roots(&ranges, None, new_size).await?.0
                }
            }
            None => self.logged_roots(&ranges, None, new_size).await?.0,
        };
        Ok(ConsistencyProof {
            old_size,
            new_size,
            proof: roots.iter().map(|h| hex(h)).collect(),
        })
    }

    /// The root of the checkpoint of `size`, if one is stored. Proofs built
    /// from node caches are checked against it before they are handed out.
    async fn signed_root(&self, size: u64) -> Result<Option<Hash>> {
        let blob = layout::checkpoint(self.name(), size);
        match recover::read_checkpoint_note(self.store().as_ref(), self.meta(), &blob).await {
            Ok((cp, _)) => Ok(Some(cp.root)),
            Err(LedgerError::Store(StoreError::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Roots of the proof ranges, and the entry of record `want`, from one
    /// pass over the log up to `size`.
    async fn logged_roots(
        &self,
        ranges: &[(u64, u64)],
        want: Option<u64>,
        size: u64,
    ) -> Result<(Vec<Hash>, Option<Vec<u8>>)> {
        let mut entry = None;
        let roots = self
            .range_roots(ranges, want, size, |r| entry = Some(r.to_vec()))
            .await?;
        Ok((roots, entry))
    }

    /// Roots of the proof ranges from the node caches where they hold the
    /// subtrees, hashing only the records they do not cover: the leaves
    /// below 1,024-leaf subtrees on either side of `want` and at the right
    /// edge of the tree, and anything after the newest cache. Records far
    /// apart are read by separate scans.
    async fn cached_roots(
        &self,
        ranges: &[(u64, u64)],
        want: Option<u64>,
    ) -> Result<(Vec<Hash>, Option<Vec<u8>>)> {
        let mut lookup = NodeLookup::new(self);
        let mut pieces = Vec::with_capacity(ranges.len());
        let mut from_log = Vec::new();
        for &(a, b) in ranges {
            let mut range = Vec::new();
            for node in merkle::range_pieces(a, b, 63) {
                let known = match node.height >= nodes::MIN_HEIGHT {
                    true => lookup.get(node).await?,
                    false => None,
                };
                if known.is_none() {
                    from_log.push((node.index << node.height, node.end().unwrap_or(u64::MAX)));
                }
                range.push((node, known));
            }
            pieces.push(range);
        }
        let mut points: Vec<(u64, u64)> = from_log.clone();
        points.extend(want.map(|w| (w, w + 1)));
        points.sort_unstable();
        let mut hashed = HashMap::new();
        let mut entry = None;
        let mut i = 0;
        while i < points.len() {
            // Records within a seek's worth of each other share one scan.
            let mut end = points[i].1;
            let mut j = i + 1;
            while j < points.len() && points[j].0 < end.saturating_add(MIN_GAP_TO_SCAN_APART) {
                end = end.max(points[j].1);
                j += 1;
            }
            let (first, last) = (points[i].0, end);
            let here: Vec<(u64, u64)> = from_log
                .iter()
                .copied()
                .filter(|r| first <= r.0 && r.1 <= last)
                .collect();
            let want_here = want.filter(|w| (first..last).contains(w));
            let roots = self
                .range_roots(&here, want_here, last, |r| entry = Some(r.to_vec()))
                .await?;
            hashed.extend(here.into_iter().zip(roots));
            i = j;
        }
        let roots = pieces
            .into_iter()
            .map(|range| {
                let mut f = Frontier::new();
                for (node, known) in range {
                    let at = (node.index << node.height, node.end().unwrap_or(u64::MAX));
                    let hash = known.or_else(|| hashed.get(&at).copied());
                    let hash = hash.expect("every piece not cached was hashed from the log");
                    f.append_subtree(node.height, hash)?;
                }
                Ok(f.root())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((roots, entry))
    }

    /// Merkle roots of the given (disjoint) leaf ranges, in the given
    /// order, from one pass over the log up to record `size`, starting at
    /// the first range (or `want`); hands the entry of record `want` to
    /// `found` on the way.
    ///
    /// A pipeline as in `verify`: rayon decodes and hashes one chunk, and
    /// cuts each range's leaves in it into perfect subtrees, while the next
    /// chunk is read; this task only merges the subtrees, in order.
    async fn range_roots(
        &self,
        ranges: &[(u64, u64)],
        want: Option<u64>,
        size: u64,
        mut found: impl FnMut(&[u8]),
    ) -> Result<Vec<Hash>> {
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&i| ranges[i].0);
        let sorted: Arc<Vec<(u64, u64)>> = Arc::new(order.iter().map(|&i| ranges[i]).collect());
        let from = ranges.iter().map(|r| r.0).chain(want).min().unwrap_or(0);
        let mut merge = Merge {
            roots: vec![None; sorted.len()],
            frontier: Frontier::new(),
            sorted: sorted.clone(),
        };
        let mut reached = from;
        let segments = self.segments();
        let (first, offset) = self.seek(from).await?;
        let last = segments.len().saturating_sub(1);
        for (i, seg) in segments.iter().enumerate().skip(first) {
            if seg.first_seq >= size {
                break;
            }
            reached = reached.max(seg.first_seq);
            let start = if i == first {
                offset
            } else {
                HEADER_LEN as u64
            };
            let mut scan = Scanner::new(
                self.store().as_ref(),
                &seg.name,
                start,
                seg.size,
                self.max_body(),
            );
            if start > HEADER_LEN as u64 {
                scan = scan.starting_small();
            }
            let flow = pipelined(
                &mut scan,
                |c| spawn_pieces(c, seg.name.clone(), sorted.clone(), want, from, size),
                async |frames: Result<Vec<FramePieces>>| {
                    for frame in frames? {
                        if let Some(entry) = &frame.entry {
                            found(entry);
                        }
                        merge.add(frame.pieces)?;
                        reached = reached.max(frame.end);
                    }
                    Ok::<_, LedgerError>(if reached >= size {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    })
                },
            )
            .await?;
            if flow.is_break() {
                break;
            }
            if let Some(bad) = scan.bad {
                self.bad_frame(seg, i == last, bad, reached).await?;
            }
        }
        if reached < size {
            return Err(LedgerError::InvalidArgument(format!(
                "this reader sees {reached} records, fewer than the {size} asked for (a reader sees the segments as they were when it was opened; open a new one to prove newer records)"
            )));
        }
        let mut roots = vec![None; ranges.len()];
        for (root, &i) in merge.roots.into_iter().zip(&order) {
            roots[i] = root;
        }
        roots
            .into_iter()
            .map(|r| {
                r.ok_or_else(|| LedgerError::InvalidArgument("proof range outside the log".into()))
            })
            .collect()
    }
}

/// One frame's share of the proof: for each range it meets (by index in
/// the sorted ranges), the perfect subtrees of its leaves there, placed
/// relative to the range's start, as RFC 9162 hashes the range on its own.
struct FramePieces {
    pieces: Vec<(usize, Vec<(u32, Hash)>)>,
    /// The canonical entry of the record asked for, if the frame holds it.
    entry: Option<Vec<u8>>,
    /// Sequence number after the frame's last record.
    end: u64,
}

fn spawn_pieces(
    chunk: Chunk,
    name: String,
    sorted: Arc<Vec<(u64, u64)>>,
    want: Option<u64>,
    from: u64,
    to: u64,
) -> oneshot::Receiver<Result<Vec<FramePieces>>> {
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let frames = (0..chunk.frames.len())
            .into_par_iter()
            .map(|i| {
                let body = chunk.frame(i);
                let end = body.first_seq + u64::from(body.count);
                let mut out = FramePieces {
                    pieces: Vec::new(),
                    entry: None,
                    end,
                };
                if end <= from || body.first_seq >= to {
                    return Ok(out);
                }
                let records = chunk.records(i, &name)?;
                // The range each record falls in, if any, and its leaves.
                let mut cur: Option<(usize, u64, Vec<Hash>)> = None;
                let mut ri = sorted.partition_point(|r| r.1 <= body.first_seq);
                let mut entry = Vec::new();
                for r in &records {
                    entry.clear();
                    r.write_entry(&mut entry);
                    if want == Some(r.seq) {
                        out.entry = Some(entry.clone());
                    }
                    while ri < sorted.len() && sorted[ri].1 <= r.seq {
                        ri += 1;
                    }
                    let inside = ri < sorted.len() && sorted[ri].0 <= r.seq;
                    if cur.as_ref().is_some_and(|c| !inside || c.0 != ri) {
                        let (k, start, leaves) = cur.take().unwrap();
                        out.pieces
                            .push((k, merkle::range_subtrees(start - sorted[k].0, &leaves)));
                    }
                    if inside {
                        cur.get_or_insert_with(|| (ri, r.seq, Vec::new()))
                            .2
                            .push(merkle::leaf_hash(&entry));
                    }
                }
                if let Some((k, start, leaves)) = cur {
                    out.pieces
                        .push((k, merkle::range_subtrees(start - sorted[k].0, &leaves)));
                }
                Ok(out)
            })
            .collect();
        // The receiver is gone only if the proof already failed.
        let _ = tx.send(frames);
    });
    rx
}

/// Merges the pieces of the ranges, in log order, into their roots.
struct Merge {
    roots: Vec<Option<Hash>>,
    frontier: Frontier,
    sorted: Arc<Vec<(u64, u64)>>,
}

impl Merge {
    fn add(&mut self, pieces: Vec<(usize, Vec<(u32, Hash)>)>) -> Result<()> {
        for (k, subtrees) in pieces {
            let (a, b) = self.sorted[k];
            for (height, hash) in subtrees {
                // Pieces come in log order, each placed relative to its
                // range's start, so they always fit.
                self.frontier.append_subtree(height, hash)?;
            }
            if self.frontier.size() == b - a {
                self.roots[k] = Some(self.frontier.root());
                self.frontier = Frontier::new();
            }
        }
        Ok(())
    }
}
