//! Inclusion and consistency proofs (RFC 9162) against signed checkpoints.
//!
//! Proof nodes are roots of leaf ranges. Against a stored checkpoint, the
//! prover takes the perfect subtrees of 1,024 leaves and more from the node
//! caches beside the checkpoints (`node_cache.rs`) and hashes only the
//! records around the proven one and at the right edge (`log_roots.rs`),
//! then checks the proof against the signed root; at any other size, or if
//! that check fails, it hashes the log up to the size in one streaming pass.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::node_cache::NodeLookup;
use super::reader::LedgerReader;
use super::{layout, recover};
use crate::backend::StoreError;
use crate::error::{LedgerError, Result};
use crate::format::checkpoint::Checkpoint;
use crate::format::merkle::{self, Frontier};
use crate::format::nodes::{self, Node};
use crate::format::record::{decode_entry, Record};
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
        let cached: Vec<Node> = ranges
            .iter()
            .flat_map(|&(a, b)| merkle::range_pieces(a, b, 63))
            .filter(|n| n.height >= nodes::MIN_HEIGHT)
            .collect();
        lookup.prefetch(&cached).await?;
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
}
