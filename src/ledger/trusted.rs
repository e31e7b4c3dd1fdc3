//! Checking a ledger against checkpoints kept outside it.
//!
//! A ledger's own checkpoints prove that nothing up to each of them changed,
//! but not that none were taken away: records cut off together with every
//! checkpoint that signed them look like records never written, and a
//! history rewritten by whoever holds the signing key comes with checkpoints
//! signed afresh. Only a checkpoint kept elsewhere (by an auditor, a
//! witness, whoever received it) tells; this compares one with the ledger
//! that `verify` has just checked against itself.

use super::layout;
use super::reader::LedgerReader;
use super::verify::VerifyReport;
use crate::error::{IntegrityError, LedgerError, Result};
use crate::format::checkpoint::Checkpoint;
use crate::format::{hex, merkle, Hash};

/// How the ledger was found to hold what a trusted checkpoint signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustedMatch {
    /// The ledger has a checkpoint of the same size, which `verify` checked
    /// against the log, with the same root and chain head.
    Checkpoint,
    /// The ledger has no checkpoint of that size (it was deleted, or the
    /// trusted one came from a writer that crashed before storing it, or
    /// from a copy of the ledger); the root was hashed from the log.
    Log,
    /// The trusted checkpoint is of the ledger's whole verified size.
    Tip,
}

impl TrustedMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustedMatch::Checkpoint => "checkpoint",
            TrustedMatch::Log => "log",
            TrustedMatch::Tip => "tip",
        }
    }
}

impl LedgerReader {
    /// Checks that this ledger, as `verified` (the report of [`Self::verify`]
    /// on this reader), still holds what `trusted` signs: at least its number
    /// of records, and the same records up to it. `trusted`'s signature must
    /// already be checked (`Checkpoint::open`).
    ///
    /// A mismatch is an integrity error: another ledger in this one's place,
    /// records removed, or records changed. A trusted checkpoint newer than
    /// the verified log, whose size the ledger has a checkpoint of by now
    /// (a writer appended while verify ran), is `InvalidArgument`.
    pub async fn check_trusted(
        &self,
        trusted: &Checkpoint,
        verified: &VerifyReport,
    ) -> Result<TrustedMatch> {
        let name = self.name();
        let n = trusted.size;
        let found = self.meta().origin();
        if trusted.origin != found {
            return Err(IntegrityError::new(
                layout::meta(name),
                0,
                None,
                format!(
                    "this is ledger {found}, but the trusted checkpoint of size {n} signs {}: the checkpoint is another ledger's, or another ledger signed with the same key took this one's place",
                    trusted.origin
                ),
            )
            .into());
        }
        let s = verified.records;
        let own = self.signed_checkpoint(Some(n)).await?;
        if n > s {
            if own.is_some() {
                return Err(LedgerError::InvalidArgument(format!(
                    "the trusted checkpoint of size {n} is newer than the ledger as verified ({s} records), and the ledger has a checkpoint of that size by now: a writer appended while verify ran; verify again"
                )));
            }
            let (blob, offset) = self
                .segments()
                .last()
                .map_or((layout::meta(name), 0), |seg| {
                    (seg.name.clone(), self.view_len(seg))
                });
            return Err(IntegrityError::new(
                blob,
                offset,
                Some(s),
                format!(
                    "the log holds {s} records, but a trusted checkpoint signs {n}: at least {} removed, together with every checkpoint that signed them (with records missing, the trusted checkpoint cannot be checked against the records before {s} either, so they may differ from what it signed)",
                    record_range(s, n)
                ),
            )
            .into());
        }
        let (how, root, chain_head, blob) = match own {
            Some((blob, cp, _)) => (TrustedMatch::Checkpoint, cp.root, Some(cp.chain_head), blob),
            None if n == s => (
                TrustedMatch::Tip,
                verified.root,
                Some(verified.chain_head),
                layout::meta(name),
            ),
            None => (
                TrustedMatch::Log,
                self.root_at(n).await?,
                None,
                layout::meta(name),
            ),
        };
        let differs = |what: &str, ours: &Hash, theirs: &Hash| -> LedgerError {
            IntegrityError::new(
                &blob,
                0,
                None,
                format!(
                    "the ledger's first {n} records give {what} {}, but the trusted checkpoint of that size signs {}: records before {n} were changed (and the ledger's checkpoints signed again)",
                    hex(ours),
                    hex(theirs)
                ),
            )
            .into()
        };
        if root != trusted.root {
            return Err(differs("the root", &root, &trusted.root));
        }
        // Equal roots mean equal records, and so an equal chain; a signer
        // that signed another head is worth naming all the same.
        if let Some(head) = chain_head.filter(|h| *h != trusted.chain_head) {
            return Err(differs("the chain head", &head, &trusted.chain_head));
        }
        Ok(how)
    }

    /// The Merkle root of the first `n` records, hashed from the log.
    async fn root_at(&self, n: u64) -> Result<Hash> {
        if n == 0 {
            return Ok(merkle::empty_root());
        }
        let roots = self.range_roots(&[(0, n)], None, n, |_| {}).await?;
        Ok(roots[0])
    }
}

/// Records `from..to` (`from < to`) in words, with their verb: "record 5
/// was", "records 5 to 9 were".
fn record_range(from: u64, to: u64) -> String {
    if to - from == 1 {
        format!("record {from} was")
    } else {
        format!("records {from} to {} were", to - 1)
    }
}
