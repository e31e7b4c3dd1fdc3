//! Library errors. Integrity errors say where: segment, byte offset and
//! sequence number, so an operator can look at the bytes.

use crate::backend::StoreError;
use crate::format::DecodeError;
use crate::model::ExpectedVersion;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("integrity error in {blob} at byte {offset}{}: {what}", .seq.map(|s| format!(" (sequence number {s})")).unwrap_or_default())]
pub struct IntegrityError {
    /// The segment or checkpoint blob.
    pub blob: String,
    pub offset: u64,
    pub seq: Option<u64>,
    pub what: String,
    /// For callers that act on the kind of failure rather than its text.
    pub kind: IntegrityKind,
}

/// The kind of an [`IntegrityError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntegrityKind {
    /// Bytes, hashes, links, caches or a checkpoint's statement are not
    /// what the log and its signed checkpoints say they must be.
    Damage,
    /// A checkpoint has no signature by the verifier's key: it was signed
    /// with another key, or its signature line was removed. Verifying with
    /// a key other than the ledger's fails this way at its first checkpoint.
    NotSignedByKey,
    /// A checkpoint note that does not parse, or whose signature by the
    /// verifier's key is not valid.
    BadCheckpoint,
}

impl IntegrityKind {
    /// The name `bi-ledger verify` prints as `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            IntegrityKind::Damage => "damage",
            IntegrityKind::NotSignedByKey => "not_signed_by_key",
            IntegrityKind::BadCheckpoint => "bad_checkpoint",
        }
    }
}

impl IntegrityError {
    pub fn new(
        blob: impl Into<String>,
        offset: u64,
        seq: Option<u64>,
        what: impl Into<String>,
    ) -> Self {
        IntegrityError {
            blob: blob.into(),
            offset,
            seq,
            what: what.into(),
            kind: IntegrityKind::Damage,
        }
    }

    /// `e`, opening the checkpoint `blob` with the verifier's key.
    pub(crate) fn checkpoint_rejected(
        blob: impl Into<String>,
        e: &crate::format::checkpoint::CheckpointError,
    ) -> Self {
        use crate::format::checkpoint::CheckpointError;
        let kind = match e {
            CheckpointError::NoMatchingSignature { .. } => IntegrityKind::NotSignedByKey,
            _ => IntegrityKind::BadCheckpoint,
        };
        IntegrityError {
            kind,
            ..IntegrityError::new(blob, 0, None, format!("checkpoint rejected: {e}"))
        }
    }

    /// `e`, found in `blob` at `base + e.offset`: at the record that failed
    /// to decode if it names one, else at `seq` (the batch's first record,
    /// or the checkpoint a cache belongs to).
    pub fn decoding(blob: impl Into<String>, base: u64, e: DecodeError, seq: Option<u64>) -> Self {
        IntegrityError::new(blob, base + e.offset as u64, e.seq.or(seq), e.what)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("event {index}: field `{field}` {reason}")]
    InvalidEvent {
        index: usize,
        field: &'static str,
        reason: String,
    },
    /// Event `index` of a call expected a version its stream does not
    /// have: nothing of the call is written.
    #[error("event {index}: stream {stream:?} expected {expected} but {}", conflict_cause(*.current, *.earlier))]
    VersionConflict {
        index: usize,
        stream: String,
        expected: ExpectedVersion,
        /// The stream's version in the ledger (`None`: no such stream),
        /// which the call left as it was.
        current: Option<u64>,
        /// How many of the call's earlier events are on the same stream:
        /// each counts before this one (the first takes the next version,
        /// and so on), though none of them was written.
        earlier: usize,
    },
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ledger {0:?} does not exist")]
    NotFound(String),
    #[error("ledger {0:?} already exists")]
    AlreadyExists(String),
    #[error(
        "invalid ledger name {0:?}: use 1-64 of a-z 0-9 and '-', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("the signing key does not match ledger {ledger:?}'s public key {expected}")]
    KeyMismatch { ledger: String, expected: String },
    /// The call's events were not written: the writer had stopped (a
    /// failed write, a lost writer lock) before their block was issued,
    /// or the store refused the block (a condition, a limit, a sealed
    /// segment). Appending them again through a new handle cannot
    /// duplicate them.
    #[error("the writer stopped after a failed write ({0}); nothing after it was acknowledged, and this handle takes nothing more: open the ledger again to go on")]
    Poisoned(String),
    /// The write of the block holding the call's events failed, and
    /// whether it landed is not known: an Azure answer lost on the way
    /// back, an fsync that failed after the bytes reached the file. The
    /// writer has stopped. Open the ledger again and read from `first_seq`
    /// before appending any of them again: they are there in full or not
    /// at all (a block lands whole or is cut off as a torn tail).
    #[error("the write of sequence numbers {first_seq} to {last_seq} failed ({cause}), and whether it landed is not known: open the ledger again and read from {first_seq} before appending those events again; this handle takes nothing more")]
    OutcomeUnknown {
        first_seq: u64,
        last_seq: u64,
        cause: String,
    },
    #[error("the writer of ledger {ledger:?} is closed (through another handle, its runtime shut down, or it panicked: see stderr): open the ledger again to go on")]
    Closed { ledger: String },
    /// One `append` call's events, each small enough on its own, do not
    /// fit in one batch together (a call is atomic, so one block): split
    /// the call. Nothing of it is written. [`crate::NewEvent::stored_len_bound`]
    /// and [`crate::Ledger::max_batch_bytes`] tell beforehand.
    #[error("{events} events encode to about {bytes} bytes, over the {limit}-byte batch limit: one append must fit in one batch; split it")]
    BatchTooLarge {
        events: usize,
        bytes: usize,
        limit: usize,
    },
    #[error("{0}")]
    InvalidArgument(String),
    /// A [`crate::ledger::LedgerOptions`] field no ledger can work with.
    #[error("option `{field}` {reason}")]
    InvalidOption { field: &'static str, reason: String },
    #[error("checkpoint {blob}: {source}")]
    Checkpoint {
        blob: String,
        #[source]
        source: crate::format::checkpoint::CheckpointError,
    },
    #[error("proof: {0}")]
    Proof(#[from] crate::format::merkle::MerkleError),
}

impl LedgerError {
    pub fn is_integrity(&self) -> bool {
        matches!(self, LedgerError::Integrity(_))
    }

    /// Whether the failed call's events may be in the ledger all the same.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, LedgerError::OutcomeUnknown { .. })
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// The version a stream at `current` (`None`: no stream) has after
/// `events` more events: for a `VersionConflict`, the version its refused
/// event was checked against, with `events` = its `earlier`.
pub fn version_after(current: Option<u64>, events: usize) -> Option<u64> {
    match (current, events) {
        (current, 0) => current,
        (Some(v), n) => Some(v.saturating_add(n as u64)),
        (None, n) => Some(n as u64 - 1),
    }
}

/// The end of a `VersionConflict`'s message: the stream's version, and the
/// call's own events on it that count before the one refused.
fn conflict_cause(current: Option<u64>, earlier: usize) -> String {
    let version = match current {
        Some(v) => v.to_string(),
        None => "none (no stream)".into(),
    };
    match earlier {
        0 => format!("its current version is {version}"),
        n => {
            let checked = version_after(current, n).map_or_else(String::new, |v| v.to_string());
            let events = if n == 1 { "event" } else { "events" };
            format!("the call's {n} earlier {events} on it would bring it to version {checked} (its current version is {version}; nothing of the call was written)")
        }
    }
}
