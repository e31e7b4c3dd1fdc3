//! bi-ledger: an event-sourced, append-only, hash-chained ledger store.
//!
//! Start at [`Ledger::append`]: it hands events to the writer task
//! (`ledger/writer.rs`), which encodes them as one batch (`format`), appends
//! it as one block to a [`backend::BlobStore`] and acknowledges once durable.
//! [`LedgerReader`] reads, verifies and proves.
//!
//! Everything async runs on tokio: the stores hand blocking file and
//! network work to its blocking pool, so a call made outside a tokio
//! runtime panics. A current-thread runtime will do.

pub mod backend;
pub mod error;
pub mod format;
pub mod json;
pub mod keys;
pub mod ledger;
pub mod model;
pub mod time;

/// The signing keys in [`LedgerOptions`] and [`Verifier`] are this crate's.
pub use ed25519_dalek;
pub use error::{IntegrityError, IntegrityKind, LedgerError, Result};
pub use format::checkpoint::{Checkpoint, Verifier};
pub use format::record::Record;
pub use ledger::proof::{ConsistencyProof, InclusionProof};
pub use ledger::trusted::TrustedMatch;
pub use ledger::verify::{VerifyOptions, VerifyReport};
pub use ledger::{CheckpointInfo, Ledger, LedgerOptions, LedgerReader};
pub use model::{ExpectedVersion, NewEvent, Receipt};

/// The README's library example is compiled and run as a doc-test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
