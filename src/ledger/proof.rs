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

/// The leaf ranges `[first, last)` to scan for the given ones: ranges
/// closer than `MIN_GAP_TO_SCAN_APART` share one scan.
fn scan_groups(ranges: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = ranges.collect();
    ranges.sort_unstable();
    let mut groups: Vec<(u64, u64)> = Vec::new();
    for (a, b) in ranges {
        match groups.last_mut() {
            Some(g) if a < g.1.saturating_add(MIN_GAP_TO_SCAN_APART) => g.1 = g.1.max(b),
            _ => groups.push((a, b)),
        }
    }
    groups
}

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
                LedgerError::InvalidArgument(format!(
                    "proof node {i} is not 64 lower-case hex digits"
                ))
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
                    let (roots, entry) = self.logged_roots(&ranges, Some(seq), size).await?;
                    let holds = entry.as_ref().is_some_and(|e| {
                        merkle::verify_inclusion(&merkle::leaf_hash(e), seq, size, &roots, &root)
                            .is_ok()
                    });
                    if !holds {
                        return Err(self.log_disagrees(size, Some(seq)));
                    }
                    (roots, entry)
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
                    let roots = self.logged_roots(&ranges, None, new_size).await?.0;
                    if merkle::verify_consistency(old_size, new_size, &old, &new, &roots).is_err() {
                        return Err(self.log_disagrees(new_size, None));
                    }
                    roots
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

    /// A proof hashed from the log itself that its signed checkpoint does
    /// not accept: the log is damaged, and no proof is handed out. `seq` is
    /// the record an inclusion proof is about.
    fn log_disagrees(&self, size: u64, seq: Option<u64>) -> LedgerError {
        let blob = super::layout::checkpoint(self.name(), size);
        crate::error::IntegrityError::new(
            &blob,
            0,
            seq,
            format!("the log up to {size} records does not give the root this checkpoint signs: a record before {size} was changed (run verify to find which)"),
        )
        .into()
    }

    /// The root of the checkpoint of `size`, if one is stored. Proofs built
    /// from node caches are checked against it before they are handed out.
    async fn signed_root(&self, size: u64) -> Result<Option<Hash>> {
        Ok(self
            .signed_checkpoint(Some(size))
            .await?
            .map(|(_, cp, _)| cp.root))
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
    /// edge of the tree, and anything after the newest cache.
    async fn cached_roots(
        &self,
        ranges: &[(u64, u64)],
        want: Option<u64>,
    ) -> Result<(Vec<Hash>, Option<Vec<u8>>)> {
        let pieces: Vec<Vec<Node>> = ranges
            .iter()
            .map(|&(a, b)| merkle::range_pieces(a, b, 63))
            .collect();
        let tall: Vec<Node> = pieces
            .iter()
            .flatten()
            .copied()
            .filter(|n| n.height >= nodes::MIN_HEIGHT)
            .collect();
        let mut lookup = NodeLookup::new(self);
        lookup.prefetch(&tall).await?;
        let mut known = HashMap::new();
        for n in tall {
            if let Some(hash) = lookup.get(n).await? {
                known.insert(n, hash);
            }
        }
        let from_log: Vec<(u64, u64)> = pieces
            .iter()
            .flatten()
            .filter(|n| !known.contains_key(n))
            .map(Node::leaves)
            .collect();
        let mut hashed = HashMap::new();
        let mut entry = None;
        let wanted = want.map(|w| (w, w + 1));
        for (first, last) in scan_groups(from_log.iter().copied().chain(wanted)) {
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
        }
        let roots = pieces
            .into_iter()
            .map(|range| {
                let mut f = Frontier::new();
                for n in range {
                    let hash = known.get(&n).or_else(|| hashed.get(&n.leaves()));
                    let hash = hash.expect("every piece not cached was hashed from the log");
                    f.append_subtree(n.height, *hash)?;
                }
                Ok(f.root())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((roots, entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_ranges_share_a_scan() {
        let gap = MIN_GAP_TO_SCAN_APART;
        let far = [(40_000, 40_001), (0, 10), (10, 20), (20 + gap, 30 + gap)];
        assert_eq!(
            scan_groups(far.into_iter()),
            [(0, 20), (20 + gap, 30 + gap), (40_000, 40_001)]
        );
        let near = [(0, 20), (19 + gap, 25 + gap)];
        assert_eq!(scan_groups(near.into_iter()), [(0, 25 + gap)]);
        assert_eq!(scan_groups(std::iter::empty()), []);
    }
}
