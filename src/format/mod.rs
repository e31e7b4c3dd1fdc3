//! The durable byte format, as specified in `ledger-format.md`.
//!
//! Everything here is pure: no I/O, no clocks, no randomness. The ledger
//! feeds bytes in and gets bytes or typed errors out, so the encoders can be
//! property-tested and fuzzed in isolation.

pub mod batch;
pub mod chain;
pub mod checkpoint;
pub mod merkle;
pub mod record;
pub mod segment;
pub mod sha;
pub mod snapshot;
pub mod stream_index;
pub mod varint;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 1;

/// Lower-case hex, for hashes in errors, receipts and JSON output.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Parses 64 hex digits into a hash.
pub fn parse_hash_hex(s: &str) -> Option<Hash> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Why a byte string could not be decoded. `offset` is relative to the start
/// of the buffer handed to the decoder; callers add the segment offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {what}")]
pub struct DecodeError {
    pub offset: usize,
    pub what: String,
}

impl DecodeError {
    pub fn new(offset: usize, what: impl Into<String>) -> Self {
        DecodeError {
            offset,
            what: what.into(),
        }
    }
}
