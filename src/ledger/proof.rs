//! Inclusion and consistency proofs (RFC 9162) against signed checkpoints.
//!
//! Proof nodes are roots of leaf ranges; the prover computes them in one
//! streaming pass over the log, so proving never holds all leaf hashes.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::reader::LedgerReader;
use crate::error::{LedgerError, Result};
use crate::format::checkpoint::Checkpoint;
use crate::format::merkle::{self, Frontier};
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
        let mut entry = None;
        let roots = self
            .range_roots(&ranges, Some(seq), size, |r| entry = Some(r.to_vec()))
            .await?;
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
        let roots = self.range_roots(&ranges, None, new_size, |_| {}).await?;
        Ok(ConsistencyProof {
            old_size,
            new_size,
            proof: roots.iter().map(|h| hex(h)).collect(),
        })
    }

    /// Merkle roots of the given (disjoint) leaf ranges, in the given
    /// order, from one pass over the log; hands the entry of record `want`
    /// to `found` on the way.
    async fn range_roots(
        &self,
        ranges: &[(u64, u64)],
        want: Option<u64>,
        size: u64,
        mut found: impl FnMut(&[u8]),
    ) -> Result<Vec<Hash>> {
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&i| ranges[i].0);
        let from = ranges.iter().map(|r| r.0).chain(want).min().unwrap_or(0);
        let mut roots = vec![None; ranges.len()];
        let mut cur = 0usize;
        let mut frontier = Frontier::new();
        let mut entry = Vec::new();
        let mut seen = from;
        self.scan(from, Some(size), |r, _| {
            seen = r.seq + 1;
            let is_want = want == Some(r.seq);
            let active = order
                .get(cur)
                .map(|&i| ranges[i])
                .filter(|(a, _)| r.seq >= *a);
            if !is_want && active.is_none() {
                return ControlFlow::Continue(());
            }
            entry.clear();
            r.write_entry(&mut entry);
            if is_want {
                found(&entry);
            }
            if let Some((_, b)) = active {
                frontier.push(merkle::leaf_hash(&entry));
                if r.seq + 1 == b {
                    roots[order[cur]] = Some(frontier.root());
                    frontier = Frontier::new();
                    cur += 1;
                }
            }
            ControlFlow::Continue(())
        })
        .await?;
        if seen < size {
            return Err(LedgerError::InvalidArgument(format!(
                "the log holds {seen} records, fewer than the {size} asked for"
            )));
        }
        roots
            .into_iter()
            .map(|r| {
                r.ok_or_else(|| LedgerError::InvalidArgument("proof range outside the log".into()))
            })
            .collect()
    }
}
